"""Figures that put mean-field theory next to the measured back-propagated gradients.

Every figure takes the step-0 frame of `theory_frame` (preact and weight rows
with their configuration and the run files' prediction columns) and returns a
list of matplotlib Figures (one per value of the swept axes that do not fit as
hue or panel), empty when the sweep lacks what the figure needs. Only the seeds
of one configuration are pooled; each figure keeps what it drew.
`python -m gradsweep.theory_figures SWEEP_DIR... OUT_DIR` writes them as PNG,
with the bulk-factor error table as CSV.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from gradsweep import facets, theory  # noqa: E402
from gradsweep.drawn import Pooling, pool, record, save_figures  # noqa: E402
from gradsweep.labels import axis_value, configuration_text, readable, value_text  # noqa: E402
from gradsweep.schema import PRED_COLUMNS  # noqa: E402
from gradsweep.store import RunSet  # noqa: E402

PLAIN_SKIP = (1, 1)
BN_MIN_DEPTH = 10
BN_SKIP = (
    3,
    1,
)  # BatchNorm: the first layers are not yet at the fixed point; the last sees the loss
GLOROT_MAX_PANELS = 4
OVERLAY_WRAP = 3
BULK_ERROR_MAX_ROWS = 60
# The run file's configuration axes, with sigma_w^2 (a function of init, init_scale and width)
# next to init_scale, which it determines for a given init and width.
RUN_AXES: tuple[str, ...] = tuple(
    a for axis in facets.AXES for a in (("sigma_w2", axis) if axis == "init_scale" else (axis,))
)
# Axes the prediction overlay prefers as hue: what the prediction depends on within a panel.
OVERLAY_HUE = ("sigma_w2", "init", "batch_size", "width", "bias_init")

CAPTIONS = {
    "phase_diagram": "(t1) Order-to-chaos phase diagram of the runs without BatchNorm: measured "
    "gain of dL/dz per layer at step 0, (|dL/dz_0| / |dL/dz_{L-1}|)^(1/(L-1)), over sigma_w^2 "
    "and depth; dashed: the critical sigma_w^2 where chi_1 = 1 (tanh 1, ReLU 2), on a cell when "
    "it is on the grid.",
    "batchnorm_depth": "(t2) BatchNorm makes gradients explode with depth at a rate set by the "
    "batch size alone: measured dL/dz norms and per-layer factors of the BatchNorm runs against "
    "Yang et al.'s finite-batch rate.",
    "glorot_fig8": "(t3) Glorot & Bengio (2010) Fig. 8: under a shrinking tanh init dL/dz shrinks "
    "toward the input while the weight gradients stay level (deepest tanh network without "
    "BatchNorm of each init).",
    "prediction_overlay": "(t4) Measured |dL/dz| per layer at step 0 (markers) against the "
    "mean-field prediction each run file carries (lines), anchored at the measured output layer "
    "(BatchNorm runs: at the last hidden layer, as the step from the output layer depends on the "
    "loss).",
    "bulk_error": "(t5) Relative error of the bulk factor (geometric-mean per-layer factor over "
    "interior layers) per run, measured against predicted.",
}
SKIPPED = {
    "phase_diagram": "fewer than three sigma_w^2 values without BatchNorm",
    "batchnorm_depth": "BatchNorm runs do not vary in depth or batch size, or none has 10 layers",
    "glorot_fig8": "needs 2 to 4 tanh initialisations without BatchNorm to compare",
    "prediction_overlay": "run files carry no prediction columns",
    "bulk_error": "no run has prediction columns and enough layers for a bulk factor",
}


def theory_frame(runs: RunSet) -> pd.DataFrame:
    """Step-0 preact and weight rows of every run, with configuration, sigma_w^2, predictions."""
    columns = ["run_key", "replica", "layer", "tensor", "grad_norm"]
    columns += [c for c in PRED_COLUMNS if c in runs.schema.names]
    rows = runs.frame(
        columns=columns,
        filter=(ds.field("step") == 0) & ds.field("tensor").isin(["preact", "weight"]),
    )
    rows["run_key"] = rows["run_key"].astype(str)
    rows["tensor"] = rows["tensor"].astype(str)
    for column in PRED_COLUMNS:
        if column in rows:
            rows[column] = rows[column].astype(float)
    config = runs.runs.drop(columns="path")
    config["sigma_w2"] = [
        theory.sigma_w2(i, s, w, w)
        for i, s, w in zip(config["init"], config["init_scale"], config["width"])
    ]
    return config.merge(rows, on="run_key").sort_values(
        ["run_key", "replica", "tensor", "layer"], ignore_index=True
    )


def _skip(batchnorm: bool) -> tuple[int, int]:
    return BN_SKIP if batchnorm else PLAIN_SKIP


def _bulk(values: np.ndarray, skip: tuple[int, int]) -> float:
    """Bulk factor, NaN when too few layers or a non-finite factor."""
    try:
        return theory.bulk_factor(values, *skip)
    except ValueError:
        return math.nan


def replica_bulks(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run, replica and tensor: measured bulk factor (predicted too, for preact)."""
    records = []
    for (key, replica, tensor), group in frame.groupby(
        ["run_key", "replica", "tensor"], sort=False
    ):
        skip = _skip(bool(group["batchnorm"].iloc[0]))
        with np.errstate(divide="ignore", invalid="ignore"):
            measured = _bulk(theory.factors_from_norms(group["grad_norm"].to_numpy()), skip)
        predicted = math.nan
        if tensor == "preact" and "pred_preact_factor" in group:
            predicted = _bulk(group["pred_preact_factor"].to_numpy()[:-1], skip)
        records.append((key, replica, tensor, measured, predicted))
    return pd.DataFrame(records, columns=["run_key", "replica", "tensor", "measured", "predicted"])


