"""Histogram binning in torch: an element's bin is its float exponent field (abs, shift, clamp)."""

from __future__ import annotations

import torch

from gradsweep.bins import exponent_window

FLOAT_BITS = {torch.float32: (torch.int32, 23, 127), torch.float64: (torch.int64, 52, 1023)}
F64_WINDOW = exponent_window(1023)  # the fused strategies work in float64


def hist_exponent(values: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Biased exponent of every |g|, clamped to the histogram's window, in `scratch`'s bits.

    Adding (row offset + HIST_UNDERFLOW - window start) gives the bin; zeros and
    subnormals sit in underflow and NaN/Inf in overflow until the unpacking
    moves them with the exact counts (`layout.fix_special_bins`).
    """
    int_dtype, mantissa_bits, bias = FLOAT_BITS[values.dtype]
    bits = torch.abs(values, out=scratch.view_as(values)).view(int_dtype)
    return bits.bitwise_right_shift_(mantissa_bits).clamp_(*exponent_window(bias))


def bin_counts(index: torch.Tensor, size: int, add: bool | None = None) -> torch.Tensor:
    """Counts of each value in `index` (all < size), without the host sync of CUDA's bincount.

    `add` (default: on CUDA) counts with index_add_, which needs no output size from the host.
    """
    if index.is_cuda if add is None else add:
        return torch.zeros(size, dtype=torch.int64, device=index.device).index_add_(
            0, index, torch.ones_like(index, dtype=torch.int64)
        )
    return torch.bincount(index, minlength=size)
