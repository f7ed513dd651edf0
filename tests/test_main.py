"""The Hydra app end to end: real multiruns in a subprocess, bad input, help."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from gradsweep.store import SCHEMA_VERSION, is_complete, read_metadata


def test_the_readme_sweep_writes_nine_complete_runs(cli, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = cli("-m", "act=sigmoid,tanh,relu", "depth=5,10,20", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    files = sorted(sweep.glob("*/grad_stats.parquet"))
    assert len(files) == 9 and all(is_complete(f) for f in files)
    frames = [pd.read_parquet(f) for f in files]
    assert len({f["run_key"].iloc[0] for f in frames}) == 9
    configs = {(f["act"].iloc[0], int(f["depth"].iloc[0])) for f in frames}
    assert configs == {(a, d) for a in ("sigmoid", "tanh", "relu") for d in (5, 10, 20)}
    for path, frame in zip(files, frames):
        depth = int(frame["depth"].iloc[0])
        assert sorted(frame["layer"].unique()) == list(range(depth))
        assert len(frame) == depth * 3  # weight, bias, preact per layer
        meta = read_metadata(path)
        assert meta["schema_version"] == str(SCHEMA_VERSION)
        assert f"act: {frame['act'].iloc[0]}" in meta["config"] and "hydra" not in meta["config"]
        assert path.parent.name.startswith(f"{frame['act'].iloc[0]}-d{depth}-")
    sigmoid20 = next(f for f in frames if (f["act"].iloc[0], f["depth"].iloc[0]) == ("sigmoid", 20))
    weights = (
        sigmoid20[sigmoid20["tensor"] == "weight"].sort_values("layer")["grad_norm"].to_numpy()
    )
    assert weights[0] / weights[-1] < 1e-8


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("act=foo", ["act=foo", "'foo'", "sigmoid, tanh, relu, leaky_relu, gelu, selu, identity"]),
        pytest.param("init=bogus", ["'bogus'", "xavier_uniform", "fan_in"], marks=pytest.mark.slow),
        ("depth=0", ["depth=0", "depth must be an integer >= 1"]),
        pytest.param(
            "width=-3", ["width=-3", "width must be an integer >= 1"], marks=pytest.mark.slow
        ),
        pytest.param(
            "threads=0", ["threads=0 is invalid", "an integer >= 1 or auto"], marks=pytest.mark.slow
        ),
        ("threads=many", ["threads='many' is invalid", "an integer >= 1 or auto"]),
        pytest.param(
            "init_scale=-1",
            ["init_scale=-1", "init_scale must be a finite number > 0"],
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "init_scale=inf",
            ["init_scale=inf", "init_scale must be a finite number > 0"],
            marks=pytest.mark.slow,
        ),
        ("lr=nan", ["lr=nan", "lr must be a finite number > 0"]),
        pytest.param(
            "clip=0",
            ["clip=0", "clip must be null (no clipping) or a finite number > 0"],
            marks=pytest.mark.slow,
        ),
        ("foo=1", ["foo", "not in 'AppConfig'"]),
        ("depth=abc", ["depth=abc", "'abc'"]),
    ],
)
def test_bad_input_fails_before_any_run_with_a_clear_message(
    cli, tmp_path: Path, override: str, needles: list
) -> None:
    sweep = tmp_path / "sweep"
    result = cli("-m", "act=sigmoid,tanh", override, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not list(sweep.glob("*/grad_stats.parquet"))


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["depth=5,0"], "depth=0 is invalid"),
        # jobs after the first share its composition: Hydra's type check still runs
        pytest.param(["depth=5,abc"], "depth=abc", marks=pytest.mark.slow),
        (["act=sigmoid,foo", "width=8,16"], "'foo'"),
        pytest.param(
            ["batchnorm=false,true", "width=8,-1"], "width=-1 is invalid", marks=pytest.mark.slow
        ),
        (["act=sigmoid,relu", "threads=1,2"], "threads=1,2 cannot be swept"),
        (["batchnorm=true", "norm=none,layer"], "batchnorm=true conflicts with norm=layer"),
        pytest.param(
            ["residual=true", "depth=3,2"],
            "residual=true is invalid with depth=2",
            marks=pytest.mark.slow,
        ),
        (
            ["residual=true", "branch_scale=1,'1/sqrt(depth)'"],
            "branch_scale='1/sqrt(depth)' is invalid",
        ),
    ],
)
def test_a_bad_value_inside_a_sweep_stops_it_before_the_first_run(
    cli, tmp_path: Path, overrides: list, needle: str
) -> None:
    sweep = tmp_path / "sweep"
    result = cli("-m", *overrides, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2 and needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not list(sweep.glob("*/grad_stats.parquet"))


def test_single_run_with_cuda_missing_fails_with_one_line(cli, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = cli("device=cuda", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert "device=cuda was requested but CUDA is not available" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "grad_stats.parquet").exists()


def test_help_and_cfg_job_behave_as_in_any_hydra_app(cli) -> None:
    help_text = cli("--help").stdout
    assert "gradsweep" in help_text and "act: sigmoid" in help_text and "depth: 5" in help_text
    job = cli("--cfg", "job", "act=relu", "clip=1.0").stdout
    assert "act: relu" in job and "clip: 1.0" in job and "hydra:" not in job


@pytest.mark.slow
def test_a_sweep_over_every_axis_at_once(cli, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = cli(
        "-m",
        "act=sigmoid,relu",
        "depth=5,20",
        "init_scale=0.5,1,5",
        "batchnorm=false,true",
        "clip=null,1.0",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr
    files = list(sweep.glob("*/grad_stats.parquet"))
    assert len(files) == 48
    frame = pd.concat(pd.read_parquet(f) for f in files)
    assert (
        frame.groupby(["act", "depth", "init_scale", "batchnorm"])["clip"]
        .apply(lambda c: c.isna().any())
        .all()
    )
    clipped = frame[frame["clip"].notna() & (frame["tensor"] != "preact")]
    assert (clipped["grad_norm_clipped"] <= 1.0).all()
    assert set(frame[frame["batchnorm"]]["tensor"]) >= {"bn_weight", "bn_bias"}