def _configs(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its configuration and sigma_w^2, indexed by run key."""
    return frame.drop_duplicates("run_key").set_index("run_key")[list(RUN_AXES)]


def _with_config(rows: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """Per-run or per-replica `rows` (with run_key) joined to each run's configuration."""
    return rows.join(_configs(frame), on="run_key")


def bulk_error_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run: measured bulk factor of dL/dz (mean, spread over replicas), predicted, error."""
    bulks = replica_bulks(frame)
    bulks = bulks[(bulks["tensor"] == "preact") & np.isfinite(bulks["predicted"])]
    if bulks.empty:
        return pd.DataFrame(
            columns=[
                *RUN_AXES,
                "replicas",
                "measured",
                "measured_sd",
                "predicted",
                "rel_error",
                "skipped_layers",
            ]
        )
    per_run = bulks.groupby("run_key").agg(
        replicas=("measured", "size"),
        measured=("measured", "mean"),
        measured_sd=("measured", "std"),
        predicted=("predicted", "first"),
        low=("measured", "min"),
        high=("measured", "max"),
    )
    per_run["rel_error"] = per_run["measured"] / per_run["predicted"] - 1
    table = _configs(frame).join(per_run, how="inner")
    table["skipped_layers"] = [
        "first 3, last 1" if bn else "first 1, last 1" for bn in table["batchnorm"]
    ]
    return table.sort_values(list(RUN_AXES)).reset_index()


# ---------------------------------------------------------------- figures


def _log_gains(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run and replica: log10 (|dL/dz_0| / |dL/dz_{L-1}|) / (L - 1), with the configuration."""
    pre = frame[(frame["tensor"] == "preact") & (frame["depth"] > 1)]
    first = pre[pre["layer"] == 0].set_index(["run_key", "replica"])["grad_norm"]
    last = pre[pre["layer"] == pre["depth"] - 1].set_index(["run_key", "replica"])["grad_norm"]
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(first / last.reindex(first.index))
    gains = _with_config(logs.rename("log10_gain").reset_index(), frame)
    gains["log10_gain"] = gains["log10_gain"] / (gains["depth"] - 1)
    return gains


def _mark_critical(ax: plt.Axes, sw2_values: np.ndarray, critical: float, row: int) -> None:
    """Dashed box around the critical sigma_w^2's cell, or a line between cells; none off grid."""
    if not sw2_values.min() <= critical <= sw2_values.max():
        return
    on_grid = np.flatnonzero(np.isclose(sw2_values, critical, rtol=1e-3))
    if on_grid.size:
        ax.add_patch(Rectangle((on_grid[0], row), 1, 1, fill=False, ls="--", lw=2, ec="black"))
        return
    x = float(np.interp(math.log(critical), np.log(sw2_values), np.arange(len(sw2_values)))) + 0.5
    ax.plot([x, x], [row, row + 1], color="black", ls="--", lw=2)


def phase_diagram(frame: pd.DataFrame) -> list[plt.Figure]:
    """Heatmap of the measured log10 gain per layer over (sigma_w^2, depth), a panel per act."""
    plain = frame[~frame["batchnorm"].astype(bool)]
    if plain["sigma_w2"].nunique() < 3:
        return []
    gains = _log_gains(plain)
    gains["feedforward"] = (gains["norm"] == "none") & ~gains["residual"].astype(bool)
    y = "depth" if gains["depth"].nunique() > 1 else "act"
    layout = facets.plan(gains, RUN_AXES, ("col", "row"), placed={"x": ("sigma_w2",), "y": (y,)})
    cells = pool(gains, [*layout.shown, "feedforward"], "log10_gain", ("mean",))
    finite = np.abs(cells["mean"][np.isfinite(cells["mean"])])
    limit = max(float(finite.max()) if len(finite) else 0.0, 1e-3)
    figs = []
    for page, part in facets.pages(cells, layout):
        encoded = facets.encode(part, layout)
        col, row = layout.column("col"), layout.column("row")
        cols, rows = facets.present(encoded.frame, col), facets.present(encoded.frame, row)
        fig, axes = plt.subplots(
            len(rows),
            len(cols),
            figsize=(4.8 * len(cols) + 1, (0.55 * max(part[y].nunique(), 4) + 2) * len(rows)),
            squeeze=False,
            constrained_layout=True,
        )
        for i, row_value in enumerate(rows):
            for j, col_value in enumerate(cols):
                panel = facets.select(facets.select(encoded.frame, row, row_value), col, col_value)
                critical = bool(panel["feedforward"].all())
                _phase_panel(axes[i][j], panel, y, limit, cbar=j == len(cols) - 1, mark=critical)
                title = encoded.panel_title(row_value, col_value)
                acts = panel["act"].unique()
                if not critical:
                    title += "\nno critical sigma_w^2 (a norm or skip connection)"
                elif len(acts) == 1:
                    critical = theory.critical_sigma_w2(acts[0])
                    title += f"\ncritical sigma_w^2 = {critical:.3g} (dashed)"
                else:
                    title += "\ncritical sigma_w^2 dashed"
                axes[i][j].set_title(
                    title.strip() + "\ncells: gain per layer; <1 vanishing, >1 exploding",
                    fontsize=10,
                )
        if page.title:
            fig.suptitle(page.title)
        figs.append(record(fig, part, Pooling("cells", "geometric mean"), page=page))
    return figs


def _phase_panel(
    ax: plt.Axes, panel: pd.DataFrame, y: str, limit: float, cbar: bool, mark: bool
) -> None:
    """One phase-diagram heatmap: rows `y`, columns sigma_w^2, cells 10 ** mean log10 gain.

    `mark`: dash the critical sigma_w^2, which only feed-forward networks without a norm have.
    """
    grid = panel.pivot(index=y, columns="sigma_w2", values="mean")
    xs = grid.columns.to_numpy(dtype=float)
    sns.heatmap(
        grid,
        ax=ax,
        cmap="vlag",
        vmin=-limit,
        vmax=limit,
        annot=10**grid,
        fmt=".3g",
        cbar=cbar,
        cbar_kws={"label": "log10 gain of dL/dz per layer"},
    )
    for i, row_value in enumerate(grid.index if mark else []):
        act = row_value if y == "act" else panel["act"].iloc[0]
        _mark_critical(ax, xs, theory.critical_sigma_w2(act), i)
    ax.invert_yaxis()
    ax.set(
        xlabel="sigma_w^2 (fan_in x Var W)",
        ylabel="depth (Linear layers)" if y == "depth" else "activation",
    )
    texts = readable(pd.DataFrame({"sigma_w2": xs}), ["sigma_w2"])["sigma_w2"]
    ax.set_xticklabels(list(texts.astype(str)), rotation=0)


def _relative_to_last_hidden(bn: pd.DataFrame) -> pd.DataFrame:
    """BatchNorm dL/dz rows up to the last hidden layer, as a ratio to that layer's norm."""
    last_hidden = bn[bn["layer"] == bn["depth"] - 2].set_index(["run_key", "replica"])["grad_norm"]
    bn = bn[bn["layer"] <= bn["depth"] - 2].copy()
    bn["below"] = bn["depth"] - 2 - bn["layer"]
    bn["relative"] = (
        bn["grad_norm"].to_numpy()
        / last_hidden.reindex(pd.MultiIndex.from_frame(bn[["run_key", "replica"]])).to_numpy()
    )
    return bn


DEPTH_MARKERS = "osD^vP*Xph"


def batchnorm_depth(frame: pd.DataFrame) -> list[plt.Figure]:
    """Left: |dL/dz_l| / |dL/dz_{L-2}| against layers below; right: bulk factor against depth."""
    bn = frame[
        frame["batchnorm"].astype(bool) & (frame["tensor"] == "preact") & (frame["depth"] >= 3)
    ]
    if (
        bn.empty
        or bn["depth"].max() < BN_MIN_DEPTH
        or (bn["depth"].nunique() < 2 and bn["batch_size"].nunique() < 2)
    ):
        return []
    layout = facets.plan(bn, RUN_AXES, (), placed={"color": ("act", "batch_size"), "x": ("depth",)})
    combos = sorted(set(zip(bn["act"], bn["batch_size"])))
    palette = dict(zip(combos, sns.color_palette("deep", len(combos))))
    markers = dict(zip(sorted(bn["depth"].unique()), DEPTH_MARKERS * 10))
    figs = []
    for page, part in facets.pages(bn, layout):
        relative = _relative_to_last_hidden(part)
        bulks = _with_config(replica_bulks(part), frame).dropna(subset=["measured"])
        left_data = pool(relative, [*layout.shown, "below"], "relative", ("median",))
        right_data = pool(bulks, layout.shown, "measured", ("mean", "min", "max"))
        fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 4.8), constrained_layout=True)
        _bn_left(left, left_data, palette, markers)
        _bn_right(right, right_data, palette)
        if page.title:
            fig.suptitle(page.title)
        data = pd.concat(
            [left_data.assign(panel="left"), right_data.assign(panel="right")], ignore_index=True
        )
        figs.append(
            record(
                fig,
                data,
                Pooling("left, points", "median"),
                Pooling("right, points", "mean", "bars min to max"),
                page=page,
            )
        )
    return figs


