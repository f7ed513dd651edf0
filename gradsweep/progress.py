"""Progress you can follow: one line per finished run of a sweep, a bar for one long run."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

SKIPPED = "skipped (complete)"
# Start of the status of a complete run kept although it was written otherwise than it would be now.
KEPT_OTHERWISE = "skipped (complete; "

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


def _written_with(key: str, recorded: str | None, now: str) -> str:
    if recorded is None:
        return f"{key} not recorded, now {now}"
    return f"written with {key}={recorded}, now {now}"


def skipped_status(differences: Sequence[tuple[str, str | None, str]] = ()) -> str:
    """`skipped (complete)`; for a file written otherwise, what it records and what is now.

    `differences`: (key, recorded value or None, value now), as `execution.differences` gives.
    """
    if not differences:
        return SKIPPED
    return KEPT_OTHERWISE + "; ".join(_written_with(*d) for d in differences) + ")"


def redone_status(differences: Sequence[tuple[str, str | None, str]], outcome: str) -> str:
    """Status of a complete run redone as it was written otherwise: `redone (threads 2 -> 1)`."""
    what = ", ".join(
        f"{key} {'not recorded' if was is None else was} -> {now}" for key, was, now in differences
    )
    note = "" if outcome == "ok" else f"; {outcome}"
    return f"redone ({what}{note})"


def kept_otherwise_note(statuses: Sequence[str]) -> str | None:
    """The sweep's line on complete runs kept though written otherwise; None when there are none."""
    kept = sum(status.startswith(KEPT_OTHERWISE) for status in statuses)
    if not kept:
        return None
    return (
        f"gradsweep: {kept} complete run(s) were written with other threads, torch, device or "
        "statistics path and are kept as they are (see their lines); rerun with "
        "redo_mismatched=true to redo them"
    )


def parse_position(value: Any) -> tuple[int, int] | None:
    """`"5/200"` -> (5, 200): a run's 1-based index in its sweep and the sweep's size."""
    if not value:
        return None
    index, total = str(value).split("/")
    return int(index), int(total)
