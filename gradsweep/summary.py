"""Per-run summary metrics: one row per run and replica, from the few columns each metric needs.

A replica is one independently initialised network (seed = seed + replica), so
it is summarised on its own; the run key ties replicas of one run together.
Each metric reads only the rows it needs (pyarrow filters), and the one scan
that touches every parameter row is reduced inside Arrow before pandas sees it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from gradsweep.schema import ACTIVATION_TENSORS, COLUMNS_BY_NAME, CONFIG_COLUMNS
from gradsweep.store import RunSet

RUN_ID = ["run_key", "replica"]

SUMMARY_COLUMNS: dict[str, str] = {
    "run_key": "hash of the run's resolved configuration (one run may hold several replicas)",
    **{c: COLUMNS_BY_NAME[c].meaning for c in CONFIG_COLUMNS},
    "seed": "init seed of this replica (seed + replica)",
    "replica": "replica index within the run",
    "weight_ratio": "step 0: weight-gradient norm of layer 0 (input side) / of layer depth-1 "
    "(output side); < 1 vanishing, > 1 exploding; empty when both are 0",
    "preact_ratio": "step 0: the same ratio for dL/dz, the backpropagated gradient at each "
    "Linear output",
    "weight_gain": "per-layer geometric gain of the weight-gradient norm, "
    "weight_ratio ** (1 / (depth - 1)); empty at depth 1",
    "preact_gain": "per-layer geometric gain of dL/dz, preact_ratio ** (1 / (depth - 1)): "
    "the factor each layer multiplies the backward signal by",
    "max_grad_norm": "largest L2 norm of any parameter gradient (weight, bias, BatchNorm), "
    "any layer, any logged step, before clipping",
    "max_total_norm": "largest total gradient L2 norm over the logged steps, before clipping",
    "max_total_norm_clipped": "largest total gradient L2 norm over the logged steps, after "
    "clipping, recomputed as sqrt(sum grad_norm_clipped^2) (equal to max_total_norm when clip "
    "is off)",
    "frac_steps_clipped": "fraction of logged steps at which clipping reduced the total norm",
    "diverged": "true when any NaN/Inf appeared in a gradient, a norm or the loss",
    "diverged_step": "first step with a non-finite value; empty when not diverged",
    "final_step": "last logged step",
    "final_loss": "loss at the last logged step",
}


SCAN_COLUMNS = [*RUN_ID, "step", "layer", "tensor", "grad_norm", "grad_norm_clipped", "loss"]


def _reduce_chunk(chunk: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Per run, replica, step: loss, sums of squares, max norm, non-finite count; step-0 rows."""
    is_param = pc.invert(
        pc.is_in(chunk["tensor"].cast(pa.string()), pa.array(list(ACTIVATION_TENSORS)))
    )
    zero = pa.scalar(0.0)
    squares = {
        "sq": pc.if_else(is_param, pc.multiply(chunk["grad_norm"], chunk["grad_norm"]), zero),
        "sq_clipped": pc.if_else(
            is_param, pc.multiply(chunk["grad_norm_clipped"], chunk["grad_norm_clipped"]), zero
        ),
        "param_norm": pc.if_else(is_param, chunk["grad_norm"], None),
        "bad": pc.invert(
            pc.and_(pc.is_finite(chunk["grad_norm"]), pc.is_finite(chunk["loss"]))
        ).cast(pa.int64()),
    }
    work = chunk.select([*RUN_ID, "step", "loss"])
    for name, column in squares.items():
        work = work.append_column(name, column)
    steps = work.group_by([*RUN_ID, "step"]).aggregate(
        [
            ("loss", "max"),
            ("sq", "sum"),
            ("sq_clipped", "sum"),
            ("param_norm", "max"),
            ("bad", "sum"),
        ]
    )
    first = chunk.filter(
        pc.and_(
            pc.equal(chunk["step"], 0),
            pc.is_in(chunk["tensor"].cast(pa.string()), pa.array(["weight", "preact"])),
        )
    )
    return steps, first.select([*RUN_ID, "layer", "tensor", "grad_norm"])


def scan(runs: RunSet) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One pass over every run file: per-step totals and step-0 weight and preact norms, configured.

    Configuration comes from the file footers, and the total norms before and
    after clipping are recomputed from the per-tensor norms, so the scan decodes
    only eight columns.
    """
    parts = [_reduce_chunk(chunk) for chunk in runs.chunks(columns=SCAN_COLUMNS)]
    return _join_config(runs.runs.drop(columns="path"), parts)


def _join_config(
    config: pd.DataFrame, parts: list[tuple[pa.Table, pa.Table]]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`scan`'s two frames from reduced chunks and one configuration row per run."""
    totals = pa.concat_tables([p[0] for p in parts]).to_pandas()
    totals = totals.rename(columns={"loss_max": "loss", "param_norm_max": "max_grad_norm"})
    totals["total_grad_norm"] = np.sqrt(totals.pop("sq_sum"))
    totals["total_grad_norm_clipped"] = np.sqrt(totals.pop("sq_clipped_sum"))
    totals["nonfinite"] = totals.pop("bad_sum") > 0
    totals = config.merge(totals, on="run_key").sort_values([*RUN_ID, "step"], ignore_index=True)
    totals["seed"] += totals["replica"]
    init = pa.concat_tables([p[1] for p in parts]).to_pandas()
    init["tensor"] = init["tensor"].astype(str)
    init = config.merge(init, on="run_key")
    init["seed"] += init["replica"]
    return totals, init