def _act_batch(act: str, batch: int) -> str:
    """`act = relu, batch_size = 32`."""
    return configuration_text({"act": act, "batch_size": batch})


def _bn_left(ax: plt.Axes, median: pd.DataFrame, palette: dict, markers: dict) -> None:
    """Relative dL/dz norms per depth (marker), act and batch size (colour); theory lines."""
    for (act, batch), part in median.groupby(["act", "batch_size"]):
        for depth, rows in part.groupby("depth"):
            ax.scatter(
                rows["below"],
                rows["median"],
                s=16,
                color=palette[act, batch],
                marker=markers[depth],
                alpha=0.75,
            )
        rate = theory.batchnorm_rate(act, int(batch))
        k = np.arange(part["below"].max() + 1)
        ax.plot(
            k,
            rate ** (k / 2),
            color=palette[act, batch],
            lw=1.5,
            label=f"{_act_batch(act, batch)}: theory sqrt(rate) = {math.sqrt(rate):.4f} per layer",
        )
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], color="grey", marker=markers[d], ls="", label=f"measured, depth = {d}")
        for d in sorted(median["depth"].unique())
    ]
    ax.set(
        yscale="log",
        xlabel="layers below the last hidden layer, L-2-l",
        ylabel="|dL/dz_l| / |dL/dz_{L-2}| at step 0",
        title="gradient norm grows toward the input",
    )
    ax.legend(handles=handles, fontsize=8, loc="upper left")


