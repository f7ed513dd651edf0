"""Mean-field predictions against closed forms, torch.nn.init and small Monte Carlo networks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradsweep import theory as T

# ------------------------------------------------------------------ closed forms


@pytest.mark.parametrize("q", [1e-4, 0.3, 1.0, 7.0, 250.0])
def test_gauss_expect_matches_gaussian_moments(q: float) -> None:
    assert T.gauss_expect(lambda x: x**2, q) == pytest.approx(q, rel=1e-12)
    assert T.gauss_expect(lambda x: x**4, q) == pytest.approx(3 * q * q, rel=1e-12)
    assert T.gauss_expect(T.activation("relu"), q) == pytest.approx(
        math.sqrt(q / (2 * math.pi)), rel=1e-12
    )


def test_gauss_expect_is_vectorised_over_q() -> None:
    q = np.array([0.5, 2.0, 8.0])
    np.testing.assert_allclose(T.gauss_expect(lambda x: x**2, q), q, rtol=1e-12)


def test_selu_derivative_moment_closed_form() -> None:
    expected = T.SELU_SCALE**2 * (
        0.5 + T.SELU_ALPHA**2 * math.exp(2) * 0.5 * math.erfc(math.sqrt(2))
    )
    got = T.gauss_expect(lambda x: T.activation_derivative("selu")(x) ** 2, 1.0)
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("act", T.ACTIVATIONS)
def test_derivative_table_matches_autograd(act: str) -> None:
    x = torch.linspace(-4, 4, 401, dtype=torch.float64).add(1e-3).requires_grad_(True)
    module = {
        "sigmoid": nn.Sigmoid(),
        "tanh": nn.Tanh(),
        "relu": nn.ReLU(),
        "leaky_relu": nn.LeakyReLU(0.01),
        "gelu": nn.GELU(),
        "selu": nn.SELU(),
        "identity": nn.Identity(),
    }[act]
    y = module(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    np.testing.assert_allclose(
        T.activation(act)(x.detach().numpy()), y.detach().numpy(), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(
        T.activation_derivative(act)(x.detach().numpy()), grad.numpy(), rtol=1e-10, atol=1e-12
    )


def test_sigmoid_derivative_peaks_at_a_quarter() -> None:
    x = np.linspace(-10, 10, 20001)
    d = T.activation_derivative("sigmoid")(x)
    assert d.max() == pytest.approx(0.25, abs=1e-12)
    assert x[d.argmax()] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("sw2", [0.5, 2.0, 3.0])
def test_relu_chi1_is_half_sigma_w2(sw2: float) -> None:
    chi = T.chi1_per_layer("relu", [sw2] * 6, [0.1] * 6)
    np.testing.assert_allclose(chi, sw2 / 2, rtol=1e-13)
    assert T.fixed_point("relu", sw2, 0.0)[1] == pytest.approx(sw2 / 2, rel=1e-13)


def test_tanh_chi1_equals_sigma_w2_at_zero_fixed_point() -> None:
    q_star, chi1, xi = T.fixed_point("tanh", 0.5, 0.0)
    assert q_star == 0.0
    assert chi1 == pytest.approx(0.5, rel=1e-12)
    assert xi == pytest.approx(-1 / math.log(0.5), rel=1e-12)


def test_tanh_fixed_point_solves_length_map() -> None:
    q_star, chi1, _ = T.fixed_point("tanh", 1.5, 0.05)
    mapped = 1.5 * T.gauss_expect(lambda x: np.tanh(x) ** 2, q_star) + 0.05
    assert q_star > 0 and mapped == pytest.approx(q_star, rel=1e-10)
    assert chi1 == pytest.approx(
        1.5 * T.gauss_expect(lambda x: np.cosh(x) ** -4, q_star), rel=1e-12
    )


def test_depth_scale_is_infinite_at_criticality() -> None:
    assert T.depth_scale(1.0) == math.inf
    assert T.depth_scale(math.exp(-0.1)) == pytest.approx(10.0)


def test_critical_sigma_w2_for_tanh_and_relu() -> None:
    assert T.critical_sigma_w2("tanh") == pytest.approx(1.0, abs=1e-4)
    assert T.critical_sigma_w2("relu") == pytest.approx(2.0, rel=1e-9)
    assert T.critical_sigma_w2("leaky_relu") == pytest.approx(2 / (1 + 0.01**2), rel=1e-9)


def test_length_map_of_linear_network_is_a_product() -> None:
    q = T.length_map("identity", [2.0, 0.5, 3.0], [0.1, 0.0, 0.2], input_var=1.5)
    np.testing.assert_allclose(q, [3.1, 1.55, 4.85], rtol=1e-13)


@pytest.mark.parametrize("scale", [0.7, 1.0, 1.3])
def test_linear_network_factor_is_sigma_w(scale: float) -> None:
    f = T.predict_preact_factors(
        "identity", 7, 64, init="fan_in", init_scale=scale, bias_init="default"
    )
    np.testing.assert_allclose(f, scale, rtol=1e-13)


# ------------------------------------------------------------------ BatchNorm


def test_relu_batchnorm_rate_large_batch_limit() -> None:
    assert T.batchnorm_rate("relu") == pytest.approx(math.pi / (math.pi - 1), rel=1e-12)
    assert T.relu_batchnorm_rate(10**6) == pytest.approx(math.pi / (math.pi - 1), rel=1e-5)


@pytest.mark.parametrize("batch", [4, 5, 8, 32, 256, 4096])
def test_relu_batchnorm_closed_form_matches_quadrature(batch: int) -> None:
    assert T.batchnorm_rate("relu", batch) == pytest.approx(T.relu_batchnorm_rate(batch), rel=1e-10)


@pytest.mark.parametrize("batch", [4, 6, 32, 256])
def test_linear_batchnorm_rate_is_b_minus_2_over_b_minus_3(batch: int) -> None:
    assert T.batchnorm_rate("identity", batch) == pytest.approx(
        (batch - 2) / (batch - 3), rel=1e-10
    )


@pytest.mark.parametrize("act", T.ACTIVATIONS)
def test_finite_batch_rate_tends_to_large_batch_rate(act: str) -> None:
    assert T.batchnorm_rate(act, 100_000) == pytest.approx(T.batchnorm_rate(act), rel=1e-4)
    assert T.batchnorm_rate(act, 32) > T.batchnorm_rate(act, 256) > T.batchnorm_rate(act)


def test_batchnorm_factors_ignore_sigma_w_in_the_interior() -> None:
    rates = [
        T.predict_preact_factors(
            "tanh", 8, 64, init="fan_in", init_scale=s, batchnorm=True, batch_size=32
        )[1:-1]
        for s in (0.5, 1.0, 3.0)
    ]
    for r in rates:
        np.testing.assert_allclose(r, math.sqrt(T.batchnorm_rate("tanh", 32)), rtol=1e-12)


# ------------------------------------------------------------------ init variances


def _torch_init(init: str, scale: float, fan_in: int, fan_out: int) -> torch.Tensor:
    """A weight initialised the way gradsweep's model does, in plain torch."""
    layer = nn.Linear(fan_in, fan_out, dtype=torch.float64)
    w = layer.weight
    with torch.no_grad():
        if init == "default":
            w.mul_(scale)
        elif init.startswith("xavier"):
            getattr(nn.init, init + "_")(w, gain=scale)
        elif init.startswith("kaiming"):
            getattr(nn.init, init + "_")(w, a=0.0, nonlinearity="relu")
            w.mul_(scale)
        elif init == "orthogonal":
            nn.init.orthogonal_(w, gain=scale)
        elif init == "normal":
            nn.init.normal_(w, std=scale)
        else:
            nn.init.normal_(w, std=scale / math.sqrt(fan_in))
    return w.detach()


