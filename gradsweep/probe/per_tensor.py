"""The per-tensor strategy, for large networks, which are bound by memory bandwidth.

Tensors are reduced in place, one stack of same-sized tensors at a time, with
reductions that write no full-size temporaries, in the gradient's dtype
(float64 sums when NaN/Inf are counted on the device): Welford's variance up
to ONE_PASS_MIN_ELEMENTS elements and a one-pass variance above, where
grad_std loses relative precision ~eps * (mean/std)^2 if a tensor's mean
dominates its spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gradsweep.bins import HIST_UNDERFLOW, N_HIST_BINS, exponent_window
from gradsweep.probe.base import ProbeStrategy
from gradsweep.probe.binning import FLOAT_BITS, bin_counts, hist_exponent
from gradsweep.probe.layout import PackedLayout, S, TensorSpec

ONE_PASS_MIN_ELEMENTS = 1 << 12
# Same-sized tensors are stacked and reduced together, up to this many elements a stack. On CUDA
# nearly all are: each op is a kernel launch, and a 1024 x 20 network's ~60 tensors would cost
# ~1,000 launches a step. On the CPU a stack is a copy, and one replica's large tensors reduce
# faster alone (whole-tensor kernels), so there only replicated or small
# (<= ONE_PASS_MIN_ELEMENTS) tensors are stacked (measured).
STACK_MAX_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 26}


@dataclass(frozen=True)
class Stack:
    """Specs of equal size (all parameters or all dL/dz) reduced as one (K, G, n) tensor."""

    specs: list[int]
    params: list[int]
    hist_offset: torch.Tensor


def plan_stacks(
    specs: list[TensorSpec], replicas: int, cap: int, alone_above: int | None
) -> list[tuple[list[int], list[int]]]:
    """(spec indices, param indices) of each stack: same numel and kind, at most `cap` elements.

    With `alone_above`, a tensor of one replica larger than that is a stack of its own.
    """
    param_pos = {i: n for n, i in enumerate(i for i, s in enumerate(specs) if s.is_param)}
    open_stacks: dict[tuple[int, bool], list[int]] = {}
    stacks: list[list[int]] = []
    for i, spec in enumerate(specs):
        key = (spec.numel, spec.is_param)
        current = open_stacks.get(key)
        alone = alone_above is not None and replicas == 1 and spec.numel > alone_above
        if current is None or alone or replicas * spec.numel * (len(current) + 1) > cap:
            current = open_stacks[key] = []
            stacks.append(current)
        current.append(i)
    return [(stack, [param_pos[i] for i in stack if i in param_pos]) for stack in stacks]


def _single(values: torch.Tensor) -> bool:
    """One row: whole-tensor reductions, several times faster than the dim=-1 kernels on one row."""
    return values.shape[0] * values.shape[1] == 1


def _moments(
    values: torch.Tensor, accumulate: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum, sum of squares and centred sum of squares of each row of (K, G, n), as (K, G).

    No full-size temporaries. Tensors of up to ONE_PASS_MIN_ELEMENTS (K x n)
    use torch.var_mean (Welford, exact when the mean dominates the spread);
    larger ones, where that kernel is several times slower than a plain
    reduction, use sumsq - sum^2/n. `accumulate` (float64, or None for the
    values' dtype) is the dtype the sums are taken in.
    """
    n = values.shape[2]
    if _single(values):
        total = values.sum(dtype=accumulate).view(1, 1)
        sumsq = torch.linalg.vector_norm(values, dtype=accumulate).square().view(1, 1)
    else:
        total = values.sum(-1, dtype=accumulate)
        sumsq = torch.linalg.vector_norm(values, dim=-1, dtype=accumulate).square()
    if values.shape[0] * n <= ONE_PASS_MIN_ELEMENTS:
        var, _ = torch.var_mean(
            values if accumulate is None else values.to(accumulate), dim=-1, correction=0
        )
        return total, sumsq, var * n
    return total, sumsq, sumsq - total * total / n


def _count(values: torch.Tensor) -> torch.Tensor:
    """Nonzero elements of each row of a (K, G, n) tensor, as (K, G)."""
    return (
        torch.count_nonzero(values).view(1, 1)
        if _single(values)
        else torch.count_nonzero(values, dim=-1)
    )


