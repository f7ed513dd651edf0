"""`gradsweep.load`: any mix of run files, run dirs and sweep dirs as one pandas DataFrame.

Reads with `store.RunSet`, so it skips exactly what the report skips (failed
runs, refused schema versions, unreadable files, duplicate configurations) and
says which paths it skipped and why.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from numbers import Integral
from pathlib import Path
from typing import Literal, get_args

import pandas as pd
import pyarrow.dataset as ds

from gradsweep.schema import COLUMNS_BY_NAME, HIST_COLUMN, names
from gradsweep.store import Problem, RunSet

OnProblems = Literal["warn", "raise", "ignore"]
ON_PROBLEMS: tuple[str, ...] = get_args(OnProblems)


class SkippedRunsWarning(UserWarning):
    """`load` skipped some runs; the message lists each path and why."""


class SkippedRunsError(ValueError):
    """`load(..., problems="raise")` found runs it cannot use; `problems` lists them."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(describe(problems))


def describe(problems: list[Problem]) -> str:
    """One line per skipped run: path, kind (failed, refused, unreadable, duplicate) and why."""
    lines = [f"skipped {len(problems)} run(s):"]
    lines += [f"  {p.path}: {p.kind}: {p.message}" for p in problems]
    return "\n".join(lines)


def _columns(columns: Sequence[str] | None, histograms: bool) -> list[str]:
    if columns is None:
        return [c for c in names() if histograms or c != HIST_COLUMN]
    if isinstance(columns, str):
        columns = [columns]
    unknown = [c for c in columns if c not in COLUMNS_BY_NAME]
    if unknown:
        raise ValueError(
            f"columns={unknown} are not run file columns; choose from: {', '.join(names())}"
        )
    return list(columns)


def _filter(
    steps: int | Iterable[int] | None, filter: ds.Expression | None
) -> ds.Expression | None:
    if steps is not None:
        wanted = [int(steps)] if isinstance(steps, Integral) else [int(s) for s in steps]
        by_step = ds.field("step").isin(wanted)
        filter = by_step if filter is None else filter & by_step
    return filter


def load(
    *paths: str | Path,
    columns: Sequence[str] | None = None,
    histograms: bool = False,
    steps: int | Iterable[int] | None = None,
    filter: ds.Expression | None = None,
    problems: OnProblems = "warn",
) -> pd.DataFrame:
    """The rows of every usable run under `paths` (run files, run dirs, sweep dirs), one frame.

    `columns` selects run file columns (all by default; `grad_hist`, one list
    of counts per row, only with `histograms=True`). `steps` keeps the rows of
    those logged steps (an int or several), `filter` any rows a pyarrow
    expression selects. Runs that cannot be used are skipped and, by
    `problems`, reported in one SkippedRunsWarning ("warn"), raised as
    SkippedRunsError ("raise"), or not reported ("ignore"); the frame's
    `attrs["problems"]` lists them. With no usable run at all, raises ValueError.
    """
    if not paths:
        raise TypeError("load() needs at least one run file, run dir or sweep dir")
    if problems not in ON_PROBLEMS:
        choices = ", ".join(ON_PROBLEMS)
        raise ValueError(f"problems={problems!r} is not valid; choose one of: {choices}")
    selected = _columns(columns, histograms)
    runs = RunSet(paths)
    if problems == "raise" and runs.problems:
        raise SkippedRunsError(runs.problems)
    if runs.schema is None:
        listing = f"; {describe(runs.problems)}" if runs.problems else ""
        raise ValueError(f"no readable run files in {[str(p) for p in paths]}{listing}")
    frame = runs.frame(selected, _filter(steps, filter))
    if problems == "raise" and runs.problems:
        raise SkippedRunsError(runs.problems)
    if problems == "warn" and runs.problems:
        warnings.warn(describe(runs.problems), SkippedRunsWarning, stacklevel=2)
    frame.attrs["problems"] = list(runs.problems)
    return frame
