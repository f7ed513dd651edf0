"""Figures that put mean-field theory next to the measured back-propagated gradients.

Every figure takes the step-0 frame of `theory_frame` (preact and weight rows
with their configuration and the run files' prediction columns) and returns a
matplotlib Figure, or None when the sweep lacks what the figure needs.
`python -m gradsweep.theory_figures SWEEP_DIR... OUT_DIR` writes them as PNG,
with the bulk-factor error table as CSV.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from gradsweep import theory  # noqa: E402
from gradsweep.predictions import PRED_COLUMNS  # noqa: E402
from gradsweep.store import RunSet  # noqa: E402

PLAIN_SKIP = (1, 1)
BN_MIN_DEPTH = 10
BN_SKIP = (
    3,
    1,
)  # BatchNorm: the first layers are not yet at the fixed point; the last sees the loss
GLOROT_MAX_PANELS = 4
OVERLAY_MAX_LINES = 8
OVERLAY_WRAP = 3
BULK_ERROR_MAX_ROWS = 60
RUN_AXES = ("act", "depth", "sigma_w2", "init", "batchnorm", "batch_size", "width", "bias_init")

CAPTIONS = {
    "phase_diagram": "(t1) Order-to-chaos phase diagram: measured gain of dL/dz per layer at step 0, "
    "(|dL/dz_0| / |dL/dz_{L-1}|)^(1/(L-1)), over sigma_w^2 and depth; dashed: the critical "
    "sigma_w^2 where chi_1 = 1 (tanh 1, ReLU 2), on a cell when it is on the grid.",
    "batchnorm_depth": "(t2) BatchNorm makes gradients explode with depth at a rate set by the batch size alone: "
    "measured dL/dz norms and per-layer factors against Yang et al.'s finite-batch rate.",
    "glorot_fig8": "(t3) Glorot & Bengio (2010) Fig. 8: under a shrinking tanh init dL/dz shrinks toward the "
    "input while the weight gradients stay level.",
    "prediction_overlay": "(t4) Measured |dL/dz| per layer at step 0 (markers: median over replicas, bars: min "
    "to max) against the mean-field prediction each run file carries (lines), anchored at "
    "the measured output layer (BatchNorm runs: at the last hidden layer, as the step from the output "
    "layer depends on the loss).",
    "bulk_error": "(t5) Relative error of the bulk factor (geometric-mean per-layer factor over interior "
    "layers) per run, measured against predicted; bars span the replicas.",
}
SKIPPED = {
    "phase_diagram": "fewer than three sigma_w^2 values without BatchNorm",
    "batchnorm_depth": "BatchNorm runs do not vary in depth or batch size, or none has 10 layers",
    "glorot_fig8": "needs 2 to 4 tanh initialisations without BatchNorm to compare",
    "prediction_overlay": "run files carry no prediction columns",
    "bulk_error": "no run has prediction columns and enough layers for a bulk factor",
}


def theory_frame(runs: RunSet) -> pd.DataFrame:
    """Step-0 preact and weight rows of every run, with configuration, sigma_w^2 and any prediction columns."""
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
    """Per run, replica and tensor: measured bulk factor (and predicted, for preact) over interior layers."""
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
    return frame.drop_duplicates("run_key").set_index("run_key")[list(RUN_AXES)]


def bulk_error_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run: measured bulk factor of dL/dz (mean and spread over replicas), predicted, relative error."""
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


