"""Mean-field predictions for how the back-propagated gradient scales from layer to layer.

The predicted quantity is the gradient of the loss with respect to each Linear
layer's output z_l (before BatchNorm), the probe's `preact` rows. For a
network without BatchNorm the squared-norm ratio between consecutive layers is
chi_1 (Poole et al. 2016; Schoenholz et al. 2017); with BatchNorm it is the
gradient explosion rate of Yang et al. (2019), evaluated exactly at finite
batch size. See docs/theory.md for the formulas, assumptions and limits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from gradsweep.config import CHOICES, check_choice, residual_layers

Array = np.ndarray
ActFn = Callable[[Array], Array]

ACTIVATIONS: tuple[str, ...] = CHOICES["act"]
INIT_SCHEMES: tuple[str, ...] = CHOICES["init"]
BIAS_INITS: tuple[str, ...] = CHOICES["bias_init"]

LEAKY_SLOPE = 0.01
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

_Q_TINY = 1e-300  # stands in for q = 0 so that kinks at 0 are averaged, not sampled
_Q_HUGE = 1e300  # stands in for q = inf (no finite fixed point)


# ---------------------------------------------------------------- activations


def _erf(x: Array) -> Array:
    """Elementwise erf through math.erf (numpy has none), so that theory needs no torch."""
    arr = np.asarray(x, dtype=np.float64)
    values = np.fromiter(map(math.erf, arr.ravel().tolist()), np.float64, arr.size)
    return values.reshape(arr.shape)


def _sigmoid(x: Array) -> Array:
    """Logistic sigmoid written through tanh, which never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _gelu(x: Array) -> Array:
    """Exact (erf) GELU, x * Phi(x)."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _gelu_prime(x: Array) -> Array:
    """Derivative of the exact GELU, Phi(x) + x * pdf(x)."""
    return 0.5 * (1.0 + _erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(
        2.0 * math.pi
    )


def _selu(x: Array) -> Array:
    """SELU with PyTorch's constants."""
    return SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0.0)))


def _selu_prime(x: Array) -> Array:
    """Derivative of SELU (left derivative at 0, as autograd uses)."""
    return SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0.0)))


_ACT_TABLE: dict[str, tuple[ActFn, ActFn]] = {
    "sigmoid": (_sigmoid, lambda x: _sigmoid(x) * (1.0 - _sigmoid(x))),
    "tanh": (np.tanh, lambda x: 1.0 - np.tanh(x) ** 2),
    "relu": (lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(np.float64)),
    "leaky_relu": (
        lambda x: np.where(x > 0, x, LEAKY_SLOPE * x),
        lambda x: np.where(x > 0, 1.0, LEAKY_SLOPE),
    ),
    "gelu": (_gelu, _gelu_prime),
    "selu": (_selu, _selu_prime),
    "identity": (
        lambda x: np.asarray(x, dtype=np.float64),
        lambda x: np.ones_like(x, dtype=np.float64),
    ),
}


def activation(act: str) -> ActFn:
    """Vectorised numpy activation phi, matching gradsweep.model's modules."""
    check_choice("act", act)
    return _ACT_TABLE[act][0]


def activation_derivative(act: str) -> ActFn:
    """Vectorised numpy phi', with autograd's value (0 for relu) at the kink."""
    check_choice("act", act)
    return _ACT_TABLE[act][1]


# ----------------------------------------------------------- init variances


def sigma_w2(init: str, init_scale: float, fan_in: int, fan_out: int) -> float:
    """sigma_w^2 = fan_in * Var(W) of one Linear layer under an init scheme."""
    check_choice("init", init)
    per_fan_in = {
        "default": 1.0 / 3.0,
        "xavier_uniform": 2.0 * fan_in / (fan_in + fan_out),
        "xavier_normal": 2.0 * fan_in / (fan_in + fan_out),
        "kaiming_uniform": 2.0,
        "kaiming_normal": 2.0,
        "orthogonal": fan_in / max(fan_in, fan_out),
        "normal": float(fan_in),
        "fan_in": 1.0,
    }[init]
    return per_fan_in * init_scale**2


