"""The stacked K-replica network against the nn.Sequential of each replica, residual ones too."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradsweep.config import RunConfig, run_values
from gradsweep.model import ARCH_KEYS, ResidualBlock, StackedMLP, build_mlp

INITS = [(3, 1.0), (8, 2.0), (5, 0.5)]
CPU = torch.device("cpu")
CASES = [
    {},
    {"act": "relu", "batchnorm": True, "output_act": False},
    {"act": "tanh", "init": "orthogonal", "width": 48, "depth": 4, "bias_init": "zeros"},
    {"act": "tanh", "norm": "layer", "depth": 4},
    {"act": "relu", "residual": True, "branch_scale": "inv_sqrt_depth", "output_act": False},
    {"act": "gelu", "residual": True, "norm": "layer", "in_features": 20, "depth": 4},
    {"act": "relu", "residual": True, "norm": "batch", "norm_position": "post", "depth": 4},
    {
        "act": "tanh",
        "residual": True,
        "norm": "layer",
        "norm_position": "post",
        "branch_scale": 0.5,
    },
]


def _values(overrides: dict) -> dict:
    return run_values({**run_values(RunConfig()), **overrides})


@pytest.mark.parametrize("overrides", CASES)
def test_replica_r_is_exactly_the_network_build_mlp_gives_for_its_seed(overrides: dict) -> None:
    values = _values(overrides)
    stacked = StackedMLP.build(values, INITS, CPU, torch.float32)
    assert all(
        p.shape[0] == len(INITS) and p.is_leaf and p.requires_grad for p in stacked.parameters()
    )
    for r, (seed, scale) in enumerate(INITS):
        arch = {key: values[key] for key in ARCH_KEYS}
        alone = build_mlp(**{**arch, "init_scale": scale}, seed=seed)
        view = stacked.replica(r)
        assert [type(m) for m in view.modules()] == [type(m) for m in alone.modules()]
        for p, q in zip(view.parameters(), alone.parameters(), strict=True):
            assert torch.equal(p, q)


def test_stacked_weight_is_nn_linear_weight_transposed_and_specs_follow_the_parameters() -> None:
    stacked = StackedMLP.build(
        _values({"batchnorm": True, "depth": 3}), INITS[:2], CPU, torch.float32
    )
    weight = stacked.parameters()[0]
    assert weight.shape == (2, 10, 20) and weight.is_contiguous()
    specs = stacked.tensor_specs(batch_size=32)
    assert [(s.layer, s.tensor, s.numel, s.is_param) for s in specs] == [
        (0, "weight", 200, True),
        (0, "bias", 20, True),
        (0, "bn_weight", 20, True),
        (0, "bn_bias", 20, True),
        (0, "preact", 640, False),
        (1, "weight", 400, True),
        (1, "bias", 20, True),
        (1, "bn_weight", 20, True),
        (1, "bn_bias", 20, True),
        (1, "preact", 640, False),
        (2, "weight", 20, True),
        (2, "bias", 1, True),
        (2, "preact", 32, False),
    ]
    params = [s for s in specs if s.is_param]
    assert [p[0].numel() for p in stacked.parameters()] == [s.numel for s in params]


@pytest.mark.parametrize("overrides", CASES)
def test_replica_view_gives_the_stacked_forward_and_gradients_to_rounding(overrides: dict) -> None:
    """float64; equal to rounding, not bit for bit: the stacked network multiplies with baddbmm and
    normalises with its own BatchNorm arithmetic, the view with nn.Linear and nn.BatchNorm1d.
    Gradients include every z_l and every residual block's output h_l (`stream`)."""
    stacked = StackedMLP.build(_values(overrides), INITS, CPU, torch.float64)
    with torch.no_grad():  # move off the initial values: the view must hold the current ones
        for p in stacked.parameters():
            p.add_(0.01)
    features = _values(overrides)["in_features"]
    x = torch.randn(32, features, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out, recorded = stacked.forward(x)
    specs = stacked.tensor_specs(32)
    assert out.shape == (len(INITS), 32, 1)
    assert [t.shape[1:].numel() for t in recorded] == [s.numel for s in specs if not s.is_param]
    grads = torch.autograd.grad(out.mean(dim=(1, 2)).sum(), stacked.parameters() + recorded)
    n_params = len(stacked.parameters())
    names = [s.tensor for s in specs if s.is_param]
    for r in range(len(INITS)):
        view = stacked.replica(r)
        captured: list[torch.Tensor] = []  # each z_l, and after it a residual block's output
        for module in view.modules():
            if isinstance(module, (nn.Linear, ResidualBlock)):
                module.register_forward_hook(lambda _m, _i, z, into=captured: into.append(z))
        y = view(x)
        torch.testing.assert_close(y, out[r], rtol=1e-12, atol=1e-14)
        view_grads = torch.autograd.grad(y.mean(), list(view.parameters()) + captured)
        expected = [g[r].T if name == "weight" else g[r] for name, g in zip(names, grads)]
        expected += [g[r] for g in grads[n_params:]]
        scale = max(g.abs().max().item() for g in view_grads)
        for got, want in zip(view_grads, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13 * scale)


def test_residual_specs_hold_each_blocks_stream_after_its_preact() -> None:
    values = _values({"residual": True, "norm": "layer", "depth": 4, "norm_position": "post"})
    specs = StackedMLP.build(values, INITS[:1], CPU, torch.float32).tensor_specs(batch_size=8)
    assert [(s.layer, s.tensor) for s in specs] == [
        (0, "weight"),
        (0, "bias"),
        (0, "ln_weight"),
        (0, "ln_bias"),
        (0, "preact"),
        *[
            (layer, name)
            for layer in (1, 2)
            for name in ("weight", "bias", "ln_weight", "ln_bias", "preact", "stream")
        ],
        (3, "weight"),
        (3, "bias"),
        (3, "preact"),
    ]
    assert {s.numel for s in specs if s.tensor == "stream"} == {8 * 20}
