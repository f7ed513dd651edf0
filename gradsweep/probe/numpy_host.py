"""The fused strategy in numpy, for small networks whose tensors are already in host memory.

On the CPU a numpy call costs less than a torch op, and small networks are
bound by that per-call cost; it gives the fused torch strategy's layout and
numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch._utils import _flatten_dense_tensors

from gradsweep.bins import HIST_UNDERFLOW, N_HIST_BINS
from gradsweep.probe.base import SegmentStrategy
from gradsweep.probe.binning import F64_WINDOW
from gradsweep.probe.layout import SEGMENT_BLOCKS, STAT_COLUMNS, PackedLayout, TensorSpec


@dataclass(frozen=True)
class HostSegments:
    """Where each (tensor, replica) segment lies in a tensor-major flat copy of all tensors.

    `hist_base` turns each float64 gradient element's clamped exponent into its histogram slot.
    """

    starts: np.ndarray
    lengths: np.ndarray
    element_segment: np.ndarray
    hist_base: np.ndarray
    n_grad_elements: int

    @classmethod
    def build(cls, sizes: list[int], replicas: int, n_grad_tensors: int) -> HostSegments:
        lengths = np.repeat(np.asarray(sizes, dtype=np.int64), replicas)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        element_segment = np.repeat(np.arange(len(lengths)), lengths)
        tensor, replica = np.divmod(np.arange(len(lengths)), replicas)
        row = (replica * n_grad_tensors + tensor) * N_HIST_BINS + HIST_UNDERFLOW - F64_WINDOW[0]
        n_grad_elements = int(lengths[: n_grad_tensors * replicas].sum())
        hist_base = np.repeat(
            row[: n_grad_tensors * replicas], lengths[: n_grad_tensors * replicas]
        )
        return cls(starts, lengths, element_segment, hist_base, n_grad_elements)


class NumpyHostProbe(SegmentStrategy):
    """All tensors flattened into one float64 array, reduced by segment with numpy's reduceat."""

    name = "numpy-host"

    def __init__(self, specs: list[TensorSpec], replicas: int) -> None:
        self.layout = PackedLayout(tuple(specs), replicas, SEGMENT_BLOCKS)
        sizes = [s.numel for s in specs] + [specs[i].numel for i in self.layout.param_index]
        self._segments = HostSegments.build(sizes, replicas, len(specs))

    def measure(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], with_hist: bool
    ) -> torch.Tensor:
        """The tensors flattened in one C++ call, tensor-major; `HostSegments` maps segments."""
        k, n_t, lay = self.layout.replicas, len(self.layout.specs), self._segments
        flat = _flatten_dense_tensors([*grads, *params]).numpy().astype(np.float64)
        sums = np.add.reduceat(flat, lay.starts)
        centered = flat - (sums / lay.lengths)[lay.element_segment]
        m2 = np.add.reduceat(centered * centered, lay.starts)
        per_segment = [
            sums,
            m2,
            np.maximum.reduceat(flat, lay.starts),
            np.minimum.reduceat(flat, lay.starts),
            np.add.reduceat(flat == 0, lay.starts),
        ]
        parts = [np.zeros(k * n_t * len(STAT_COLUMNS))] + [
            a.reshape(-1, k).T.ravel() for a in per_segment
        ]
        if with_hist:
            bits = np.abs(flat[: lay.n_grad_elements]).view(np.int64)
            np.clip(np.right_shift(bits, 52, out=bits), *F64_WINDOW, out=bits)
            parts.append(np.bincount(bits + lay.hist_base, minlength=k * n_t * N_HIST_BINS))
        return torch.from_numpy(np.concatenate(parts).astype(np.float64, copy=False))