def sigma_b2(bias_init: str, fan_in: int) -> float:
    """Bias variance sigma_b^2; PyTorch's default U(+-1/sqrt(fan_in)) ignores init_scale."""
    check_choice("bias_init", bias_init)
    return 1.0 / (3.0 * fan_in) if bias_init == "default" else 0.0


def layer_variances(
    depth: int,
    width: int,
    in_features: int,
    out_features: int,
    init: str,
    init_scale: float,
    bias_init: str,
) -> tuple[Array, Array]:
    """Per-layer (sigma_w^2, sigma_b^2) arrays for the MLP, input side first."""
    dims = [in_features] + [width] * (depth - 1) + [out_features]
    sizes = list(zip(dims[:-1], dims[1:]))
    sw2 = np.array([sigma_w2(init, init_scale, fi, fo) for fi, fo in sizes])
    sb2 = np.array([sigma_b2(bias_init, fi) for fi, _ in sizes])
    return sw2, sb2


# ------------------------------------------------------------ Gaussian quadrature


@lru_cache(maxsize=1)
def _gauss_nodes() -> tuple[Array, Array]:
    """Nodes/weights for E[f(z)], z ~ N(0,1): composite Gauss-Legendre folded at 0.

    Plain Gauss-Hermite converges slowly for integrands with a kink at 0
    (relu, leaky_relu, selu) and for sharply peaked ones such as tanh'(sqrt(q) z)
    at large q; symmetric panels that refine geometrically towards 0 and stop
    at |z| = 14 are exact to ~1e-13 for all seven activations.
    """
    edges = np.concatenate([[0.0], 2.0 ** np.arange(-8, 4), [14.0]])
    x, w = np.polynomial.legendre.leggauss(24)
    half = (edges[1:, None] - edges[:-1, None]) / 2
    z = (edges[:-1, None] + half * (x + 1)).ravel()
    wz = (half * w).ravel() * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return np.concatenate([z, -z]), np.concatenate([wz, wz])


def gauss_expect(f: ActFn, q: float | Array) -> float | Array:
    """E[f(sqrt(q) z)] for z ~ N(0,1); vectorised over an array of variances q."""
    z, w = _gauss_nodes()
    q_arr = np.asarray(q, dtype=np.float64)
    values = f(np.sqrt(q_arr)[..., None] * z)
    result = values @ w
    return float(result) if q_arr.ndim == 0 else result


# -------------------------------------------------------- networks without BN


def length_map(
    act: str, sw2: Sequence[float], sb2: Sequence[float], input_var: float = 1.0
) -> Array:
    """Variance q^l of each Linear output z_l, l = 0..depth-1 (no BatchNorm)."""
    phi = activation(act)
    q = [sw2[0] * input_var + sb2[0]]
    for w2, b2 in zip(sw2[1:], sb2[1:]):
        q.append(w2 * gauss_expect(lambda x: phi(x) ** 2, q[-1]) + b2)
    return np.array(q)


def chi1_per_layer(
    act: str, sw2: Sequence[float], sb2: Sequence[float], input_var: float = 1.0
) -> Array:
    """chi_1^(l) = sigma_w^2(l+1) E[phi'(sqrt(q^l) z)^2], squared-norm ratio of layer l to l+1."""
    dphi = activation_derivative(act)
    q = length_map(act, sw2, sb2, input_var)[:-1]
    return np.asarray(sw2[1:]) * gauss_expect(lambda x: dphi(x) ** 2, np.maximum(q, _Q_TINY))


def _stable_root(residual: Callable[[float], float], lo: float, hi: float) -> float:
    """Bisection on a log scale for a sign change from + (at lo) to - (at hi)."""
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if residual(mid) > 0 else (lo, mid)
    return math.sqrt(lo * hi)


