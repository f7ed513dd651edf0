"""Per-tensor gradient statistics, computed on the device with a handful of batched ops.

Every tensor of interest (parameter gradients, BatchNorm parameter gradients
and the backpropagated pre-activation gradients dL/dz) is reduced to a fixed
row of statistics per replica. Small networks are bound by per-op overhead, so
their tensors are concatenated and reduced by segment in one pass ("fused");
large ones are bound by memory bandwidth, so each tensor is reduced in place
with reductions that write no full-size temporaries ("per-tensor"). The fused
path works in float64 with a two-pass (centred) variance; the per-tensor path
works in the gradient's dtype with a one-pass variance, so its grad_std loses
relative precision ~eps * (mean/std)^2 when a tensor's mean dominates its
spread. Otherwise both give the same numbers; `measure` returns one stacked device tensor so that a logged
step costs one device-to-host copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

HIST_LOG10_MIN = -12.0
HIST_LOG10_MAX = 4.0
HIST_LOG10_STEP = 0.25
HIST_REGULAR_EDGES: np.ndarray = np.arange(
    HIST_LOG10_MIN, HIST_LOG10_MAX + HIST_LOG10_STEP / 2, HIST_LOG10_STEP
)
HIST_BIN_LABELS: tuple[str, ...] = (
    ("zero", "underflow")
    + tuple(f"[{a:g},{b:g})" for a, b in zip(HIST_REGULAR_EDGES[:-1], HIST_REGULAR_EDGES[1:]))
    + ("overflow", "nan", "inf")
)
N_HIST_BINS = len(HIST_BIN_LABELS)
HIST_ZERO, HIST_UNDERFLOW, HIST_OVERFLOW, HIST_NAN, HIST_INF = 0, 1, N_HIST_BINS - 3, N_HIST_BINS - 2, N_HIST_BINS - 1
_NAN_SENTINEL = 1e30  # stands in for log10|NaN|; larger than any finite log10|g|

STAT_COLUMNS: tuple[str, ...] = (
    "grad_sum",
    "grad_sumsq",
    "grad_m2",
    "grad_min",
    "grad_max",
    "grad_n_zero",
    "grad_n_nan",
    "grad_n_inf",
    "param_sum",
    "param_sumsq",
    "param_m2",
)
S = {name: i for i, name in enumerate(STAT_COLUMNS)}

FUSED_MAX_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class TensorSpec:
    """Which tensor a statistics row describes: Linear layer index, name, elements per replica."""

    layer: int
    tensor: str
    numel: int
    is_param: bool


def _hist_boundaries(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    lowest = torch.finfo(dtype).min
    values = [lowest, *HIST_REGULAR_EDGES.tolist(), _NAN_SENTINEL, math.inf]
    return torch.tensor(values, dtype=dtype, device=device)


def _bin_counts(index: torch.Tensor, size: int) -> torch.Tensor:
    """Counts of each value in `index` (all < size), without the host sync of CUDA's bincount."""
    if index.is_cuda:
        return torch.zeros(size, dtype=torch.int64, device=index.device).index_add_(
            0, index, torch.ones_like(index)
        )
    return torch.bincount(index, minlength=size)


