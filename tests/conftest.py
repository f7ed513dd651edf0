"""Shared helpers: run the real gradsweep CLI in a subprocess; probe inputs and comparisons."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import gradsweep.probe as probe_module
from gradsweep.probe import GradientProbe, StepArrays, TensorSpec
from gradsweep.store import STATS_FILE, read_metadata, read_run

REPO = Path(__file__).resolve().parents[1]


def run_cli(
    *args: str, cwd: Path, module: str = "gradsweep", timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -m <module> ARGS` from `cwd`, with the repo's conf/, capturing text output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli(tmp_path: Path):
    """Run the CLI with tmp_path as working directory (so outputs/ lands there)."""
    return lambda *args, **kw: run_cli(*args, cwd=tmp_path, **kw)


@pytest.fixture(scope="session")
def make_sweep(tmp_path_factory: pytest.TempPathFactory):
    """Run a real multirun with the given overrides into a fresh dir; return the sweep dir."""

    def make(name: str, *overrides: str) -> Path:
        out = tmp_path_factory.mktemp(name)
        result = run_cli("-m", *overrides, f"hydra.sweep.dir={out}", cwd=out)
        assert result.returncode == 0, result.stderr
        return out

    return make


THREE_AXES = ["act=sigmoid,relu", "depth=3,5", "batchnorm=false,true", "replicas=2", "steps=2"]


@pytest.fixture(scope="session")
def three_axis_sweep(make_sweep) -> Path:
    """A real multirun over act x depth x batchnorm: 8 runs of 2 replicas, 3 logged steps."""
    return make_sweep("three_axes", *THREE_AXES)


NEW_AXES = ["norm=none,layer", "residual=false,true", "init=fan_in", "init_scale=0.5,1.0,2.0"]


@pytest.fixture(scope="session")
def new_axes_sweep(make_sweep) -> Path:
    """A real ReLU multirun over norm x residual x sigma_w^2: 12 runs of 2 replicas, depth 4."""
    return make_sweep(
        "new_axes",
        *NEW_AXES,
        "act=relu",
        "output_act=false",
        "depth=4",
        "width=16",
        "replicas=2",
        "steps=0",
    )


@contextmanager
def mounted_tmpfs(path: Path, size: str = "64k", read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size` at `path`, or a read-only one: a full or read-only disk, even for root.

    Skips the test where mounting is not permitted (not root, no CAP_SYS_ADMIN).
    """
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        pytest.skip("no mount command: cannot simulate a full or read-only disk")
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to simulate a full or read-only disk: {mount.stderr}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def sweep_cmd(sweep_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "gradsweep", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]


