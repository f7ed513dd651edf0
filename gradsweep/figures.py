"""Seaborn figures of a sweep, laid out over the axes actually swept.

Every figure function takes tidy frames (from `gradsweep.summary.scan` and the
helpers here) and returns a list of matplotlib Figures: one, or one per value of
the axes that do not fit as hue, style or panel (`gradsweep.facets`), or none
when the sweep holds nothing for it to show (no BatchNorm axis, no training
steps, one device). Only seeds and replicas of one configuration are pooled;
each figure keeps what it drew (`gradsweep.drawn`).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from gradsweep import facets  # noqa: E402
from gradsweep.bins import (  # noqa: E402
    HIST_LOG10_STEP,
    HIST_OVERFLOW,
    HIST_REGULAR_EDGES,
    HIST_UNDERFLOW,
    HIST_ZERO,
    N_HIST_BINS,
)
from gradsweep.drawn import Pooling, pool, record  # noqa: E402
from gradsweep.facets import Layout, Page  # noqa: E402
from gradsweep.labels import configuration_text, readable  # noqa: E402
from gradsweep.schema import CONFIG_COLUMNS  # noqa: E402
from gradsweep.store import RunSet  # noqa: E402

BAND = ("pi", 100)
MIN_TO_MAX = "bands min to max"
LINES = Pooling("lines", "median", MIN_TO_MAX)
SEQUENTIAL_FROM = 3  # numeric hue axes with this many values get a sequential palette


def swept_axes(config: pd.DataFrame) -> list[str]:
    """Configuration columns with more than one value, most telling first."""
    return facets.swept(config, facets.AXES)


def _palette(frame: pd.DataFrame, layout: Layout) -> dict[str, str]:
    """A sequential palette when hue is one numeric axis of several values, else the default."""
    axes = layout.axes("hue")
    if len(axes) != 1 or frame[axes[0]].dtype.kind not in "if":
        return {}
    return {"palette": "viridis"} if frame[axes[0]].nunique() >= SEQUENTIAL_FROM else {}


NOTHING_TO_DRAW = "no finite positive value\n(diverged or all zero)"


def _relplot(
    part: pd.DataFrame, layout: Layout, page: Page, empty: str = NOTHING_TO_DRAW, **kws: object
) -> sns.FacetGrid:
    """A seaborn relplot of one page, faceted by `layout`, titles as a reader writes them."""
    encoded = facets.encode(part, layout)
    grid = sns.relplot(
        data=encoded.frame,
        height=3.0,
        aspect=1.3,
        **encoded.keywords,
        **_palette(part, layout),
        **kws,
    )
    facets.title_facets(grid, encoded)
    _note_empty(grid, encoded, str(kws["y"]), empty)
    if page.title:
        grid.figure.suptitle(page.title, y=1.02)
    return grid


def _note_empty(grid: sns.FacetGrid, encoded: facets.Encoded, y: str, text: str) -> None:
    """Write `text` in each panel whose `y` values are all non-finite or not positive."""
    row, col = encoded.keywords.get("row"), encoded.keywords.get("col")
    for key, ax in grid.axes_dict.items() if (row or col) else [((), grid.ax)]:
        names = dict(zip([c for c in (row, col) if c], key if isinstance(key, tuple) else (key,)))
        panel = facets.select(
            facets.select(encoded.frame, row, names.get(row)), col, names.get(col)
        )
        values = panel[y].to_numpy(dtype=float)
        if not (np.isfinite(values) & (values > 0)).any():
            ax.text(
                0.5,
                0.5,
                text,
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="dimgray",
            )


def layer_profile(init: pd.DataFrame, swept: list[str]) -> list[plt.Figure]:
    """(a) Gradient norm per layer at step 0, log scale; solid weight, dashed dL/dz."""
    layout = facets.plan(init, swept, ("hue", "col", "row"))
    figs = []
    for page, part in facets.pages(init, layout):
        grid = _relplot(
            part,
            layout,
            page,
            x="layer",
            y="grad_norm",
            style="tensor",
            kind="line",
            errorbar=BAND,
            estimator="median",
            markers=True,
            dashes={"weight": "", "preact": (4, 2)},
            facet_kws={"sharex": False},
        )
        grid.set(yscale="log")
        grid.set_axis_labels("Linear layer (0 = input side)", "gradient L2 norm at step 0")
        _note_all_zero(grid.figure, part, layout.shown)
        data = pool(part, ["layer", "tensor", *layout.shown], "grad_norm", ("median", "min", "max"))
        figs.append(record(grid.figure, data, LINES, page=page))
    return figs


def _note_all_zero(fig: plt.Figure, init: pd.DataFrame, shown: list[str]) -> None:
    """Name the configurations a log axis cannot show: every gradient 0 (a dead output ReLU)."""
    keys = shown or ["run_key"]
    dead = init.groupby(keys, dropna=False)["grad_norm"].max().loc[lambda m: m == 0]
    if dead.empty:
        return
    names = "; ".join(configuration_text(dict(zip(keys, np.atleast_1d(idx)))) for idx in dead.index)
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


# Ratios beyond 10^+-4 share the end colours (the cells are annotated), so that ratios near 1
# keep a visible shade next to a vanishing 1e-17.
MAX_DECADES = 4.0
RATIOS = {
    "weight_ratio": "weight ratio: layer 0 / layer depth-1 at step 0",
    "preact_ratio": "dL/dz ratio: layer 0 / layer depth-1 at step 0",
}


def _cell_axes(frame: pd.DataFrame, swept: list[str]) -> tuple[str, str]:
    """(rows, columns) of a heatmap: the two swept axes with the most values, the larger across."""
    counts = {a: frame[a].nunique(dropna=False) for a in swept}
    first, second = sorted(swept, key=lambda a: -counts[a])[:2]
    return (first, second) if counts[first] <= counts[second] else (second, first)


def _log_limit(values: pd.Series) -> float:
    """Colour limit in decades: the largest |log10| of the positive finite `values`, at most 4."""
    logs = np.log10(values[(values > 0) & np.isfinite(values)])
    return float(np.clip(np.abs(logs).max(), 0.5, MAX_DECADES)) if len(logs) else 1.0


def ratio_heatmap(summary: pd.DataFrame, swept: list[str]) -> list[plt.Figure]:
    """(b) Median input/output norm ratio (weight, dL/dz) per configuration, rows a further axis."""
    if len(swept) < 2:
        return []
    y, x = _cell_axes(summary, swept)
    rest = [a for a in swept if a not in (y, x)]
    layout = facets.plan(summary, rest, ("row",))
    shown = [y, x, *layout.shown]
    medians = {m: pool(summary, shown, m) for m in RATIOS}
    limits = {m: _log_limit(medians[m]["median"]) for m in RATIOS}
    figs = []
    for page, part in facets.pages(summary, layout):
        data = pd.concat(
            [pool(part, shown, m).assign(quantity=m) for m in RATIOS], ignore_index=True
        )
        encoded = facets.encode(readable(data, [y, x]), layout)
        cells, row = encoded.frame, layout.column("row")
        rows = facets.present(cells, row)
        width = max(5.5, 0.8 * cells[x].nunique() + 2.5)
        fig, axes = plt.subplots(
            len(rows),
            len(RATIOS),
            figsize=(width * len(RATIOS), (0.55 * cells[y].nunique() + 1.3) * len(rows) + 0.6),
            squeeze=False,
            constrained_layout=True,
        )
        for row_value, axs in zip(rows, axes):
            block = facets.select(cells, row, row_value)
            for ax, metric in zip(axs, RATIOS):
                grid = block[block["quantity"] == metric].pivot(index=y, columns=x)
                _heatmap(ax, grid["median"], grid["seeds"].notna(), limits[metric])
                title = RATIOS[metric] + "\n(<1 vanishing, >1 exploding)"
                if row is not None:
                    title = f"{encoded.title('row', row_value)}: {title}"
                ax.set_title(title, fontsize=10)
        if page.title:
            fig.suptitle(page.title)
        figs.append(record(fig, data, Pooling("cells", "median"), page=page))
    return figs


def _heatmap(ax: plt.Axes, grid: pd.DataFrame, drawn: pd.DataFrame, limit: float) -> None:
    """An annotated log10 heatmap of positive ratios; `drawn` cells without one say why."""
    logs = np.log10(grid.where(grid > 0))
    beyond = np.abs(logs.to_numpy()[np.isfinite(logs.to_numpy())]).max(initial=0) > limit
    sns.heatmap(
        logs,
        ax=ax,
        annot=grid.map(lambda v: f"{v:.2g}"),
        fmt="",
        cmap="vlag",
        center=0,
        vmin=-limit,
        vmax=limit,
        cbar_kws={"label": "log10(ratio)", "extend": "both" if beyond else "neither"},
    )
    for i, j in zip(*np.nonzero(~np.isfinite(logs.to_numpy()) & drawn.to_numpy())):
        text = "all zero" if grid.iat[i, j] != grid.iat[i, j] else "n/a"
        ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=9, color="dimgray")


CURVES = {"total_grad_norm": "before clip", "total_grad_norm_clipped": "after clip"}


def clipping(totals: pd.DataFrame, swept: list[str]) -> list[plt.Figure]:
    """(c) Total gradient norm before and after clipping (top), loss (bottom), over steps."""
    if totals["clip"].isna().all():
        return []
    axes = ["clip", *[a for a in swept if a != "clip"]]
    layout = facets.plan(totals, axes, ("hue", "col"))
    figs = []
    for page, part in facets.pages(totals, layout):
        encoded = facets.encode(part, layout)
        frame = encoded.frame
        long = frame.melt(
            id_vars=[c for c in frame.columns if c not in CURVES],
            value_vars=list(CURVES),
            var_name="curve",
            value_name="total_norm",
        )
        long["curve"] = pd.Categorical(
            long["curve"].map(CURVES), categories=list(CURVES.values()), ordered=True
        )
        hue, col = layout.column("hue"), layout.column("col")
        columns = facets.present(frame, col)
        fig, grid = plt.subplots(
            2,
            len(columns),
            figsize=(4.6 * len(columns) + 1.5, 7),
            squeeze=False,
            sharex=True,
            constrained_layout=True,
        )
        for ax in grid[0][1:]:
            ax.sharey(grid[0][0])
        for j, value in enumerate(columns):
            top, bottom = grid[0][j], grid[1][j]
            sns.lineplot(
                data=facets.select(long, col, value),
                x="step",
                y="total_norm",
                hue=hue,
                style="curve",
                estimator="median",
                errorbar=None,
                marker="o",
                ax=top,
                legend=j == len(columns) - 1,
            )
            sns.lineplot(
                data=facets.select(frame, col, value),
                x="step",
                y="loss",
                hue=hue,
                estimator="median",
                errorbar=None,
                marker="o",
                ax=bottom,
                legend=False,
            )
            top.set(yscale="log", ylabel="total gradient L2 norm", xlabel="")
            bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
            bottom.set(xlabel="optimizer step", ylabel="loss")
            if col is not None:
                top.set_title(encoded.title("col", value), fontsize=10)
        legend = grid[0][-1].get_legend()
        if legend is not None:
            sns.move_legend(grid[0][-1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
        fig.suptitle(
            "total gradient norm before and after clipping (top), loss (bottom)"
            + (f"\n{page.title}" if page.title else "")
        )
        shown = ["step", *layout.shown]
        data = pd.concat(
            [
                pool(long, [*shown, "curve"], "total_norm").assign(quantity="total norm"),
                pool(frame, shown, "loss").assign(quantity="loss"),
            ],
            ignore_index=True,
        )
        figs.append(record(fig, data, Pooling("lines", "median"), page=page))
    return figs


def batchnorm(init: pd.DataFrame, swept: list[str]) -> list[plt.Figure]:
    """(d) Weight-gradient norm per layer with and without BatchNorm (hue), other axes as panels."""
    if "batchnorm" not in swept:
        return []
    frame = init[init["tensor"] == "weight"]
    axes = ["batchnorm", *[a for a in swept if a != "batchnorm"]]
    layout = facets.plan(frame, axes, ("hue", "col", "row"))
    figs = []
    for page, part in facets.pages(frame, layout):
        grid = _relplot(
            part,
            layout,
            page,
            x="layer",
            y="grad_norm",
            kind="line",
            errorbar=BAND,
            estimator="median",
            marker="o",
            facet_kws={"sharex": False},
        )
        grid.set(yscale="log")
        grid.set_axis_labels("Linear layer (0 = input side)", "weight-gradient L2 norm at step 0")
        data = pool(part, ["layer", *layout.shown], "grad_norm", ("median", "min", "max"))
        figs.append(record(grid.figure, data, LINES, page=page))
    return figs


def histogram_counts(runs: RunSet) -> pd.DataFrame:
    """Step-0 weight-gradient histogram per run and replica (layers summed), with configuration."""
    table = runs.table(
        columns=["run_key", "replica", "grad_hist"],
        filter=(ds.field("step") == 0) & (ds.field("tensor") == "weight"),
    )
    counts = table["grad_hist"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    counts = pd.DataFrame(counts.reshape(-1, N_HIST_BINS))
    ids = table.select(["run_key", "replica"]).to_pandas()
    summed = counts.groupby([ids["run_key"].astype(str).to_numpy(), ids["replica"].to_numpy()])
    long = summed.sum().rename_axis(["run_key", "replica"]).stack().rename("count")
    long = long.rename_axis(["run_key", "replica", "bin"]).reset_index()
    config = runs.runs.drop(columns="path")
    return config.merge(long.astype({"bin": int}), on="run_key")


def _bin_fractions(counts: pd.DataFrame, shown: list[str]) -> pd.DataFrame:
    """Per configuration and bin: counts summed over seeds, and their share of its elements."""
    summed = pool(counts, [*shown, "bin"], "count", ("sum",))
    if shown:
        totals = summed.groupby(shown, dropna=False, observed=True)["sum"].transform("sum")
    else:
        totals = summed["sum"].sum()
    return summed.assign(fraction=summed["sum"] / totals)


def histograms(counts: pd.DataFrame, swept: list[str]) -> list[plt.Figure]:
    """(e) log10|g| histograms of step-0 weight gradients per configuration, from the fixed bins."""
    layout = facets.plan(counts, swept, ("hue", "col", "row"))
    centers = HIST_REGULAR_EDGES[:-1] + HIST_LOG10_STEP / 2
    figs = []
    for page, part in facets.pages(counts, layout):
        shown = layout.shown
        fractions = _bin_fractions(part, shown)
        regular = fractions[
            (fractions["bin"] > HIST_UNDERFLOW) & (fractions["bin"] < HIST_OVERFLOW)
        ]
        regular = regular.assign(log10_g=centers[regular["bin"] - HIST_UNDERFLOW - 1])
        grid = _relplot(
            regular,
            layout,
            page,
            x="log10_g",
            y="fraction",
            empty="every element exactly 0\nor below 2^-40",
            kind="line",
            estimator=None,
            drawstyle="steps-mid",
        )
        grid.set_axis_labels("log10 |weight gradient| at step 0", "fraction of elements per binade")
        _note_zeros(grid, facets.encode(fractions, layout), layout)
        figs.append(
            record(grid.figure, fractions, Pooling("histograms", "counts summed"), page=page)
        )
    return figs


def _share_text(share: float) -> str:
    """A fraction as a percentage that never rounds a nonzero share to 0.0%."""
    return "<0.1%" if 0 < share < 0.0005 else f"{share:.1%}"


def _note_zeros(grid: sns.FacetGrid, encoded: facets.Encoded, layout: Layout) -> None:
    """In each panel: lines with exact zeros or magnitudes below 2^-40, which the axis omits."""
    frame = encoded.frame
    hue, col, row = (layout.column(s) for s in ("hue", "col", "row"))
    notes = {}
    for key, ax in grid.axes_dict.items() if (col or row) else [((), grid.ax)]:
        names = key if isinstance(key, tuple) else (key,)
        panel = frame
        for column, name in zip([c for c in (row, col) if c], names):
            panel = panel[panel[column] == name]
        lines = []
        for what, where in (("exact zeros", HIST_ZERO), ("below 2^-40", HIST_UNDERFLOW)):
            rows = panel[panel["bin"] == where]
            groups = rows.groupby(hue, observed=True) if hue else [(None, rows)]
            shares = [
                _share_text(part["fraction"].sum())
                + (f" ({encoded.title('hue', k)})" if hue else "")
                for k, part in groups
                if part["fraction"].sum() > 0
            ]
            if shares:
                lines.append(f"{what}: " + ", ".join(shares))
        notes[ax] = lines
    most = max(map(len, notes.values()))
    if not most:
        return
    low, high = grid.axes.flat[0].get_ylim()
    grid.set(ylim=(low, high * (1 + 0.1 * most)))
    for ax, lines in notes.items():
        ax.text(
            0.98, 0.98, "\n".join(lines), transform=ax.transAxes, ha="right", va="top", fontsize=7.5
        )


def layer_steps(runs: RunSet) -> pd.DataFrame:
    """Weight-gradient norm of every layer at every logged step, with the configuration."""
    frame = runs.frame(
        columns=["run_key", "replica", "step", "layer", "grad_norm"],
        filter=ds.field("tensor") == "weight",
    )
    frame["run_key"] = frame["run_key"].astype(str)
    return runs.runs.drop(columns="path").merge(frame, on="run_key")


FEW_STEPS = 12  # up to this many logged steps, each is marked (a lone finite step stays visible)
POSITIONS = ["input side (layer 0)", "middle (layer depth//2)", "output side (layer depth-1)"]


def over_steps(frame: pd.DataFrame, swept: list[str]) -> list[plt.Figure]:
    """(f) Weight-gradient norm over training steps of the input-side, middle and output layers.

    Three layers per run keep the panels readable at any depth; hue is the
    layer's position, the swept axes are panel columns, rows and line styles.
    """
    if frame["step"].nunique() < 2:
        return []
    depth = frame["depth"].astype(int)
    position = pd.Series(pd.NA, index=frame.index, dtype="object")
    position[frame["layer"] == 0] = POSITIONS[0]
    position[(frame["layer"] == depth // 2) & (depth > 2)] = POSITIONS[1]
    position[frame["layer"] == depth - 1] = POSITIONS[2]
    positioned = frame.assign(position=position).dropna(subset=["position"])
    layout = facets.plan(positioned, swept, ("col", "row", "style"))
    figs = []
    for page, part in facets.pages(positioned, layout):
        grid = _relplot(
            part,
            layout,
            page,
            x="step",
            y="grad_norm",
            hue="position",
            hue_order=POSITIONS,
            kind="line",
            errorbar=BAND,
            estimator="median",
            **({"marker": "o", "markersize": 4} if part["step"].nunique() <= FEW_STEPS else {}),
        )
        grid.set(yscale="log")
        grid.set_axis_labels("optimizer step", "weight-gradient L2 norm")
        for ax in grid.axes.flat:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        data = pool(
            part, ["step", "position", *layout.shown], "grad_norm", ("median", "min", "max")
        )
        figs.append(record(grid.figure, data, LINES, page=page))
    return figs


def devices(init: pd.DataFrame) -> list[plt.Figure]:
    """(g) The same configurations measured on CPU and on CUDA: norms against each other."""
    if not {"cpu", "cuda"} <= set(init["device"]):
        return []
    keys = [c for c in CONFIG_COLUMNS if c != "device"] + ["seed", "layer", "tensor"]
    pair = init[init["device"] == "cpu"].merge(
        init[init["device"] == "cuda"], on=keys, suffixes=("_cpu", "_cuda")
    )
    if pair.empty:
        return []
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
        title=f"CPU vs CUDA at step 0 (largest relative difference of any point {rel:.1e})",
    )
    drawn = pool(
        init[init["run_key"].isin(set(pair["run_key_cpu"]) | set(pair["run_key_cuda"]))],
        [*CONFIG_COLUMNS, "seed", "layer", "tensor"],
        "grad_norm",
        ("first",),
    )
    return [record(fig, drawn, Pooling("points", "value"))]
