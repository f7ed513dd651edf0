"""The Triton one-pass kernel against the other paths, run on the CPU by Triton's interpreter.

Triton reads TRITON_INTERPRET whenever `triton.jit` decorates a function, and it
decorates its own library (tl.zeros, tl.sum, ...) when triton is first imported:
the interpreter works only in a process that set the variable before importing
triton. So the `interpreted` fixture runs `write_interpreted_results` in a new
Python process with TRITON_INTERPRET=1 (CPU tensors, numpy arithmetic), and the
tests compare what it wrote with the other paths in this process. The last test
compiles the kernels for a GPU, which the interpreter does not.

Tolerance: every histogram bin, zero/NaN/Inf count, min and max exactly; sums of
squares and centred sums within 1e-9 relative and sums within 1e-9 of their
scale (`conftest.assert_same_statistics`). Every path compared sums in float64 in
its own order; for the at most ~10^4 terms of a segment that order moves a sum
of same-signed terms by at most ~n * 2^-53 ~ 1e-12 relative, so 1e-9 leaves room
without hiding a wrong statistic, which would differ by orders more.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_same_statistics, probe_step, probe_tensors

import gradsweep.probe as probe_module
from gradsweep.config import RunConfig, run_values
from gradsweep.experiment import GradientFlowRun
from gradsweep.probe import PackedLayout, S, TensorSpec, strategy_for
from gradsweep.probe import one_pass_triton as triton_module
from gradsweep.probe.fused_torch import FusedTorchProbe
from gradsweep.probe.native import DISABLE_ENV, load_kernel
from gradsweep.probe.one_pass import OnePassProbe
from gradsweep.probe.one_pass_triton import BLOCK, OnePassTritonProbe
from gradsweep.probe.per_tensor import PerTensorProbe

CPU = torch.device("cpu")
# Before 3.7 the interpreter cannot loop to a bound loaded from memory with numpy 2
# (it converts a one-element array to an int); compiled, the kernels build with 3.2 on.
INTERPRETER_TRITON = (3, 7)
# chunks of two blocks, so that small tensors cover several chunks and blocks
CHUNK = 2 * BLOCK
# one element, a partial block, a block and one, several chunks and a partial one
SIZES = [(1, True), (300, False), (BLOCK + 1, True), (2 * CHUNK + 13, False), (5000, True)]
SPECS = [TensorSpec(i, "weight" if p else "preact", n, p) for i, (n, p) in enumerate(SIZES)]
REPLICAS = 2
DTYPES = [np.float32, np.float64]
BIG = [TensorSpec(0, "weight", 400, True)]
RUN = {**run_values(RunConfig()), "batchnorm": True, "depth": 2, "replicas": 2, "steps": 1}


def write_interpreted_results(out: str) -> None:
    """Every Triton result the tests check, into `out`; run where TRITON_INTERPRET=1 came first."""
    kernels = triton_module.load_triton()
    assert type(kernels.chunk_moments).__name__ == "InterpretedFunction"

    def step(specs, replicas, grads, params, with_hist=True, chunk=CHUNK):
        probe = OnePassTritonProbe(specs, replicas, CPU, grads[0].dtype, kernels, chunk)
        return probe.measure(grads, params, with_hist).numpy().copy()

    results = {}
    grads, params = probe_tensors(np.float32, SPECS, REPLICAS, True)
    results["float32"] = step(SPECS, REPLICAS, grads, params)
    results["no_hist"] = step(SPECS, REPLICAS, grads, params, with_hist=False)
    results["one_chunk"] = step(SPECS, REPLICAS, grads, params, chunk=1 << 20)
    grads, params = probe_tensors(np.float64, SPECS, REPLICAS, True)
    probe = OnePassTritonProbe(SPECS, REPLICAS, CPU, torch.float64, kernels, CHUNK)
    results["float64"] = probe.measure(grads, params, True).numpy().copy()
    results["clones"] = probe.measure([g.clone() for g in grads], [p.clone() for p in params], True)
    results["halved"] = probe.measure([g / 2 for g in grads], params, True).numpy().copy()
    g = torch.full((1, 400), 1e26, dtype=torch.float32)
    results["big"] = step(BIG, 1, [g], [torch.ones_like(g)])
    np.savez(Path(out) / "steps.npz", **{k: np.asarray(v) for k, v in results.items()})
    probe_module.strategy_for = lambda *_: OnePassTritonProbe
    run = GradientFlowRun(RUN)
    assert isinstance(run.probe.strategy, OnePassTritonProbe) and run.probe.counts_nonfinite
    result = run.run()
    assert result.execution.stats_path == OnePassTritonProbe.name
    result.stats.to_pickle(Path(out) / "run.pkl")


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What `write_interpreted_results` wrote, in a new process under Triton's interpreter."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (the `triton` extra)")
    version = metadata.version("triton")
    if tuple(int(part) for part in version.split(".")[:2]) < INTERPRETER_TRITON:
        pytest.skip(f"triton {version}'s interpreter cannot run the kernels: the extra asks 3.7+")
    out = tmp_path_factory.mktemp("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop(DISABLE_ENV, None)
    code = f"import test_probe_triton as t; t.write_interpreted_results({str(out)!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    with np.load(out / "steps.npz") as steps:
        results = dict(steps)
    results["run"] = pd.read_pickle(out / "run.pkl")
    return results


def _layout(specs: list[TensorSpec] = SPECS, replicas: int = REPLICAS) -> PackedLayout:
    return PackedLayout(tuple(specs), replicas)


@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_equals_the_c_kernel_and_the_fused_and_per_tensor_paths(
    interpreted: dict, dtype: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows of every scale with exact zeros, and rows with NaN of both signs, Inf, zeros of
    both signs, subnormals, the largest float and both sides of every bin edge."""
    grads, params = probe_tensors(dtype, SPECS, REPLICAS, True)
    mine = _layout().unpack(interpreted[np.dtype(dtype).name], with_hist=True)
    others = ["torch", "one-pass"] if load_kernel() is not None else ["torch"]
    if dtype == np.float64:  # the per-tensor path sums float32 in float32
        others.append("per-tensor")
    for other in others:
        name, theirs = probe_step(SPECS, REPLICAS, grads, params, other, monkeypatch)
        assert name != OnePassTritonProbe.name
        assert_same_statistics(mine, theirs, SPECS, rtol=1e-9)
    non_param = [not s.is_param for s in SPECS]
    assert np.isnan(mine.stats[:, non_param][..., S["param_sum"] :]).all()