def _bn_right(ax: plt.Axes, stats: pd.DataFrame, palette: dict) -> None:
    """Bulk factor against depth (mean, min to max over seeds) with the finite-batch theory."""
    for (act, batch), part in stats.groupby(["act", "batch_size"]):
        ax.errorbar(
            part["depth"],
            part["mean"],
            yerr=[part["mean"] - part["min"], part["max"] - part["mean"]],
            fmt="o",
            color=palette[act, batch],
            capsize=3,
            label=f"{_act_batch(act, batch)}: measured",
        )
        ax.axhline(
            math.sqrt(theory.batchnorm_rate(act, int(batch))),
            color=palette[act, batch],
            lw=1.5,
            label=f"{_act_batch(act, batch)}: theory",
        )
    for act in stats["act"].unique():
        limit = math.sqrt(theory.batchnorm_rate(act))
        ax.axhline(
            limit,
            color="grey",
            ls=":",
            lw=1.2,
            label=f"{axis_value('act', act)}: large-batch limit {limit:.4f}",
        )
    ax.set(
        xlabel="depth (Linear layers)",
        ylabel="bulk factor |dL/dz_l| / |dL/dz_{l+1}|",
        title="per-layer factor (interior layers: skip first 3 and last 1)",
    )
    ax.legend(fontsize=8, loc="best")


