"""Per-tensor gradient statistics, computed on the device with a handful of batched ops.

Every tensor of interest (parameter gradients, BatchNorm parameter gradients
and the backpropagated pre-activation gradients dL/dz) is reduced to a fixed
row of statistics per replica. `GradientProbe` picks one of five strategies,
each in its own module, all writing the packed vector `layout.PackedLayout`
describes:

* `one_pass.OnePassProbe`: on the CPU wherever its C kernel builds (`native`),
  every statistic of a tensor from one read of it;
* `one_pass_triton.OnePassTritonProbe`: the same on CUDA wherever triton
  imports (`triton_kernel`);
* `numpy_host.NumpyHostProbe`: small networks in host memory, fused in numpy;
* `fused_torch.FusedTorchProbe`: small networks otherwise (CUDA), all tensors
  concatenated into one float64 buffer and reduced by segment;
* `per_tensor.PerTensorProbe`: large networks, reduced one stack of
  same-sized tensors at a time with no full-size temporaries.

The fused and one-pass strategies work in float64 with a centred variance; the
per-tensor one in the gradient's dtype (see its module for its variance).
Otherwise all give the same numbers. `measure` returns one packed tensor a
logged step, which the run copies to the host (`host_copies.HostCopies`)
without waiting in the step loop and unpacks with `PackedLayout.unpack`.
"""

from __future__ import annotations

import numpy as np
import torch

from gradsweep.probe.base import ProbeStrategy
from gradsweep.probe.fused_torch import FusedTorchProbe
from gradsweep.probe.host_copies import HostCopies
from gradsweep.probe.layout import STAT_COLUMNS, PackedLayout, S, StepArrays, TensorSpec
from gradsweep.probe.native import load_kernel
from gradsweep.probe.numpy_host import NumpyHostProbe
from gradsweep.probe.one_pass import OnePassProbe
from gradsweep.probe.one_pass_triton import OnePassTritonProbe, load_triton
from gradsweep.probe.per_tensor import PerTensorProbe

__all__ = [
    "FUSED_MAX_ELEMENTS",
    "HOST_REDUCTIONS",
    "ONE_PASS",
    "STAT_COLUMNS",
    "GradientProbe",
    "HostCopies",
    "PackedLayout",
    "S",
    "StepArrays",
    "TensorSpec",
    "strategy_for",
]

# the one-pass kernels, on the CPU wherever the C one builds and on CUDA wherever triton imports
# (tests turn them off to reach the others)
ONE_PASS = True
# fused strategy in numpy when the tensors are in host memory (the torch one serves CUDA)
HOST_REDUCTIONS = True
FUSED_MAX_ELEMENTS = 1 << 16  # above it, dense per-tensor reductions beat segment ops (measured)


def strategy_for(
    specs: list[TensorSpec], replicas: int, device_type: str, counts_nonfinite: bool = False
) -> type[ProbeStrategy]:
    """The strategy that reduces `replicas` stacked copies of `specs` on a `device_type` device.

    A function of sizes and device alone, so that the statistics path of a run can be
    told from its configuration before it runs (`gradsweep.execution`).
    """
    if device_type == "cpu" and ONE_PASS and load_kernel() is not None:
        return OnePassProbe
    if device_type == "cuda" and ONE_PASS and load_triton() is not None:
        return OnePassTritonProbe
    counts_nonfinite = counts_nonfinite or device_type != "cpu"
    fused = replicas * sum(s.numel for s in specs) <= FUSED_MAX_ELEMENTS
    if fused and HOST_REDUCTIONS and device_type == "cpu" and not counts_nonfinite:
        return NumpyHostProbe
    return FusedTorchProbe if fused else PerTensorProbe


class GradientProbe:
    """Reduces a fixed list of tensors to one packed float64 device tensor per logged step.

    `measure` does the device work and returns the packed tensor, laid out as
    `layout` says. NaN and Inf counts are found one of two ways. On the CPU,
    unless `counts_nonfinite` is set, `repair_nonfinite` counts them on the
    host while the gradients are alive, only for tensors whose sum is not
    finite, so the fast path never counts them. On CUDA they are counted on the
    device at every logged step and sums accumulate in float64, so nothing
    waits for the host and the copy can be deferred to the end of the run.
    """

    def __init__(
        self,
        specs: list[TensorSpec],
        replicas: int,
        device: torch.device,
        dtype: torch.dtype,
        counts_nonfinite: bool = False,
    ) -> None:
        self.specs = specs
        self.replicas = replicas
        self.device = device
        kind = strategy_for(specs, replicas, device.type, counts_nonfinite)
        self.counts_nonfinite = (
            counts_nonfinite or device.type != "cpu" or kind.counts_nonfinite_always
        )
        self.strategy: ProbeStrategy
        if kind is OnePassProbe:
            self.strategy = OnePassProbe(specs, replicas, dtype, load_kernel())
        elif kind is OnePassTritonProbe:
            self.strategy = OnePassTritonProbe(specs, replicas, device, dtype, load_triton())
        elif kind is NumpyHostProbe:
            self.strategy = NumpyHostProbe(specs, replicas)
        elif kind is FusedTorchProbe:
            self.strategy = FusedTorchProbe(specs, replicas, device, dtype, self.counts_nonfinite)
        else:
            self.strategy = PerTensorProbe(specs, replicas, device, dtype, self.counts_nonfinite)
        self.layout: PackedLayout = self.strategy.layout

    @torch.no_grad()
    def measure(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], with_hist: bool
    ) -> torch.Tensor:
        """Packed statistics of `grads` (in `specs` order) and of `params` (specs marked is_param).

        The leading dim of every tensor is the replica.
        """
        return self.strategy.measure(grads, params, with_hist)

    def repair_nonfinite(
        self, packed: np.ndarray, grads: list[torch.Tensor], params: list[torch.Tensor]
    ) -> None:
        """Exact float64 sums and NaN/Inf counts, in place, for each tensor whose sum is not finite.

        Runs on the host copy of `measure`'s output while `grads` are still
        alive. A probe that counts on the device has nothing to repair.
        """
        if self.counts_nonfinite:
            return
        self.strategy.repair_nonfinite(packed, grads, params)
