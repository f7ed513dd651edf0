"""The fused strategy in torch (CUDA's, and the CPU's when NaN/Inf are counted on the device).

Small networks are bound by per-op overhead, so all their tensors are
concatenated into one float64 buffer and reduced by segment, with a two-pass
(centred) variance: a fixed, small number of ops a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradsweep.bins import HIST_UNDERFLOW, N_HIST_BINS
from gradsweep.probe.base import SegmentStrategy
from gradsweep.probe.binning import F64_WINDOW, bin_counts, hist_exponent
from gradsweep.probe.layout import (
    NONFINITE_BLOCKS,
    SEGMENT_BLOCKS,
    STAT_COLUMNS,
    PackedLayout,
    TensorSpec,
)


@dataclass(frozen=True)
class FusedBuffers:
    """Work buffers of the fused strategy, allocated once per run."""

    raw: torch.Tensor
    flat: torch.Tensor
    tmp: torch.Tensor
    mask: torch.Tensor
    bits: torch.Tensor

    @classmethod
    def allocate(
        cls, replicas: int, n_all: int, n_grad: int, dtype: torch.dtype, device: torch.device
    ) -> FusedBuffers:
        def empty(n: int, kind: torch.dtype) -> torch.Tensor:
            return torch.empty(replicas, n, dtype=kind, device=device)

        raw = empty(n_all, dtype)
        flat = raw if dtype == torch.float64 else empty(n_all, torch.float64)
        return cls(
            raw,
            flat,
            empty(n_all, torch.float64),
            empty(n_all, torch.bool),
            empty(n_grad, torch.float64),
        )


class FusedTorchProbe(SegmentStrategy):
    """All tensors in one float64 buffer (K, segments' elements), reduced by segment."""

    name = "fused-torch"

    def __init__(
        self,
        specs: list[TensorSpec],
        replicas: int,
        device: torch.device,
        dtype: torch.dtype,
        counts_nonfinite: bool,
    ) -> None:
        blocks = SEGMENT_BLOCKS + (NONFINITE_BLOCKS if counts_nonfinite else ())
        self.layout = PackedLayout(tuple(specs), replicas, blocks)
        self.counts_nonfinite = counts_nonfinite
        n_t = len(specs)
        self._n_grad = sum(s.numel for s in specs)
        sizes = [s.numel for s in specs] + [specs[i].numel for i in self.layout.param_index]
        lengths = torch.tensor(sizes, device=device)
        self._lengths = lengths.expand(replicas, len(sizes)).contiguous()
        segment = torch.repeat_interleave(torch.arange(len(sizes), device=device), lengths)
        self._segment = segment.expand(replicas, -1).contiguous()
        rows = torch.arange(replicas, device=device)[:, None] * n_t
        self._hist_base = (
            (rows + segment[None, : self._n_grad]) * N_HIST_BINS + HIST_UNDERFLOW - F64_WINDOW[0]
        )
        self._work = FusedBuffers.allocate(replicas, sum(sizes), self._n_grad, dtype, device)
        self._extremes = torch.empty(2, replicas, len(sizes), dtype=torch.float64, device=device)
        self._no_rows = torch.zeros(
            replicas * n_t * len(STAT_COLUMNS), dtype=torch.float64, device=device
        )

    def measure(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], with_hist: bool
    ) -> torch.Tensor:
        """A fixed, small number of ops over one buffer.

        Every full-size intermediate lives in a buffer allocated once: a fresh
        large allocation per step costs page faults that dwarf the arithmetic.
        `unsafe=True` skips segment_reduce's check that the lengths sum to the
        row size, a host sync on CUDA; the lengths are built to match in __init__.
        """
        k, w = self.layout.replicas, self._work
        torch.cat([t.view(k, -1) for t in (*grads, *params)], dim=1, out=w.raw)
        flat = w.flat.copy_(w.raw) if w.flat is not w.raw else w.flat
        sums = torch.segment_reduce(flat, "sum", lengths=self._lengths, axis=1, unsafe=True)
        means = torch.gather(sums / self._lengths, 1, self._segment, out=w.tmp)
        centered = torch.sub(flat, means, out=w.tmp)
        m2 = torch.segment_reduce(
            centered.mul_(centered), "sum", lengths=self._lengths, axis=1, unsafe=True
        )
        hi = self._extremes[0].scatter_reduce_(1, self._segment, flat, "amax", include_self=False)
        lo = self._extremes[1].scatter_reduce_(1, self._segment, flat, "amin", include_self=False)
        counts = [torch.eq(flat, 0, out=w.mask)]
        if self.counts_nonfinite:
            counts += [torch.isnan(flat), torch.isinf(flat)]
        parts = [self._no_rows, sums.view(-1), m2.view(-1), hi.view(-1), lo.view(-1)]
        for mask in counts:
            parts.append(
                torch.segment_reduce(
                    w.tmp.copy_(mask), "sum", lengths=self._lengths, axis=1, unsafe=True
                ).view(-1)
            )
        if with_hist:
            index = hist_exponent(flat[:, : self._n_grad], w.bits).add_(self._hist_base)
            parts.append(
                bin_counts(index.view(-1), k * len(self.layout.specs) * N_HIST_BINS).to(
                    torch.float64
                )
            )
        return torch.cat(parts)
