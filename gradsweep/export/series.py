"""What an export writes to any dashboard: one series per replica of a run, named and tagged.

A run file holds every replica of one configuration; a dashboard run holds one
value per tag and step, so each replica becomes one dashboard run. Its name is
the run's sweep dir name (`config.run_dirname`: readable main axes, the seed and
the run key, so unique and filesystem-safe), or a recording's name and run key
(`gradsweep.Recorder`), followed by `/replica<r>-seed<s>`
when the run has several replicas. Tags: `loss`, `total_grad_norm`, and per
tensor `grad_norm/<where>/<tensor>` for parameter gradients, `dLdz_norm/...`
for activation gradients (rows without a parameter norm), and `grad_hist/...`,
`dLdz_hist/...` for their histograms; `<where>` is the module name where the
run file has one, else the MLP layer (`layer03`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from gradsweep.bins import (
    HIST_EXP_MAX,
    HIST_EXP_MIN,
    HIST_LOG10_STEP,
    HIST_OVERFLOW,
    HIST_UNDERFLOW,
)
from gradsweep.config import run_dirname, run_key
from gradsweep.schema import RECORDER_SOURCE
from gradsweep.store import read_metadata, read_run_table

# The histogram bins a dashboard draws on the log10|g| axis: underflow, the binades, overflow.
# Underflow and overflow have no finite outer edge; each is drawn one binade wide. Exact zeros,
# NaN and Inf have no place on that axis (the run file counts them in grad_frac_zero,
# grad_n_nan and grad_n_inf).
DRAWN_BINS = slice(HIST_UNDERFLOW, HIST_OVERFLOW + 1)
DRAWN_EDGES: np.ndarray = np.arange(HIST_EXP_MIN - 1, HIST_EXP_MAX + 2) * HIST_LOG10_STEP
MODULE_COLUMN = "module"
COLUMNS = (
    "replica",
    "seed",
    "step",
    "layer",
    "tensor",
    "grad_norm",
    "param_norm",
    "loss",
    "total_grad_norm",
    "grad_hist",
)


def where(layer: int, module: str | None = None) -> str:
    """A tensor's place in its tags: its module's name, else its MLP layer (`layer03`)."""
    return module if module is not None else f"layer{layer:02d}"


def tensor_tags(place: str, tensor: str, activation: bool) -> tuple[str, str]:
    """The norm's and the histogram's tags of one tensor; `activation` for dL/dz rows."""
    kind = "dLdz" if activation else "grad"
    return f"{kind}_norm/{place}/{tensor}", f"{kind}_hist/{place}/{tensor}"


@dataclass
class Point:
    """What one replica logged at one step: scalars by tag, drawn histogram counts by tag."""

    step: int
    scalars: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class ReplicaSeries:
    """One replica of a run as one dashboard run.

    `run` names the gradsweep run (the dashboard group), `name` the dashboard run;
    `config` is the run's recorded configuration with this replica's `seed` (as in
    the run file's seed column), its `replica` index and the run's `run_key`.
    """

    run: str
    name: str
    config: dict[str, Any]
    config_yaml: str
    points: list[Point]


def run_name(config: dict[str, Any]) -> tuple[str, str]:
    """A run's dashboard name and run key: a sweep run's dir name, or a recording's name and key."""
    if config.get("source") == RECORDER_SOURCE:
        return f"{config['name']}-{config['run_key']}", config["run_key"]
    return run_dirname(config), run_key(config)


def _rows(table: pa.Table) -> Iterator[dict[str, Any]]:
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    for i in range(table.num_rows):
        yield {name: values[i] for name, values in columns.items()}


def read_series(path: str | Path) -> list[ReplicaSeries]:
    """The replicas of one run file, in replica order, each with its points in step order."""
    config_yaml = read_metadata(path)["config"]
    config = yaml.safe_load(config_yaml)
    table = read_run_table(path)
    columns = [*COLUMNS, *([MODULE_COLUMN] if MODULE_COLUMN in table.column_names else [])]
    run, key = run_name(config)
    points: dict[tuple[int, int], Point] = {}
    seeds: dict[int, int] = {}
    for row in _rows(table.select(columns)):
        replica, step = row["replica"], row["step"]
        seeds[replica] = row["seed"]
        point = points.setdefault((replica, step), Point(step))
        for tag in ("loss", "total_grad_norm"):
            if row[tag] is not None:
                point.scalars.setdefault(tag, row[tag])
        norm_tag, hist_tag = tensor_tags(
            where(row["layer"], row.get(MODULE_COLUMN)), row["tensor"], row["param_norm"] is None
        )
        if row["grad_norm"] is not None:
            point.scalars[norm_tag] = row["grad_norm"]
        if row["grad_hist"] is not None:
            point.histograms[hist_tag] = np.asarray(row["grad_hist"], dtype=np.int64)[DRAWN_BINS]
    several = len(seeds) > 1
    return [
        ReplicaSeries(
            run=run,
            name=f"{run}/replica{replica}-seed{seed}" if several else run,
            config={**config, "seed": seed, "replica": replica, "run_key": key},
            config_yaml=config_yaml,
            points=[p for (r, _), p in sorted(points.items()) if r == replica],
        )
        for replica, seed in sorted(seeds.items())
    ]
