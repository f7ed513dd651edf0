"""The probe's numbers against a plain nn.Sequential reference, and its histogram bins."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradsweep.probe as probe_module
from gradsweep.config import RunConfig, run_values
from gradsweep.experiment import GradientFlowRun, run_experiment
from gradsweep.model import build_mlp
from gradsweep.bins import HIST_BIN_LABELS, N_HIST_BINS
from gradsweep.probe import GradientProbe, TensorSpec


def reference_gradients(cfg: dict) -> dict[tuple[int, str], torch.Tensor]:
    """Gradients of the exercise-style nn.Sequential at step 0, with dL/dz captured by tensor hooks."""
    net = build_mlp(**{k: cfg[k] for k in ("act", "depth", "width", "in_features", "out_features", "output_act",
                                          "init", "init_scale", "bias_init", "batchnorm")}, seed=cfg["seed"]).double()
    x, _ = GradientFlowRun(cfg).batch(0)
    preacts: dict[int, torch.Tensor] = {}
    linears = [m for m in net if isinstance(m, nn.Linear)]

    def capture(index: int):
        def hook(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
            out.register_hook(lambda g: preacts.__setitem__(index, g))

        return hook

    for index, linear in enumerate(linears):
        linear.register_forward_hook(capture(index))
    net(x.double()).mean().backward()
    grads = {}
    bns = [m for m in net if isinstance(m, nn.BatchNorm1d)]
    for index, linear in enumerate(linears):
        grads[(index, "weight")] = linear.weight.grad
        grads[(index, "bias")] = linear.bias.grad
        grads[(index, "preact")] = preacts[index]
    for index, bn in enumerate(bns):
        grads[(index, "bn_weight")] = bn.weight.grad
        grads[(index, "bn_bias")] = bn.bias.grad
    return grads


@pytest.mark.parametrize(
    "overrides",
    [{}, {"act": "relu", "batchnorm": True, "output_act": False}, {"act": "tanh", "init": "xavier_normal", "depth": 4}],
)
def test_statistics_match_reference_sequential(overrides: dict) -> None:
    cfg = {**run_values(RunConfig()), "dtype": "float64", **overrides}
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


@pytest.mark.parametrize("fused_in", ["numpy", "torch"])
def test_fused_and_per_tensor_paths_agree(fused_in: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = {**run_values(RunConfig()), "act": "relu", "batchnorm": True, "replicas": 3, "steps": 4, "clip": 0.5}
    monkeypatch.setattr(probe_module, "HOST_REDUCTIONS", fused_in == "numpy")
    fused = run_experiment(cfg).stats
    monkeypatch.setattr(probe_module, "FUSED_MAX_ELEMENTS", 0)
    per_tensor = run_experiment(cfg).stats
    scale = fused["grad_norm"] / np.sqrt(fused["numel"]) + 1e-30
    for column in ("grad_norm", "grad_norm_clipped", "grad_max", "grad_min", "param_norm", "total_grad_norm", "loss"):
        np.testing.assert_allclose(per_tensor[column], fused[column], rtol=2e-5, atol=0)
    for column in ("grad_mean", "grad_std"):
        np.testing.assert_array_less(np.abs(per_tensor[column] - fused[column]) / scale, 1e-4)
    assert (per_tensor["grad_frac_zero"] == fused["grad_frac_zero"]).all()
    # log10 in float32 (per-tensor) and float64 (fused) may put an element lying on a bin edge on either side.
    for a, b, n in zip(per_tensor["grad_hist"], fused["grad_hist"], fused["numel"]):
        assert a.sum() == b.sum() == n
        assert np.abs(a - b).sum() <= 2 + n // 1000


def _probe_rows(values: list[float], fused: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, np.ndarray]:
    monkeypatch.setattr(probe_module, "FUSED_MAX_ELEMENTS", 1 << 20 if fused else 0)
    g = torch.tensor([values])
    p = torch.ones(1, len(values))
    probe = GradientProbe([TensorSpec(0, "weight", len(values), True)], 1, torch.device("cpu"), torch.float32)
    packed = probe.measure([g], [p], with_hist=True).numpy()
    probe.repair_nonfinite(packed, [g])
    stats, hist = probe.unpack(packed, with_hist=True)
    return stats[0, 0], hist[0, 0]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("host", [True, False])
def test_histogram_bins_and_nonfinite_counts(fused: bool, host: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe_module, "HOST_REDUCTIONS", host)
    values = [0.0, -0.0, 1e-13, 1.1e-12, -3e-3, 0.5, 9999.0, 1e4, -5e30, math.nan, math.inf, -math.inf]
    stats, hist = _probe_rows(values, fused, monkeypatch)
    labels = dict(zip(HIST_BIN_LABELS, hist))
    assert len(hist) == N_HIST_BINS == 69
    assert labels["zero"] == 2 and labels["underflow"] == 1
    assert labels["[-12,-11.75)"] == 1
    assert labels["[-2.75,-2.5)"] == 1  # log10(3e-3) = -2.52
    assert labels["[-0.5,-0.25)"] == 1
    assert labels["[3.75,4)"] == 1
    assert labels["overflow"] == 2 and labels["nan"] == 1 and labels["inf"] == 2
    assert hist.sum() == len(values)
    names = probe_module.S
    assert stats[names["grad_n_nan"]] == 1 and stats[names["grad_n_inf"]] == 2 and stats[names["grad_n_zero"]] == 2


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("host", [True, False])
def test_float32_overflow_of_the_norm_is_recomputed_exactly(fused: bool, host: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe_module, "HOST_REDUCTIONS", host)
    stats, _ = _probe_rows([1e26] * 400, fused, monkeypatch)
    assert math.sqrt(stats[probe_module.S["grad_sumsq"]]) == pytest.approx(2e27, rel=1e-6)
    assert stats[probe_module.S["grad_n_inf"]] == 0


def test_bin_counts_without_bincount_equal_bincount() -> None:
    """The index_add_ counting that CUDA uses (bincount syncs there) gives bincount's counts."""
    index = torch.randint(0, 50, (10_000,))
    assert torch.equal(probe_module._bin_counts(index, 60, add=True), torch.bincount(index, minlength=60))
    assert torch.equal(probe_module._bin_counts(index, 60, add=False), torch.bincount(index, minlength=60))
