"""The report's section on `gradsweep.Recorder` files: figures over the module order, a summary.

A user's model has no MLP configuration, so its figures take the recorded
modules in their order (`layer`, the order of `model.named_modules()`) as the
layer axis and tell recordings apart by the name each was given. Figures that
need the MLP's configuration or a theory prediction are listed as not
applicable (`NOT_APPLICABLE`), never drawn empty.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import seaborn as sns  # noqa: E402
import yaml  # noqa: E402

from gradsweep.bins import (  # noqa: E402
    HIST_LOG10_STEP,
    HIST_OVERFLOW,
    HIST_REGULAR_EDGES,
    HIST_UNDERFLOW,
    HIST_ZERO,
    N_HIST_BINS,
)
from gradsweep.drawn import Pooling, record  # noqa: E402
from gradsweep.schema import OUTPUT_TENSOR  # noqa: E402
from gradsweep.store import RunSet, read_metadata  # noqa: E402

CAPTIONS = {
    "module_profile": "(m1) Gradient L2 norm per recorded module at the first logged step, in "
    "module order (model.named_modules()). Solid: the module's parameter gradients together "
    "(L2 over all of them); dashed: dL/d(module output), for watched modules.",
    "module_steps": "(m2) Parameter-gradient L2 norm of each recorded module over the logged "
    "steps, one panel per recording; colour is the module's order.",
    "loss_total": "(m3) Loss and total parameter-gradient L2 norm over the logged steps.",
    "module_histograms": "(m4) Distribution of log10|g| of all parameter-gradient elements at "
    "the first logged step with a histogram, from the fixed bins; each panel gives the fraction "
    "of exact zeros and of magnitudes below 2^-40, which the axis does not show.",
}
SKIPPED = {"module_steps": "one logged step only"}
NOT_APPLICABLE = (
    "The sweep figures (a) to (g) and the theory figures need gradsweep's MLP configuration "
    "(activation, depth, init, BatchNorm, clipping) or a mean-field prediction; a recorded model "
    "has neither, so they are not drawn for recordings. The module order stands in for the "
    "layer axis above."
)
ONE_EACH = Pooling("lines", "one recording each")
SUMMARY_COLUMNS: dict[str, str] = {
    "recording": "the name given to the Recorder (its output dir's name by default)",
    "model": "the model's class name",
    "modules": "modules recorded (with parameters or a watched output)",
    "logged_steps": "steps measured",
    "final_step": "last logged step",
    "final_loss": "loss at the last logged step",
    "max_grad_norm": "largest L2 norm of any parameter gradient, any module, any logged step",
    "max_total_norm": "largest total parameter-gradient L2 norm over the logged steps",
    "diverged": "true when any NaN/Inf appeared in a gradient, a norm or the loss",
    "diverged_step": "first step with a non-finite value; empty when not diverged",
}


def recordings(runs: RunSet) -> pd.DataFrame:
    """One row per Recorder file: run_key, the recording's name (unique) and model class."""
    rows = []
    for key, path in zip(runs.runs["run_key"], runs.runs["path"]):
        footer = yaml.safe_load(read_metadata(path)["config"])
        rows.append({"run_key": key, "recording": str(footer["name"]), "model": footer["model"]})
    frame = pd.DataFrame(rows, columns=["run_key", "recording", "model"])
    repeated = frame["recording"].duplicated(keep=False)
    frame.loc[repeated, "recording"] += " (" + frame.loc[repeated, "run_key"].str[:6] + ")"
    return frame


def module_rows(runs: RunSet) -> pd.DataFrame:
    """Per recording, step, module and kind (parameters or output): the L2 norm over the kind's
    tensors, the largest single tensor's norm, the loss, the total norm and divergence."""
    frame = runs.frame(
        columns=["run_key", "step", "layer", "module", "tensor", "grad_norm", "loss"]
        + ["total_grad_norm", "status", "diverged_step"]
    )
    frame["tensor"] = frame["tensor"].astype(str)
    frame["module"] = frame["module"].astype(str)
    is_output = frame["tensor"] == OUTPUT_TENSOR
    frame["kind"] = np.where(is_output, "dL/d(output)", "parameters")
    frame["square"] = frame["grad_norm"] ** 2
    frame["diverged"] = frame["status"].astype(str) == "diverged"
    keys = ["run_key", "step", "layer", "module", "kind"]
    grouped = frame.groupby(keys, observed=True, sort=True)
    rows = grouped.agg(
        square=("square", "sum"),
        largest=("grad_norm", "max"),
        loss=("loss", "first"),
        total_grad_norm=("total_grad_norm", "first"),
        diverged=("diverged", "any"),
        diverged_step=("diverged_step", "first"),
    ).reset_index()
    rows["grad_norm"] = np.sqrt(rows.pop("square"))
    return recordings(runs).merge(rows, on="run_key")


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per recording (columns as in SUMMARY_COLUMNS)."""
    out = []
    for (recording, model), part in rows.groupby(["recording", "model"], sort=True):
        params = part[part["kind"] == "parameters"]
        last = part[part["step"] == part["step"].max()]
        out.append(
            {
                "recording": recording,
                "model": model,
                "modules": part["module"].nunique(),
                "logged_steps": part["step"].nunique(),
                "final_step": int(last["step"].iloc[0]),
                "final_loss": float(last["loss"].iloc[0]),
                "max_grad_norm": float(params["largest"].max()),
                "max_total_norm": float(part["total_grad_norm"].max()),
                "diverged": bool(part["diverged"].any()),
                "diverged_step": part["diverged_step"].iloc[0],
            }
        )
    return pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))


def _drawn(fig: plt.Figure, data: pd.DataFrame) -> plt.Figure:
    """Keep what `fig` drew: one recording per line, no seeds pooled."""
    return record(fig, data.assign(seeds=1, configs=1), ONE_EACH)


def _module_ticks(ax: plt.Axes, part: pd.DataFrame) -> None:
    """`order: name` on the x axis when every recording has the same modules, else the order."""
    names = part.groupby("layer")["module"].agg(lambda m: m.unique().tolist())
    if (names.map(len) == 1).all() and len(names) <= 40:
        labels = [f"{order}: {n[0] or '(root)'}" for order, n in names.items()]
        ax.set_xticks(names.index, labels, rotation=60, ha="right")
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)


def module_profile(rows: pd.DataFrame) -> list[plt.Figure]:
    """(m1) Per-module gradient norm at each recording's first logged step, log scale."""
    first = rows[rows["step"] == rows.groupby("run_key")["step"].transform("min")]
    first = first[first["grad_norm"] > 0]
    if first.empty:
        return []
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * first["layer"].nunique() + 3), 4.0))
    sns.lineplot(
        data=first,
        x="layer",
        y="grad_norm",
        hue="recording",
        style="kind",
        style_order=["parameters", "dL/d(output)"],
        markers=True,
        estimator=None,
        ax=ax,
    )
    ax.set_yscale("log")
    ax.set_xlabel("recorded module, in model.named_modules() order")
    ax.set_ylabel("gradient L2 norm at the first logged step")
    _module_ticks(ax, first)
    return [_drawn(fig, first)]