def _fixed_q(act: str, sw2: float, sb2: float) -> float:
    """Largest stable fixed point of q -> sw2 E[phi^2] + sb2; 0 or inf if none is finite > 0."""
    phi = activation(act)
    grid = np.logspace(-12, 12, 241)
    resid = sw2 * gauss_expect(lambda x: phi(x) ** 2, grid) + sb2 - grid
    down = np.nonzero((resid[:-1] > 0) & (resid[1:] <= 0))[0]
    if down.size == 0:
        return math.inf if resid[-1] > 0 else 0.0
    i = down[-1]
    return _stable_root(
        lambda q: sw2 * gauss_expect(lambda x: phi(x) ** 2, q) + sb2 - q, grid[i], grid[i + 1]
    )


def depth_scale(chi1: float) -> float:
    """xi = -1/ln(chi_1): layers over which the gradient norm^2 changes by e (< 0 if exploding)."""
    if chi1 == 1.0:
        return math.inf
    if chi1 == 0.0:
        return 0.0
    return -1.0 / math.log(chi1)


def fixed_point(act: str, sw2: float, sb2: float) -> tuple[float, float, float]:
    """(q*, chi_1 at q*, depth scale xi) of a deep network without BatchNorm."""
    q_star = _fixed_q(act, sw2, sb2)
    q_eval = min(max(q_star, _Q_TINY), _Q_HUGE)
    dphi = activation_derivative(act)
    chi1 = sw2 * gauss_expect(lambda x: dphi(x) ** 2, q_eval)
    return q_star, chi1, depth_scale(chi1)


def critical_sigma_w2(act: str, lo: float = 1e-2, hi: float = 1e4) -> float:
    """sigma_w^2 at which chi_1(q*) = 1 with sigma_b = 0 (order-to-chaos transition)."""

    def excess(log_sw2: float) -> float:
        return fixed_point(act, math.exp(log_sw2), 0.0)[1] - 1.0

    a, b = math.log(lo), math.log(hi)
    if excess(a) > 0 or excess(b) < 0:
        raise ValueError(f"act={act!r}: chi_1 = 1 has no root for sigma_w^2 in [{lo}, {hi}]")
    for _ in range(80):
        mid = 0.5 * (a + b)
        a, b = (mid, b) if excess(mid) < 0 else (a, mid)
    return math.exp(0.5 * (a + b))


# ------------------------------------------------------------ BatchNorm


def _check_batch(batch_size: int) -> None:
    """The finite-batch rate needs E[1/chi^2_{B-1}] < inf, i.e. B >= 4."""
    if batch_size < 4:
        raise ValueError(
            f"batch_size={batch_size} is not valid here; the BatchNorm rate needs batch_size >= 4"
        )


@lru_cache(maxsize=64)
def _batch_pair_nodes(batch_size: int) -> tuple[Array, Array, Array]:
    """Nodes (y1, y2) and weights for two coordinates of a BatchNorm output.

    In the mean-field limit a unit's normalised batch vector y is uniform on the
    sphere |y|^2 = B inside the hyperplane sum(y) = 0. The projection of that
    sphere onto the span of two coordinates has density prop. to
    (1 - r^2)^((B-5)/2) on the unit disc; with r = sin(psi) and angular panels
    split where y1 or y2 changes sign, Gauss-Legendre is accurate for kinked phi.
    """
    b = batch_size
    s, d = math.sqrt((b - 2) / (2 * b)), math.sqrt(0.5)
    x, w = np.polynomial.legendre.leggauss(48)
    psi_max = min(math.pi / 2, 12.0 / math.sqrt(max(b - 4, 1)))
    psi = psi_max * (x + 1) / 2
    w_psi = w * np.sin(psi) * np.cos(psi) ** (b - 4)
    k = math.atan2(s, d)
    cuts = np.array([-k, k, math.pi - k, math.pi + k, 2 * math.pi - k])
    half = (cuts[1:, None] - cuts[:-1, None]) / 2
    theta = (cuts[:-1, None] + half * (x + 1)).ravel()
    w_theta = (half * w).ravel()
    r = np.sin(psi)[:, None]
    y1 = math.sqrt(b) * r * (s * np.cos(theta) + d * np.sin(theta))
    y2 = math.sqrt(b) * r * (s * np.cos(theta) - d * np.sin(theta))
    weights = w_psi[:, None] * w_theta[None, :]
    return y1.ravel(), y2.ravel(), weights.ravel() / weights.sum()


