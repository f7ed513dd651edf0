"""Figures of a real act x depth x batchnorm sweep: each drawn number is one configuration's."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from gradsweep import figures
from gradsweep.bins import N_HIST_BINS
from gradsweep.drawn import drawn
from gradsweep.store import RunSet
from gradsweep.summary import scan, summarize

SWEPT = ["act", "depth", "batchnorm"]
CONFIGS = 8
REPLICAS = 2


@pytest.fixture(scope="module")
def frames(three_axis_sweep: Path) -> dict[str, object]:
    runs = RunSet([three_axis_sweep])
    totals, init = scan(runs)
    return {"runs": runs, "totals": totals, "init": init, "summary": summarize(totals, init)}


@pytest.fixture(scope="module")
def made(frames: dict[str, object]):
    """Every figure of figures.py that the sweep supports, as the report calls them."""
    runs, totals, init, summary = (frames[k] for k in ("runs", "totals", "init", "summary"))
    swept = figures.swept_axes(runs.runs)
    yield {
        "layer_profile": figures.layer_profile(init, swept),
        "ratio_heatmap": figures.ratio_heatmap(summary, swept),
        "batchnorm": figures.batchnorm(init, swept),
        "histograms": figures.histograms(figures.histogram_counts(runs), swept),
        "over_steps": figures.over_steps(figures.layer_steps(runs), swept),
        "clipping": figures.clipping(totals, swept),
        "devices": figures.devices(init),
    }
    plt.close("all")


def test_the_sweep_has_three_axes(frames) -> None:
    assert figures.swept_axes(frames["runs"].runs) == SWEPT


@pytest.mark.parametrize(
    "name", ["layer_profile", "ratio_heatmap", "batchnorm", "histograms", "over_steps"]
)
def test_every_drawn_number_is_the_seeds_of_one_configuration(made, name: str) -> None:
    (fig,) = made[name]
    data = drawn(fig).data
    assert set(SWEPT) <= set(data.columns), f"{name} drew without a key for a swept axis"
    assert (data["configs"] == 1).all(), f"{name} pooled configurations"
    assert (data["seeds"] == REPLICAS).all()
    assert len(data[SWEPT].drop_duplicates()) == CONFIGS


def test_nothing_to_show_is_an_empty_list(made) -> None:
    assert made["clipping"] == [] and made["devices"] == []


def test_ratio_heatmap_cells_are_medians_of_one_configuration(made, frames) -> None:
    """Each annotated cell is its configuration's median: BatchNorm off and on are never mixed."""
    medians = frames["summary"].groupby(SWEPT)[["weight_ratio", "preact_ratio"]].median()
    (fig,) = made["ratio_heatmap"]
    data = drawn(fig).data
    for row in data.itertuples(index=False):
        expected = medians.loc[(row.act, row.depth, row.batchnorm), row.quantity]
        np.testing.assert_allclose(row.median, expected, rtol=1e-12)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 4
    for ax in panels:
        on = ax.get_title().startswith("batchnorm on")
        metric = "weight_ratio" if "weight ratio" in ax.get_title() else "preact_ratio"
        shown = medians.xs(on, level="batchnorm")[metric]
        assert sorted(t.get_text() for t in ax.texts) == sorted(f"{v:.2g}" for v in shown)


def test_facet_titles_read_as_written(made) -> None:
    (fig,) = made["layer_profile"]
    titles = {ax.get_title() for ax in fig.axes}
    assert titles == {f"batchnorm {bn} | depth = {d}" for bn in ("off", "on") for d in (3, 5)}


def test_histograms_sum_the_seeds_of_each_configuration(made, three_axis_sweep: Path) -> None:
    (fig,) = made["histograms"]
    data = drawn(fig).data
    path = next(three_axis_sweep.glob("relu-d5-*-bn1-*/grad_stats.parquet"))
    raw = pd.read_parquet(path, columns=["step", "tensor", "grad_hist"])
    rows = raw[(raw["step"] == 0) & (raw["tensor"] == "weight")]
    expected = np.stack(rows["grad_hist"].to_list()).sum(axis=0)
    mine = data[(data["act"] == "relu") & (data["depth"] == 5) & data["batchnorm"]]
    assert len(mine) == N_HIST_BINS
    np.testing.assert_array_equal(mine.sort_values("bin")["sum"].to_numpy(), expected)
    np.testing.assert_allclose(mine["fraction"].sum(), 1.0)


@pytest.fixture(scope="module")
def remedy_axes(new_axes_sweep: Path) -> dict[str, object]:
    runs = RunSet([new_axes_sweep])
    totals, init = scan(runs)
    return {"runs": runs, "init": init, "summary": summarize(totals, init)}


def test_figures_split_by_norm_and_residual(remedy_axes) -> None:
    runs, init, summary = (remedy_axes[k] for k in ("runs", "init", "summary"))
    swept = figures.swept_axes(runs.runs)
    assert swept == ["init_scale", "norm", "residual"]
    for name, figs in {
        "layer_profile": figures.layer_profile(init, swept),
        "ratio_heatmap": figures.ratio_heatmap(summary, swept),
    }.items():
        (fig,) = figs
        data = drawn(fig).data
        assert {"norm", "residual", "init_scale"} <= set(data.columns), name
        assert (data["configs"] == 1).all() and (data["seeds"] == 2).all(), name
        assert len(data[["norm", "residual", "init_scale"]].drop_duplicates()) == 12, name
    (norms,) = figures.batchnorm(init, swept)
    assert set(drawn(norms).data["norm"]) == {"none", "layer"}
    (profile,) = figures.layer_profile(init, swept)
    titles = {ax.get_title() for ax in profile.axes}
    assert titles == {
        f"residual {r} | norm = {n}" for r in ("off", "on") for n in ("layer", "none")
    }
    plt.close("all")
