"""Which registered model versions a request may name, and what an alias points to now.

Requests name a version ("3") or an alias ("champion"). A reference is canonicalised
first (ASCII digits only, ``0001`` is ``1``; at most 64 characters), then resolved to a
concrete version through a bounded cache of ``ttl_s`` seconds that remembers misses
too. Models are loaded and multiplexed by that concrete version: moving an alias takes
effect within ``ttl_s`` without restarting anything, and requests already on the old
version finish on it.

Only "does not exist" is a 404. An unreachable, failing or slow registry is a 503
``registry_unavailable``: every registry call runs on this catalog's own small thread
pool with a deadline, so a stalled registry holds neither the event loop nor the
threads that decode images.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

import mlflow

from changeseg.serving.inputs import RequestError
from changeseg.tracking import client_for

_VERSION = re.compile(r"[0-9]+", re.ASCII)
_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*", re.ASCII)
MAX_REFERENCE_LENGTH = 64
# MLflow's answers for a version or alias that does not exist; anything else is an outage.
_NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


def registry_unavailable(detail: str) -> RequestError:
    return RequestError(503, "registry_unavailable", f"the model registry is unavailable ({detail}); retry later")


def canonical_reference(reference: object) -> str:
    """``str(int(...))`` for ASCII digits, the alias name otherwise; 422 for anything else."""
    text = str(reference).strip()
    if len(text) > MAX_REFERENCE_LENGTH:
        raise RequestError(422, "bad_version", f"version is longer than {MAX_REFERENCE_LENGTH} characters")
    if _VERSION.fullmatch(text):
        return str(int(text))
    if _ALIAS.fullmatch(text):
        return text
    raise RequestError(
        422, "bad_version", f"version must be a number or an alias name, got {text[:MAX_REFERENCE_LENGTH]!r}"
    )


class ModelCatalog:
    """Alias and version look-ups against the MLflow registry, cached for ``ttl_s``."""

    def __init__(
        self,
        *,
        tracking_uri: str,
        name: str,
        ttl_s: float,
        timeout_s: float = 5.0,
        max_entries: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.tracking_uri = tracking_uri
        self.name = name
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        # reference -> (version or the 404 it got, expiry); least recently used first.
        self._cache: OrderedDict[str, tuple[int | RequestError, float]] = OrderedDict()
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="registry")

    def _client(self):
        return client_for(self.tracking_uri)

    # --- cache ---------------------------------------------------------------------------

    def _fresh(self, reference: str) -> int | RequestError | None:
        with self._lock:
            hit = self._cache.get(reference)
            if hit is None or hit[1] <= self._clock():
                return None
            self._cache.move_to_end(reference)
            return hit[0]

    def _store(self, reference: str, value: int | RequestError) -> None:
        with self._lock:
            self._cache[reference] = (value, self._clock() + self.ttl_s)
            self._cache.move_to_end(reference)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)

    def cache_size(self) -> int:
        with self._lock:
            return len(self._cache)

    def cached(self, reference: str) -> int | None:
        """The version from the cache when still fresh, else None (no registry call)."""
        try:
            hit = self._fresh(canonical_reference(reference))
        except RequestError:
            return None
        return hit if isinstance(hit, int) else None

    # --- look-ups ------------------------------------------------------------------------

    def _lookup(self, reference: str) -> int:
        client = self._client()
        try:
            if _VERSION.fullmatch(reference):
                found = client.get_model_version(self.name, reference)
            else:
                found = client.get_model_version_by_alias(self.name, reference)
        except mlflow.exceptions.MlflowException as err:
            if err.error_code in _NOT_FOUND_CODES:
                kind = "version" if _VERSION.fullmatch(reference) else "alias"
                raise RequestError(404, "unknown_version", f"model {self.name} has no {kind} {reference!r}") from None
            raise registry_unavailable(err.error_code or type(err).__name__) from None
        except Exception as err:  # connection errors, a broken store: not the client's fault
            raise registry_unavailable(type(err).__name__) from None
        return int(found.version)

    def _cached_or_none(self, reference: str) -> int | None:
        hit = self._fresh(reference)
        if isinstance(hit, RequestError):
            raise hit
        return hit

    def _remember(self, reference: str, err: RequestError) -> None:
        if err.status == 404:  # a miss is remembered for the TTL too; an outage is not
            self._store(reference, err)

    def resolve(self, reference: str) -> int:
        """A version number or alias -> the concrete version (blocking, bounded by ``timeout_s``)."""
        reference = canonical_reference(reference)
        hit = self._cached_or_none(reference)
        if hit is not None:
            return hit
        try:
            version = self.call(self._lookup, reference)
        except RequestError as err:
            self._remember(reference, err)
            raise
        self._store(reference, version)
        return version

    async def resolve_async(self, reference: str) -> int:
        """:meth:`resolve` without blocking the event loop or its default thread pool."""
        reference = canonical_reference(reference)
        hit = self._cached_or_none(reference)
        if hit is not None:
            return hit
        try:
            version = await self.call_async(self._lookup, reference)
        except RequestError as err:
            self._remember(reference, err)
            raise
        self._store(reference, version)
        return version

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a registry call on the catalog's pool; 503 past ``timeout_s``."""
        future = self._executor.submit(fn, *args)
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            future.cancel()
            raise registry_unavailable(f"no answer within {self.timeout_s:g} s") from None

    async def call_async(self, fn: Callable[..., Any], *args: Any) -> Any:
        future = asyncio.wrap_future(self._executor.submit(fn, *args))
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            raise registry_unavailable(f"no answer within {self.timeout_s:g} s") from None

    def listing(self) -> dict[str, Any]:
        """Servable versions (status READY) with their aliases (blocking, bounded)."""
        return self.call(self._listing)

    def _listing(self) -> dict[str, Any]:
        client = self._client()
        try:
            aliases = dict(client.get_registered_model(self.name).aliases)
            items = list(client.search_model_versions(f"name = '{self.name}'"))
        except mlflow.exceptions.MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {"name": self.name, "aliases": {}, "versions": []}
            raise registry_unavailable(err.error_code or type(err).__name__) from None
        except Exception as err:
            raise registry_unavailable(type(err).__name__) from None
        by_version: dict[int, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(int(version), []).append(alias)
        versions = [
            {
                "version": int(item.version),
                "aliases": sorted(by_version.get(int(item.version), [])),
                "run_id": item.run_id,
                "created_ms": item.creation_timestamp,
                "tags": dict(item.tags),
            }
            for item in items
            if item.status == "READY"
        ]
        versions.sort(key=lambda v: v["version"])
        return {"name": self.name, "aliases": {k: int(v) for k, v in sorted(aliases.items())}, "versions": versions}