@pytest.mark.parametrize("init", T.INIT_SCHEMES)
@pytest.mark.parametrize("shape", [(512, 512), (10, 512), (512, 1)])
def test_sigma_w2_matches_torch_init(init: str, shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    fan_in, fan_out = shape
    w = _torch_init(init, 1.7, fan_in, fan_out)
    rel = 5 * math.sqrt(2 / w.numel())  # five standard errors of a Gaussian variance estimate
    assert fan_in * w.pow(2).mean().item() == pytest.approx(
        T.sigma_w2(init, 1.7, fan_in, fan_out), rel=rel
    )


def test_sigma_b2_matches_torch_default_bias() -> None:
    torch.manual_seed(0)
    b = torch.cat([nn.Linear(64, 512).bias.detach() for _ in range(40)])
    assert b.pow(2).mean().item() == pytest.approx(T.sigma_b2("default", 64), rel=0.02)
    assert T.sigma_b2("zeros", 64) == 0.0


# ------------------------------------------------------------------ errors and helpers


@pytest.mark.parametrize(
    "call, key",
    [
        (lambda: T.sigma_w2("he", 1.0, 4, 4), "init"),
        (lambda: T.sigma_b2("ones", 4), "bias_init"),
        (lambda: T.activation("swish"), "act"),
        (lambda: T.batchnorm_rate("swish", 32), "act"),
        (lambda: T.predict_preact_factors("swish", 4, 8), "act"),
        (lambda: T.predict_preact_factors("relu", 4, 8, init="he"), "init"),
    ],
)
def test_unknown_names_raise_with_choices(call, key: str) -> None:
    with pytest.raises(ValueError, match=rf"{key}=.*choose one of: .*,"):
        call()


def test_batchnorm_rate_needs_four_samples() -> None:
    with pytest.raises(ValueError, match="batch_size=3"):
        T.batchnorm_rate("relu", 3)


def test_norms_anchor_at_output_and_round_trip() -> None:
    norms = T.predict_preact_norms([2.0, 0.5, 4.0], output_norm=3.0)
    np.testing.assert_allclose(norms, [12.0, 6.0, 12.0, 3.0])
    np.testing.assert_allclose(T.factors_from_norms(norms), [2.0, 0.5, 4.0])


def test_bulk_factor_is_interior_geometric_mean() -> None:
    assert T.bulk_factor([100.0, 2.0, 8.0, 0.01], skip_first=1, skip_last=1) == pytest.approx(4.0)
    assert T.bulk_factor([2.0, 8.0], skip_first=0, skip_last=0) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="no layers left"):
        T.bulk_factor([1.0, 2.0], skip_first=1, skip_last=1)


