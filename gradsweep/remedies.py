"""Which remedy keeps the gradient level: dL/dz per layer of plain, normalised and residual nets.

One figure, drawn when a sweep holds at least two remedies (plain, BatchNorm,
LayerNorm, residual, residual + norm) at one depth and otherwise alike: each
remedy's |dL/dz_l| at step 0 relative to its own output layer's, one line per
remedy (median over seeds, band min to max), its prediction dashed where the
run files carry one. Only the seeds of one configuration are pooled.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from gradsweep import facets  # noqa: E402
from gradsweep.drawn import Pooling, pool, record  # noqa: E402
from gradsweep.labels import axis_value  # noqa: E402
from gradsweep.theory_figures import RUN_AXES, display_prediction  # noqa: E402

# The configuration columns that make a remedy; every other swept axis is a panel or a page.
REMEDY_AXES = ("norm", "batchnorm", "residual", "norm_position", "branch_scale")
NORM_NAMES = {"none": "plain", "batch": "BatchNorm", "layer": "LayerNorm"}
UNSCALED = "1.0"
WRAP = 3
CAPTION = (
    "(t6) Which remedy keeps the gradient norm level across the layers: |dL/dz_l| at step 0 "
    "relative to the output layer's, one line per remedy (plain, BatchNorm, LayerNorm, residual, "
    "residual + norm) of otherwise equal networks; dashed: the prediction the run files carry "
    "(none where theory has no closed form). A level line at 1 keeps the gradient; below 1 it "
    "vanishes toward the input, above 1 it explodes."
)
SKIPPED = (
    "fewer than two remedies (plain, BatchNorm, LayerNorm, residual, residual + norm) at one depth"
)


def remedy_name(norm: str, residual: bool, position: str, branch_scale: str) -> str:
    """A remedy as a reader names it: `plain`, `LayerNorm`, `residual + LayerNorm (post)`."""
    if not residual:
        return NORM_NAMES[norm]
    name = "residual" if norm == "none" else f"residual + {NORM_NAMES[norm]} ({position})"
    return (
        name if branch_scale == UNSCALED else f"{name}, {axis_value('branch_scale', branch_scale)}"
    )


def _order(norm: str, residual: bool, position: str, branch_scale: str) -> tuple:
    """Plain first, then the norms alone, then residual nets: unscaled, then by position."""
    return (bool(residual), list(NORM_NAMES).index(norm), branch_scale != UNSCALED, position)


def with_remedy(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with a `remedy` column: its remedy's name, as categories in reading order."""
    keys = list(
        zip(
            frame["norm"],
            frame["residual"].astype(bool),
            frame["norm_position"],
            frame["branch_scale"].astype(str),
        )
    )
    names = [remedy_name(*k) for k in keys]
    order = [remedy_name(*k) for k in sorted(set(keys), key=lambda k: (_order(*k), k))]
    return frame.assign(remedy=pd.Categorical(names, categories=order, ordered=True))


