"""The one-pass strategy: every statistic of every tensor from a single read, in a C kernel.

The kernel (one_pass.c, built by `native`) reads each (tensor, replica) segment
once, in chunks that OpenMP threads share, and writes the stats rows and the
histogram block of `layout.PackedLayout` directly: sums in float64, centred sums
of squares merged block by block, NaN and Inf counted in the same read, so no
host repair is needed. Chunks merge in a fixed order, so the numbers do not
depend on the thread count.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
import torch

from gradsweep.bins import N_HIST_BINS
from gradsweep.probe.base import ProbeStrategy
from gradsweep.probe.layout import STAT_COLUMNS, PackedLayout, TensorSpec
from gradsweep.probe.native import Kernel

CHUNK_ELEMENTS = 1 << 16  # the most elements a chunk reads
TASK_ELEMENTS = 1 << 15  # a thread's unit of work: consecutive chunks of at least this many
MOMENT_FIELDS = 10  # doubles in one_pass.c's Moments
_ITEMSIZE = {torch.float32: 4, torch.float64: 8}


def _pointer(array: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(array.ctypes.data)


class ChunkPlan:
    """Which elements each chunk reads and which row each segment writes, fixed for a run.

    Inputs are the gradients in spec order, then the parameters; each is (K, numel).
    A chunk reads at most `chunk_elements`.
    """

    def __init__(
        self, specs: list[TensorSpec], replicas: int, chunk_elements: int = CHUNK_ELEMENTS
    ) -> None:
        n_t = len(specs)
        param_index = [i for i, s in enumerate(specs) if s.is_param]
        inputs = [(i, specs[i].numel, False) for i in range(n_t)]
        inputs += [(i, specs[i].numel, True) for i in param_index]
        chunks: list[tuple[int, int, int, int]] = []
        rows, params, hists = [], [], []
        for index, (spec, numel, is_param) in enumerate(inputs):
            for r in range(replicas):
                segment = len(rows)
                rows.append(r * n_t + spec)
                params.append(int(is_param))
                hists.append(-1 if is_param else r * n_t + spec)
                for start in range(0, numel, chunk_elements):
                    length = min(chunk_elements, numel - start)
                    chunks.append((index, r * numel + start, length, segment))
        table = np.array(chunks, dtype=np.int64).T.copy()
        self.n_inputs = len(inputs)
        self.n_chunks = table.shape[1]
        self.elements = int(table[2].sum())
        self.chunk_input, self.chunk_offset, self.chunk_len, self.chunk_segment = table
        self.segment_row = np.array(rows, dtype=np.int64)
        self.segment_param = np.array(params, dtype=np.int64)
        self.segment_hist = np.array(hists, dtype=np.int64)
        ends = np.cumsum(self.chunk_len)
        # a task ends after the chunk that brings it to TASK_ELEMENTS; a fork costs more than less
        cuts = np.searchsorted(ends, np.arange(TASK_ELEMENTS, ends[-1], TASK_ELEMENTS), "left")
        starts = np.unique(np.concatenate([[0], cuts + 1]))
        self.task_start = np.append(starts[starts < self.n_chunks], self.n_chunks).astype(np.int64)


class OnePassProbe(ProbeStrategy):
    """One C call a step: the kernel fills the stats rows and the histogram block."""

    name = "one-pass-cpp"
    counts_nonfinite_always = True

    def __init__(
        self, specs: list[TensorSpec], replicas: int, dtype: torch.dtype, kernel: Kernel
    ) -> None:
        self.layout = PackedLayout(tuple(specs), replicas)
        self.itemsize = _ITEMSIZE[dtype]
        self.dtype = dtype
        self._call = kernel.library.gs_one_pass
        plan = self.plan = ChunkPlan(specs, replicas)
        self._work = np.empty(plan.n_chunks * MOMENT_FIELDS, dtype=np.float64)
        self._hist_work = np.empty(plan.n_chunks * N_HIST_BINS, dtype=np.int64)
        self._bases = (ctypes.c_void_p * plan.n_inputs)()
        self._fixed = [
            _pointer(a)
            for a in (
                plan.chunk_input,
                plan.chunk_offset,
                plan.chunk_len,
                plan.chunk_segment,
                plan.segment_row,
                plan.segment_param,
                plan.segment_hist,
            )
        ]
        self._tasks = [ctypes.c_int64(len(plan.task_start) - 1), _pointer(plan.task_start)]
        self._scratch = [_pointer(self._work), _pointer(self._hist_work)]
        # param columns of the rows that are no parameters stay NaN, as on the per-tensor path
        template = np.full((replicas, len(specs), len(STAT_COLUMNS)), math.nan)
        self._template = torch.from_numpy(template.reshape(-1))

    def measure(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], with_hist: bool
    ) -> torch.Tensor:
        """One kernel call over every gradient and parameter, no full-size temporaries."""
        inputs = [t if t.is_contiguous() else t.contiguous() for t in (*grads, *params)]
        for i, t in enumerate(inputs):
            if t.dtype != self.dtype:
                raise TypeError(f"the one-pass probe was built for {self.dtype}, got {t.dtype}")
            self._bases[i] = t.data_ptr()
        out = torch.empty(self.layout.size(with_hist), dtype=torch.float64)
        n_stats = self.layout.n_stats
        out[:n_stats] = self._template
        self._call(
            ctypes.c_int(self.itemsize),
            self._bases,
            ctypes.c_int64(self.plan.n_chunks),
            *self._fixed,
            *self._tasks,
            ctypes.c_int(int(with_hist)),
            ctypes.c_int(torch.get_num_threads()),
            *self._scratch,
            ctypes.c_void_p(out.data_ptr()),
            ctypes.c_void_p(out.data_ptr() + 8 * n_stats),
        )
        return out

    def repair_nonfinite(
        self, packed: np.ndarray, grads: list[torch.Tensor], params: list[torch.Tensor]
    ) -> None:
        """Nothing to repair: the kernel counts NaN and Inf and sums in float64."""