# ------------------------------------------------------------------ Monte Carlo


def _measured_factors(
    act: str, depth: int, width: int, batch: int, sw2: float, batchnorm: bool, seed: int
):
    """Per-layer |dL/dz_l| / |dL/dz_{l+1}| of a plain-torch float64 MLP (fan_in, default bias)."""
    g = torch.Generator().manual_seed(seed)
    phi = {"tanh": torch.tanh, "relu": torch.relu}[act]
    dims = [10] + [width] * (depth - 1) + [1]
    h = torch.randn(batch, dims[0], generator=g, dtype=torch.float64)
    zs = []
    for fan_in, fan_out in zip(dims[:-1], dims[1:]):
        w = torch.randn(fan_out, fan_in, generator=g, dtype=torch.float64) * math.sqrt(sw2 / fan_in)
        w.requires_grad_(True)
        b = (torch.rand(fan_out, generator=g, dtype=torch.float64) * 2 - 1) / math.sqrt(fan_in)
        z = h @ w.T + b
        z.retain_grad()
        zs.append(z)
        if batchnorm:
            z = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)
        h = phi(z)
    out = zs[-1]
    (out * torch.randn(out.shape, generator=g, dtype=torch.float64)).sum().backward()
    return T.factors_from_norms([z.grad.norm().item() for z in zs])


