"""A run's tidy rows: one per replica x logged step x tensor, built from the packed host copies.

Each logged step's packed vector is unpacked by its `PackedLayout` into
statistics, histograms and the run loop's per-replica tail (loss, clip
factor); the rows add the run's configuration, derived norms and moments, the
mean-field predictions and each replica's divergence status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from gradsweep.bins import N_HIST_BINS
from gradsweep.predictions import attach_predictions
from gradsweep.probe.layout import PackedLayout, S
from gradsweep.schema import CONFIG_KEYS

# One record a logged step: (step, whether it has a histogram, its packed host copy).
Record = tuple[int, bool, np.ndarray]


def build_rows(
    records: Sequence[Record],
    layout: PackedLayout,
    values: Mapping[str, Any],
    key: str,
    inits: Sequence[tuple[int, float]],
) -> tuple[pd.DataFrame, list[str], list[int | None]]:
    """The run's rows with predictions and status; each replica's status and divergence step.

    `inits` is each replica's (seed, init_scale); `key` the run key.
    """
    frame = tidy_rows(records, layout, values, key, inits)
    frame = attach_predictions(frame, values)
    status, diverged = divergence(frame, layout.replicas)
    frame["status"] = pd.Categorical(
        [status[r] for r in frame["replica"]], categories=["ok", "diverged"]
    )
    frame["diverged_step"] = pd.array([diverged[r] for r in frame["replica"]], dtype="Int64")
    return frame, status, diverged


def tidy_rows(
    records: Sequence[Record],
    layout: PackedLayout,
    values: Mapping[str, Any],
    key: str,
    inits: Sequence[tuple[int, float]],
) -> pd.DataFrame:
    """Tidy rows: one per replica x logged step x tensor, with derived norms and moments."""
    specs = layout.specs
    k, n_t = layout.replicas, len(specs)
    unpacked = [layout.unpack(host, with_hist) for _, with_hist, host in records]
    steps = np.array([r[0] for r in records])
    raw = np.stack([step.stats for step in unpacked])  # (steps, K, T, S)
    loss = np.stack([step.tail["loss"] for step in unpacked])  # (steps, K)
    coef = (
        np.stack([step.tail["clip_factor"] for step in unpacked])
        if "clip_factor" in layout.tail
        else np.ones_like(loss)
    )
    n_steps = len(records)
    numel = np.array([s.numel for s in specs], dtype=np.int64)
    is_param = np.array([s.is_param for s in specs])
    col = lambda name: raw[..., S[name]].reshape(-1)  # noqa: E731
    shape = (n_steps, k, n_t)
    numel_b = np.broadcast_to(numel, shape).reshape(-1)
    is_param_b = np.broadcast_to(is_param, shape).reshape(-1)
    grad_norm = np.sqrt(col("grad_sumsq"))
    mean = col("grad_sum") / numel_b
    with np.errstate(invalid="ignore"):
        std = np.sqrt(np.maximum(col("grad_m2"), 0.0) / numel_b)
        param_std = np.sqrt(np.maximum(col("param_m2"), 0.0) / numel_b)
    param_sq = np.where(is_param, raw[..., S["param_sumsq"]], 0.0)
    grad_sq_params = np.where(is_param, raw[..., S["grad_sumsq"]], 0.0)
    total = np.sqrt(grad_sq_params.sum(-1))  # (steps, K)
    coef_rows = np.where(is_param, coef[:, :, None], 1.0).reshape(-1)
    v = values
    seeds, scales = (np.array(column) for column in zip(*inits))
    per_replica = lambda a: np.broadcast_to(a[None, :, None], shape).reshape(-1)  # noqa: E731
    n_rows = n_steps * k * n_t
    special = {  # configuration columns that are not one plain value per run
        "init_scale": per_replica(scales.astype(np.float64)),
        "clip": pd.arrays.FloatingArray(
            np.full(n_rows, v["clip"] or 0.0), np.full(n_rows, v["clip"] is None)
        ),
    }
    frame = pd.DataFrame(
        {
            "run_key": key,
            **{name: special.get(name, v[item]) for name, item in CONFIG_KEYS.items()},
            "seed": per_replica(seeds),
            "replica": per_replica(np.arange(k)),
            "step": np.broadcast_to(steps[:, None, None], shape).reshape(-1),
            "layer": np.broadcast_to(np.array([s.layer for s in specs]), shape).reshape(-1),
            "tensor": np.broadcast_to(np.array([s.tensor for s in specs]), shape).reshape(-1),
            "grad_norm": grad_norm,
            "grad_norm_clipped": grad_norm * coef_rows,
            "grad_mean": mean,
            "grad_std": std,
            "grad_min": col("grad_min"),
            "grad_max": col("grad_max"),
            "grad_frac_zero": col("grad_n_zero") / numel_b,
            "grad_n_nan": col("grad_n_nan").astype(np.int64),
            "grad_n_inf": col("grad_n_inf").astype(np.int64),
            "numel": numel_b,
            "param_norm": np.sqrt(
                np.where(np.broadcast_to(is_param, shape), param_sq, np.nan)
            ).reshape(-1),
            "param_std": np.where(is_param_b, param_std, np.nan),
            "loss": np.broadcast_to(loss[:, :, None], shape).reshape(-1),
            "total_grad_norm": np.broadcast_to(total[:, :, None], shape).reshape(-1),
        }
    )
    frame["grad_hist"] = _hist_column([step.hist for step in unpacked], k, n_t)
    return frame


def _hist_column(hists: list[np.ndarray | None], k: int, n_t: int) -> list:
    """One list of N_HIST_BINS counts per row, None on logged steps without a histogram."""
    column: list = []
    for hist in hists:
        if hist is None:
            column.extend([None] * (k * n_t))
        else:
            column.extend(list(hist.reshape(k * n_t, N_HIST_BINS)))
    return column


def divergence(stats: pd.DataFrame, replicas: int) -> tuple[list[str], list[int | None]]:
    """A replica diverged at the first step with a NaN/Inf gradient element, norm or loss."""
    bad = (
        (stats["grad_n_nan"] > 0)
        | (stats["grad_n_inf"] > 0)
        | ~np.isfinite(stats["grad_norm"])
        | ~np.isfinite(stats["loss"])
    )
    first = stats.loc[bad].groupby("replica")["step"].min()
    diverged = [int(first[r]) if r in first.index else None for r in range(replicas)]
    return ["ok" if d is None else "diverged" for d in diverged], diverged