def _gain_per_layer(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run: mean over replicas of log10 (|dL/dz_0| / |dL/dz_{L-1}|) / (L - 1)."""
    pre = frame[(frame["tensor"] == "preact") & (frame["depth"] > 1)]
    first = pre[pre["layer"] == 0].set_index(["run_key", "replica"])["grad_norm"]
    last = pre[pre["layer"] == pre["depth"] - 1].set_index(["run_key", "replica"])["grad_norm"]
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(first / last.reindex(first.index))
    configs = _configs(frame)
    per_run = logs.groupby(level="run_key").mean()
    per_layer = per_run / (configs["depth"].reindex(per_run.index) - 1)
    return configs.join(per_layer.rename("log10_gain"), how="inner").reset_index()


def _mark_critical(ax: plt.Axes, sw2_values: np.ndarray, critical: float, row: int) -> None:
    """Dashed box around the heatmap cell at the critical sigma_w^2, a dashed line between cells, nothing off the grid."""
    if not sw2_values.min() <= critical <= sw2_values.max():
        return
    on_grid = np.flatnonzero(np.isclose(sw2_values, critical, rtol=1e-3))
    if on_grid.size:
        ax.add_patch(Rectangle((on_grid[0], row), 1, 1, fill=False, ls="--", lw=2, ec="black"))
        return
    x = float(np.interp(math.log(critical), np.log(sw2_values), np.arange(len(sw2_values)))) + 0.5
    ax.plot([x, x], [row, row + 1], color="black", ls="--", lw=2)


def phase_diagram(frame: pd.DataFrame) -> plt.Figure | None:
    """Heatmap of the measured log10 gain per layer over (sigma_w^2, depth) per activation, or over (sigma_w^2, act)."""
    plain = frame[~frame["batchnorm"].astype(bool)]
    if plain["sigma_w2"].nunique() < 3:
        return None
    gains = _gain_per_layer(plain)
    gains["sigma_w2"] = gains["sigma_w2"].round(4)
    by_depth = gains["depth"].nunique() > 1
    panels = sorted(gains["act"].unique()) if by_depth else [None]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(
            4.8 * len(panels) + 1,
            0.55 * max(gains["depth"].nunique() if by_depth else gains["act"].nunique(), 4) + 2,
        ),
        squeeze=False,
        constrained_layout=True,
    )
    limit = max(float(np.nanmax(np.abs(gains["log10_gain"]))), 1e-3)
    for ax, act in zip(axes[0], panels):
        part = gains if act is None else gains[gains["act"] == act]
        rows = "depth" if by_depth else "act"
        grid = part.pivot_table(index=rows, columns="sigma_w2", values="log10_gain", aggfunc="mean")
        sns.heatmap(
            grid,
            ax=ax,
            cmap="vlag",
            vmin=-limit,
            vmax=limit,
            annot=10**grid,
            fmt=".3g",
            cbar=ax is axes[0][-1],
            cbar_kws={"label": "log10 gain of dL/dz per layer"},
        )
        xs = grid.columns.to_numpy(dtype=float)
        for i, row_value in enumerate(grid.index):
            _mark_critical(
                ax, xs, theory.critical_sigma_w2(act if act is not None else row_value), i
            )
        ax.invert_yaxis()
        title = (
            f"{act}: critical sigma_w^2 = {theory.critical_sigma_w2(act):.3g}"
            if act
            else "all activations"
        )
        ax.set(
            xlabel="sigma_w^2 (fan_in x Var W)",
            ylabel="depth (Linear layers)" if by_depth else "activation",
            title=title + " (dashed)\ncells: gain per layer; <1 vanishing, >1 exploding",
        )
        ax.set_xticklabels([f"{v:g}" for v in xs])
    return fig


def batchnorm_depth(frame: pd.DataFrame) -> plt.Figure | None:
    """Left: |dL/dz_l| / |dL/dz_{L-2}| against layers below the last hidden one; right: bulk factor vs depth; theory lines."""
    bn = frame[
        frame["batchnorm"].astype(bool) & (frame["tensor"] == "preact") & (frame["depth"] >= 3)
    ].copy()
    if (
        bn.empty
        or bn["depth"].max() < BN_MIN_DEPTH
        or (bn["depth"].nunique() < 2 and bn["batch_size"].nunique() < 2)
    ):
        return None
    last_hidden = bn[bn["layer"] == bn["depth"] - 2].set_index(["run_key", "replica"])["grad_norm"]
    bn = bn[bn["layer"] <= bn["depth"] - 2]
    bn["below"] = bn["depth"] - 2 - bn["layer"]
    bn["relative"] = (
        bn["grad_norm"].to_numpy()
        / last_hidden.reindex(pd.MultiIndex.from_frame(bn[["run_key", "replica"]])).to_numpy()
    )
    combos = sorted(set(zip(bn["act"], bn["batch_size"])))
    palette = dict(zip(combos, sns.color_palette("deep", len(combos))))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 4.6), constrained_layout=True)
    median = bn.groupby(["act", "batch_size", "depth", "below"], as_index=False)[
        "relative"
    ].median()
    for (act, batch), part in median.groupby(["act", "batch_size"]):
        left.scatter(
            part["below"],
            part["relative"],
            s=14,
            color=palette[act, batch],
            alpha=0.7,
            label=f"{act}, B={batch}: measured (all depths)",
        )
        rate = theory.batchnorm_rate(act, int(batch))
        k = np.arange(part["below"].max() + 1)
        left.plot(
            k,
            rate ** (k / 2),
            color=palette[act, batch],
            lw=1.5,
            label=f"{act}, B={batch}: theory sqrt(rate) = {math.sqrt(rate):.4f} per layer",
        )
    left.set(
        yscale="log",
        xlabel="layers below the last hidden layer, L-2-l",
        ylabel="|dL/dz_l| / |dL/dz_{L-2}| at step 0 (median over replicas)",
        title="gradient norm grows toward the input",
    )
    left.legend(fontsize=8, loc="upper left")

    bulks = replica_bulks(frame[frame["batchnorm"].astype(bool) & (frame["tensor"] == "preact")])
    bulks = bulks.join(_configs(frame), on="run_key").dropna(subset=["measured"])
    for (act, batch), part in bulks.groupby(["act", "batch_size"]):
        stats = part.groupby("depth")["measured"].agg(["mean", "min", "max"]).reset_index()
        right.errorbar(
            stats["depth"],
            stats["mean"],
            yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
            fmt="o",
            color=palette[act, batch],
            capsize=3,
            label=f"{act}, B={batch}: measured",
        )
        right.axhline(
            math.sqrt(theory.batchnorm_rate(act, int(batch))),
            color=palette[act, batch],
            lw=1.5,
            label=f"{act}, B={batch}: theory",
        )
    for act in bulks["act"].unique():
        right.axhline(
            math.sqrt(theory.batchnorm_rate(act)),
            color="grey",
            ls=":",
            lw=1.2,
            label=f"{act}: large-batch limit {math.sqrt(theory.batchnorm_rate(act)):.4f}",
        )
    right.set(
        xlabel="depth (Linear layers)",
        ylabel="bulk factor |dL/dz_l| / |dL/dz_{l+1}|",
        title="per-layer factor (interior layers: skip first 3 and last 1)",
    )
    right.legend(fontsize=8)
    return fig


def glorot_fig8(frame: pd.DataFrame) -> plt.Figure | None:
    """dL/dz and dL/dW norms per layer on one axis per tanh initialisation (2 to 4, deepest network of each)."""
    tanh = frame[(frame["act"] == "tanh") & ~frame["batchnorm"].astype(bool)]
    if tanh.empty:
        return None
    deepest = tanh[tanh["depth"] == tanh.groupby(["init", "init_scale"])["depth"].transform("max")]
    combos = deepest[["init", "init_scale", "sigma_w2"]].drop_duplicates().sort_values("sigma_w2")
    if not 2 <= len(combos) <= GLOROT_MAX_PANELS:
        return None
    fig, axes = plt.subplots(
        1,
        len(combos),
        figsize=(5 * len(combos), 4.2),
        squeeze=False,
        sharey=True,
        constrained_layout=True,
    )
    bulks = replica_bulks(deepest).groupby(["run_key", "tensor"])["measured"].mean()
    for ax, combo in zip(axes[0], combos.itertuples(index=False)):
        part = deepest[
            (deepest["init"] == combo.init) & (deepest["init_scale"] == combo.init_scale)
        ]
        key = part["run_key"].iloc[0]
        for tensor, color, name in (
            ("preact", "C3", "back-propagated dL/dz_l"),
            ("weight", "C0", "weight gradient dL/dW_l"),
        ):
            rows = part[part["tensor"] == tensor]
            stats = rows.groupby("layer")["grad_norm"].agg(["median", "min", "max"])
            ax.plot(
                stats.index,
                stats["median"],
                "o-",
                color=color,
                label=f"{name}: x{bulks.get((key, tensor), math.nan):.3f} per layer",
            )
            ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.2)
        ax.set(
            yscale="log",
            xlabel="Linear layer (0 = input side)",
            title=f"tanh, init={combo.init} x{combo.init_scale:g}: sigma_w^2 = {combo.sigma_w2:.3g}",
        )
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("gradient L2 norm at step 0")
    fig.suptitle(
        "Glorot & Bengio Fig. 8: per-layer factors are interior geometric means (first and last skipped)"
    )
    return fig


def _overlay_axes(
    frame: pd.DataFrame,
) -> tuple[str | None, str | None, str | None, dict[str, object]]:
    """(hue, col, row, fixed): hue and facet axes from the swept configuration; the rest held at the deepest run's values."""
    configs = _configs(frame)
    swept = [a for a in RUN_AXES if configs[a].astype(str).nunique() > 1]
    hue = next(
        (a for a in ("sigma_w2", "init", "batch_size", "width", "bias_init") if a in swept), None
    )
    facets = [a for a in swept if a != hue]
    reference = configs.sort_values("depth", ascending=False).iloc[0]
    fixed = {a: reference[a] for a in facets[2:]}
    col, row = (facets + [None, None])[:2]
    return hue, col, row, fixed


def _ordered(values: pd.Series) -> list:
    """Distinct values in natural order (numbers by value, anything else by text)."""
    unique = list(values.unique())
    numeric = all(isinstance(v, (int, float, np.integer, np.floating)) for v in unique)
    return sorted(unique) if numeric else sorted(unique, key=str)


def _display_prediction(pre: pd.DataFrame) -> pd.Series:
    """pred_preact_norm; BatchNorm runs re-anchored at the measured last hidden layer, output layer left out (loss-specific)."""
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


def prediction_overlay(frame: pd.DataFrame) -> plt.Figure | None:
    """Measured |dL/dz_l| per layer (markers, replica median and range) and the run files' predictions (lines)."""
    if "pred_preact_norm" not in frame:
        return None
    pre = frame[(frame["tensor"] == "preact") & frame["pred_preact_norm"].notna()]
    if pre.empty:
        return None
    hue, col, row, fixed = _overlay_axes(pre)
    for axis, value in fixed.items():
        pre = pre[pre[axis] == value]
    pre = pre.assign(shown=_display_prediction(pre))
    hues = _ordered(pre[hue]) if hue else [None]
    if len(hues) > OVERLAY_MAX_LINES:
        hues = [
            hues[i] for i in np.linspace(0, len(hues) - 1, OVERLAY_MAX_LINES).round().astype(int)
        ]
    panels = [
        (r, c)
        for r in (_ordered(pre[row]) if row else [None])
        for c in (_ordered(pre[col]) if col else [None])
    ]
    ncols = pre[col].nunique() if row and col else min(len(panels), OVERLAY_WRAP)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(4.6 * ncols + 1.2, 3.4 * nrows + 0.6),
        squeeze=False,
        constrained_layout=True,
    )
    colors = dict(zip(hues, sns.color_palette("viridis", len(hues))))
    for ax, (row_value, col_value) in zip(axes.flat, panels):
        panel = pre[(pre[row] == row_value) if row else slice(None)]
        panel = panel[(panel[col] == col_value) if col else slice(None)]
        for hue_value in hues:
            part = panel if hue is None else panel[panel[hue] == hue_value]
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
            ax.plot(
                stats.index,
                stats["pred"],
                "-",
                color=color,
                lw=1.3,
                label=_value_label(hue, hue_value),
            )
        ax.set(yscale="log", xlabel="Linear layer (0 = input side)", ylabel="|dL/dz_l| at step 0")
        ax.set_title(
            ", ".join(f"{a}={v}" for a, v in ((row, row_value), (col, col_value)) if a), fontsize=10
        )
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    legend = {
        label: handle for ax in axes.flat for handle, label in zip(*ax.get_legend_handles_labels())
    }
    fig.legend(
        legend.values(),
        legend.keys(),
        loc="outside right upper",
        fontsize=8,
        title="line: prediction",
    )
    held = ", ".join(f"{a}={v}" for a, v in fixed.items())
    anchor = (
        "; BatchNorm lines anchored at the last hidden layer"
        if pre["batchnorm"].astype(bool).any()
        else ""
    )
    fig.suptitle(
        "measured (markers) vs mean-field prediction (lines)"
        + anchor
        + (f"; {held} shown" if held else "")
    )
    return fig