def _bn_gain_and_variance(act: str, batch_size: int) -> tuple[float, float]:
    """(gradient gain through BN+phi per unit input variance, batch variance of phi(y)).

    gain = B E[T] / ((B-3)(B-1)) with T = tr(Q D P D Q), D = diag(phi'(y)),
    P the centring projector and Q = P - y y^T / B; variance = E|P phi(y)|^2/(B-1).
    """
    phi, dphi = activation(act), activation_derivative(act)
    b = batch_size
    y1, y2, w = _batch_pair_nodes(b)
    e1, e2 = dphi(y1), dphi(y2)

    def m(v: Array) -> float:
        return float(v @ w)

    m_e2, m_ey2 = m(e1**2), m((e1 * y1) ** 2)
    expected_t = (
        (b - 2) * m_e2
        + (m_e2 + (b - 1) * m(e1 * e2)) / b
        - m_ey2
        + (m_ey2 + (b - 1) * m(e1 * y1 * e2 * y2)) / b
    )
    gain = b * expected_t / ((b - 3) * (b - 1))
    variance = m(phi(y1) ** 2) - m(phi(y1) * phi(y2))
    return gain, variance


def batchnorm_rate(act: str, batch_size: int | None = None) -> float:
    """Squared-norm growth per layer, |dL/dz_l|^2 / |dL/dz_{l+1}|^2, deep inside a BN network.

    Finite batch_size: exact mean-field value (Yang et al. 2019, generalised
    from their ReLU Theorem to any phi); None: the large-batch limit
    E[phi'(u)^2] / Var[phi(u)], u ~ N(0,1). Independent of sigma_w and sigma_b.
    """
    if batch_size is None:
        phi, dphi = activation(act), activation_derivative(act)
        mean = gauss_expect(phi, 1.0)
        return gauss_expect(lambda x: dphi(x) ** 2, 1.0) / (
            gauss_expect(lambda x: phi(x) ** 2, 1.0) - mean**2
        )
    _check_batch(batch_size)
    gain, variance = _bn_gain_and_variance(act, batch_size)
    return gain / variance


def relu_batchnorm_rate(batch_size: int) -> float:
    """Closed form of batchnorm_rate('relu', B); tends to pi/(pi-1) as B -> inf."""
    _check_batch(batch_size)
    b = batch_size
    rho = -1.0 / (b - 1)
    both_positive = (math.pi - math.acos(rho)) / (2 * math.pi)
    relu_kernel = (math.sqrt(1 - rho * rho) + (math.pi - math.acos(rho)) * rho) / (2 * math.pi)
    numerator = b * (b - 3) / 2 + 1 + (b - 1) * (both_positive + relu_kernel)
    return numerator / ((b - 3) * (b - 1) * (0.5 - relu_kernel))


# ------------------------------------------------------- LayerNorm and residual layers


@dataclass
class _Stream:
    """Per-sample statistics over the features of a layer's output h: mean and second moment."""

    mean: float
    second: float

    @property
    def variance(self) -> float:
        return self.second - self.mean**2

    def plus_branch(self, act: str, q: float, alpha: float) -> _Stream:
        """h + alpha phi(z), z ~ N(0, q) independent of h unit by unit (the residual addition)."""
        phi = activation(act)
        m1, m2 = gauss_expect(phi, q), gauss_expect(lambda x: phi(x) ** 2, q)
        return _Stream(
            self.mean + alpha * m1, self.second + alpha**2 * m2 + 2 * alpha * self.mean * m1
        )


