"""Progress lines of long loops (training, scoring, evaluation): one pacing and ETA rule."""

from __future__ import annotations

import time

__all__ = ["Progress"]


class Progress:
    """Paces progress lines: :meth:`due` is true once every ``every_s`` seconds (or when
    ``final``); ``elapsed`` and :meth:`eta` are read at that moment."""

    def __init__(self, every_s: float, *, started: float | None = None) -> None:
        self.every_s = every_s
        self.now = self.last = time.perf_counter()
        self.started = self.now if started is None else started

    def due(self, *, final: bool = False) -> bool:
        self.now = time.perf_counter()
        if self.now - self.last >= self.every_s or final:
            self.last = self.now
            return True
        return False

    @property
    def elapsed(self) -> float:
        return self.now - self.started

    def eta(self, done: int, total: int) -> float:
        """Seconds left if the remaining items go at the pace so far; inf before the first."""
        return self.elapsed / done * (total - done) if done > 0 else float("inf")