def run_sweep(sweep_dir: Path, *overrides: str, expect_rc: int = 0) -> subprocess.CompletedProcess:
    """Run `python -m gradsweep -m ...` into `sweep_dir`; check its exit status.

    Without OMP_NUM_THREADS, whatever the calling shell has: the `threads` key alone
    decides each run's thread count, under every launcher.
    """
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["HYDRA_FULL_ERROR"] = "0"
    proc = subprocess.run(
        sweep_cmd(sweep_dir, *overrides),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == expect_rc, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def stats_files(sweep_dir: Path) -> dict[str, Path]:
    """Run dir name -> its complete statistics file."""
    return {p.parent.name: p for p in sorted(sweep_dir.glob(f"*/{STATS_FILE}"))}


def run_files(sweep_dir: Path) -> set[str]:
    """Files a sweep left in its run dirs but Hydra's log and records, relative to the sweep dir."""
    return {
        str(p.relative_to(sweep_dir))
        for p in sweep_dir.glob("*/*")
        if p.is_file() and p.name != "gradsweep.log"
    }


def assert_stats_close(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal to rounding: numbers to rtol 1e-5, atol 1e-6; labels exactly; histograms to edge flips.

    Rounding can move an element across a histogram bin edge, so a histogram may
    differ by a couple of elements. A Linear bias followed by BatchNorm has no
    effect on the output: its gradient is zero up to rounding noise, so only its
    element count is compared, and Adam, which normalises that noise into
    lr-sized steps, makes the bias itself (param_norm, param_std) follow the noise.
    """
    assert list(a.columns) == list(b.columns)
    noise = (a["grad_norm"] <= 1e-6 * a["total_grad_norm"]).to_numpy()
    loose = ["grad_hist", "grad_frac_zero"]
    params = ["param_norm", "param_std"]
    pd.testing.assert_frame_equal(
        a.drop(columns=loose + params), b.drop(columns=loose + params), rtol=1e-5, atol=1e-6
    )
    pd.testing.assert_frame_equal(
        a.loc[~noise, params], b.loc[~noise, params], rtol=1e-5, atol=1e-6
    )
    moved = ((a["grad_frac_zero"] - b["grad_frac_zero"]).abs() * a["numel"]).to_numpy()
    assert (moved[~noise] <= 1 + 1e-9).all()
    for is_noise, hist_a, hist_b in zip(noise, a["grad_hist"], b["grad_hist"]):
        assert (hist_a is None) == (hist_b is None)
        if hist_a is not None:
            assert hist_a.sum() == hist_b.sum() and (is_noise or abs(hist_a - hist_b).sum() <= 4)


def assert_same_run_file(path_a: Path, path_b: Path, exact: bool = True) -> None:
    """The same table and gradsweep metadata, number for number (or to rounding)."""
    frame_a, frame_b = read_run(path_a), read_run(path_b)
    if exact:
        pd.testing.assert_frame_equal(frame_a, frame_b, check_exact=True)
    else:
        assert_stats_close(frame_a, frame_b)
    meta_a, meta_b = read_metadata(path_a), read_metadata(path_b)
    summary_a, summary_b = (pd.read_json(io.StringIO(m.pop("summary"))) for m in (meta_a, meta_b))
    assert meta_a == meta_b
    if exact:
        pd.testing.assert_frame_equal(summary_a, summary_b, check_exact=True)
    else:
        pd.testing.assert_frame_equal(summary_a, summary_b, rtol=1e-5)


def assert_same_sweep(a: Path, b: Path, exact: bool = True) -> None:
    """Same run dirs and files; per run, the same table and gradsweep metadata."""
    assert run_files(a) == run_files(b)
    files_a, files_b = stats_files(a), stats_files(b)
    assert files_a.keys() == files_b.keys() and files_a
    for name in files_a:
        assert_same_run_file(files_a[name], files_b[name], exact)


def negative_nan(dtype: type) -> np.generic:
    """A NaN with its sign bit set."""
    bits = {np.float32: np.uint32(0xFFC00000), np.float64: np.uint64(0xFFF8000000000000)}[dtype]
    return np.array([bits]).view(dtype)[0]


def edge_values(dtype: type) -> np.ndarray:
    """Zeros of both signs, subnormals, NaN and Inf, and both sides of every bin edge."""
    edges = 2.0 ** np.arange(-41, 16, dtype=np.float64)
    at = edges.astype(dtype)
    below = np.nextafter(at, dtype(0))
    specials = [0.0, -0.0, np.finfo(dtype).smallest_subnormal, np.finfo(dtype).tiny / 3]
    specials += [math.nan, negative_nan(dtype), math.inf, -math.inf, np.finfo(dtype).max]
    values = np.concatenate([at, below, -at, -below, np.array(specials, dtype=dtype)])
    return values.astype(dtype)


def probe_tensors(
    dtype: type, specs: list[TensorSpec], replicas: int, special: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(K, numel) gradients of every sign and scale, with the edge values in some rows;
    parameters for the specs that are parameters."""
    rng = np.random.default_rng(1)
    grads, params = [], []
    for t, spec in enumerate(specs):
        g = rng.standard_normal((replicas, spec.numel)) * 10.0 ** rng.uniform(-12, 3, spec.numel)
        g[rng.random(g.shape) < 0.1] = 0.0
        if special and t % 2 == 0:
            edge = edge_values(dtype)
            g[replicas - 1, rng.choice(spec.numel, min(spec.numel, edge.size), replace=False)] = (
                edge[: spec.numel]
            )
        grads.append(torch.from_numpy(g.astype(dtype)))
        if spec.is_param:
            p = 3.0 + rng.standard_normal((replicas, spec.numel))
            params.append(torch.from_numpy(p.astype(dtype)))
    return grads, params


def probe_step(
    specs: list[TensorSpec],
    replicas: int,
    grads: list[torch.Tensor],
    params: list[torch.Tensor],
    strategy: str,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[str, StepArrays]:
    """One CPU step's stats and histograms from `strategy`: one-pass, numpy, torch (NaN/Inf
    counted on the device) or per-tensor; and the name of the strategy that ran."""
    monkeypatch.setattr(probe_module, "ONE_PASS", strategy == "one-pass")
    monkeypatch.setattr(probe_module, "HOST_REDUCTIONS", strategy == "numpy")
    monkeypatch.setattr(
        probe_module, "FUSED_MAX_ELEMENTS", 0 if strategy == "per-tensor" else 1 << 30
    )
    probe = GradientProbe(
        specs, replicas, torch.device("cpu"), grads[0].dtype, counts_nonfinite=strategy == "torch"
    )
    packed = probe.measure(grads, params, with_hist=True).numpy().copy()
    probe.repair_nonfinite(packed, grads, params)
    return probe.strategy.name, probe.layout.unpack(packed, with_hist=True)


def assert_same_statistics(
    mine: StepArrays, theirs: StepArrays, specs: list[TensorSpec], rtol: float
) -> None:
    """Every histogram bin, zero/NaN/Inf count, min and max equal; sums of squares and centred
    sums within `rtol`, sums within `rtol` of their scale; param columns of parameters only."""
    np.testing.assert_array_equal(mine.hist, theirs.hist)
    assert (mine.hist.sum(-1) == np.array([s.numel for s in specs])).all()
    names = probe_module.S
    exact = ["grad_n_zero", "grad_n_nan", "grad_n_inf", "grad_min", "grad_max"]
    for column in exact:
        np.testing.assert_array_equal(
            mine.stats[..., names[column]], theirs.stats[..., names[column]], err_msg=column
        )
    param_rows = [s.is_param for s in specs]
    numel = np.array([s.numel for s in specs], dtype=np.float64)
    for prefix, rows in (("grad", slice(None)), ("param", param_rows)):
        a, b = (x[:, rows] for x in (mine.stats, theirs.stats))
        for column in ("sumsq", "m2"):
            np.testing.assert_allclose(
                a[..., names[f"{prefix}_{column}"]],
                b[..., names[f"{prefix}_{column}"]],
                rtol=rtol,
                equal_nan=True,
                err_msg=f"{prefix}_{column}",
            )
        # a sum rounds relative to the sum of |x| <= sqrt(numel * sum of squares)
        scale = np.sqrt(numel[rows] * b[..., names[f"{prefix}_sumsq"]])
        diff = np.abs(a[..., names[f"{prefix}_sum"]] - b[..., names[f"{prefix}_sum"]])
        finite = np.isfinite(scale)
        assert (diff[finite] <= rtol * scale[finite]).all(), f"{prefix}_sum"
        np.testing.assert_array_equal(
            np.isfinite(a[..., names[f"{prefix}_sum"]]), np.isfinite(b[..., names[f"{prefix}_sum"]])
        )
