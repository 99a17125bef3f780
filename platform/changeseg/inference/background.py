"""Bounded background threads that overlap raster I/O with the model.

GDAL releases the GIL while it decodes and encodes blocks, so a reader thread can
prepare the next batches of windows and a writer thread can store the last ones while
the model runs on the current batch. Both queues are bounded (``depth`` items), so
memory stays bounded by the batch size, not the scene. An error in a thread is raised
in the caller at its next hand-over; leaving early stops the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["Prefetch", "Sink"]

_END = object()
_POLL_S = 0.1


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetch:
    """Iterates ``items`` in a thread, at most ``depth`` items ahead of the consumer."""

    def __init__(self, items: Iterable[Any], *, depth: int = 2, name: str = "prefetch") -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterable[Any]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._put(_Failed(err))

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def close(self) -> None:
        """Stop the thread (it finishes the item it is producing) and wait for it."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "Prefetch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Sink:
    """Hands items to ``consume`` in a thread, at most ``depth`` waiting."""

    def __init__(self, consume: Callable[[Any], None], *, depth: int = 2, name: str = "sink") -> None:
        self._consume = consume
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if self._error is not None:
                continue  # drain: the caller raises the first error
            try:
                self._consume(item)
            except BaseException as err:  # noqa: BLE001 - raised in the caller
                self._error = err

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item: Any) -> None:
        self._raise()
        self._queue.put(item)

    def _finish(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_END)
            self._thread.join()

    def close(self) -> None:
        """Wait until every item is consumed; raise the first error of ``consume``."""
        self._finish()
        self._raise()

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._finish()
        if exc[0] is None:
            self._raise()