def _hist_index(values: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """Bin index of every element: 0 zero, 1 underflow, regular log10 bins, overflow, nan, inf."""
    log = values.abs().log10().nan_to_num_(nan=_NAN_SENTINEL, posinf=math.inf, neginf=-math.inf)
    return torch.bucketize(log, boundaries, right=True)


class GradientProbe:
    """Reduces a fixed list of tensors to one packed float64 device tensor per logged step.

    `measure` does the device work and returns the packed tensor; the caller
    copies it to the host once and `unpack` turns it into (K, T, stats) and
    (K, T, bins) arrays with numpy, where per-element cost is lowest.
    """

    def __init__(self, specs: list[TensorSpec], replicas: int, device: torch.device, dtype: torch.dtype) -> None:
        self.specs = specs
        self.replicas = replicas
        self.device = device
        self.param_index = [i for i, s in enumerate(specs) if s.is_param]
        self._n_grad = sum(s.numel for s in specs)
        self.fused = replicas * self._n_grad <= FUSED_MAX_ELEMENTS
        self._boundaries = _hist_boundaries(torch.float64 if self.fused else dtype, device)
        n_t = len(specs)
        if self.fused:
            sizes = [s.numel for s in specs] + [specs[i].numel for i in self.param_index]
            self._lengths = torch.tensor(sizes, device=device).expand(replicas, len(sizes)).contiguous()
            grad_lengths = torch.tensor([s.numel for s in specs], device=device)
            segment = torch.repeat_interleave(torch.arange(n_t, device=device), grad_lengths)
            rows = torch.arange(replicas, device=device)[:, None] * n_t
            self._hist_base = (rows + segment[None, :]) * N_HIST_BINS
            self._flat = torch.empty(replicas, sum(sizes), dtype=torch.float64, device=device)
        self._replica_base = torch.arange(replicas, device=device)[:, None] * N_HIST_BINS

    @torch.no_grad()
    def measure(self, grads: list[torch.Tensor], params: list[torch.Tensor], with_hist: bool) -> torch.Tensor:
        """Packed statistics of `grads` (in `specs` order) and of `params` (the specs marked is_param).

        The leading dim of every tensor is the replica. In the fused path the
        histogram is always computed, since the zero/NaN/Inf counts come from it.
        """
        if self.fused:
            return self._measure_fused(grads, params)
        return self._measure_per_tensor(grads, params, with_hist)

    def unpack(self, packed: np.ndarray, with_hist: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Host arrays: statistics (K, T, len(STAT_COLUMNS)) and histograms (K, T, N_HIST_BINS) or None."""
        k, n_t, n_p = self.replicas, len(self.specs), len(self.param_index)
        stats = np.full((k, n_t, len(STAT_COLUMNS)), np.nan)
        if self.fused:
            n_seg = n_t + n_p
            sums, m2, hi, lo, hist = np.split(packed, np.cumsum([k * n_seg] * 4))
            sums, m2, hi, lo = (a.reshape(k, n_seg) for a in (sums, m2, hi, lo))
            numel = np.array([s.numel for s in self.specs] + [self.specs[i].numel for i in self.param_index])
            sumsq = m2 + sums**2 / numel
            hist = hist.reshape(k, n_t, N_HIST_BINS).astype(np.int64)
            for name, values in (("sum", sums), ("sumsq", sumsq), ("m2", m2)):
                stats[..., S[f"grad_{name}"]] = values[:, :n_t]
                stats[:, self.param_index, S[f"param_{name}"]] = values[:, n_t:]
            stats[..., S["grad_max"]], stats[..., S["grad_min"]] = hi[:, :n_t], lo[:, :n_t]
            stats[..., S["grad_n_zero"]] = hist[..., HIST_ZERO]
            stats[..., S["grad_n_nan"]] = hist[..., HIST_NAN]
            stats[..., S["grad_n_inf"]] = hist[..., HIST_INF]
            return stats, hist if with_hist else None
        rows, hist = np.split(packed, [k * n_t * len(STAT_COLUMNS)])
        stats[:] = rows.reshape(stats.shape)
        return stats, hist.reshape(k, n_t, N_HIST_BINS).astype(np.int64) if with_hist else None

    def repair_nonfinite(self, packed: np.ndarray, grads: list[torch.Tensor]) -> None:
        """Recompute in float64, with exact NaN/Inf counts, every row whose sums are not finite.

        Works in place on the host copy of `measure`'s output while `grads` are still alive.

        Only the per-tensor path needs it: its reductions run in the gradient's
        dtype (float32 overflows for |g| > ~1e19) and it counts no NaN/Inf on the
        fast path. Rows with finite sums hold no NaN or Inf, so they are exact.
        """
        if self.fused:
            return
        k, n_t = self.replicas, len(self.specs)
        stats = packed[: k * n_t * len(STAT_COLUMNS)].reshape(k, n_t, len(STAT_COLUMNS))
        bad = ~np.isfinite(stats[..., S["grad_sum"]]) | ~np.isfinite(stats[..., S["grad_sumsq"]])
        for r, t in zip(*np.nonzero(bad)):
            g = grads[t].reshape(self.replicas, -1)[r].to(torch.float64)
            stats[r, t, S["grad_sum"]] = g.sum().item()
            stats[r, t, S["grad_sumsq"]] = (g * g).sum().item()
            stats[r, t, S["grad_m2"]] = ((g - g.mean()) ** 2).sum().item()
            stats[r, t, S["grad_n_nan"]] = torch.isnan(g).sum().item()
            stats[r, t, S["grad_n_inf"]] = torch.isinf(g).sum().item()

    def _measure_fused(self, grads: list[torch.Tensor], params: list[torch.Tensor]) -> torch.Tensor:
        k = self.replicas
        flat = torch.cat([t.reshape(k, -1) for t in (*grads, *params)], dim=1, out=self._flat)
        sums = torch.segment_reduce(flat, "sum", lengths=self._lengths, axis=1)
        lengths = self._lengths[0]
        means = torch.repeat_interleave(sums / self._lengths, lengths, dim=1, output_size=flat.shape[1])
        centered = flat - means
        m2 = torch.segment_reduce(centered * centered, "sum", lengths=self._lengths, axis=1)
        hi = torch.segment_reduce(flat, "max", lengths=self._lengths, axis=1)
        lo = torch.segment_reduce(flat, "min", lengths=self._lengths, axis=1)
        index = _hist_index(flat[:, : self._n_grad], self._boundaries).add_(self._hist_base)
        hist = _bin_counts(index.view(-1), k * len(self.specs) * N_HIST_BINS)
        return torch.cat([sums.view(-1), m2.view(-1), hi.view(-1), lo.view(-1), hist.to(torch.float64)])

    def _measure_per_tensor(self, grads: list[torch.Tensor], params: list[torch.Tensor], with_hist: bool) -> torch.Tensor:
        k = self.replicas
        rows = []
        hists = []
        param_iter = iter(params)
        for spec, g in zip(self.specs, grads):
            g2 = g.reshape(k, -1)
            lo, hi = torch.aminmax(g2, dim=1)
            norm = torch.linalg.vector_norm(g2, dim=1)
            zeros = g2.shape[1] - torch.count_nonzero(g2, dim=1)
            gsum, gsq = g2.sum(1), norm.square()
            if spec.is_param:
                p2 = next(param_iter).reshape(k, -1)
                psum = p2.sum(1)
                psq = torch.linalg.vector_norm(p2, dim=1).square()
            else:
                psum = psq = torch.full((k,), math.nan, dtype=g.dtype, device=g.device)
            no_count = torch.zeros_like(norm)
            n = g2.shape[1]
            rows.append(torch.stack(
                [gsum, gsq, gsq - gsum * gsum / n, lo, hi, zeros.to(g.dtype), no_count, no_count,
                 psum, psq, psq - psum * psum / n], -1,
            ))
            if with_hist:
                index = _hist_index(g2, self._boundaries).add_(self._replica_base)
                hists.append(_bin_counts(index.view(-1), k * N_HIST_BINS))
        parts = [torch.stack(rows, 1).view(-1).to(torch.float64)]
        if with_hist:
            by_replica = torch.stack(hists).view(len(self.specs), k, N_HIST_BINS).transpose(0, 1)
            parts.append(by_replica.reshape(-1).to(torch.float64))
        return torch.cat(parts)
