"""File names built from pair ids: the one place that turns an id into a path.

Pair ids come from manifests, shards and folder listings, often written by third
parties, so an id is checked before it names a file: it must be a relative POSIX path
whose parts are ordinary names (``site/001`` is fine; ``../x``, ``/etc/x``, ``a//b``,
backslashes and control characters are not). Records with such ids get an error row
when they are read; nothing is ever written outside the output folder.
"""

from __future__ import annotations

import re

__all__ = ["UnsafePairId", "check_pair_id", "pair_file_name"]

_MAX_PART = 200  # bytes per path component (file systems allow 255)
_MAX_ID = 1024
_FLAT = re.compile(r"[^A-Za-z0-9_.-]+")


class UnsafePairId(ValueError):
    """A pair id that cannot name a file below an output folder."""


def check_pair_id(pair_id: object) -> str:
    """``pair_id`` when it is a safe relative name, else :class:`UnsafePairId` saying why."""
    if not isinstance(pair_id, str) or not pair_id:
        raise UnsafePairId(f"pair id {pair_id!r} is empty or not a string")
    if len(pair_id) > _MAX_ID:
        raise UnsafePairId(f"pair id {pair_id[:40]!r}... is longer than {_MAX_ID} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in pair_id) or "\\" in pair_id:
        raise UnsafePairId(f"pair id {pair_id!r} holds a control character or a backslash")
    if pair_id.startswith("/"):
        raise UnsafePairId(f"pair id {pair_id!r} is an absolute path")
    for part in pair_id.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePairId(f"pair id {pair_id!r} has an empty, '.' or '..' path component")
        if len(part.encode()) > _MAX_PART:
            raise UnsafePairId(f"pair id {pair_id[:40]!r}... has a path component over {_MAX_PART} bytes")
    return pair_id


def pair_file_name(pair_id: str, suffix: str = "", *, flat: bool = False) -> str:
    """The relative file name for ``pair_id`` (checked) plus ``suffix``.

    ``flat=True`` folds every run of characters outside ``[A-Za-z0-9_.-]`` to ``_`` (one
    folder, e.g. report images and logged overlays); otherwise ``/`` in an id makes
    sub-folders, as the archive had them.
    """
    check_pair_id(pair_id)
    if flat:
        return _FLAT.sub("_", pair_id)[:120] + suffix
    return pair_id + suffix
