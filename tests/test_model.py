"""The nn.Sequential builder: architecture, init schemes, seeding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradsweep import theory
from gradsweep.config import Init
from gradsweep.model import ResidualBlock, build_mlp
from gradsweep.model.parts import BranchScale
from gradsweep.model.sequential import replica_networks


def test_exercise_network_is_5_linear_plus_5_sigmoid() -> None:
    net = build_mlp()
    kinds = [type(m) for m in net]
    assert kinds == [nn.Linear, nn.Sigmoid] * 5
    dims = [(m.in_features, m.out_features) for m in net if isinstance(m, nn.Linear)]
    assert dims == [(10, 20), (20, 20), (20, 20), (20, 20), (20, 1)]


def test_batchnorm_after_hidden_linear_before_activation_never_on_output() -> None:
    net = build_mlp(act="relu", depth=3, batchnorm=True, output_act=False)
    assert [type(m) for m in net] == [
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Linear,
    ]


def test_layernorm_sits_where_batchnorm_does() -> None:
    net = build_mlp(act="tanh", depth=3, norm="layer")
    assert [type(m) for m in net] == [
        nn.Linear,
        nn.LayerNorm,
        nn.Tanh,
        nn.Linear,
        nn.LayerNorm,
        nn.Tanh,
        nn.Linear,
        nn.Tanh,
    ]
    assert net[1].normalized_shape == (20,)


def _branch(block: nn.Module) -> list[type]:
    return [type(m) for m in block.branch]


@pytest.mark.parametrize("position", ["pre", "post"])
def test_residual_blocks_wrap_the_hidden_layers_of_equal_widths(position: str) -> None:
    """Layer 0 (10 -> 20) and the output layer stay plain; pre-norm normalises the branch's input,
    post-norm the sum."""
    net = build_mlp(
        act="relu", depth=4, norm="layer", residual=True, branch_scale=0.5, norm_position=position
    )
    assert [type(m) for m in net] == [
        nn.Linear,
        nn.LayerNorm,
        nn.ReLU,
        ResidualBlock,
        ResidualBlock,
        nn.Linear,
        nn.ReLU,
    ]
    in_branch = [nn.Linear, nn.ReLU, BranchScale]
    for block in net[3:5]:
        assert _branch(block) == ([nn.LayerNorm] if position == "pre" else []) + in_branch
        assert [type(m) for m in block.post] == ([nn.LayerNorm] if position == "post" else [])
        assert block.branch[-1].scale == 0.5


def test_a_residual_block_adds_its_scaled_branch_to_its_input() -> None:
    net = build_mlp(act="tanh", depth=3, residual=True, branch_scale="inv_sqrt_depth", seed=0)
    block = net[2]
    h = torch.randn(4, 20)
    linear = block.branch[0]
    expected = h + torch.tanh(linear(h)) / 3**0.5
    torch.testing.assert_close(block(h), expected)


def test_batchnorm_true_with_another_norm_is_refused() -> None:
    with pytest.raises(ValueError, match="batchnorm=true conflicts with norm=layer"):
        build_mlp(batchnorm=True, norm="layer")


@pytest.mark.parametrize("init", [member.value for member in Init])
@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_weight_variance_matches_theory(init: str, scale: float) -> None:
    net = build_mlp(
        act="identity", depth=2, width=512, in_features=512, init=init, init_scale=scale, seed=0
    )
    weight = net[0].weight.detach().double()
    expected = theory.sigma_w2(init, scale, 512, 512) / 512
    assert weight.var().item() == pytest.approx(expected, rel=0.02)


def test_seed_makes_init_reproducible_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_mlp(seed=7)
    after = torch.rand(1)
    b = build_mlp(seed=7)
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a[0].weight, build_mlp(seed=8)[0].weight)


def test_seeded_network_is_the_exercise_network_after_torch_manual_seed() -> None:
    """build_mlp(seed=42) holds exactly the exercise's weights after torch.manual_seed(42)."""
    torch.manual_seed(42)
    exercise = nn.Sequential(
        *[
            m
            for i in range(5)
            for m in (nn.Linear(10 if i == 0 else 20, 1 if i == 4 else 20), nn.Sigmoid())
        ]
    )
    ours = build_mlp(act="sigmoid", depth=5, width=20, in_features=10, out_features=1, seed=42)
    assert [type(m) for m in ours] == [type(m) for m in exercise]
    assert all(torch.equal(p, q) for p, q in zip(ours.parameters(), exercise.parameters()))


def test_bias_init_zeros_and_default() -> None:
    assert torch.count_nonzero(build_mlp(bias_init="zeros", seed=0)[0].bias) == 0
    bias = build_mlp(bias_init="default", seed=0, width=2000)[0].bias
    assert bias.abs().max() <= 1 / 10**0.5 and bias.std() > 0.1


@pytest.mark.parametrize(
    ("kwargs", "needle", "choices"),
    [
        ({"act": "foo"}, "act='foo'", "sigmoid, tanh, relu"),
        ({"init": "bad"}, "init='bad'", "default, xavier_uniform"),
        ({"bias_init": "ones"}, "bias_init='ones'", "default, zeros"),
        ({"norm": "group"}, "norm='group'", "none, batch, layer"),
        ({"norm_position": "mid"}, "norm_position='mid'", "pre, post"),
    ],
)
def test_bad_names_list_the_choices(kwargs: dict, needle: str, choices: str) -> None:
    with pytest.raises(ValueError, match="choose one of") as err:
        build_mlp(**kwargs)
    assert needle in str(err.value) and choices in str(err.value)


def test_residual_without_a_layer_of_equal_widths_is_refused() -> None:
    with pytest.raises(ValueError, match="residual=true needs a hidden layer of equal input"):
        build_mlp(depth=2, residual=True)


@pytest.mark.parametrize("init", [i.value for i in Init])
@pytest.mark.parametrize(
    "arch",
    [
        {"act": "tanh", "bias_init": "zeros"},
        {"act": "relu", "norm": "batch", "output_act": False},
        {"act": "tanh", "residual": True, "norm": "layer", "in_features": 20, "depth": 3},
    ],
)
def test_replica_networks_draw_what_build_mlp_draws_for_each_seed(init: str, arch: dict) -> None:
    arch = {"init": init, "bias_init": "default", **arch}
    inits = [(11, 1.0), (4, 2.5), (11, 0.5), (7, 1.0)]
    state = torch.random.get_rng_state()
    drawn = [
        [p.detach().clone() for p in net.parameters()] for net in replica_networks(arch, inits)
    ]
    assert torch.equal(torch.random.get_rng_state(), state)
    for params, (seed, scale) in zip(drawn, inits, strict=True):
        alone = build_mlp(**arch, init_scale=scale, seed=seed)
        for p, q in zip(params, alone.parameters(), strict=True):
            assert torch.equal(p, q)
