"""The theory presets run, and each draws its own figures (and only those) from the run files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from gradsweep import theory_figures as TF
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
    assert TF.phase_diagram(frame) is not None
    two = frame[frame["sigma_w2"].round(4).isin([0.25, 0.5])]
    assert TF.phase_diagram(two) is None


def test_files_without_prediction_columns_get_no_overlay(sweeps: dict[str, Path]) -> None:
    frame = TF.theory_frame(RunSet([sweeps["glorot_fig8"]])).drop(
        columns=["pred_preact_factor", "pred_preact_norm"]
    )
    assert TF.prediction_overlay(frame) is None
    assert TF.bulk_error(frame) is None
    assert TF.glorot_fig8(frame) is not None
