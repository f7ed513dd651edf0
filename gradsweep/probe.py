"""Per-tensor gradient statistics, computed on the device with a handful of batched ops.

Every tensor of interest (parameter gradients, BatchNorm parameter gradients
and the backpropagated pre-activation gradients dL/dz) is reduced to a fixed
row of statistics per replica. Small networks are bound by per-op overhead, so
their tensors are concatenated and reduced by segment in one pass ("fused");
large ones are bound by memory bandwidth, so each tensor is reduced in place
with reductions that write no full-size temporaries ("per-tensor"). Both give
the same numbers; `measure` returns one stacked device tensor so that a logged
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
    "grad_min",
    "grad_max",
    "grad_n_zero",
    "grad_n_nan",
    "grad_n_inf",
    "param_sum",
    "param_sumsq",
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


def _hist_index(values: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """Bin index of every element: 0 zero, 1 underflow, regular log10 bins, overflow, nan, inf."""
    log = values.abs().log10().nan_to_num_(nan=_NAN_SENTINEL, posinf=math.inf, neginf=-math.inf)
    return torch.bucketize(log, boundaries, right=True)


class GradientProbe:
    """Reduces a fixed list of tensors to a (replicas, tensors, stats) device tensor."""

    def __init__(self, specs: list[TensorSpec], replicas: int, device: torch.device, dtype: torch.dtype) -> None:
        self.specs = specs
        self.replicas = replicas
        self.device = device
        total = replicas * sum(s.numel for s in specs)
        self.fused = total <= FUSED_MAX_ELEMENTS
        self.param_index = [i for i, s in enumerate(specs) if s.is_param]
        stat_dtype = torch.float64 if self.fused else dtype
        self._boundaries = _hist_boundaries(stat_dtype, device)
        n_t = len(specs)
        if self.fused:
            lengths = torch.tensor([s.numel for s in specs], device=device)
            self._lengths = lengths.expand(replicas, n_t).contiguous()
            param_lengths = torch.tensor([specs[i].numel for i in self.param_index], device=device)
            self._param_lengths = param_lengths.expand(replicas, len(self.param_index)).contiguous()
            segment = torch.repeat_interleave(torch.arange(n_t, device=device), lengths)
            rows = torch.arange(replicas, device=device)[:, None] * n_t
            self._hist_base = (rows + segment[None, :]) * N_HIST_BINS
        self._replica_base = torch.arange(replicas, device=device)[:, None] * N_HIST_BINS

    def measure(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], with_hist: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Statistics (K, T, len(STAT_COLUMNS)) and, if asked, histograms (K, T, N_HIST_BINS).

        `grads` follow `specs`; `params` are the parameter tensors of the
        specs marked `is_param`, in order. Leading dim of every tensor = replica.
        The per-tensor path leaves NaN/Inf counts at zero: `repair_nonfinite`
        fills them, on the host, for the rare rows whose reductions are not finite.
        """
        if self.fused:
            stats, hist = self._measure_fused(grads, params)
            return stats, hist if with_hist else None
        return self._measure_per_tensor(grads, params, with_hist)

    def repair_nonfinite(self, stats: np.ndarray, grads: list[torch.Tensor]) -> None:
        """Recompute in float64, with exact NaN/Inf counts, every row whose sums are not finite.

        Only the per-tensor path needs it: its float32 reductions overflow for
        |g| > ~1e19 and it counts no NaN/Inf on the fast path. Rows with finite
        sums have no NaN or Inf elements, so they are already exact.
        """
        if self.fused:
            return
        bad = ~np.isfinite(stats[..., S["grad_sum"]]) | ~np.isfinite(stats[..., S["grad_sumsq"]])
        for r, t in zip(*np.nonzero(bad)):
            g = grads[t].reshape(self.replicas, -1)[r].to(torch.float64)
            stats[r, t, S["grad_sum"]] = g.sum().item()
            stats[r, t, S["grad_sumsq"]] = (g * g).sum().item()
            stats[r, t, S["grad_n_nan"]] = torch.isnan(g).sum().item()
            stats[r, t, S["grad_n_inf"]] = torch.isinf(g).sum().item()

    def _measure_fused(self, grads: list[torch.Tensor], params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        k, n_t = self.replicas, len(self.specs)
        flat = torch.cat([g.reshape(k, -1) for g in grads], dim=1).to(torch.float64)
        sums = torch.segment_reduce(torch.stack([flat, flat * flat], -1), "sum", lengths=self._lengths, axis=1)
        extremes = torch.segment_reduce(torch.stack([flat, -flat], -1), "max", lengths=self._lengths, axis=1)
        index = _hist_index(flat, self._boundaries) + self._hist_base
        hist = torch.bincount(index.view(-1), minlength=k * n_t * N_HIST_BINS).view(k, n_t, N_HIST_BINS)
        pflat = torch.cat([p.detach().reshape(k, -1) for p in params], dim=1).to(torch.float64)
        psums = torch.segment_reduce(
            torch.stack([pflat, pflat * pflat], -1), "sum", lengths=self._param_lengths, axis=1
        )
        param_cols = torch.full((k, n_t, 2), math.nan, dtype=torch.float64, device=self.device)
        param_cols[:, self.param_index] = psums
        counts = hist[..., [HIST_ZERO, HIST_NAN, HIST_INF]].to(torch.float64)
        stats = torch.cat([sums, extremes[..., :1], -extremes[..., 1:], counts, param_cols], dim=-1)
        return stats, hist

    def _measure_per_tensor(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], with_hist: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = self.replicas
        rows = []
        hists = []
        param_iter = iter(params)
        for spec, g in zip(self.specs, grads):
            g2 = g.reshape(k, -1)
            lo, hi = torch.aminmax(g2, dim=1)
            norm = torch.linalg.vector_norm(g2, dim=1)
            zeros = g2.shape[1] - torch.count_nonzero(g2, dim=1)
            if spec.is_param:
                p2 = next(param_iter).detach().reshape(k, -1)
                psum = p2.sum(1)
                psq = torch.linalg.vector_norm(p2, dim=1).square()
            else:
                psum = psq = torch.full((k,), math.nan, dtype=g.dtype, device=g.device)
            nan = torch.zeros_like(norm)
            rows.append(torch.stack([g2.sum(1), norm.square(), lo, hi, zeros.to(g.dtype), nan, nan, psum, psq], -1))
            if with_hist:
                index = _hist_index(g2, self._boundaries) + self._replica_base
                hists.append(torch.bincount(index.view(-1), minlength=k * N_HIST_BINS).view(k, N_HIST_BINS))
        return torch.stack(rows, 1), torch.stack(hists, 1) if with_hist else None
