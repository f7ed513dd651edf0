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


def _bin_counts(index: torch.Tensor, size: int) -> torch.Tensor:
    """Counts of each value in `index` (all < size), without the host sync of CUDA's bincount."""
    if index.is_cuda:
        return torch.zeros(size, dtype=torch.int64, device=index.device).index_add_(
            0, index, torch.ones_like(index)
        )
    return torch.bincount(index, minlength=size)


def _hist_index(values: torch.Tensor) -> torch.Tensor:
    """Bin of every element by arithmetic on log10|g| (no search): underflow..overflow.

    Zeros and NaNs land in `underflow` and +-Inf in `overflow`; `_fix_special_bins`
    moves them to their own bins on the host from the exact counts.
    """
    log = values.abs().log10_().nan_to_num_(nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    regular = len(HIST_REGULAR_EDGES) - 1
    log.sub_(HIST_LOG10_MIN).mul_(1.0 / HIST_LOG10_STEP).floor_().clamp_(-1, regular)
    return log.to(torch.int64)


def _fix_special_bins(hist: np.ndarray, n_zero: np.ndarray, n_nan: np.ndarray, n_inf: np.ndarray) -> None:
    """Move zeros, NaNs and Infs out of the underflow/overflow bins into their own, in place."""
    hist[..., HIST_UNDERFLOW] -= (n_zero + n_nan).astype(np.int64)
    hist[..., HIST_OVERFLOW] -= n_inf.astype(np.int64)
    hist[..., HIST_ZERO] = n_zero
    hist[..., HIST_NAN] = n_nan
    hist[..., HIST_INF] = n_inf


class GradientProbe:
    """Reduces a fixed list of tensors to one packed float64 device tensor per logged step.

    `measure` does the device work and returns the packed tensor; the caller
    copies it to the host once, calls `repair_nonfinite` while the gradients
    are alive, and `unpack` later turns it into (K, T, stats) and (K, T, bins)
    arrays with numpy. NaN and Inf counts come from `repair_nonfinite`: a
    tensor whose sum is finite holds neither, so the fast path never counts them.
    """

    def __init__(self, specs: list[TensorSpec], replicas: int, device: torch.device, dtype: torch.dtype) -> None:
        self.specs = specs
        self.replicas = replicas
        self.device = device
        self.param_index = [i for i, s in enumerate(specs) if s.is_param]
        self._n_grad = sum(s.numel for s in specs)
        self.fused = replicas * self._n_grad <= FUSED_MAX_ELEMENTS
        n_t = len(specs)
        self._hist_offset = torch.arange(replicas, device=device)[:, None] * N_HIST_BINS + HIST_UNDERFLOW + 1
        if self.fused:
            sizes = [s.numel for s in specs] + [specs[i].numel for i in self.param_index]
            lengths = torch.tensor(sizes, device=device)
            self._lengths = lengths.expand(replicas, len(sizes)).contiguous()
            self._segment = torch.repeat_interleave(torch.arange(len(sizes), device=device), lengths)
            rows = torch.arange(replicas, device=device)[:, None] * n_t
            self._hist_base = (rows + self._segment[None, : self._n_grad]) * N_HIST_BINS + HIST_UNDERFLOW + 1
            self._flat = torch.empty(replicas, sum(sizes), dtype=torch.float64, device=device)

    @torch.no_grad()
    def measure(self, grads: list[torch.Tensor], params: list[torch.Tensor], with_hist: bool) -> torch.Tensor:
        """Packed statistics of `grads` (in `specs` order) and of `params` (the specs marked is_param).

        The leading dim of every tensor is the replica.
        """
        if self.fused:
            return self._measure_fused(grads, params, with_hist)
        return self._measure_per_tensor(grads, params, with_hist)

    def _stats_block(self, packed: np.ndarray) -> np.ndarray:
        """The (K, T, stats) view of a per-tensor packed vector, or of the fused path's unpacked rows."""
        k, n_t = self.replicas, len(self.specs)
        return packed[: k * n_t * len(STAT_COLUMNS)].reshape(k, n_t, len(STAT_COLUMNS))

    def unpack(self, packed: np.ndarray, with_hist: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Host arrays: statistics (K, T, len(STAT_COLUMNS)) and histograms (K, T, N_HIST_BINS) or None."""
        k, n_t = self.replicas, len(self.specs)
        n_stats = k * n_t * len(STAT_COLUMNS)
        stats = self._stats_block(packed).copy()
        rest = packed[n_stats:]
        if self.fused:
            n_seg = n_t + len(self.param_index)
            sums, m2, hi, lo, zeros = (a.reshape(k, n_seg) for a in np.split(rest[: 5 * k * n_seg], 5))
            numel = np.array([s.numel for s in self.specs] + [self.specs[i].numel for i in self.param_index])
            for name, values in (("sum", sums), ("sumsq", m2 + sums**2 / numel), ("m2", m2)):
                stats[..., S[f"grad_{name}"]] = values[:, :n_t]
                stats[:, self.param_index, S[f"param_{name}"]] = values[:, n_t:]
            stats[..., S["grad_max"]], stats[..., S["grad_min"]] = hi[:, :n_t], lo[:, :n_t]
            stats[..., S["grad_n_zero"]] = zeros[:, :n_t]
            rest = rest[5 * k * n_seg:]
        if not with_hist:
            return stats, None
        hist = rest.reshape(k, n_t, N_HIST_BINS).astype(np.int64)
        _fix_special_bins(hist, *(stats[..., S[f"grad_n_{c}"]] for c in ("zero", "nan", "inf")))
        return stats, hist

    def repair_nonfinite(self, packed: np.ndarray, grads: list[torch.Tensor]) -> None:
        """Exact float64 sums and NaN/Inf counts, in place, for every tensor whose sum is not finite.

        Runs on the host copy of `measure`'s output while `grads` are still alive.
        Reductions in float32 also overflow for |g| > ~1e19, and those rows are
        recomputed here too; rows with finite sums hold no NaN or Inf.
        """
        k, n_t = self.replicas, len(self.specs)
        if self.fused:
            n_seg = n_t + len(self.param_index)
            base = k * n_t * len(STAT_COLUMNS)
            sums = packed[base: base + k * n_seg].reshape(k, n_seg)[:, :n_t]
            bad = ~np.isfinite(sums)
        else:
            stats = self._stats_block(packed)
            bad = ~np.isfinite(stats[..., S["grad_sum"]]) | ~np.isfinite(stats[..., S["grad_sumsq"]])
        for r, t in zip(*np.nonzero(bad)):
            g = grads[t].reshape(k, -1)[r].to(torch.float64)
            row = self._stats_block(packed)[r, t]
            row[S["grad_n_nan"]] = torch.isnan(g).sum().item()
            row[S["grad_n_inf"]] = torch.isinf(g).sum().item()
            if not self.fused:
                row[S["grad_sum"]] = g.sum().item()
                row[S["grad_sumsq"]] = (g * g).sum().item()
                row[S["grad_m2"]] = ((g - g.mean()) ** 2).sum().item()

    def _measure_fused(self, grads: list[torch.Tensor], params: list[torch.Tensor], with_hist: bool) -> torch.Tensor:
        """All tensors in one float64 buffer, reduced by segment: a fixed, small number of ops."""
        k = self.replicas
        flat = torch.cat([t.reshape(k, -1) for t in (*grads, *params)], dim=1, out=self._flat)
        sums = torch.segment_reduce(flat, "sum", lengths=self._lengths, axis=1)
        centered = flat - (sums / self._lengths).index_select(1, self._segment)
        m2 = torch.segment_reduce(centered.mul_(centered), "sum", lengths=self._lengths, axis=1)
        hi = torch.segment_reduce(flat, "max", lengths=self._lengths, axis=1)
        lo = torch.segment_reduce(flat, "min", lengths=self._lengths, axis=1)
        zeros = torch.segment_reduce((flat == 0).to(torch.float64), "sum", lengths=self._lengths, axis=1)
        no_rows = torch.zeros(k * len(self.specs) * len(STAT_COLUMNS), dtype=torch.float64, device=self.device)
        parts = [no_rows, sums.view(-1), m2.view(-1), hi.view(-1), lo.view(-1), zeros.view(-1)]
        if with_hist:
            index = _hist_index(flat[:, : self._n_grad]).add_(self._hist_base)
            parts.append(_bin_counts(index.view(-1), k * len(self.specs) * N_HIST_BINS).to(torch.float64))
        return torch.cat(parts)

    def _measure_per_tensor(self, grads: list[torch.Tensor], params: list[torch.Tensor], with_hist: bool) -> torch.Tensor:
        """Per-tensor reductions that write no full-size temporaries: bandwidth-bound tensors."""
        k = self.replicas
        rows = []
        hists = []
        param_iter = iter(params)
        for spec, g in zip(self.specs, grads):
            g2 = g.reshape(k, -1)
            n = g2.shape[1]
            lo, hi = torch.aminmax(g2, dim=1)
            gsum, gsq = g2.sum(1), torch.linalg.vector_norm(g2, dim=1).square()
            zeros = n - torch.count_nonzero(g2, dim=1)
            if spec.is_param:
                p2 = next(param_iter).reshape(k, -1)
                psum, psq = p2.sum(1), torch.linalg.vector_norm(p2, dim=1).square()
            else:
                psum = psq = torch.full((k,), math.nan, dtype=g.dtype, device=g.device)
            no_count = torch.zeros_like(gsum)
            rows.append(torch.stack(
                [gsum, gsq, gsq - gsum * gsum / n, lo, hi, zeros.to(g.dtype), no_count, no_count,
                 psum, psq, psq - psum * psum / n], -1,
            ))
            if with_hist:
                index = _hist_index(g2).add_(self._hist_offset)
                hists.append(_bin_counts(index.view(-1), k * N_HIST_BINS))
        parts = [torch.stack(rows, 1).view(-1).to(torch.float64)]
        if with_hist:
            by_replica = torch.stack(hists).view(len(self.specs), k, N_HIST_BINS).transpose(0, 1)
            parts.append(by_replica.reshape(-1).to(torch.float64))
        return torch.cat(parts)