GLOROT_PANEL = ("init", "init_scale", "sigma_w2")


def glorot_fig8(frame: pd.DataFrame) -> list[plt.Figure]:
    """dL/dz and dL/dW norms per layer, an axis per tanh init (2 to 4, deepest network of each)."""
    tanh = frame[(frame["act"] == "tanh") & ~frame["batchnorm"].astype(bool)]
    if tanh.empty:
        return []
    layout = facets.plan(tanh, RUN_AXES, (), placed={"panel": GLOROT_PANEL, "depth": ("depth",)})
    panel_axes = list(layout.axes("panel"))
    figs = []
    for page, part in facets.pages(tanh, layout):
        deepest = part[part["depth"] == part.groupby(panel_axes)["depth"].transform("max")]
        combos = deepest[panel_axes].drop_duplicates().sort_values("sigma_w2")
        if not 2 <= len(combos) <= GLOROT_MAX_PANELS:
            continue
        fig, axes = plt.subplots(
            1,
            len(combos),
            figsize=(5 * len(combos), 4.4),
            squeeze=False,
            sharey=True,
            constrained_layout=True,
        )
        for ax, combo in zip(axes[0], combos.itertuples(index=False)):
            values = combo._asdict()
            rows = deepest[(deepest[panel_axes] == pd.Series(values)).all(axis=1)]
            _glorot_panel(ax, rows)
            sigma = values.pop("sigma_w2")
            depth = int(rows["depth"].iloc[0])
            ax.set_title(
                f"tanh, {configuration_text(values)}, depth = {depth}\n"
                f"sigma_w^2 = {value_text('sigma_w2', sigma)}",
                fontsize=10,
            )
        axes[0][0].set_ylabel("gradient L2 norm at step 0")
        fig.suptitle(
            "Glorot & Bengio Fig. 8: per-layer factors are interior geometric means "
            "(first and last skipped)" + (f"\n{page.title}" if page.title else "")
        )
        data = pool(
            deepest, [*layout.shown, "tensor", "layer"], "grad_norm", ("median", "min", "max")
        )
        figs.append(record(fig, data, Pooling("lines", "median", "bands min to max"), page=page))
    return figs


def _glorot_panel(ax: plt.Axes, rows: pd.DataFrame) -> None:
    """dL/dz and weight-gradient norms per layer of one configuration, with per-layer factors."""
    bulks = replica_bulks(rows).groupby("tensor")["measured"].mean()
    for tensor, color, name in (
        ("preact", "C3", "back-propagated dL/dz_l"),
        ("weight", "C0", "weight gradient dL/dW_l"),
    ):
        stats = rows[rows["tensor"] == tensor].groupby("layer")["grad_norm"]
        stats = stats.agg(["median", "min", "max"])
        ax.plot(
            stats.index,
            stats["median"],
            "o-",
            color=color,
            label=f"{name}: x{bulks.get(tensor, math.nan):.3f} per layer",
        )
        ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.2)
    ax.set(yscale="log", xlabel="Linear layer (0 = input side)")
    ax.legend(fontsize=8, loc="lower right")


def display_prediction(pre: pd.DataFrame) -> pd.Series:
    """pred_preact_norm; BatchNorm runs anchored at the last hidden layer, no output layer.

    The step from the output layer of a BatchNorm network depends on the loss.
    """
    pred = pre["pred_preact_norm"].copy()
    bn = pre["batchnorm"].astype(bool) & (pre["depth"] >= 2)
    at = pre[bn & (pre["layer"] == pre["depth"] - 2)].set_index(["run_key", "replica"])
    scale = (
        (at["grad_norm"] / at["pred_preact_norm"])
        .reindex(pd.MultiIndex.from_frame(pre.loc[bn, ["run_key", "replica"]]))
        .to_numpy()
    )
    pred[bn] = pred[bn].to_numpy() * scale
    pred[bn & (pre["layer"] == pre["depth"] - 1)] = np.nan
    return pred


