"""The probe's numbers against a plain nn.Sequential reference, and its histogram bins."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import assert_same_statistics, negative_nan, probe_step, probe_tensors
from torch import nn

import gradsweep.probe as probe_module
from gradsweep.bins import HIST_BIN_LABELS, N_HIST_BINS
from gradsweep.config import RunConfig, run_values
from gradsweep.experiment import GradientFlowRun, run_experiment
from gradsweep.model import ARCH_KEYS, ResidualBlock, build_mlp
from gradsweep.probe import GradientProbe, TensorSpec
from gradsweep.probe import per_tensor as per_tensor_module
from gradsweep.probe.native import load_kernel
from gradsweep.probe.one_pass import CHUNK_ELEMENTS, OnePassProbe

needs_kernel = pytest.mark.skipif(
    load_kernel() is None, reason="the one-pass kernel does not build here (no C compiler)"
)


def _layers_of_modules(net: nn.Sequential) -> list[tuple[int, nn.Module]]:
    """(Linear layer index, module) of every module of a network, residual blocks opened up."""
    layer, owned = -1, []
    for module in net:
        if isinstance(module, (nn.Linear, ResidualBlock)):
            layer += 1
        owned += [(layer, m) for m in module.modules()]
    return owned


PARAM_NAMES = {nn.Linear: "", nn.BatchNorm1d: "bn_", nn.LayerNorm: "ln_"}


def reference_gradients(cfg: dict) -> dict[tuple[int, str], torch.Tensor]:
    """Gradients of the exercise-style nn.Sequential at step 0, dL/dz and a residual block's
    dL/dh captured by tensor hooks."""
    net = build_mlp(**{k: cfg[k] for k in ARCH_KEYS}, seed=cfg["seed"]).double()
    x, _ = GradientFlowRun(cfg).batch(0)
    grads: dict[tuple[int, str], torch.Tensor] = {}

    def capture(index: int, name: str):
        def hook(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
            out.register_hook(lambda g: grads.__setitem__((index, name), g))

        return hook

    owned = _layers_of_modules(net)
    for index, module in owned:
        if isinstance(module, nn.Linear):
            module.register_forward_hook(capture(index, "preact"))
        if isinstance(module, ResidualBlock):
            module.register_forward_hook(capture(index, "stream"))
    net(x.double()).mean().backward()
    for index, module in owned:
        prefix = PARAM_NAMES.get(type(module))
        if prefix is not None:
            grads[(index, f"{prefix}weight")] = module.weight.grad
            grads[(index, f"{prefix}bias")] = module.bias.grad
    return grads


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"act": "relu", "batchnorm": True, "output_act": False},
        {"act": "tanh", "init": "xavier_normal", "depth": 4},
        {"act": "tanh", "norm": "layer", "depth": 4},
        {"act": "relu", "residual": True, "norm": "layer", "branch_scale": "inv_sqrt_depth"},
        {"act": "tanh", "residual": True, "norm": "batch", "norm_position": "post", "depth": 4},
        {"act": "identity", "residual": True, "in_features": 20, "depth": 3},
    ],
)
def test_statistics_match_reference_sequential(overrides: dict) -> None:
    cfg = run_values({**run_values(RunConfig()), "dtype": "float64", **overrides})
    stats = run_experiment(cfg).stats
    reference = reference_gradients(cfg)
    assert len(stats) == len(reference)
    # Gradients that vanish exactly in theory (a Linear bias before BatchNorm) are
    # rounding noise ~1e-17 in both implementations: compare against the run's scale.
    tiny = 1e-12 * stats["grad_norm"].max()
    for row in stats.itertuples():
        g = reference[(row.layer, row.tensor)].double()
        assert row.grad_norm == pytest.approx(g.norm().item(), rel=1e-9, abs=tiny)
        assert row.grad_mean == pytest.approx(g.mean().item(), rel=1e-9, abs=tiny)
        assert row.grad_std == pytest.approx(g.std(unbiased=False).item(), rel=1e-9, abs=tiny)
        assert row.grad_min == pytest.approx(g.min().item(), rel=1e-9, abs=tiny)
        assert row.grad_max == pytest.approx(g.max().item(), rel=1e-9, abs=tiny)
        if row.grad_norm > tiny:
            assert row.grad_frac_zero == pytest.approx((g == 0).double().mean().item())
        assert row.numel == g.numel()


@pytest.mark.parametrize(
    ("fused_in", "stack_cap", "architecture"),
    [
        ("numpy", 1 << 16, {"batchnorm": True}),
        ("torch", 0, {"batchnorm": True}),
        ("numpy", 1 << 26, {"batchnorm": True}),
        ("numpy", 1 << 16, {"residual": True, "norm": "layer", "norm_position": "post"}),
        ("torch", 0, {"residual": True, "norm": "layer"}),
    ],
)
def test_fused_and_per_tensor_paths_agree(
    fused_in: str, stack_cap: int, architecture: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-tensor path: each tensor alone (cap 0), small ones stacked (CPU) or all (CUDA).
    Residual networks' `stream` rows too."""
    cfg = {
        **run_values(RunConfig()),
        "act": "relu",
        **architecture,
        "replicas": 3,
        "steps": 4,
        "clip": 0.5,
    }
    monkeypatch.setattr(probe_module, "ONE_PASS", False)
    monkeypatch.setattr(probe_module, "HOST_REDUCTIONS", fused_in == "numpy")
    fused = run_experiment(cfg).stats
    monkeypatch.setattr(probe_module, "FUSED_MAX_ELEMENTS", 0)
    monkeypatch.setitem(per_tensor_module.STACK_MAX_ELEMENTS, "cpu", stack_cap)
    per_tensor = run_experiment(cfg).stats
    scale = fused["grad_norm"] / np.sqrt(fused["numel"]) + 1e-30
    for column in (
        "grad_norm",
        "grad_norm_clipped",
        "grad_max",
        "grad_min",
        "param_norm",
        "total_grad_norm",
        "loss",
    ):
        np.testing.assert_allclose(per_tensor[column], fused[column], rtol=2e-5, atol=0)
    for column in ("grad_mean", "grad_std"):
        np.testing.assert_array_less(np.abs(per_tensor[column] - fused[column]) / scale, 1e-4)
    assert (per_tensor["grad_frac_zero"] == fused["grad_frac_zero"]).all()
    # A float32 element keeps its exponent in float64 (fused path), so both bin it identically.
    for a, b, n in zip(per_tensor["grad_hist"], fused["grad_hist"], fused["numel"]):
        assert a.sum() == n
        np.testing.assert_array_equal(a, b)