def _extremes(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of each row of a (K, G, n) tensor, as (K, G) each."""
    if _single(values):
        return tuple(t.view(1, 1) for t in torch.aminmax(values))  # type: ignore[return-value]
    return torch.aminmax(values, dim=-1)


def _stacked(tensors: list[torch.Tensor], replicas: int) -> torch.Tensor:
    """(K, G, n) from G tensors of K x n elements: a view for one tensor, a copy for several."""
    if len(tensors) == 1:
        return tensors[0].reshape(replicas, 1, -1)
    return torch.stack([t.reshape(replicas, -1) for t in tensors], 1)


def _exact_moments(row: np.ndarray, prefix: str, values: torch.Tensor) -> None:
    """Sum, sum of squares and centred sum of squares of float64 `values` into a host stats row."""
    row[S[f"{prefix}_sum"]] = values.sum().item()
    row[S[f"{prefix}_sumsq"]] = (values * values).sum().item()
    row[S[f"{prefix}_m2"]] = ((values - values.mean()) ** 2).sum().item()


class PerTensorProbe(ProbeStrategy):
    """Reductions along the last dim of each stack of same-sized tensors."""

    name = "per-tensor"

    def __init__(
        self,
        specs: list[TensorSpec],
        replicas: int,
        device: torch.device,
        dtype: torch.dtype,
        counts_nonfinite: bool,
    ) -> None:
        self.layout = PackedLayout(tuple(specs), replicas)
        self.device = device
        self.counts_nonfinite = counts_nonfinite
        n_t = len(specs)
        int_dtype, _, bias = FLOAT_BITS[dtype]
        lo, _ = exponent_window(bias)
        rows = torch.arange(replicas, dtype=int_dtype, device=device)[:, None, None] * n_t
        self._stacks = []
        cap = STACK_MAX_ELEMENTS.get(device.type, STACK_MAX_ELEMENTS["cuda"])
        alone_above = ONE_PASS_MIN_ELEMENTS if device.type == "cpu" else None
        for stack, stack_params in plan_stacks(specs, replicas, cap, alone_above):
            tensors = torch.tensor(stack, dtype=int_dtype, device=device)[None, :, None]
            # in the bits' dtype: mixed adds are 100x slower
            offset = (rows + tensors) * N_HIST_BINS + HIST_UNDERFLOW - lo
            self._stacks.append(Stack(stack, stack_params, offset))
        order = [i for stack in self._stacks for i in stack.specs]
        self._spec_order = torch.tensor(np.argsort(order), device=device)
        largest = max(replicas * len(st.specs) * specs[st.specs[0]].numel for st in self._stacks)
        self._scratch = torch.empty(largest, dtype=dtype, device=device)

    def measure(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], with_hist: bool
    ) -> torch.Tensor:
        """One pass of reductions per stack, writing no full-size temporaries."""
        k, n_t = self.layout.replicas, len(self.layout.specs)
        accumulate = torch.float64 if self.counts_nonfinite else None
        rows = []
        hist = (
            torch.zeros(k * n_t * N_HIST_BINS, dtype=torch.int64, device=self.device)
            if with_hist
            else None
        )
        for stack in self._stacks:
            g = _stacked([grads[i] for i in stack.specs], k)
            n = g.shape[2]
            lo, hi = _extremes(g)
            gsum, gsq, gm2 = _moments(g, accumulate)
            zeros = n - _count(g)
            if stack.params:
                psum, psq, pm2 = _moments(
                    _stacked([params[i] for i in stack.params], k), accumulate
                )
            else:
                psum = psq = pm2 = torch.full_like(gsum, math.nan)
            if self.counts_nonfinite:
                n_nan, n_inf = _count(torch.isnan(g)), _count(torch.isinf(g))
            else:
                n_nan = n_inf = torch.zeros_like(gsum)
            rows.append(
                torch.stack([gsum, gsq, gm2, lo, hi, zeros, n_nan, n_inf, psum, psq, pm2], -1)
            )
            if hist is not None:
                index = hist_exponent(g, self._scratch[: g.numel()]).add_(stack.hist_offset)
                hist += bin_counts(index.view(-1), k * n_t * N_HIST_BINS)
        stats = torch.cat(rows, 1).index_select(1, self._spec_order)
        parts = [stats.reshape(-1).to(torch.float64)]
        if hist is not None:
            parts.append(hist.to(torch.float64))
        return torch.cat(parts)

    def repair_nonfinite(
        self, packed: np.ndarray, grads: list[torch.Tensor], params: list[torch.Tensor]
    ) -> None:
        """Exact float64 moments and NaN/Inf counts for every row whose sum is not finite.

        Reductions in float32 also overflow for |x| > ~1e19, in a gradient or a
        parameter, and those rows are recomputed here too; rows with finite sums
        hold no NaN or Inf.
        """
        k, n_t = self.layout.replicas, len(self.layout.specs)
        param_index = self.layout.param_index
        stats = self.layout.stats(packed)
        bad = ~np.isfinite(stats[..., S["grad_sum"]]) | ~np.isfinite(stats[..., S["grad_sumsq"]])
        bad_param = ~np.isfinite(stats[..., S["param_sum"]]) | ~np.isfinite(
            stats[..., S["param_sumsq"]]
        )
        bad_param[:, [i for i in range(n_t) if i not in param_index]] = False
        for r, t in zip(*np.nonzero(bad_param)):
            p = params[param_index.index(t)].reshape(k, -1)[r].to(torch.float64)
            _exact_moments(stats[r, t], "param", p)
        for r, t in zip(*np.nonzero(bad)):
            g = grads[t].reshape(k, -1)[r].to(torch.float64)
            row = stats[r, t]
            row[S["grad_n_nan"]] = torch.isnan(g).sum().item()
            row[S["grad_n_inf"]] = torch.isinf(g).sum().item()
            _exact_moments(row, "grad", g)