def io_ratios(init_norms: pd.DataFrame) -> pd.DataFrame:
    """Per run and replica: input/output-side norm ratio and per-layer gain, weight and preact."""
    keyed = init_norms.set_index([*RUN_ID, "tensor", "layer"])["grad_norm"]
    depth = init_norms.groupby(RUN_ID)["depth"].first()
    first = keyed.xs(0, level="layer").unstack("tensor")
    last_rows = init_norms[init_norms["layer"] == init_norms["depth"] - 1]
    last = last_rows.set_index([*RUN_ID, "tensor"])["grad_norm"].unstack("tensor")
    out = pd.DataFrame(index=first.index)
    hops = (depth - 1).reindex(out.index).astype(float).where(lambda d: d > 0)
    for tensor in ("weight", "preact"):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = first[tensor] / last[tensor].reindex(first.index)
            out[f"{tensor}_ratio"] = ratio
            out[f"{tensor}_gain"] = np.power(ratio, 1.0 / hops)
    return out.reset_index()


def summarize(totals: pd.DataFrame, init_norms: pd.DataFrame) -> pd.DataFrame:
    """The per-run summary table (columns as in SUMMARY_COLUMNS) from `scan`'s two frames."""
    grouped = totals.groupby(RUN_ID, sort=True)
    last = grouped.tail(1).set_index(RUN_ID)
    by_run = [totals[c] for c in RUN_ID]
    clipped = totals["total_grad_norm_clipped"] < totals["total_grad_norm"] * (1 - 1e-9)
    first_bad = totals["step"].where(totals["nonfinite"]).groupby(by_run).min()
    metrics = pd.DataFrame(
        {
            "max_grad_norm": grouped["max_grad_norm"].max(),
            "max_total_norm": grouped["total_grad_norm"].max(),
            "max_total_norm_clipped": grouped["total_grad_norm_clipped"].max(),
            "frac_steps_clipped": clipped.groupby(by_run).mean(),
            "diverged": first_bad.notna(),
            "diverged_step": first_bad.astype("Int64"),
            "final_step": last["step"],
            "final_loss": last["loss"],
        }
    )
    config = last[["seed", *CONFIG_COLUMNS]]
    table = config.join(io_ratios(init_norms).set_index(RUN_ID)).join(metrics).reset_index()
    return table[list(SUMMARY_COLUMNS)]


METRIC_COLUMNS: tuple[str, ...] = tuple(
    c for c in SUMMARY_COLUMNS if c not in ("run_key", *CONFIG_COLUMNS, "seed")
)


def footer_metrics(frames: Sequence[pd.DataFrame]) -> list[str]:
    """Each run's per-replica summary metrics as JSON, for its file footer; one frame per run.

    Computed by the same code as `summarize`, from the rows in memory at write
    time, so a summary of 10,000 runs reads footers and decodes no data. The
    runs of a replica group go through `summarize` together, in one pass.
    """
    config = pd.DataFrame(
        [
            {
                "run_key": f["run_key"].iloc[0],
                **{c: f[c].iloc[0] for c in CONFIG_COLUMNS},
                "seed": int(f["seed"].min()),
            }
            for f in frames
        ]
    )
    table = pa.Table.from_pandas(
        pd.concat([f[SCAN_COLUMNS] for f in frames], ignore_index=True), preserve_index=False
    )
    metrics = summarize(*_join_config(config, [_reduce_chunk(table)]))
    by_run = dict(tuple(metrics.groupby("run_key", sort=False)[list(METRIC_COLUMNS)]))
    return [
        json.dumps(
            by_run[key].astype(object).where(by_run[key].notna(), None).to_dict(orient="records"),
            default=lambda value: value.item(),
        )  # every digit: to_json keeps 10 decimals, 1e-11 -> 0
        for key in config["run_key"]
    ]


def run_metrics(frame: pd.DataFrame) -> str:
    """One run's footer metrics (`footer_metrics` of that run alone)."""
    return footer_metrics([frame])[0]


def _from_footers(runs: RunSet) -> pd.DataFrame:
    """The summary table from the metrics every run file carries in its footer."""
    rows = [
        {"run_key": key, **metrics}
        for key, path in zip(runs.runs["run_key"], runs.runs["path"])
        for metrics in json.loads(runs.footer_summaries[path])
    ]
    metrics = pd.DataFrame(rows, columns=["run_key", *METRIC_COLUMNS])
    config = runs.runs.drop(columns="path")
    table = config.merge(metrics, on="run_key")
    table["seed"] += table["replica"]
    table["diverged"] = table["diverged"].astype(bool)
    table["diverged_step"] = table["diverged_step"].astype("Int64")
    return table[list(SUMMARY_COLUMNS)].sort_values(RUN_ID, ignore_index=True)


def summary_table(runs: RunSet) -> pd.DataFrame:
    """The summary table of every usable run in `runs`; from the footers when all have them."""
    if len(runs.runs) and all(runs.footer_summaries.get(p) for p in runs.runs["path"]):
        return _from_footers(runs)
    return summarize(*scan(runs))