COUNTING = [
    "numpy",
    "torch",
    "device",
    "one-pass",
]  # fused path in numpy or torch, NaN/Inf counted on the host; or on the device; or the kernel


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(
    "overrides",
    [
        {"act": "relu", "batchnorm": True, "replicas": 3, "steps": 4, "clip": 0.5},
        {
            "act": "identity",
            "init": "normal",
            "init_scale": 5.0,
            "depth": 20,
            "steps": 3,
            "dtype": "float32",
        },
    ],
)
def test_counting_on_the_device_equals_the_host_repair(
    fused: bool, overrides: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CUDA way (NaN/Inf counted every step, float64 sums) and the CPU way give equal rows."""
    monkeypatch.setattr(probe_module, "ONE_PASS", False)
    monkeypatch.setattr(probe_module, "FUSED_MAX_ELEMENTS", 1 << 20 if fused else 0)
    monkeypatch.setattr(probe_module, "HOST_REDUCTIONS", False)
    cfg = {**run_values(RunConfig()), **overrides}
    on_host = run_experiment(cfg).stats
    run = GradientFlowRun(cfg)
    run.probe = GradientProbe(run.specs, run.replicas, run.device, run.dtype, counts_nonfinite=True)
    on_device = run.run().stats
    for column in ("grad_n_nan", "grad_n_inf", "grad_frac_zero", "grad_min", "grad_max", "status"):
        assert on_device[column].equals(on_host[column]), column
    for a, b in zip(on_device["grad_hist"], on_host["grad_hist"]):
        np.testing.assert_array_equal(a, b)
    for column in ("grad_norm", "param_norm", "loss"):
        np.testing.assert_allclose(on_device[column], on_host[column], rtol=1e-5, atol=1e-30)
    scale = (
        on_host["grad_norm"] / np.sqrt(on_host["numel"]) + 1e-30
    )  # float64 sums are the more exact ones
    for column in ("grad_mean", "grad_std"):
        device_values, host_values = on_device[column].to_numpy(), on_host[column].to_numpy()
        finite = np.isfinite(host_values)
        assert (np.isfinite(device_values) == finite).all()
        np.testing.assert_array_less(
            np.abs(device_values - host_values)[finite] / scale[finite], 1e-4
        )
    if overrides["act"] == "identity":
        assert (on_host["status"] == "diverged").all() and on_host["grad_n_inf"].sum() + on_host[
            "grad_n_nan"
        ].sum() > 0


def _probe_rows(
    values: np.ndarray, fused: bool, counting: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[np.ndarray, np.ndarray]:
    if counting == "one-pass" and load_kernel() is None:
        pytest.skip("the one-pass kernel does not build here (no C compiler)")
    monkeypatch.setattr(probe_module, "ONE_PASS", counting == "one-pass")
    monkeypatch.setattr(probe_module, "FUSED_MAX_ELEMENTS", 1 << 20 if fused else 0)
    monkeypatch.setattr(probe_module, "HOST_REDUCTIONS", counting == "numpy")
    g = torch.from_numpy(np.asarray(values)[None, :])
    p = torch.ones_like(g)
    spec = TensorSpec(0, "weight", g.shape[1], True)
    probe = GradientProbe(
        [spec], 1, torch.device("cpu"), g.dtype, counts_nonfinite=counting == "device"
    )
    assert (probe.strategy.name == OnePassProbe.name) == (counting == "one-pass")
    packed = probe.measure([g], [p], with_hist=True).numpy()
    probe.repair_nonfinite(packed, [g], [p])
    step = probe.layout.unpack(packed, with_hist=True)
    return step.stats[0, 0], step.hist[0, 0]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("counting", COUNTING)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_histogram_bins_and_nonfinite_counts(
    fused: bool, counting: str, dtype: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    below = lambda x: np.nextafter(dtype(x), dtype(0))  # noqa: E731 - the largest float under a bin edge
    values = np.array(
        [
            0.0,
            -0.0,
            np.finfo(dtype).smallest_subnormal,
            below(2.0**-40),
            2.0**-40,
            -3e-3,
            0.5,
            below(1.0),
            -1.0,
            below(2.0**14),
            2.0**14,
            -5e30,
            math.nan,
            negative_nan(dtype),
            math.inf,
            -math.inf,
        ],
        dtype=dtype,
    )
    stats, hist = _probe_rows(values, fused, counting, monkeypatch)
    labels = dict(zip(HIST_BIN_LABELS, hist))
    assert len(hist) == N_HIST_BINS == 59
    assert labels["zero"] == 2 and labels["underflow"] == 2
    assert labels["[2^-40,2^-39)"] == 1
    assert labels["[2^-9,2^-8)"] == 1  # 3e-3 = 1.536 * 2^-9
    assert labels["[2^-1,2^0)"] == 2 and labels["[2^0,2^1)"] == 1
    assert labels["[2^13,2^14)"] == 1
    assert labels["overflow"] == 2 and labels["nan"] == 2 and labels["inf"] == 2
    assert hist.sum() == len(values)
    names = probe_module.S
    assert (
        stats[names["grad_n_nan"]] == 2
        and stats[names["grad_n_inf"]] == 2
        and stats[names["grad_n_zero"]] == 2
    )


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("counting", COUNTING)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_histogram_matches_frexp_binades(
    fused: bool, counting: str, dtype: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every finite nonzero element lands in the binade numpy's frexp gives it, over 30 decades."""
    rng = np.random.default_rng(0)
    values = (rng.choice([-1, 1], 5000) * 10.0 ** rng.uniform(-20, 10, 5000)).astype(dtype)
    _, hist = _probe_rows(values, fused, counting, monkeypatch)
    _, exponent = np.frexp(np.abs(values))  # |x| in [2^(e-1), 2^e)
    expected = np.bincount(np.clip(exponent - 1 + 40, -1, 54) + 2, minlength=N_HIST_BINS)
    np.testing.assert_array_equal(hist, expected)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("counting", COUNTING)
def test_float32_overflow_of_the_norm_is_exact(
    fused: bool, counting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """|g| = 1e26 overflows a float32 sum of squares.

    The host recomputes the row; the device accumulates in float64.
    """
    stats, _ = _probe_rows(np.full(400, 1e26, dtype=np.float32), fused, counting, monkeypatch)
    assert math.sqrt(stats[probe_module.S["grad_sumsq"]]) == pytest.approx(2e27, rel=1e-6)
    assert stats[probe_module.S["grad_n_inf"]] == 0


# sizes below and above the raw-exponent table's threshold, and over several chunks
SIZES = [(7, True), (300, False), (4095, True), (5000, True), (CHUNK_ELEMENTS * 2 + 13, False)]


@needs_kernel
@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("other", ["numpy", "torch", "per-tensor"])
def test_one_pass_equals_every_other_path(
    other: str, dtype: type, special: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every statistic within float rounding, every count and histogram bin exactly."""
    specs = [TensorSpec(i, "weight" if p else "preact", n, p) for i, (n, p) in enumerate(SIZES)]
    replicas = 2
    grads, params = probe_tensors(dtype, specs, replicas, special)
    name, mine = probe_step(specs, replicas, grads, params, "one-pass", monkeypatch)
    assert name == OnePassProbe.name
    _, theirs = probe_step(specs, replicas, grads, params, other, monkeypatch)
    # float32 sums on the per-tensor path round at float32's precision; the others in float64
    rtol = 1e-4 if other == "per-tensor" and dtype == np.float32 else 1e-9
    assert_same_statistics(mine, theirs, specs, rtol)


@needs_kernel
def test_one_pass_numbers_do_not_depend_on_the_thread_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    specs = [TensorSpec(i, "weight" if p else "preact", n, p) for i, (n, p) in enumerate(SIZES)]
    grads, params = probe_tensors(np.float32, specs, 3, True)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(probe_step(specs, 3, grads, params, "one-pass", monkeypatch)[1])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        np.testing.assert_array_equal(other.stats, results[0].stats)
        np.testing.assert_array_equal(other.hist, results[0].hist)