def test_without_histogram_the_vector_is_the_stats_block(interpreted: dict) -> None:
    without = interpreted["no_hist"]
    assert without.size == _layout().size(False) == _layout().n_stats
    np.testing.assert_array_equal(without, interpreted["float32"][: without.size])


def test_new_tensors_are_read_where_they_lie(interpreted: dict) -> None:
    """The address table follows each step's tensors, and equal inputs give equal bits."""
    first, layout = interpreted["float64"], _layout()
    np.testing.assert_array_equal(interpreted["clones"], first)
    halved, expected = (layout.unpack(x, True).stats for x in (interpreted["halved"], first))
    np.testing.assert_array_equal(halved[..., S["grad_max"]], expected[..., S["grad_max"]] / 2)
    np.testing.assert_array_equal(halved[..., S["param_sum"]], expected[..., S["param_sum"]])


def test_the_chunk_size_moves_only_the_rounding(interpreted: dict) -> None:
    """One chunk a segment against chunks of two blocks: only the merge order differs."""
    small, large = (_layout().unpack(interpreted[key], True) for key in ("float32", "one_chunk"))
    assert_same_statistics(small, large, SPECS, rtol=1e-12)


def test_a_float32_sum_of_squares_beyond_float32_is_exact(interpreted: dict) -> None:
    """|g| = 1e26: float32 would overflow; the kernel squares and sums in float64."""
    row = _layout(BIG, 1).unpack(interpreted["big"], True).stats[0, 0]
    assert math.sqrt(row[S["grad_sumsq"]]) == pytest.approx(2e27, rel=1e-6)
    assert row[S["grad_n_inf"]] == 0 and row[S["grad_m2"]] == 0