def _gain(act: str, q: float) -> float:
    """E[phi'(sqrt(q) u)^2]."""
    dphi = activation_derivative(act)
    return gauss_expect(lambda x: dphi(x) ** 2, max(q, _Q_TINY))


def _plain_layer(
    act: str, stream: _Stream, sw2: float, sb2: float, layer_norm: bool
) -> tuple[float, float, _Stream]:
    """(a, b, output) of Linear -> [LayerNorm] -> phi: |dL/dz|^2 = a |dL/dh|^2, |dL/dh_in|^2 = b
    |dL/dh|^2 with h the layer's output, and the statistics of h."""
    phi = activation(act)
    q = sw2 * stream.second + sb2
    # LayerNorm divides z by its per-sample std over the features, sqrt(q) at infinite width
    q_act, jacobian = (1.0, 1.0 / q) if layer_norm else (q, 1.0)
    a = _gain(act, q_act) * jacobian
    out = _Stream(gauss_expect(phi, q_act), gauss_expect(lambda x: phi(x) ** 2, q_act))
    return a, sw2 * a, out


def _residual_layer(
    act: str, stream: _Stream, sw2: float, sb2: float, alpha: float, norm: str, position: str
) -> tuple[float, float, _Stream]:
    """(a, b, output) of a residual layer without a norm or with LayerNorm pre or post."""
    if norm == "layer" and position == "pre":
        # the branch sees its input standardised per sample; the skip path carries it unscaled
        q = sw2 + sb2
        e = _gain(act, q)
        return (
            alpha**2 * e,
            1.0 + alpha**2 * sw2 * e / stream.variance,
            stream.plus_branch(act, q, alpha),
        )
    q = sw2 * stream.second + sb2
    e = _gain(act, q)
    total = stream.plus_branch(act, q, alpha)
    if norm == "layer":  # post: the sum is standardised, its gradient divided by its std
        return (
            alpha**2 * e / total.variance,
            (1.0 + alpha**2 * sw2 * e) / total.variance,
            (_Stream(0.0, 1.0)),
        )
    return alpha**2 * e, 1.0 + alpha**2 * sw2 * e, total


def block_factors(
    act: str,
    depth: int,
    width: int,
    in_features: int = 10,
    out_features: int = 1,
    init: str = "default",
    init_scale: float = 1.0,
    bias_init: str = "default",
    norm: str = "none",
    residual: bool = False,
    branch_scale: float = 1.0,
    norm_position: str = "pre",
    input_var: float = 1.0,
) -> Array:
    """Predicted |dL/dz_l| / |dL/dz_{l+1}|, l = 0..depth-2, of LayerNorm and residual networks.

    Mean field at infinite width: each layer's output statistics over the
    features go forward; backward, |dL/dz_l|^2 = a_l |dL/dh_l|^2 and
    |dL/dh_{l-1}|^2 = b_l |dL/dh_l|^2, so r_l^2 = a_l b_{l+1} / a_{l+1}
    (docs/theory.md). NaN for BatchNorm in a residual network, which has no closed form.
    """
    check_choice("act", act)
    check_choice("norm", norm)
    check_choice("norm_position", norm_position)
    if depth < 2:
        return np.zeros(0)
    if residual and norm == "batch":
        return np.full(depth - 1, np.nan)
    sw2, sb2 = layer_variances(depth, width, in_features, out_features, init, init_scale, bias_init)
    skips = residual_layers(depth, width, in_features) if residual else [False] * depth
    stream = _Stream(0.0, input_var)
    a, b = np.ones(depth), np.ones(depth)
    for layer in range(depth - 1):
        if skips[layer]:
            a[layer], b[layer], stream = _residual_layer(
                act, stream, sw2[layer], sb2[layer], branch_scale, norm, norm_position
            )
        else:
            a[layer], b[layer], stream = _plain_layer(
                act, stream, sw2[layer], sb2[layer], norm == "layer"
            )
    b[-1] = sw2[-1]  # the output layer's a cancels: r_{L-2}^2 = a_{L-2} sigma_w^2(L-1)
    return np.sqrt(a[:-1] * b[1:] / a[1:])


