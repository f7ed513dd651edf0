"""Progress you can follow: one line per finished run of a sweep, a bar for one long run."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

BAR_WIDTH = 30
REDRAW_SECONDS = 0.1


class ProgressBar:
    """A one-line bar on a terminal, redrawn at most every REDRAW_SECONDS; silent elsewhere."""

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start = time.perf_counter()
        self._last_draw = 0.0

    def __call__(self, done: int) -> None:
        """Record that `done` of `total` units are finished; redraw if due."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if done < self.total and now - self._last_draw < REDRAW_SECONDS:
            return
        self._last_draw = now
        filled = BAR_WIDTH * done // self.total
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total} {now - self._start:.1f}s")
        self.stream.flush()

    def close(self) -> None:
        """Erase the bar so that the next line starts clean."""
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def run_line(index: int, total: int, overrides: Sequence[str], seconds: float, status: str) -> str:
    """The line a sweep prints per finished run: index/total, the swept values, seconds, status."""
    width = len(str(total))
    values = " ".join(overrides) if overrides else "(defaults)"
    return f"[{index:>{width}}/{total}] {values}  {seconds:.2f}s  {status}"


def parse_position(value: Any) -> tuple[int, int] | None:
    """`"5/200"` -> (5, 200): a run's 1-based index in its sweep and the sweep's size."""
    if not value:
        return None
    index, total = str(value).split("/")
    return int(index), int(total)
