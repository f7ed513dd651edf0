"""The packed result of one logged step: the tensors it describes, where each block lies, unpacking.

A logged step leaves one float64 vector, in this order:

* the stats block, (K, T, len(STAT_COLUMNS)): one row per replica and tensor
  (all zeros from the fused strategies, which fill `segment_blocks` instead);
* for the fused strategies, one (K, segments) block per name in
  `segment_blocks`, the segments being every tensor, then every parameter again;
* on steps with a histogram, the histogram block (K, T, N_HIST_BINS);
* the tail the run loop appends: one (K,) block per name in `tail`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from gradsweep.bins import HIST_INF, HIST_NAN, HIST_OVERFLOW, HIST_UNDERFLOW, HIST_ZERO, N_HIST_BINS

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

# Per-segment blocks of the fused strategies; NaN/Inf counts only when they count on the device.
SEGMENT_BLOCKS: tuple[str, ...] = ("sum", "m2", "max", "min", "n_zero")
NONFINITE_BLOCKS: tuple[str, ...] = ("n_nan", "n_inf")


@dataclass(frozen=True)
class TensorSpec:
    """Which tensor a statistics row describes: Linear layer index, name, elements per replica."""

    layer: int
    tensor: str
    numel: int
    is_param: bool


@dataclass(frozen=True)
class StepArrays:
    """One logged step unpacked: statistics (K, T, len(STAT_COLUMNS)), histograms
    (K, T, N_HIST_BINS) or None, and each tail value (K,) by name."""

    stats: np.ndarray
    hist: np.ndarray | None
    tail: dict[str, np.ndarray]


def fix_special_bins(
    hist: np.ndarray, n_zero: np.ndarray, n_nan: np.ndarray, n_inf: np.ndarray
) -> None:
    """Move zeros, NaNs and Infs out of the underflow/overflow bins into their own, in place."""
    hist[..., HIST_UNDERFLOW] -= n_zero.astype(np.int64)
    hist[..., HIST_OVERFLOW] -= (n_nan + n_inf).astype(np.int64)
    hist[..., HIST_ZERO] = n_zero
    hist[..., HIST_NAN] = n_nan
    hist[..., HIST_INF] = n_inf


@dataclass(frozen=True)
class PackedLayout:
    """Where each block of a logged step's packed vector lies, and how it unpacks."""

    specs: tuple[TensorSpec, ...]
    replicas: int
    segment_blocks: tuple[str, ...] = ()
    tail: tuple[str, ...] = ()

    @cached_property
    def param_index(self) -> list[int]:
        """Indices of the specs that are parameters."""
        return [i for i, s in enumerate(self.specs) if s.is_param]

    @property
    def n_segments(self) -> int:
        """Segments of a fused block: every tensor, then every parameter."""
        return len(self.specs) + len(self.param_index)

    @property
    def n_stats(self) -> int:
        return self.replicas * len(self.specs) * len(STAT_COLUMNS)

    def size(self, with_hist: bool) -> int:
        """Elements of a packed vector, with or without its histogram block."""
        k, n_t = self.replicas, len(self.specs)
        blocks = len(self.segment_blocks) * k * self.n_segments
        hist = k * n_t * N_HIST_BINS if with_hist else 0
        return self.n_stats + blocks + hist + len(self.tail) * k

    def with_tail(self, tail: tuple[str, ...]) -> PackedLayout:
        """This layout with the run loop's per-replica values appended."""
        return replace(self, tail=tail)

    def stats(self, packed: np.ndarray) -> np.ndarray:
        """The (K, T, stats) view of the stats block."""
        k, n_t = self.replicas, len(self.specs)
        return packed[: self.n_stats].reshape(k, n_t, len(STAT_COLUMNS))

    def segment_block(self, packed: np.ndarray, name: str) -> np.ndarray:
        """The (K, segments) view of the fused block `name`."""
        size = self.replicas * self.n_segments
        start = self.n_stats + self.segment_blocks.index(name) * size
        return packed[start : start + size].reshape(self.replicas, self.n_segments)

    def unpack(self, packed: np.ndarray, with_hist: bool) -> StepArrays:
        """Host arrays of one step: statistics filled in from the fused blocks, exact bins, tail."""
        if packed.size != self.size(with_hist):
            raise ValueError(
                f"a packed step of {packed.size} values does not match its layout "
                f"({self.size(with_hist)} values, with_hist={with_hist})"
            )
        k, n_t = self.replicas, len(self.specs)
        stats = self.stats(packed).copy()
        if self.segment_blocks:
            self._fill_from_segments(stats, packed)
        rest = packed[self.n_stats + len(self.segment_blocks) * k * self.n_segments :]
        hist = None
        if with_hist:
            hist = rest[: k * n_t * N_HIST_BINS].reshape(k, n_t, N_HIST_BINS).astype(np.int64)
            fix_special_bins(hist, *(stats[..., S[f"grad_n_{c}"]] for c in ("zero", "nan", "inf")))
            rest = rest[k * n_t * N_HIST_BINS :]
        tail = {name: rest[i * k : (i + 1) * k] for i, name in enumerate(self.tail)}
        return StepArrays(stats, hist, tail)

    def _fill_from_segments(self, stats: np.ndarray, packed: np.ndarray) -> None:
        """Statistics rows from the per-segment sums, centred sums of squares, extremes, counts."""
        n_t, param_index = len(self.specs), self.param_index
        block = {name: self.segment_block(packed, name) for name in self.segment_blocks}
        sums, m2 = block["sum"], block["m2"]
        numel = np.array([s.numel for s in self.specs] + [self.specs[i].numel for i in param_index])
        for name, values in (("sum", sums), ("sumsq", m2 + sums**2 / numel), ("m2", m2)):
            stats[..., S[f"grad_{name}"]] = values[:, :n_t]
            stats[:, param_index, S[f"param_{name}"]] = values[:, n_t:]
        stats[..., S["grad_max"]], stats[..., S["grad_min"]] = (
            block["max"][:, :n_t],
            block["min"][:, :n_t],
        )
        stats[..., S["grad_n_zero"]] = block["n_zero"][:, :n_t]
        if "n_nan" in block:
            stats[..., S["grad_n_nan"]], stats[..., S["grad_n_inf"]] = (
                block["n_nan"][:, :n_t],
                block["n_inf"][:, :n_t],
            )