def _value_label(axis: str | None, value: object) -> str:
    """Legend text of one hue value."""
    if axis is None:
        return "prediction"
    return f"{axis}={value:.3g}" if isinstance(value, float) else f"{axis}={value}"


def bulk_error(frame: pd.DataFrame) -> plt.Figure | None:
    """Dot plot of each run's bulk-factor relative error (mean and range over replicas), one row per run."""
    table = bulk_error_table(frame)
    if table.empty:
        return None
    title = "theory vs measurement per run (interior layers)"
    if len(table) > BULK_ERROR_MAX_ROWS:
        worst = table["rel_error"].abs().sort_values(ascending=False).index[:BULK_ERROR_MAX_ROWS]
        table = table.loc[sorted(worst)].reset_index(drop=True)
        title += f": the {BULK_ERROR_MAX_ROWS} runs with the largest errors"
    configs = table[list(RUN_AXES)]
    swept = [a for a in RUN_AXES if configs[a].astype(str).nunique() > 1] or ["act"]
    label = table[swept].apply(
        lambda r: ", ".join(
            f"{a}={v:.3g}" if isinstance(v, float) else f"{a}={v}" for a, v in r.items()
        ),
        axis=1,
    )
    y = np.arange(len(table))
    err = 100 * table["rel_error"]
    lo = 100 * (table["low"] / table["predicted"] - 1)
    hi = 100 * (table["high"] / table["predicted"] - 1)
    fig, ax = plt.subplots(figsize=(8.5, 0.24 * len(table) + 1.6), constrained_layout=True)
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
        label="mean over replicas (bars: min to max)",
    )
    for yi, e in zip(y, err):
        ax.annotate(f"{e:+.2f}%", (e, yi), xytext=(6, 3), textcoords="offset points", fontsize=7)
    ax.set_yticks(y, label, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="bulk factor of dL/dz: measured / predicted - 1 (%)", title=title)
    ax.legend(fontsize=8, loc="lower right")
    return fig


MAKERS: dict[str, Callable[[pd.DataFrame], plt.Figure | None]] = {
    "phase_diagram": phase_diagram,
    "batchnorm_depth": batchnorm_depth,
    "glorot_fig8": glorot_fig8,
    "prediction_overlay": prediction_overlay,
    "bulk_error": bulk_error,
}


def figure_plan(runs: RunSet) -> dict[str, Callable[[], plt.Figure | None]]:
    """Name -> figure maker for the report; the step-0 frame is read once, on first use."""
    cache: dict[str, pd.DataFrame] = {}

    def frame() -> pd.DataFrame:
        if "frame" not in cache:
            cache["frame"] = theory_frame(runs)
        return cache["frame"]

    return {name: (lambda make=make: make(frame())) for name, make in MAKERS.items()}


def main(argv: list[str] | None = None) -> int:
    """Write every theory figure that the runs under the given paths support, and the bulk-error table."""
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
        fig = make(frame)
        if fig is None:
            print(f"{name}: not drawn ({SKIPPED[name]})")
            continue
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        print(out / f"{name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
