"""The one-pass kernel's build: cached on disk for every later process, and its absence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_statistics, probe_step, probe_tensors

import gradsweep.probe as probe_module
from gradsweep.config import RunConfig, run_values
from gradsweep.experiment import run_experiment
from gradsweep.probe import TensorSpec, native
from gradsweep.probe.numpy_host import NumpyHostProbe
from gradsweep.probe.one_pass import CHUNK_ELEMENTS, OnePassProbe

LOAD = "from gradsweep.probe.native import load_kernel; k = load_kernel(); print(k.built, k.path)"


@pytest.fixture
def fresh_kernel():
    """load_kernel forgets this process's kernel before and after the test."""
    native.load_kernel.cache_clear()
    yield native.load_kernel
    native.load_kernel.cache_clear()


def _load_in_a_new_process(extensions: Path) -> tuple[bool, str]:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions)}
    env.pop(native.DISABLE_ENV, None)
    proc = subprocess.run(
        [sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    built, path = proc.stdout.split()
    return built == "True", path


def test_the_first_process_builds_and_later_ones_load_the_cached_library(tmp_path: Path) -> None:
    if native._compiler() is None:
        pytest.skip("no C compiler here")
    first = _load_in_a_new_process(tmp_path)
    second = _load_in_a_new_process(tmp_path)
    assert first[0] and not second[0]
    assert first[1] == second[1] and Path(first[1]).parent.parent == tmp_path
    assert [p.name for p in Path(first[1]).parent.iterdir()] == [Path(first[1]).name]


@pytest.mark.parametrize("why", ["no compiler", "turned off", "build fails"])
def test_without_the_kernel_a_run_takes_and_records_the_torch_path(
    why: str, fresh_kernel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    if why == "no compiler":
        monkeypatch.setattr(native, "_compiler", lambda: None)
    elif why == "turned off":
        monkeypatch.setenv(native.DISABLE_ENV, "0")
    else:
        monkeypatch.setattr(native, "FLAGS", (*native.FLAGS, "-fno-such-flag"))
    assert fresh_kernel() is None
    cfg = {**run_values(RunConfig()), "steps": 2}
    fallback = run_experiment(cfg)
    assert fallback.execution.stats_path == NumpyHostProbe.name
    monkeypatch.setattr(probe_module, "ONE_PASS", False)
    fresh_kernel.cache_clear()
    assert run_experiment(cfg).stats.equals(fallback.stats)


def test_with_the_kernel_a_run_records_the_one_pass_path(fresh_kernel) -> None:
    if fresh_kernel() is None:
        pytest.skip("the one-pass kernel does not build here (no C compiler)")
    result = run_experiment({**run_values(RunConfig()), "steps": 2})
    assert result.execution.stats_path == OnePassProbe.name


SIZES = [(7, True), (300, False), (5000, True), (CHUNK_ELEMENTS * 2 + 13, False)]


@pytest.mark.parametrize(
    "isa", [(), ("-mno-avx512bw",), ("-mno-avx2",)], ids=["native", "avx2", "tables"]
)
def test_every_histogram_route_counts_what_the_numpy_path_counts(
    isa: tuple, fresh_kernel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Blocks are counted by byte compares (AVX-512BW, AVX2) when they span few bins, else with
    tables, as on CPUs without them: each build, on narrow and on wide blocks, counts exactly."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(native, "FLAGS", (*native.FLAGS, *isa))
    if fresh_kernel() is None:
        pytest.skip(f"the one-pass kernel does not build here with {isa}")
    specs = [TensorSpec(i, "weight" if p else "preact", n, p) for i, (n, p) in enumerate(SIZES)]
    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float64):
        wide = probe_tensors(dtype, specs, 2, True)
        narrow = (
            [
                torch.from_numpy((rng.standard_normal(g.shape) * 1e-3).astype(dtype))
                for g in wide[0]
            ],
            wide[1],
        )
        for grads, params in (narrow, wide):
            name, mine = probe_step(specs, 2, grads, params, "one-pass", monkeypatch)
            assert name == OnePassProbe.name
            _, theirs = probe_step(specs, 2, grads, params, "numpy", monkeypatch)
            assert_same_statistics(mine, theirs, specs, 1e-9)
