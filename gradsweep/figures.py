"""Seaborn figures of a sweep, chosen from the axes actually swept.

Every figure function takes tidy frames (from `gradsweep.summary.scan` and the
helpers here) and returns a matplotlib Figure, or None when the sweep holds
nothing for it to show (no BatchNorm axis, no training steps, one device).
Bands span seeds and replicas: the line is the median, the band min to max.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import seaborn as sns  # noqa: E402

from gradsweep.bins import (
    HIST_LOG10_STEP,
    HIST_OVERFLOW,
    HIST_REGULAR_EDGES,
    HIST_UNDERFLOW,
    HIST_ZERO,
    N_HIST_BINS,
)  # noqa: E402
from gradsweep.schema import AXIS_PRIORITY, CONFIG_COLUMNS  # noqa: E402
from gradsweep.store import RunSet  # noqa: E402

BAND = ("pi", 100)


def swept_axes(config: pd.DataFrame) -> list[str]:
    """Configuration columns with more than one value, most telling first."""
    return [c for c in AXIS_PRIORITY if c in config and config[c].nunique(dropna=False) > 1]


def _label(frame: pd.DataFrame) -> pd.DataFrame:
    """Configuration values as readable strings (clip null -> 'off') for hue and facets."""
    out = frame.copy()
    if "clip" in out:
        out["clip"] = out["clip"].map(lambda v: "off" if pd.isna(v) else f"{v:g}")
    return out


def _facets(swept: list[str], used: tuple[str, ...]) -> tuple[str | None, str | None]:
    rest = [a for a in swept if a not in used]
    return (rest[0] if rest else None), (rest[1] if len(rest) > 1 else None)


def layer_profile(init: pd.DataFrame, swept: list[str]) -> plt.Figure:
    """(a) Gradient norm per layer at step 0, log scale, hue = activation; solid weight, dashed dL/dz."""
    col, row = _facets(swept, ("act",))
    grid = sns.relplot(
        data=_label(init),
        x="layer",
        y="grad_norm",
        hue="act",
        style="tensor",
        col=col,
        row=row,
        kind="line",
        errorbar=BAND,
        estimator="median",
        markers=True,
        dashes={"weight": "", "preact": (4, 2)},
        height=3.2,
        aspect=1.3,
        facet_kws={"sharex": False},
    )
    grid.set(yscale="log")
    grid.set_axis_labels("Linear layer (0 = input side)", "gradient L2 norm at step 0")
    _note_all_zero(grid.figure, init, swept)
    return grid.figure


def _note_all_zero(fig: plt.Figure, init: pd.DataFrame, swept: list[str]) -> None:
    """Name the configurations a log axis cannot show: every gradient exactly zero (e.g. a dead output ReLU)."""
    keys = [a for a in swept if a in init] or ["run_key"]
    dead = init.groupby(keys)["grad_norm"].max().loc[lambda m: m == 0]
    if dead.empty:
        return
    names = ", ".join(
        " ".join(f"{k}={v}" for k, v in zip(keys, np.atleast_1d(idx))) for idx in dead.index
    )
    fig.text(
        0.01,
        -0.02,
        f"not drawn, every gradient exactly 0 at step 0: {names}",
        ha="left",
        va="top",
        fontsize=9,
        color="dimgray",
        wrap=True,
    )


def ratio_heatmap(summary: pd.DataFrame, swept: list[str]) -> plt.Figure | None:
    """(b) Median input/output norm ratio (weight and dL/dz) over the first two swept axes, annotated."""
    if len(swept) < 2:
        return None
    y, x = swept[0], swept[1]
    frame = _label(summary)
    fig, axes = plt.subplots(
        1, 2, figsize=(11, 0.6 * frame[y].nunique() + 2.2), constrained_layout=True
    )
    for ax, column in zip(axes, ("weight_ratio", "preact_ratio")):
        grid = frame.groupby([y, x])[column].median().unstack(x)
        logs = np.log10(grid.where(grid > 0))
        sns.heatmap(
            logs,
            ax=ax,
            annot=grid.map(lambda v: f"{v:.1e}"),
            fmt="",
            cmap="vlag",
            center=0,
            cbar_kws={"label": "log10(ratio)"},
        )
        for i, j in zip(*np.nonzero(~np.isfinite(logs.to_numpy()))):
            text = "all zero" if grid.iat[i, j] != grid.iat[i, j] else "n/a"
            ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=9, color="dimgray")
        ax.set_title(
            f"{column.replace('_', ' ')}: layer 0 / layer depth-1 at step 0\n(<1 vanishing, >1 exploding)"
        )
    return fig


def clipping(totals: pd.DataFrame) -> plt.Figure | None:
    """(c) Total gradient norm before and after clipping, and loss curves with and without clipping."""
    frame = _label(totals)
    if frame["clip"].nunique() < 2 and (frame["clip"] == "off").all():
        return None
    long = frame.melt(
        id_vars=["step", "clip", "act"],
        value_vars=["total_grad_norm", "total_grad_norm_clipped"],
        var_name="norm",
        value_name="value",
    )
    long["norm"] = long["norm"].map(
        {"total_grad_norm": "before clip", "total_grad_norm_clipped": "after clip"}
    )
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
    sns.lineplot(
        data=long,
        x="step",
        y="value",
        hue="clip",
        style="norm",
        errorbar=None,
        estimator="median",
        marker="o",
        ax=left,
    )
    left.set(
        yscale="log",
        xlabel="optimizer step",
        ylabel="total gradient L2 norm",
        title="before vs after clipping",
    )
    sns.lineplot(
        data=frame,
        x="step",
        y="loss",
        hue="clip",
        style="act",
        errorbar=None,
        estimator="median",
        marker="o",
        ax=right,
    )
    right.set(
        xlabel="optimizer step",
        ylabel="loss (median over runs)",
        title="loss with and without clipping",
    )
    left.set_ylabel("total gradient L2 norm (median over runs)")
    return fig


def batchnorm(init: pd.DataFrame, swept: list[str]) -> plt.Figure | None:
    """(d) Weight-gradient norm per layer with and without BatchNorm, one panel per activation."""
    if "batchnorm" not in swept:
        return None
    frame = init[init["tensor"] == "weight"]
    row = "depth" if "depth" in swept else None
    grid = sns.relplot(
        data=frame,
        x="layer",
        y="grad_norm",
        hue="batchnorm",
        col="act",
        row=row,
        kind="line",
        errorbar=BAND,
        estimator="median",
        marker="o",
        height=3.2,
        aspect=1.2,
        facet_kws={"sharex": False},
    )
    grid.set(yscale="log")
    grid.set_axis_labels("Linear layer (0 = input side)", "weight-gradient L2 norm at step 0")
    return grid.figure


def histogram_counts(runs: RunSet) -> pd.DataFrame:
    """Step-0 weight-gradient histograms summed per activation: columns act, bin, count."""
    table = runs.table(
        columns=["run_key", "grad_hist"],
        filter=(ds.field("step") == 0) & (ds.field("tensor") == "weight"),
    )
    counts = table["grad_hist"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    counts = counts.reshape(-1, N_HIST_BINS)
    act = table["run_key"].to_pandas().astype(str).map(runs.runs.set_index("run_key")["act"])
    summed = pd.DataFrame(counts).groupby(act.to_numpy()).sum()
    long = (
        summed.rename_axis("act")
        .reset_index()
        .melt(id_vars="act", var_name="bin", value_name="count")
    )
    return long.astype({"bin": int})


def histograms(counts: pd.DataFrame) -> plt.Figure:
    """(e) log10|g| histograms of step-0 weight gradients per activation, from the mergeable bins."""
    centers = HIST_REGULAR_EDGES[:-1] + HIST_LOG10_STEP / 2
    frame = counts.copy()
    frame["fraction"] = frame["count"] / frame.groupby("act")["count"].transform("sum")
    regular = frame[(frame["bin"] > HIST_UNDERFLOW) & (frame["bin"] < HIST_OVERFLOW)].copy()
    regular["log10|g|"] = centers[regular["bin"] - HIST_UNDERFLOW - 1]
    zero = frame[frame["bin"] == HIST_ZERO].set_index("act")["fraction"]
    under = frame[frame["bin"] == HIST_UNDERFLOW].set_index("act")["fraction"]
    regular["activation"] = regular["act"].map(
        lambda a: f"{a} (exact zeros {zero[a]:.1%}, below 2^-40 {under[a]:.1%})"
    )
    fig, ax = plt.subplots(figsize=(9, 4), constrained_layout=True)
    sns.lineplot(
        data=regular, x="log10|g|", y="fraction", hue="activation", drawstyle="steps-mid", ax=ax
    )
    ax.set(
        xlabel="log10 |weight gradient| at step 0",
        ylabel="fraction of elements per binade",
        title="gradient magnitudes, all runs of each activation merged",
    )
    return fig


def layer_steps(runs: RunSet) -> pd.DataFrame:
    """Weight-gradient norm of every layer at every logged step, with the configuration."""
    frame = runs.frame(
        columns=["run_key", "replica", "step", "layer", "grad_norm"],
        filter=ds.field("tensor") == "weight",
    )
    frame["run_key"] = frame["run_key"].astype(str)
    return runs.runs.drop(columns="path").merge(frame, on="run_key")


def over_steps(frame: pd.DataFrame, swept: list[str]) -> plt.Figure | None:
    """(f) Weight-gradient norm over training steps of the input-side, middle and output-side layers.

    Three layers per run keep the panels readable at any depth; hue is the layer's
    position, columns and rows the first swept axes, line style the next one.
    """
    if frame["step"].nunique() < 2:
        return None
    depth = frame["depth"].astype(int)
    position = pd.Series(pd.NA, index=frame.index, dtype="object")
    position[frame["layer"] == 0] = "input side (layer 0)"
    position[(frame["layer"] == depth // 2) & (depth > 2)] = "middle (layer depth//2)"
    position[frame["layer"] == depth - 1] = "output side (layer depth-1)"
    shown = _label(frame.assign(position=position).dropna(subset=["position"]))
    col, row = ("act" if "act" in swept else None), _facets(swept, ("act",))[0]
    style = _facets(swept, ("act", row or ""))[0]
    grid = sns.relplot(
        data=shown,
        x="step",
        y="grad_norm",
        hue="position",
        style=style,
        col=col,
        row=row,
        kind="line",
        errorbar=("pi", 50),
        estimator="median",
        height=3.2,
        aspect=1.3,
        hue_order=[
            "input side (layer 0)",
            "middle (layer depth//2)",
            "output side (layer depth-1)",
        ],
    )
    grid.set(yscale="log")
    grid.set_axis_labels("optimizer step", "weight-gradient L2 norm")
    grid.figure.suptitle("median over replicas, band = interquartile range", y=1.01, fontsize=10)
    return grid.figure


def devices(init: pd.DataFrame) -> plt.Figure | None:
    """(g) The same configurations measured on CPU and on CUDA: norms against each other, log-log."""
    if not {"cpu", "cuda"} <= set(init["device"]):
        return None
    keys = [c for c in CONFIG_COLUMNS if c != "device"] + ["seed", "layer", "tensor"]
    frame = _label(init).fillna({"clip": "off"})
    pair = frame[frame["device"] == "cpu"].merge(
        frame[frame["device"] == "cuda"], on=keys, suffixes=("_cpu", "_cuda")
    )
    if pair.empty:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 5), constrained_layout=True)
    sns.scatterplot(
        data=pair, x="grad_norm_cpu", y="grad_norm_cuda", hue="act", style="tensor", ax=ax
    )
    low, high = pair[["grad_norm_cpu", "grad_norm_cuda"]].stack().agg(["min", "max"])
    ax.plot([low, high], [low, high], color="grey", lw=1, zorder=0)
    rel = (pair["grad_norm_cuda"] / pair["grad_norm_cpu"] - 1).abs().max()
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="gradient L2 norm on CPU",
        ylabel="gradient L2 norm on CUDA",
        title=f"CPU vs CUDA at step 0 (max relative difference {rel:.1e})",
    )
    return fig
