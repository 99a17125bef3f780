"""Which registered model versions a request may name, and what an alias points to now.

Requests name a version ("3") or an alias ("champion"). Aliases are resolved to a
concrete version per request, through a cache of ``ttl_s`` seconds, and models are
loaded and multiplexed by that concrete version: moving an alias in the registry
takes effect within ``ttl_s`` without restarting anything, and requests already on
the old version finish on it.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, Callable

import mlflow

from changeseg.serving.inputs import RequestError
from changeseg.tracking import client_for

_VERSION = re.compile(r"^\d+$")
_ALIAS = re.compile(r"^[A-Za-z_][\w-]*$")


class ModelCatalog:
    """Alias and version look-ups against the MLflow registry, cached for ``ttl_s``."""

    def __init__(self, *, tracking_uri: str, name: str, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.tracking_uri = tracking_uri
        self.name = name
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[int, float]] = {}  # reference -> (version, expiry)

    def _client(self):
        return client_for(self.tracking_uri)

    def cached(self, reference: str) -> int | None:
        """The version from the cache when still fresh, else None (no registry call)."""
        with self._lock:
            hit = self._cache.get(str(reference).strip())
        return hit[0] if hit is not None and hit[1] > self._clock() else None

    def resolve(self, reference: str) -> int:
        """A version number or alias -> the concrete version; RequestError 404 when unknown."""
        reference = str(reference).strip()
        if not (_VERSION.match(reference) or _ALIAS.match(reference)):
            raise RequestError(422, "bad_version", f"version must be a number or an alias name, got {reference!r}")
        now = self._clock()
        with self._lock:
            hit = self._cache.get(reference)
        if hit is not None and hit[1] > now:
            return hit[0]
        client = self._client()
        try:
            if _VERSION.match(reference):
                found = client.get_model_version(self.name, reference)
            else:
                found = client.get_model_version_by_alias(self.name, reference)
        except mlflow.exceptions.MlflowException:
            kind = "version" if _VERSION.match(reference) else "alias"
            raise RequestError(404, "unknown_version", f"model {self.name} has no {kind} {reference!r}") from None
        version = int(found.version)
        with self._lock:
            self._cache[reference] = (version, now + self.ttl_s)
        return version

    def listing(self) -> dict[str, Any]:
        """Servable versions (status READY) with their aliases, straight from the registry."""
        client = self._client()
        try:
            aliases = dict(client.get_registered_model(self.name).aliases)
        except mlflow.exceptions.MlflowException:
            return {"name": self.name, "aliases": {}, "versions": []}
        by_version: dict[int, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(int(version), []).append(alias)
        versions = []
        for item in client.search_model_versions(f"name = '{self.name}'"):
            if item.status != "READY":
                continue
            number = int(item.version)
            versions.append(
                {
                    "version": number,
                    "aliases": sorted(by_version.get(number, [])),
                    "run_id": item.run_id,
                    "created_ms": item.creation_timestamp,
                    "tags": dict(item.tags),
                }
            )
        versions.sort(key=lambda v: v["version"])
        return {"name": self.name, "aliases": {k: int(v) for k, v in sorted(aliases.items())}, "versions": versions}