def _overlay_layout(pre: pd.DataFrame) -> facets.Layout:
    """Hue: the first swept axis a panel's predictions depend on; panels and pages the rest."""
    hue = [a for a in OVERLAY_HUE if a in facets.swept(pre, RUN_AXES)][:1]
    axes = [*hue, *(a for a in RUN_AXES if a not in hue)]
    return facets.plan(pre, axes, ("hue", "col", "row") if hue else ("col", "row"))


def prediction_overlay(frame: pd.DataFrame) -> list[plt.Figure]:
    """Measured |dL/dz_l| per layer (markers: median, range) and the run files' predictions."""
    if "pred_preact_norm" not in frame:
        return []
    pre = frame[(frame["tensor"] == "preact") & frame["pred_preact_norm"].notna()]
    if pre.empty:
        return []
    pre = pre.assign(shown=display_prediction(pre))
    layout = _overlay_layout(pre)
    by = ["layer", *layout.shown]
    figs = []
    for page, part in facets.pages(pre, layout):
        fig = _overlay_page(facets.encode(part, layout), layout)
        anchor = (
            "; BatchNorm lines anchored at the last hidden layer"
            if part["batchnorm"].astype(bool).any()
            else ""
        )
        fig.suptitle(
            "measured (markers) vs mean-field prediction (lines)"
            + anchor
            + (f"\n{page.title}" if page.title else "")
        )
        data = pd.concat(
            [
                pool(part, by, "grad_norm", ("median", "min", "max")).assign(quantity="measured"),
                pool(part, by, "shown", ("median",)).assign(quantity="predicted"),
            ],
            ignore_index=True,
        )
        figs.append(
            record(
                fig,
                data,
                Pooling("markers", "median", "bars min to max"),
                Pooling("lines", "median prediction"),
                page=page,
            )
        )
    return figs


def _overlay_page(encoded: facets.Encoded, layout: facets.Layout) -> plt.Figure:
    """One page of the overlay: a panel per col and row value, a colour per hue value."""
    pre = encoded.frame
    hue, col, row = (layout.column(s) for s in ("hue", "col", "row"))
    hues = list(pre[hue].cat.categories) if hue else [None]
    panels = [(r, c) for r in facets.present(pre, row) for c in facets.present(pre, col)]
    ncols = len(facets.present(pre, col)) if row and col else min(len(panels), OVERLAY_WRAP)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(4.6 * ncols + 1.6, 3.4 * nrows + 0.8),
        squeeze=False,
        constrained_layout=True,
    )
    colors = dict(zip(hues, sns.color_palette("viridis", len(hues))))
    for ax, (row_value, col_value) in zip(axes.flat, panels):
        panel = facets.select(facets.select(pre, row, row_value), col, col_value)
        for hue_value in hues:
            part = facets.select(panel, hue, hue_value)
            if part.empty:
                continue
            stats = part.groupby("layer").agg(
                med=("grad_norm", "median"),
                lo=("grad_norm", "min"),
                hi=("grad_norm", "max"),
                pred=("shown", "median"),
            )
            color = colors[hue_value]
            ax.errorbar(
                stats.index,
                stats["med"],
                yerr=[stats["med"] - stats["lo"], stats["hi"] - stats["med"]],
                fmt="o",
                ms=3.5,
                color=color,
                capsize=2,
                lw=0.8,
            )
            label = "prediction" if hue is None else str(hue_value)
            ax.plot(stats.index, stats["pred"], "-", color=color, lw=1.3, label=label)
        ax.set(yscale="log", xlabel="Linear layer (0 = input side)", ylabel="|dL/dz_l| at step 0")
        ax.set_title(encoded.panel_title(row_value, col_value), fontsize=10)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    legend = {
        label: handle for ax in axes.flat for handle, label in zip(*ax.get_legend_handles_labels())
    }
    fig.legend(
        legend.values(),
        legend.keys(),
        loc="outside right center",
        fontsize=8,
        title=f"line: prediction\n{hue}" if hue else "line: prediction",
    )
    return fig


