"""The presets that reproduce published results on residual networks and normalisation.

Each runs as `python -m gradsweep -m experiment=NAME` would; a small version in
the default run, the preset itself (and its report) marked slow.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

import gradsweep
from gradsweep.report import build_report

SMALL = {  # the paper presets at width 64, 2 replicas and two depths: seconds each
    "skipinit_depth": ["width=64", "replicas=2", "depth=10,30"],
    "residual_tanh": ["width=64", "replicas=2", "depth=20,80"],
}


def run_preset(name: str, out: Path, *overrides: str) -> pd.DataFrame:
    """Step-0 rows of the preset's sweep into `out`."""
    done = run_cli("-m", f"experiment={name}", *overrides, f"hydra.sweep.dir={out}", cwd=out.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    return gradsweep.load(out, steps=0)


def stream_ratios(rows: pd.DataFrame, by: list[str]) -> pd.Series:
    """Median over replicas of |dL/dh| squared, first residual layer over the last one."""
    stream = rows[rows["tensor"] == "stream"].sort_values("layer")
    per_replica = stream.groupby([*by, "replica"])["grad_norm"].agg(
        lambda norms: (norms.iloc[0] / norms.iloc[-1]) ** 2
    )
    return per_replica.groupby(by).median()


def log_ratios(rows: pd.DataFrame, by: list[str]) -> pd.Series:
    """Median over replicas of ln(|dL/dz_1| / |dL/dz_{L-2}|): the interior layers' total gain."""
    pre = rows[rows["tensor"] == "preact"]
    first = pre[pre["layer"] == 1].set_index([*by, "replica"])["grad_norm"]
    last = pre[pre["layer"] == pre["depth"] - 2].set_index([*by, "replica"])["grad_norm"]
    return np.log(first / last).groupby(by).median()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    root = tmp_path_factory.mktemp("papers")
    return {name: run_preset(name, root / name, *o) for name, o in SMALL.items()}


def test_skipinit_depth_small_batchnorm_linear_plain_exponential_skipinit_bounded(small) -> None:
    """De & Smith (2020): BatchNorm in the branch ~ depth, none ~ 2^depth, SkipInit bounded."""
    ratio = stream_ratios(small["skipinit_depth"], ["norm", "branch_scale", "depth"])
    assert 2.5 < ratio["batch", "1.0", 30] / ratio["batch", "1.0", 10] < 8  # linear: ~4 to 5
    assert ratio["none", "1.0", 30] / ratio["none", "1.0", 10] > 2.0**20  # x2 or more per layer
    assert (ratio.xs("inv_sqrt_depth", level="branch_scale") < 10).all()


def test_residual_tanh_small_skip_connections_make_growth_subexponential(small) -> None:
    """Yang & Schoenholz (2017): ln gain ~ sqrt(depth) with skip connections, ~ depth without."""
    gain = log_ratios(small["residual_tanh"], ["residual", "init_scale", "depth"])
    for scale in (0.70710678, 1.41421356):
        residual = gain[True, scale, 80] / gain[True, scale, 20]
        assert 1.5 < residual < 3.0, scale  # sqrt(4) = 2; exponential growth would give 4
    assert gain[False, 0.70710678, 80] / gain[False, 0.70710678, 20] > 3.5


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("papers_full")
    for name in ("skipinit_depth", "residual_tanh", "remedies_depth50"):
        run_preset(name, root / name)
    return {name: root / name for name in ("skipinit_depth", "residual_tanh", "remedies_depth50")}


@pytest.mark.slow
def test_skipinit_depth_reproduces_de_and_smith(full) -> None:
    ratio = stream_ratios(
        gradsweep.load(full["skipinit_depth"], steps=0), ["norm", "branch_scale", "depth"]
    )
    batch = ratio.xs(("batch", "1.0"))
    depths = batch.index.to_numpy(float)
    slope = np.polyfit(depths, batch.to_numpy(), 1)[0]
    assert 0.8 < slope < 1.25 and np.corrcoef(depths, batch.to_numpy())[0, 1] ** 2 > 0.98
    plain = ratio.xs(("none", "1.0"))
    assert (plain[50] / plain[10]) ** (1 / 40) > 2.0
    assert (ratio.xs("inv_sqrt_depth", level="branch_scale") < 6).all()


@pytest.mark.slow
def test_residual_tanh_reproduces_yang_and_schoenholz(full) -> None:
    gain = log_ratios(
        gradsweep.load(full["residual_tanh"], steps=0), ["residual", "init_scale", "depth"]
    )
    for scale in (0.70710678, 1.41421356):
        slope = math.log(gain[True, scale, 80] / gain[True, scale, 40]) / math.log(2)
        assert 0.35 < slope < 0.7, scale  # sqrt(depth): 0.5
    vanishing = gain[False, 0.70710678, 80] / gain[False, 0.70710678, 40]
    assert 0.9 < math.log(vanishing) / math.log(2) < 1.15  # exponential: ln gain ~ depth


@pytest.mark.slow
def test_remedies_depth50_which_remedy_keeps_the_gradient_level(full) -> None:
    gain = log_ratios(gradsweep.load(full["remedies_depth50"], steps=0), ["norm", "residual"])
    level = math.log(10)
    assert gain["none", False] < -30  # plain ReLU under PyTorch's default init vanishes
    assert gain["batch", False] > 5 and gain["none", True] > 4  # BatchNorm, residual: explode
    for remedy in (("layer", False), ("batch", True), ("layer", True)):
        assert abs(gain[remedy]) < level, remedy


@pytest.mark.slow
@pytest.mark.parametrize("name", ["skipinit_depth", "residual_tanh", "remedies_depth50"])
def test_the_report_draws_each_preset_with_the_remedies_figure(
    full, name: str, tmp_path: Path
) -> None:
    report = build_report([full[name]], tmp_path)
    assert "remedies" in report.figures and "prediction_overlay" in report.figures
    for record in report.figures["remedies"].records:
        assert (record.data["configs"] == 1).all()
