"""A run's tidy rows: one per replica x logged step x tensor, built from the packed host copies.

Each logged step's packed vector is unpacked by its `PackedLayout` into
statistics, histograms and the run loop's per-replica tail (loss, clip
factor); the rows add the run's configuration, derived norms and moments, the
mean-field predictions and each replica's divergence status.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from gradsweep.bins import N_HIST_BINS
from gradsweep.predictions import prediction_columns
from gradsweep.probe.layout import PackedLayout, S
from gradsweep.schema import (
    COLUMNS,
    CONFIG_KEYS,
    RECORDER_SOURCE,
    STRING,
    STRING_COLUMNS,
    SWEEP_SOURCE,
    names,
)

OUTCOMES: tuple[str, ...] = ("ok", "diverged")  # the `status` categories, in their order
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

    `inits` is each replica's (seed, init_scale); `key` the run key. Columns are built whole,
    as arrays in file order, so that the frame is neither reordered nor copied afterwards.
    """
    columns = statistic_columns(records, layout)
    replica = columns["replica"]
    seeds, scales = (np.array(column) for column in zip(*inits))
    status, diverged = divergence(columns, layout.replicas)
    columns.update(configuration_columns(values, key, len(replica)))
    columns["init_scale"] = scales.astype(np.float64)[replica]
    columns["seed"] = seeds[replica]
    columns.update(prediction_columns(columns, values, scales))
    columns.update(outcome_columns(replica, status, diverged))
    return pd.DataFrame({name: columns[name] for name in names()}), status, diverged


def configuration_columns(values: Mapping[str, Any], key: str, n_rows: int) -> dict[str, Any]:
    """The run key, source and configuration columns of a sweep run's `n_rows` rows.

    `init_scale` and `seed`, one value per replica, are left to the caller.
    """
    codes = np.zeros(n_rows, dtype=np.int64)
    given = {name: values[item] for name, item in CONFIG_KEYS.items()}
    given.update(run_key=key, source=SWEEP_SOURCE)
    columns: dict[str, Any] = {
        name: string_column([value], codes) if name in STRING_COLUMNS else np.full(n_rows, value)
        for name, value in given.items()
    }
    clip = values["clip"]
    columns["clip"] = pd.arrays.FloatingArray(
        np.full(n_rows, clip or 0.0), np.full(n_rows, clip is None)
    )
    columns["module"] = string_column([None], codes)
    return columns


def string_column(labels: Sequence[str | None], codes: np.ndarray) -> Any:
    """`labels[codes]` as the frame's string column, built in arrow with no Python object a row."""
    return pa.array(labels, STRING).take(codes).to_pandas().array


def outcome_columns(
    replica: np.ndarray, status: Sequence[str], diverged: Sequence[int | None]
) -> dict[str, Any]:
    """Each row's `status` and `diverged_step`: its replica's."""
    codes = np.array([OUTCOMES.index(s) for s in status], dtype=np.int8)
    steps = np.array([-1 if d is None else d for d in diverged], dtype=np.int64)
    return {
        "status": pd.Categorical.from_codes(codes[replica], categories=list(OUTCOMES)),
        "diverged_step": pd.arrays.IntegerArray(steps[replica], steps[replica] < 0),
    }


def statistic_columns(records: Sequence[Record], layout: PackedLayout) -> dict[str, Any]:
    """The index and statistic columns of the rows (replica x logged step x tensor) of `records`.

    Sweeps and `gradsweep.Recorder` both derive their rows here from the probe's packed steps.
    """
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
    tensors = sorted({s.tensor for s in specs})
    tensor_codes = np.array([tensors.index(s.tensor) for s in specs])
    return {
        "replica": np.broadcast_to(np.arange(k)[None, :, None], shape).reshape(-1),
        "step": np.broadcast_to(steps[:, None, None], shape).reshape(-1),
        "layer": np.broadcast_to(np.array([s.layer for s in specs]), shape).reshape(-1),
        "tensor": string_column(tensors, np.broadcast_to(tensor_codes, shape).reshape(-1)),
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
        "param_norm": np.sqrt(np.where(np.broadcast_to(is_param, shape), param_sq, np.nan)).reshape(
            -1
        ),
        "param_std": np.where(is_param_b, param_std, np.nan),
        "loss": np.broadcast_to(loss[:, :, None], shape).reshape(-1),
        "total_grad_norm": np.broadcast_to(total[:, :, None], shape).reshape(-1),
        "grad_hist": _hist_column([step.hist for step in unpacked], k, n_t),
    }