def bulk_error(frame: pd.DataFrame) -> list[plt.Figure]:
    """Dot plot of each run's bulk-factor relative error (mean and range over seeds)."""
    table = bulk_error_table(frame)
    if table.empty:
        return []
    title = "theory vs measurement per run (interior layers)"
    if len(table) > BULK_ERROR_MAX_ROWS:
        worst = table["rel_error"].abs().sort_values(ascending=False).index[:BULK_ERROR_MAX_ROWS]
        table = table.loc[sorted(worst)].reset_index(drop=True)
        title += f": the {BULK_ERROR_MAX_ROWS} runs with the largest errors"
    swept = facets.swept(table, RUN_AXES) or ["act"]
    texts = readable(table, swept)
    label = texts[swept].apply(
        lambda r: ", ".join(axis_value(a, str(v)) for a, v in r.items()), axis=1
    )
    y = np.arange(len(table))
    err = 100 * table["rel_error"]
    lo = 100 * (table["low"] / table["predicted"] - 1)
    hi = 100 * (table["high"] / table["predicted"] - 1)
    fig, ax = plt.subplots(figsize=(8.5, 0.24 * len(table) + 2.0), constrained_layout=True)
    ax.axvspan(-1.5, 1.5, color="0.92", label="+-1.5% (tests' tolerance at depth 20)")
    ax.axvline(0, color="grey", lw=1)
    ax.errorbar(
        err,
        y,
        xerr=[err - lo, hi - err],
        fmt="o",
        ms=4,
        color="C3",
        capsize=2,
        label="mean over seeds (bars: min to max)",
    )
    for yi, e in zip(y, err):
        ax.annotate(f"{e:+.2f}%", (e, yi), xytext=(6, 3), textcoords="offset points", fontsize=7)
    ax.set_yticks(y, label, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="bulk factor of dL/dz: measured / predicted - 1 (%)", title=title)
    fig.legend(fontsize=8, loc="outside lower center", ncols=2)
    bulks = _with_config(replica_bulks(frame), frame)
    bulks = bulks[(bulks["tensor"] == "preact") & bulks["run_key"].isin(table["run_key"])]
    data = pool(bulks, ["run_key", *swept], "measured", ("mean", "min", "max"))
    return [record(fig, data, Pooling("points", "mean", "bars min to max"))]


MAKERS: dict[str, Callable[[pd.DataFrame], list[plt.Figure]]] = {
    "phase_diagram": phase_diagram,
    "batchnorm_depth": batchnorm_depth,
    "glorot_fig8": glorot_fig8,
    "prediction_overlay": prediction_overlay,
    "bulk_error": bulk_error,
}


def figure_plan(
    runs: RunSet, makers: Mapping[str, Callable[[pd.DataFrame], list[plt.Figure]]] = MAKERS
) -> dict[str, Callable[[], list[plt.Figure]]]:
    """Name -> figure of `makers` for the report; the step-0 frame is read once, on first use."""
    cache: dict[str, pd.DataFrame] = {}

    def frame() -> pd.DataFrame:
        if "frame" not in cache:
            cache["frame"] = theory_frame(runs)
        return cache["frame"]

    return {name: (lambda make=make: make(frame())) for name, make in makers.items()}


def main(argv: list[str] | None = None) -> int:
    """Write every theory figure the runs under the given paths support, and the error table."""
    parser = argparse.ArgumentParser(
        prog="python -m gradsweep.theory_figures", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "paths", nargs="+", help="sweep dirs, run dirs or run files, then the output dir"
    )
    args = parser.parse_args(argv)
    if len(args.paths) < 2:
        parser.error("give at least one sweep dir and an output dir")
    *inputs, out_dir = args.paths
    out = Path(out_dir)
    runs = RunSet(inputs)
    if runs.schema is None:
        print(
            f"theory_figures: error: no readable run files under {', '.join(inputs)}",
            file=sys.stderr,
        )
        return 2
    out.mkdir(parents=True, exist_ok=True)
    frame = theory_frame(runs)
    bulk_error_table(frame).to_csv(out / "bulk_error.csv", index=False)
    for name, make in MAKERS.items():
        figs = make(frame)
        if not figs:
            print(f"{name}: not drawn ({SKIPPED[name]})")
            continue
        for path in save_figures(figs, out, name).paths:
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