def test_a_run_through_the_triton_kernel_equals_the_c_kernels_run(interpreted: dict) -> None:
    """Parameters, BatchNorm parameters and dL/dz of a real run, every step's rows and bins."""
    if load_kernel() is None:
        pytest.skip("the one-pass kernel does not build here (no C compiler)")
    c_run = GradientFlowRun(RUN).run()
    assert c_run.execution.stats_path == OnePassProbe.name
    mine, theirs = interpreted["run"], c_run.stats
    for column in ("grad_n_nan", "grad_n_inf", "grad_frac_zero", "grad_min", "grad_max"):
        assert mine[column].equals(theirs[column]), column
    for a, b in zip(mine["grad_hist"], theirs["grad_hist"]):
        np.testing.assert_array_equal(a, b)
    scale = theirs["grad_norm"] / np.sqrt(theirs["numel"]) + 1e-300
    for column in ("grad_norm", "param_norm", "param_std", "loss"):
        np.testing.assert_allclose(mine[column], theirs[column], rtol=1e-9, err_msg=column)
    for column in ("grad_mean", "grad_std"):
        assert (np.abs(mine[column] - theirs[column]) <= 1e-9 * scale).all(), column


@pytest.mark.parametrize("numel", [64, 1 << 17])
def test_cuda_takes_the_triton_kernel_where_triton_imports(
    numel: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without triton, with ONE_PASS off or with GRADSWEEP_ONE_PASS=0: the path its size picks."""
    specs = [TensorSpec(0, "weight", numel, True)]
    size_path = FusedTorchProbe if numel <= probe_module.FUSED_MAX_ELEMENTS else PerTensorProbe
    triton_imports = triton_module.load_triton() is not None
    assert strategy_for(specs, 2, "cuda") is (OnePassTritonProbe if triton_imports else size_path)
    assert strategy_for(specs, 2, "cpu") is not OnePassTritonProbe
    monkeypatch.setattr(probe_module, "ONE_PASS", False)
    assert strategy_for(specs, 2, "cuda") is size_path
    monkeypatch.setattr(probe_module, "ONE_PASS", True)
    monkeypatch.setattr(probe_module, "load_triton", lambda: None)
    assert strategy_for(specs, 2, "cuda") is size_path
    monkeypatch.setenv(DISABLE_ENV, "0")
    triton_module.load_triton.cache_clear()
    try:
        assert triton_module.load_triton() is None
    finally:
        triton_module.load_triton.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_the_kernels_compile_for_a_gpu(
    dtype: torch.dtype, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both kernels lower to a CUDA binary (sm_90), which the interpreter does not check."""
    kernels = triton_module.load_triton()
    if kernels is None:
        pytest.skip("triton is not installed (the `triton` extra)")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    target = GPUTarget("cuda", 90, 32)
    tables = {"pointers": "*i64", "chunks": "*i64", "work": "*fp64", "hist_work": "*i32"}
    sources = [
        ASTSource(
            kernels.chunk_moments,
            {**tables, "with_hist": "i32", "DTYPE": "constexpr", "BLOCK": "constexpr"},
            {"DTYPE": kernels.ELEMENT_TYPES[dtype], "BLOCK": BLOCK},
        ),
        ASTSource(
            kernels.segment_rows,
            {"segments": "*i64", "work": "*fp64", "hist_work": "*i32", "out": "*fp64"}
            | {"hist_start": "i32", "with_hist": "i32"},
            {},
        ),
    ]
    for source in sources:
        compiled = triton.compile(source, target=target, options=triton_module.COMPILE_OPTIONS)
        assert compiled.asm["cubin"]