def _hist_column(hists: list[np.ndarray | None], k: int, n_t: int) -> list:
    """One list of N_HIST_BINS counts per row, None on logged steps without a histogram."""
    column: list = []
    for hist in hists:
        if hist is None:
            column.extend([None] * (k * n_t))
        else:
            column.extend(list(hist.reshape(k * n_t, N_HIST_BINS)))
    return column


def divergence(stats: Mapping[str, Any], replicas: int) -> tuple[list[str], list[int | None]]:
    """A replica diverged at the first step with a NaN/Inf gradient element, norm or loss.

    `stats` holds the rows' columns (a frame, or the arrays `statistic_columns` gives).
    """
    column = lambda name, dtype: np.asarray(stats[name], dtype=dtype)  # noqa: E731
    bad = (
        (column("grad_n_nan", np.int64) > 0)
        | (column("grad_n_inf", np.int64) > 0)
        | ~np.isfinite(column("grad_norm", np.float64))
        | ~np.isfinite(column("loss", np.float64))
    )
    never = np.iinfo(np.int64).max
    first = np.full(replicas, never)
    np.minimum.at(first, column("replica", np.int64)[bad], column("step", np.int64)[bad])
    diverged = [None if f == never else int(f) for f in first]
    return [OUTCOMES[d is not None] for d in diverged], diverged


LOSS: tuple[str, ...] = ("loss",)  # the tail a Recorder appends to the probe's packed step


@dataclass(frozen=True)
class RecordedStep:
    """One step a Recorder measured: its packed host copy, the layout (tail `LOSS`) it follows
    and the qualified module name of each of the layout's tensors."""

    step: int
    with_hist: bool
    host: np.ndarray
    layout: PackedLayout
    modules: tuple[str, ...]


_NULLS = {"int64": "Int64", "double": "Float64", "bool": "boolean", "large_string": "str"}


def recorder_rows(
    steps: Sequence[RecordedStep], footer: Mapping[str, Any]
) -> tuple[pd.DataFrame, str]:
    """A Recorder's rows (one replica) in the run file's columns, and its footer summary JSON.

    Statistics come from `statistic_columns`, as a sweep's do; of the configuration columns
    only `device` and `dtype` hold values (the footer's), the others and the predictions are null.
    """
    parts = []
    for (layout, modules), group in groupby(steps, key=lambda s: (s.layout, s.modules)):
        records = [(s.step, s.with_hist, s.host) for s in group]
        columns = statistic_columns(records, layout)
        hist = columns.pop("grad_hist")
        part = pd.DataFrame(columns)
        part["module"] = np.tile(np.array(modules, dtype=object), len(records))
        part["grad_hist"] = hist
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    n_rows = len(frame)
    given = {"run_key": footer["run_key"], "source": RECORDER_SOURCE, "seed": footer["seed"]}
    given.update({c: footer[CONFIG_KEYS[c]] for c in ("device", "dtype")})
    for column in COLUMNS:
        if column.name in frame:
            continue
        dtype = _NULLS.get(str(column.type))
        value = given.get(column.name)
        frame[column.name] = pd.array(np.full(n_rows, value, dtype=object), dtype=dtype)
    frame["module"] = frame["module"].astype("str")
    status, diverged = divergence(frame, 1)
    for name, column in outcome_columns(np.zeros(n_rows, dtype=np.int64), status, diverged).items():
        frame[name] = column
    return frame[list(names())], recorder_summary(frame, status[0], diverged[0])


def recorder_summary(frame: pd.DataFrame, status: str, diverged_step: int | None) -> str:
    """A Recorder file's footer summary: one JSON record (its one replica) of RECORDER_SUMMARY."""
    params = frame[frame["param_norm"].notna()]
    last = frame[frame["step"] == frame["step"].max()]
    record = {
        "final_step": int(last["step"].iloc[0]),
        "final_loss": float(last["loss"].iloc[0]),
        "max_grad_norm": float(params["grad_norm"].max()) if len(params) else None,
        "max_total_norm": float(frame["total_grad_norm"].max()),
        "diverged": status == "diverged",
        "diverged_step": diverged_step,
    }
    cleaned = {
        k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in record.items()
    }
    return json.dumps([cleaned])
