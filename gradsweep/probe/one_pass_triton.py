"""The one-pass strategy on CUDA: every statistic of every tensor from one read, in Triton.

The kernels (`triton_kernel`) read each (tensor, replica) segment once, in
chunks that run as independent programs, and write the stats rows and histogram
block of `layout.PackedLayout` on the device: sums in float64, centred sums of
squares merged block by block and chunk by chunk (Chan et al.) in a fixed order,
NaN and Inf counted in the same read, so no host repair is needed and the
numbers do not depend on scheduling. Two launches a logged step and no host
synchronisation: the inputs' addresses reach the device by an asynchronous copy
from pinned memory, and only when they change. Chunks, tables and work buffers
are planned once per run.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import numpy as np
import torch

from gradsweep.probe.base import ProbeStrategy
from gradsweep.probe.layout import PackedLayout, TensorSpec
from gradsweep.probe.native import turned_off
from gradsweep.probe.one_pass import ChunkPlan

KERNEL_MODULE = "gradsweep.probe.triton_kernel"
CHUNK_ELEMENTS = 1 << 14  # the most elements one program reads
BLOCK = 1024  # elements a program reads at a time
# each product rounded before it is added (no fused multiply-add), as the torch paths do
COMPILE_OPTIONS = {"enable_fp_fusion": False}


@functools.cache
def load_triton() -> ModuleType | None:
    """The kernels' module where triton imports; None without it or with GRADSWEEP_ONE_PASS=0."""
    if turned_off():
        return None
    try:
        return importlib.import_module(KERNEL_MODULE)
    except ImportError:
        return None


def _tables(plan: ChunkPlan) -> tuple[np.ndarray, np.ndarray]:
    """The kernels' chunk table and segment table (`triton_kernel`'s fields), row-major int64."""
    n_segments = len(plan.segment_row)
    segments = np.arange(n_segments)
    param_rows = plan.segment_row[plan.segment_param == 1]
    chunks = np.stack(
        [
            plan.chunk_input,
            plan.chunk_offset,
            plan.chunk_len,
            plan.segment_param[plan.chunk_segment],
        ],
        axis=1,
    )
    segment_table = np.stack(
        [
            np.searchsorted(plan.chunk_segment, segments, "left"),
            np.searchsorted(plan.chunk_segment, segments, "right"),
            plan.segment_row,
            plan.segment_param,
            np.isin(plan.segment_row, param_rows),
        ],
        axis=1,
    )
    return chunks.astype(np.int64), segment_table.astype(np.int64)


class OnePassTritonProbe(ProbeStrategy):
    """Two Triton launches a step: per-chunk partial results, then each segment's rows."""

    name = "one-pass-triton"
    counts_nonfinite_always = True

    def __init__(
        self,
        specs: list[TensorSpec],
        replicas: int,
        device: torch.device,
        dtype: torch.dtype,
        kernels: ModuleType,
        chunk_elements: int = CHUNK_ELEMENTS,
    ) -> None:
        self.layout = PackedLayout(tuple(specs), replicas)
        self.device = device
        self.dtype = dtype
        self._kernels = kernels
        self._element = kernels.ELEMENT_TYPES[dtype]
        plan = ChunkPlan(specs, replicas, chunk_elements)
        chunks, segments = _tables(plan)
        self._n_chunks, self._n_segments = len(chunks), len(segments)
        self._chunks = torch.from_numpy(chunks.ravel()).to(device)
        self._segments = torch.from_numpy(segments.ravel()).to(device)
        self._work = torch.empty(
            self._n_chunks * kernels.WORK_FIELDS, dtype=torch.float64, device=device
        )
        self._hist_work = torch.empty(
            self._n_chunks * kernels.HIST_LANES, dtype=torch.int32, device=device
        )
        self._pointers = torch.empty(plan.n_inputs, dtype=torch.int64, device=device)
        self._pointed: tuple[int, ...] = ()

    def _point_at(self, inputs: list[torch.Tensor]) -> None:
        """The inputs' addresses into the device's pointer table, when they are new."""
        addresses = tuple(t.data_ptr() for t in inputs)
        if addresses == self._pointed:
            return
        staged = torch.tensor(addresses, dtype=torch.int64)
        if self.device.type == "cuda":
            staged = staged.pin_memory()
        self._pointers.copy_(staged, non_blocking=True)
        self._pointed = addresses

    def measure(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], with_hist: bool
    ) -> torch.Tensor:
        """Both launches over every gradient and parameter, no full-size temporaries."""
        inputs = [t if t.is_contiguous() else t.contiguous() for t in (*grads, *params)]
        for t in inputs:
            if t.dtype != self.dtype or t.device.type != self.device.type:
                raise TypeError(
                    f"the Triton one-pass probe was built for {self.dtype} on {self.device}, "
                    f"got {t.dtype} on {t.device}"
                )
        self._point_at(inputs)
        out = torch.empty(self.layout.size(with_hist), dtype=torch.float64, device=self.device)
        self._kernels.chunk_moments[(self._n_chunks,)](
            self._pointers,
            self._chunks,
            self._work,
            self._hist_work,
            int(with_hist),
            DTYPE=self._element,
            BLOCK=BLOCK,
            **COMPILE_OPTIONS,
        )
        self._kernels.segment_rows[(self._n_segments,)](
            self._segments,
            self._work,
            self._hist_work,
            out,
            self.layout.n_stats,
            int(with_hist),
            **COMPILE_OPTIONS,
        )
        return out

    def repair_nonfinite(
        self, packed: np.ndarray, grads: list[torch.Tensor], params: list[torch.Tensor]
    ) -> None:
        """Nothing to repair: the kernels count NaN and Inf and sum in float64."""
