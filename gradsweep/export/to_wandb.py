"""Runs as W&B runs: one per replica, grouped by gradsweep run, configuration in `run.config`.

W&B's mode comes from its own settings (`WANDB_MODE=offline` writes offline runs
under `<dir>/wandb/` with no account; `wandb sync` uploads them later).
Histograms are `wandb.Histogram`s of the run file's fixed bins
(`series.DRAWN_EDGES`), counts exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gradsweep.export.extras import require
from gradsweep.export.series import DRAWN_EDGES, ReplicaSeries

EXTRA = "wandb"
DEFAULT_PROJECT = "gradsweep"


def check_installed() -> None:
    """Raise MissingExtra unless wandb can be imported."""
    require(EXTRA, "wandb")


def write_run(
    replicas: Sequence[ReplicaSeries], project: str = DEFAULT_PROJECT, dir: str | Path = "."
) -> None:
    """Log one gradsweep run's replicas as W&B runs, one per replica (files under `dir`/wandb)."""
    wandb = require(EXTRA, "wandb")
    Path(dir).mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(console="off", silent=True)
    for series in replicas:
        run = wandb.init(
            project=project,
            dir=str(dir),
            name=series.name,
            group=series.run,
            config=series.config,
            settings=settings,
        )
        try:
            for point in series.points:
                histograms = {
                    tag: wandb.Histogram(np_histogram=(counts, DRAWN_EDGES))
                    for tag, counts in point.histograms.items()
                }
                run.log({**point.scalars, **histograms}, step=point.step)
        finally:
            run.finish()
