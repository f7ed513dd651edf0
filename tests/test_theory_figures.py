"""The theory presets run, and each draws its own figures (and only those) from the run files."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from gradsweep import theory_figures as TF
from gradsweep.drawn import drawn
from gradsweep.schema import AXIS_PRIORITY, CONFIG_COLUMNS
from gradsweep.store import RunSet

SMALL = {  # the presets at width 64 and fewer replicas, so that all three run in seconds
    "edge_of_chaos": ["width=64", "replicas=1"],
    "batchnorm_depth": ["width=64", "replicas=2", "depth=5,10"],
    "glorot_fig8": ["width=64", "replicas=2"],
}
EXPECTED = {
    "edge_of_chaos": {"phase_diagram", "prediction_overlay", "bulk_error"},
    "batchnorm_depth": {"batchnorm_depth", "prediction_overlay", "bulk_error"},
    "glorot_fig8": {"glorot_fig8", "prediction_overlay", "bulk_error"},
}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("presets")
    out = {}
    for name, overrides in SMALL.items():
        done = run_cli(
            "-m", f"experiment={name}", *overrides, f"hydra.sweep.dir={root / name}", cwd=root
        )
        assert done.returncode == 0, done.stderr[-2000:]
        out[name] = root / name
    return out


@pytest.mark.parametrize("name", list(SMALL))
def test_each_preset_draws_its_figures(sweeps: dict[str, Path], name: str, tmp_path: Path) -> None:
    done = run_cli(
        str(sweeps[name]), str(tmp_path), cwd=tmp_path, module="gradsweep.theory_figures"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    drawn = {p.stem for p in tmp_path.glob("*.png")}
    assert drawn == EXPECTED[name]
    table = pd.read_csv(tmp_path / "bulk_error.csv")
    assert len(table) > 0 and np.isfinite(table["rel_error"]).all()


def test_bulk_error_table_agrees_with_theory_for_relu(sweeps: dict[str, Path]) -> None:
    frame = TF.theory_frame(RunSet([sweeps["edge_of_chaos"]]))
    table = TF.bulk_error_table(frame)
    relu = table[(table["act"] == "relu") & (table["depth"] == 40)]
    np.testing.assert_allclose(relu["predicted"], np.sqrt(relu["sigma_w2"] / 2), rtol=1e-9)
    assert relu["rel_error"].abs().max() < 0.03


def test_phase_diagram_needs_three_sigma_w2_values(sweeps: dict[str, Path]) -> None:
    frame = TF.theory_frame(RunSet([sweeps["edge_of_chaos"]]))
    assert len(TF.phase_diagram(frame)) == 1
    two = frame[frame["sigma_w2"].round(4).isin([0.25, 0.5])]
    assert TF.phase_diagram(two) == []
    plt.close("all")


def test_files_without_prediction_columns_get_no_overlay(sweeps: dict[str, Path]) -> None:
    frame = TF.theory_frame(RunSet([sweeps["glorot_fig8"]])).drop(
        columns=["pred_preact_factor", "pred_preact_norm"]
    )
    assert TF.prediction_overlay(frame) == []
    assert TF.bulk_error(frame) == []
    assert len(TF.glorot_fig8(frame)) == 1
    plt.close("all")


def test_run_axes_are_the_schema_axes_and_sigma_w2() -> None:
    assert TF.RUN_AXES[: len(AXIS_PRIORITY) + 1] == (
        *AXIS_PRIORITY[: AXIS_PRIORITY.index("init_scale")],
        "sigma_w2",
        *AXIS_PRIORITY[AXIS_PRIORITY.index("init_scale") :],
    )
    assert set(TF.RUN_AXES) == {*CONFIG_COLUMNS, "sigma_w2"}


@pytest.mark.parametrize("name", list(SMALL))
def test_no_theory_figure_pools_configurations(sweeps: dict[str, Path], name: str) -> None:
    frame = TF.theory_frame(RunSet([sweeps[name]]))
    for maker, make in TF.MAKERS.items():
        for fig in make(frame):
            data = drawn(fig).data
            assert (data["configs"] == 1).all(), f"{name}: {maker} pools configurations"
        plt.close("all")


def test_phase_diagram_draws_one_cell_per_configuration(sweeps: dict[str, Path]) -> None:
    """Every act x depth x sigma_w^2 of edge_of_chaos is its own cell: no median over sigma_w^2."""
    frame = TF.theory_frame(RunSet([sweeps["edge_of_chaos"]]))
    (fig,) = TF.phase_diagram(frame)
    cells = drawn(fig).data
    assert len(cells) == frame["run_key"].nunique() == 2 * 4 * 7
    relu = cells[(cells["act"] == "relu") & (cells["depth"] == 40)]
    np.testing.assert_allclose(
        10 ** relu.sort_values("sigma_w2")["mean"],
        np.sqrt(np.sort(relu["sigma_w2"]) / 2),
        rtol=0.03,
    )
    titles = [ax.get_title().splitlines()[0] for ax in fig.axes if ax.get_title()]
    assert titles == ["act = relu", "act = tanh"]
    plt.close("all")


def test_overlay_draws_each_batchnorm_value_in_its_own_file(three_axis_sweep: Path) -> None:
    frame = TF.theory_frame(RunSet([three_axis_sweep]))
    figs = TF.prediction_overlay(frame)
    assert [drawn(f).page.title for f in figs] == ["batchnorm off", "batchnorm on"]
    for fig in figs:
        data = drawn(fig).data
        assert (data["configs"] == 1).all() and (data["seeds"] == 2).all()
        assert {ax.get_title() for ax in fig.axes if ax.get_visible()} == {
            f"depth = {d} | act = {a}" for d in (3, 5) for a in ("relu", "sigmoid")
        }
    plt.close("all")


def test_phase_diagram_splits_by_norm_and_residual_and_marks_only_plain_nets(
    new_axes_sweep: Path,
) -> None:
    frame = TF.theory_frame(RunSet([new_axes_sweep]))
    (fig,) = TF.phase_diagram(frame)
    cells = drawn(fig).data
    assert (cells["configs"] == 1).all() and len(cells) == 12
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 4
    critical = [t for t in titles if "critical sigma_w^2 = 2" in t]
    assert critical == [
        "residual off | norm = none\ncritical sigma_w^2 = 2 (dashed)\n"
        "cells: gain per layer; <1 vanishing, >1 exploding"
    ]
    assert sum("no critical sigma_w^2" in t for t in titles) == 3
    plt.close("all")