def _mc_bulk(
    act: str, depth: int, width: int, batch: int, sw2: float, batchnorm: bool, skip_first: int
) -> float:
    """Bulk factor of per-layer factors averaged geometrically over three seeds."""
    runs = np.array(
        [_measured_factors(act, depth, width, batch, sw2, batchnorm, s) for s in range(3)]
    )
    return T.bulk_factor(np.exp(np.log(runs).mean(0)), skip_first=skip_first, skip_last=1)


@pytest.mark.parametrize("act, sw2", [("tanh", 0.8), ("tanh", 2.0), ("relu", 1.5), ("relu", 2.0)])
def test_monte_carlo_matches_mean_field_without_batchnorm(act: str, sw2: float) -> None:
    predicted = T.predict_preact_factors(act, 10, 256, init="fan_in", init_scale=math.sqrt(sw2))
    measured = _mc_bulk(act, 10, 256, 32, sw2, batchnorm=False, skip_first=1)
    assert measured == pytest.approx(T.bulk_factor(predicted), rel=0.04)


def test_monte_carlo_matches_finite_batch_relu_batchnorm_rate() -> None:
    rate = T.batchnorm_rate("relu", 32)
    measured = _mc_bulk("relu", 14, 256, 32, 2.0, batchnorm=True, skip_first=4)
    assert measured**2 == pytest.approx(rate, rel=0.015)
    assert abs(measured**2 / rate - 1) < abs(measured**2 / T.batchnorm_rate("relu") - 1)


def _residual(act: str, sw2: float, alpha: float, **kw) -> np.ndarray:
    return T.predict_preact_factors(
        act,
        12,
        64,
        init="fan_in",
        init_scale=math.sqrt(sw2),
        bias_init="zeros",
        residual=True,
        branch_scale=alpha,
        **kw,
    )


@pytest.mark.parametrize("act, gain", [("relu", 0.5), ("identity", 1.0), ("leaky_relu", None)])
def test_residual_relu_and_linear_factors_are_constant(act: str, gain: float | None) -> None:
    """r^2 = 1 + alpha^2 sigma_w^2 E[phi'^2] between residual layers, whatever the stream does."""
    factors = _residual(act, 2.0, 0.5)
    gain = (1 + 0.01**2) / 2 if gain is None else gain
    np.testing.assert_allclose(factors[1:-1], math.sqrt(1 + 0.25 * 2.0 * gain), rtol=1e-9)


def test_residual_tanh_factors_follow_the_growing_stream() -> None:
    """tanh saturates as the stream's variance grows, so the branch gain and r_l fall with l."""
    factors = _residual("tanh", 1.0, 1.0)[1:-1]
    assert np.all(np.diff(factors) < 0) and np.all(factors > 1)


def test_pre_layernorm_factors_tend_to_one_and_post_layernorm_ones_are_constant() -> None:
    pre = _residual("relu", 2.0, 1.0, norm="layer", norm_position="pre")[1:-1]
    post = _residual("relu", 2.0, 1.0, norm="layer", norm_position="post")[2:-1]
    assert np.all(np.diff(pre) < 0) and np.all(pre > 1)
    mean, second = 1 / math.sqrt(math.pi), 1.0  # relu(z), z ~ N(0, 2)
    expected = math.sqrt((1 + 2.0 * 0.5) / (1 + second - mean**2))
    np.testing.assert_allclose(post, expected, rtol=1e-9)


def test_layernorm_factor_without_residual_ignores_sigma_w() -> None:
    factors = [
        T.predict_preact_factors(
            "tanh", 8, 64, init="fan_in", init_scale=s, bias_init="zeros", norm="layer"
        )[1:-1]
        for s in (0.5, 3.0)
    ]
    np.testing.assert_allclose(factors[0], factors[1], rtol=1e-12)


def test_batchnorm_in_a_residual_network_is_not_predicted() -> None:
    assert np.isnan(_residual("relu", 2.0, 1.0, norm="batch")).all()


def test_batchnorm_true_and_norm_batch_predict_the_same() -> None:
    args = ("relu", 6, 32)
    np.testing.assert_array_equal(
        T.predict_preact_factors(*args, batchnorm=True),
        T.predict_preact_factors(*args, norm="batch"),
    )
