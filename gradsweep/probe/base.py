"""What every probe strategy provides: a packed vector of its `layout` a step, and a host repair."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch

from gradsweep.probe.layout import PackedLayout, S


class ProbeStrategy(ABC):
    """One way of reducing a fixed list of tensors (leading dim: replica) to a packed vector.

    `name` is the statistics path a run file's footer records (`stats_path`): strategies
    round differently, so it is one of the things that decide a run's bits.
    `counts_nonfinite_always`: the strategy counts NaN and Inf and sums in float64 on
    every step wherever it runs, so its results never need `repair_nonfinite`.
    """

    name: ClassVar[str]
    counts_nonfinite_always: ClassVar[bool] = False
    layout: PackedLayout

    @abstractmethod
    def measure(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], with_hist: bool
    ) -> torch.Tensor:
        """Packed statistics of `grads` (in spec order) and of `params` (specs marked is_param)."""

    @abstractmethod
    def repair_nonfinite(
        self, packed: np.ndarray, grads: list[torch.Tensor], params: list[torch.Tensor]
    ) -> None:
        """Exact NaN/Inf counts (and sums where needed), in place, where a sum is not finite."""


class SegmentStrategy(ProbeStrategy):
    """Base of the fused strategies, whose float64 per-segment sums need no recomputation."""

    def repair_nonfinite(
        self, packed: np.ndarray, grads: list[torch.Tensor], params: list[torch.Tensor]
    ) -> None:
        """Count NaN and Inf on the host for each gradient whose float64 sum is not finite."""
        k, n_t = self.layout.replicas, len(self.layout.specs)
        bad = ~np.isfinite(self.layout.segment_block(packed, "sum")[:, :n_t])
        for r, t in zip(*np.nonzero(bad)):
            g = grads[t].reshape(k, -1)[r].to(torch.float64)
            row = self.layout.stats(packed)[r, t]
            row[S["grad_n_nan"]] = torch.isnan(g).sum().item()
            row[S["grad_n_inf"]] = torch.isinf(g).sum().item()