def relative_norms(pre: pd.DataFrame) -> pd.DataFrame:
    """Step-0 dL/dz rows with `relative` (measured) and `predicted`, both over the output layer's.

    Each replica is divided by its own measured |dL/dz_{L-1}|; the prediction is the one the
    report overlays (`display_prediction`), null where the run file has no predicted factor
    (its output layer's norm is the measurement it is anchored at, not a prediction).
    """
    ids = ["run_key", "replica"]
    output = pre[pre["layer"] == pre["depth"] - 1].set_index(ids)["grad_norm"]
    anchor = output.reindex(pd.MultiIndex.from_frame(pre[ids])).to_numpy()
    predicted = np.full(len(pre), np.nan)
    if "pred_preact_factor" in pre:
        factors = pre["pred_preact_factor"].notna().groupby([pre[i] for i in ids]).transform("any")
        predicted = np.where(factors, display_prediction(pre).to_numpy(), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        return pre.assign(
            relative=pre["grad_norm"].to_numpy() / anchor, predicted=predicted / anchor
        )


def _compared(pre: pd.DataFrame) -> pd.DataFrame:
    """The rows of every group of otherwise equal configurations that holds two remedies or more."""
    others = [a for a in facets.swept(pre, RUN_AXES) if a not in REMEDY_AXES]
    if not others:
        return pre if pre["remedy"].nunique() > 1 else pre.iloc[:0]
    counts = pre.groupby(others, dropna=False, observed=True)["remedy"].transform("nunique")
    return pre[counts > 1]


def remedies(frame: pd.DataFrame) -> list[plt.Figure]:
    """|dL/dz_l| / |dL/dz_{L-1}| per layer, a line per remedy, panels for the other swept axes."""
    pre = frame[frame["tensor"] == "preact"]
    if pre.empty:
        return []
    pre = _compared(with_remedy(pre))
    if pre.empty:
        return []
    pre = relative_norms(pre)
    layout = facets.plan(pre, RUN_AXES, ("col", "row"), placed={"remedy": REMEDY_AXES})
    by = ["layer", "remedy", *layout.shown]
    figs = []
    for page, part in facets.pages(pre, layout):
        fig = _page(facets.encode(part, layout), layout)
        if page.title:
            fig.suptitle(page.title)
        data = pd.concat(
            [
                pool(part, by, "relative", ("median", "min", "max")).assign(quantity="measured"),
                pool(part.dropna(subset=["predicted"]), by, "predicted", ("median",)).assign(
                    quantity="predicted"
                ),
            ],
            ignore_index=True,
        )
        figs.append(
            record(
                fig,
                data,
                Pooling("lines", "median", "bands min to max"),
                Pooling("dashed lines", "median prediction"),
                page=page,
            )
        )
    return figs


def _page(encoded: facets.Encoded, layout: facets.Layout) -> plt.Figure:
    """One page: a panel per value of the col and row axes, a colour per remedy."""
    pre = encoded.frame
    col, row = layout.column("col"), layout.column("row")
    panels = [(r, c) for r in facets.present(pre, row) for c in facets.present(pre, col)]
    ncols = len(facets.present(pre, col)) if row and col else min(len(panels), WRAP)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(5.2 * ncols + 2.6, 3.8 * nrows + 0.6),
        squeeze=False,
        constrained_layout=True,
    )
    names = list(pre["remedy"].cat.categories)
    colors = dict(zip(names, sns.color_palette("deep", len(names))))
    for ax, (row_value, col_value) in zip(axes.flat, panels):
        panel = facets.select(facets.select(pre, row, row_value), col, col_value)
        for name in names:
            part = panel[panel["remedy"] == name]
            if not part.empty:
                _remedy_lines(ax, part, colors[name])
        ax.axhline(1.0, color="grey", lw=0.8, zorder=0)
        ax.set(
            yscale="log",
            xlabel="Linear layer (0 = input side)",
            ylabel="|dL/dz_l| / |dL/dz_{L-1}| at step 0",
        )
        ax.set_title(encoded.panel_title(row_value, col_value), fontsize=10)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=colors[n], marker="o", ms=3, label=n) for n in names]
    handles.append(Line2D([], [], color="black", ls="--", label="prediction"))
    fig.legend(handles=handles, loc="outside right center", fontsize=8, title="remedy")
    return fig


def _remedy_lines(ax: plt.Axes, part: pd.DataFrame, color: object) -> None:
    """One remedy in one panel: median and min-to-max band over seeds, prediction dashed."""
    stats = part.groupby("layer").agg(
        med=("relative", "median"),
        lo=("relative", "min"),
        hi=("relative", "max"),
        pred=("predicted", "median"),
    )
    ax.plot(stats.index, stats["med"], "o-", ms=2.5, lw=1.4, color=color)
    ax.fill_between(stats.index, stats["lo"], stats["hi"], color=color, alpha=0.2, lw=0)
    predicted = stats["pred"].dropna()
    if not predicted.empty:
        ax.plot(predicted.index, predicted, "--", lw=1.2, color=color)