def module_steps(rows: pd.DataFrame) -> list[plt.Figure]:
    """(m2) Parameter-gradient norm of every module over steps, a panel per recording."""
    params = rows[(rows["kind"] == "parameters") & (rows["grad_norm"] > 0)]
    if params["step"].nunique() < 2:
        return []
    grid = sns.relplot(
        data=params,
        x="step",
        y="grad_norm",
        hue="layer",
        col="recording",
        col_wrap=min(3, params["recording"].nunique()),
        kind="line",
        palette="viridis",
        estimator=None,
        height=3.0,
        aspect=1.3,
    )
    grid.set(yscale="log")
    grid.set_axis_labels("step", "parameter-gradient L2 norm")
    grid.legend.set_title("module order")
    return [_drawn(grid.figure, params)]


def loss_total(rows: pd.DataFrame) -> list[plt.Figure]:
    """(m3) Loss and total gradient norm of each recording over the logged steps."""
    steps = rows.groupby(["recording", "step"], as_index=False)[["loss", "total_grad_norm"]].first()
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.5))
    for ax, column, label in zip(
        axes, ["loss", "total_grad_norm"], ["loss", "total parameter-gradient L2 norm"]
    ):
        sns.lineplot(data=steps, x="step", y=column, hue="recording", marker="o", ax=ax)
        ax.set_ylabel(label)
    axes[1].set_yscale("log")
    return [_drawn(fig, steps)]


def histogram_counts(runs: RunSet) -> pd.DataFrame:
    """Per recording: parameter-gradient histogram counts of its first step with a histogram."""
    has_hist = (ds.field("tensor") != OUTPUT_TENSOR) & ds.field("grad_hist").is_valid()
    steps = runs.frame(columns=["run_key", "step"], filter=has_hist)
    if steps.empty:
        return pd.DataFrame(columns=["run_key", "bin", "count"])
    steps["run_key"] = steps["run_key"].astype(str)
    first = steps.groupby("run_key")["step"].min()
    table = runs.table(
        columns=["run_key", "step", "grad_hist"],
        filter=has_hist & ds.field("step").isin(sorted(set(first))),
    )
    ids = table.select(["run_key", "step"]).to_pandas()
    ids["run_key"] = ids["run_key"].astype(str)
    keep = (ids["step"] == ids["run_key"].map(first)).to_numpy()
    counts = table["grad_hist"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    counts = pd.DataFrame(counts.reshape(-1, N_HIST_BINS)[keep])
    summed = counts.groupby(ids.loc[keep, "run_key"].to_numpy()).sum()
    long = summed.rename_axis("run_key").stack().rename("count").rename_axis(["run_key", "bin"])
    return long.reset_index().astype({"bin": int})


def module_histograms(counts: pd.DataFrame, names: pd.DataFrame) -> list[plt.Figure]:
    """(m4) log10|g| of all parameter-gradient elements per recording, from the fixed bins."""
    if counts.empty:
        return []
    frame = names.merge(counts, on="run_key")
    frame["fraction"] = frame["count"] / frame.groupby("run_key")["count"].transform("sum")
    regular = frame[(frame["bin"] > HIST_UNDERFLOW) & (frame["bin"] < HIST_OVERFLOW)]
    centers = HIST_REGULAR_EDGES[:-1] + HIST_LOG10_STEP / 2
    regular = regular.assign(log10_g=centers[regular["bin"] - HIST_UNDERFLOW - 1])
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    sns.lineplot(
        data=regular,
        x="log10_g",
        y="fraction",
        hue="recording",
        drawstyle="steps-mid",
        estimator=None,
        ax=ax,
    )
    ax.set_xlabel("log10 |parameter gradient|")
    ax.set_ylabel("fraction of elements per binade")
    notes = []
    for recording, part in frame.groupby("recording"):
        zero = part.loc[part["bin"] == HIST_ZERO, "fraction"].sum()
        tiny = part.loc[part["bin"] == HIST_UNDERFLOW, "fraction"].sum()
        notes.append(f"{recording}: exact zeros {zero:.1%}, below 2^-40 {tiny:.1%}")
    ax.text(0.02, 0.98, "\n".join(notes), transform=ax.transAxes, va="top", fontsize=7.5)
    return [_drawn(fig, frame)]
