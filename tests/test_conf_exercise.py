"""The seed exercise, section by section: the numbers behave as the exercise says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gradsweep.config import RunConfig, run_values
from gradsweep.experiment import run_experiment

EXERCISE = run_values(RunConfig())


def weight_norms(stats: pd.DataFrame, column: str = "grad_norm", step: int = 0) -> np.ndarray:
    """Per-layer weight-gradient norms at `step`, input side first."""
    rows = stats[(stats["tensor"] == "weight") & (stats["step"] == step) & (stats["replica"] == 0)]
    return rows.sort_values("layer")[column].to_numpy()


def in_out_ratio(**overrides) -> float:
    norms = weight_norms(run_experiment({**EXERCISE, **overrides}).stats)
    return norms[0] / norms[-1]


def test_section1_sigmoid_vanishes() -> None:
    assert in_out_ratio() < 1e-3  # "far below 0.01": 6.5e-5 measured


def test_section2_tanh_vanishes_less_than_sigmoid() -> None:
    tanh = in_out_ratio(act="tanh")
    assert tanh < 0.1
    assert tanh > 100 * in_out_ratio()


def test_section3_large_init_explodes_and_clipping_bounds_every_norm() -> None:
    exploding = {**EXERCISE, "act": "identity", "init": "normal", "init_scale": 5.0}
    assert (weight_norms(run_experiment(exploding).stats) > 100).all()
    clipped = run_experiment({**exploding, "clip": 1.0}).stats
    params = clipped[clipped["tensor"] != "preact"]
    assert (params["grad_norm_clipped"] <= 1.0).all()
    assert np.sqrt((params["grad_norm_clipped"] ** 2).sum()) == pytest.approx(1.0, rel=1e-5)
    assert (params["grad_norm"] > 100).any()


def test_section4_relu_keeps_gradients_flowing() -> None:
    assert in_out_ratio(act="relu", output_act=False) > 0.01


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
def test_section4_batchnorm_evens_out_per_layer_gradient_std(act: str) -> None:
    stats = run_experiment({**EXERCISE, "act": act, "batchnorm": True, "output_act": False}).stats
    std = weight_norms(stats, "grad_std")
    assert std.max() / std.min() < 100
    if act == "sigmoid":
        plain = weight_norms(run_experiment(EXERCISE).stats, "grad_std")
        assert plain.max() / plain.min() > 1000


def test_section5_statistics_and_histograms_describe_every_gradient() -> None:
    stats = run_experiment({**EXERCISE, "act": "relu", "output_act": False}).stats
    weights = stats[stats["tensor"] == "weight"]
    assert (weights["grad_min"] <= weights["grad_mean"]).all() and (
        weights["grad_mean"] <= weights["grad_max"]
    ).all()
    assert (weights["grad_std"] > 0).all()
    assert (stats["grad_frac_zero"][stats["tensor"] == "preact"] > 0.2).any()  # dead ReLU units
    for hist, numel in zip(stats["grad_hist"], stats["numel"]):
        assert hist.sum() == numel


def test_exploding_preset_at_depth_20_diverges_writes_and_exits_zero(cli, tmp_path: Path) -> None:
    result = cli(
        "-m",
        "experiment=ex3_exploding",
        "depth=20",
        "clip=null",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert result.returncode == 0, result.stderr
    files = list((tmp_path / "sweep").glob("*/grad_stats.parquet"))
    assert len(files) == 1
    stats = pd.read_parquet(files[0])
    assert set(stats["status"]) == {"diverged"}
    assert stats["diverged_step"].iloc[0] == 1
    after = stats[stats["step"] >= 1]
    assert (after["grad_n_nan"] + after["grad_n_inf"]).sum() > 0
    assert (stats[stats["step"] == 0]["grad_n_nan"] == 0).all()