# ------------------------------------------------------------ per-layer predictions


def predict_preact_factors(
    act: str,
    depth: int,
    width: int,
    in_features: int = 10,
    out_features: int = 1,
    init: str = "default",
    init_scale: float = 1.0,
    bias_init: str = "default",
    batchnorm: bool = False,
    batch_size: int = 32,
    output_act: bool = True,
    input_var: float = 1.0,
    norm: str | None = None,
    residual: bool = False,
    branch_scale: float = 1.0,
    norm_position: str = "pre",
) -> Array:
    """Predicted |dL/dz_l| / |dL/dz_{l+1}| for l = 0..depth-2 (length depth-1).

    `norm` (None: `batch` if `batchnorm`, else `none`) of `layer`, or `residual`,
    is `block_factors`; the rest of this docstring is about plain and BatchNorm networks.

    Without BN this is sqrt(chi_1^(l)) along the layer-resolved length map.
    With BN it is sqrt(rate * sigma_w^2(l+1) / sigma_w^2(l)), exact for deep
    interior layers; layer 0 (un-normalised Gaussian input) and layer depth-2
    (gradient from the output layer, which depends on the loss) are estimates.
    `output_act` does not enter: the output activation only rescales the
    anchor dL/dz_{depth-1}, which predict_preact_norms takes as measured.
    """
    check_choice("act", act)
    norm = ("batch" if batchnorm else "none") if norm is None else norm
    if residual or norm == "layer":
        return block_factors(
            act,
            depth,
            width,
            in_features,
            out_features,
            init,
            init_scale,
            bias_init,
            norm,
            residual,
            branch_scale,
            norm_position,
            input_var,
        )
    batchnorm = norm == "batch"
    sw2, sb2 = layer_variances(depth, width, in_features, out_features, init, init_scale, bias_init)
    if depth < 2:
        return np.zeros(0)
    if not batchnorm:
        return np.sqrt(chi1_per_layer(act, sw2, sb2, input_var))
    _check_batch(batch_size)
    gain, variance = _bn_gain_and_variance(act, batch_size)
    incoming = np.concatenate([[input_var], np.full(depth - 2, variance)])
    return np.sqrt(gain / incoming * sw2[1:] / sw2[:-1])


def predict_preact_norms(factors: Sequence[float], output_norm: float) -> Array:
    """Absolute |dL/dz_l|, l = 0..depth-1, anchored at the measured output-layer norm."""
    back = np.cumprod(np.asarray(factors, dtype=np.float64)[::-1])[::-1]
    return output_norm * np.append(back, 1.0)


def factors_from_norms(norms: Sequence[float]) -> Array:
    """Measured per-layer factors |dL/dz_l| / |dL/dz_{l+1}| from per-layer preact norms."""
    v = np.asarray(norms, dtype=np.float64)
    return v[:-1] / v[1:]


def bulk_factor(values: Sequence[float], skip_first: int = 1, skip_last: int = 1) -> float:
    """Geometric mean of per-layer factors over interior layers, skipping ends the theory misses."""
    v = np.asarray(values, dtype=np.float64)
    inner = v[skip_first : len(v) - skip_last]
    if inner.size == 0:
        raise ValueError(
            f"no layers left: {len(v)} factors with skip_first={skip_first}, skip_last={skip_last}"
        )
    if np.any(inner < 0) or not np.all(np.isfinite(inner)):
        raise ValueError("per-layer factors must be finite and non-negative")
    with np.errstate(divide="ignore"):
        return float(np.exp(np.mean(np.log(inner))))
