"""Per-tensor gradient statistics, computed on the device with a handful of batched ops.

Every tensor of interest (parameter gradients, BatchNorm parameter gradients
and the backpropagated pre-activation gradients dL/dz) is reduced to a fixed
row of statistics per replica. Small networks are bound by per-op overhead, so
their tensors are concatenated and reduced by segment in one pass ("fused");
large ones are bound by memory bandwidth, so they are reduced in place, one
stack of same-sized tensors at a time, with reductions that write no
full-size temporaries ("per-tensor"). The fused path works in float64 with a
two-pass (centred) variance; the per-tensor path works in the gradient's
dtype (float64 sums on CUDA), with Welford's variance up to 4,096 elements
and a one-pass variance above, where grad_std loses relative precision
~eps * (mean/std)^2 if a tensor's mean dominates its spread. Otherwise both
give the same numbers; `measure` returns one packed device tensor a logged
step, which the run copies to the host without waiting in the step loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch._utils import _flatten_dense_tensors

from gradsweep.bins import (
    HIST_INF,
    HIST_NAN,
    HIST_OVERFLOW,
    HIST_UNDERFLOW,
    HIST_ZERO,
    N_HIST_BINS,
    exponent_window,
)

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

ONE_PASS_MIN_ELEMENTS = 1 << 12
HOST_REDUCTIONS = (
    True  # fused path in numpy when the tensors are in host memory (the torch version serves CUDA)
)
FUSED_MAX_ELEMENTS = 1 << 16  # above it, dense per-tensor reductions beat segment ops (measured)
# Same-sized tensors are stacked and reduced together, up to this many elements a stack. On CUDA nearly
# all are: each op is a kernel launch, and a 1024 x 20 network's ~60 tensors would cost ~1,000 launches a
# step. On the CPU a stack is a copy, and one replica's large tensors reduce faster alone (whole-tensor
# kernels), so there only replicated or small (<= ONE_PASS_MIN_ELEMENTS) tensors are stacked (measured).
STACK_MAX_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 26}


@dataclass(frozen=True)
class TensorSpec:
    """Which tensor a statistics row describes: Linear layer index, name, elements per replica."""

    layer: int
    tensor: str
    numel: int
    is_param: bool


@dataclass(frozen=True)
class _Stack:
    """Specs of equal size (all parameters or all dL/dz) reduced as one (K, G, n) tensor."""

    specs: list[int]
    params: list[int]
    hist_offset: torch.Tensor


def _plan_stacks(
    specs: list[TensorSpec], replicas: int, cap: int, alone_above: int | None
) -> list[tuple[list[int], list[int]]]:
    """(spec indices, param indices) of each stack: same numel and kind, at most `cap` elements a stack.

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


def _bin_counts(index: torch.Tensor, size: int, add: bool | None = None) -> torch.Tensor:
    """Counts of each value in `index` (all < size), without the host sync of CUDA's bincount.

    `add` (default: on CUDA) counts with index_add_, which needs no output size from the host.
    """
    if index.is_cuda if add is None else add:
        return torch.zeros(size, dtype=torch.int64, device=index.device).index_add_(
            0, index, torch.ones_like(index, dtype=torch.int64)
        )
    return torch.bincount(index, minlength=size)


_FLOAT_BITS = {torch.float32: (torch.int32, 23, 127), torch.float64: (torch.int64, 52, 1023)}
_F64_WINDOW = exponent_window(1023)  # the fused paths work in float64


def _hist_exponent(values: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Biased exponent of every |g|, clamped to the histogram's window, in `scratch`'s bits (no log).

    Adding (row offset + HIST_UNDERFLOW - window start) gives the bin; zeros and
    subnormals sit in underflow and NaN/Inf in overflow until `_fix_special_bins`
    moves them with the exact counts.
    """
    int_dtype, mantissa_bits, bias = _FLOAT_BITS[values.dtype]
    bits = torch.abs(values, out=scratch.view_as(values)).view(int_dtype)
    return bits.bitwise_right_shift_(mantissa_bits).clamp_(*exponent_window(bias))


def _single(values: torch.Tensor) -> bool:
    """One row: whole-tensor reductions, several times faster than the dim=-1 kernels on one row."""
    return values.shape[0] * values.shape[1] == 1


def _moments(
    values: torch.Tensor, accumulate: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum, sum of squares and centred sum of squares of each row of (K, G, n), as (K, G), without full-size temporaries.

    Tensors of up to ONE_PASS_MIN_ELEMENTS (K x n) use torch.var_mean (Welford,
    exact when the mean dominates the spread); larger ones, where that kernel
    is several times slower than a plain reduction, use sumsq - sum^2/n.
    `accumulate` (float64, or None for the values' dtype) is the dtype the sums are taken in.
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


def _exact_moments(row: np.ndarray, prefix: str, values: torch.Tensor) -> None:
    """Sum, sum of squares and centred sum of squares of float64 `values` into a host stats row."""
    row[S[f"{prefix}_sum"]] = values.sum().item()
    row[S[f"{prefix}_sumsq"]] = (values * values).sum().item()
    row[S[f"{prefix}_m2"]] = ((values - values.mean()) ** 2).sum().item()


def _fix_special_bins(
    hist: np.ndarray, n_zero: np.ndarray, n_nan: np.ndarray, n_inf: np.ndarray
) -> None:
    """Move zeros, NaNs and Infs out of the underflow/overflow bins into their own, in place."""
    hist[..., HIST_UNDERFLOW] -= n_zero.astype(np.int64)
    hist[..., HIST_OVERFLOW] -= (n_nan + n_inf).astype(np.int64)
    hist[..., HIST_ZERO] = n_zero
    hist[..., HIST_NAN] = n_nan
    hist[..., HIST_INF] = n_inf


@dataclass(frozen=True)
class _HostLayout:
    """Where each (tensor, replica) segment lies in a tensor-major flat copy of all tensors.

    `hist_base` turns each float64 gradient element's clamped exponent into its histogram slot.
    """

    starts: np.ndarray
    lengths: np.ndarray
    element_segment: np.ndarray
    hist_base: np.ndarray
    n_grad_elements: int

    @classmethod
    def build(cls, sizes: list[int], replicas: int, n_grad_tensors: int) -> _HostLayout:
        lengths = np.repeat(np.asarray(sizes, dtype=np.int64), replicas)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        element_segment = np.repeat(np.arange(len(lengths)), lengths)
        tensor, replica = np.divmod(np.arange(len(lengths)), replicas)
        row = (replica * n_grad_tensors + tensor) * N_HIST_BINS + HIST_UNDERFLOW - _F64_WINDOW[0]
        n_grad_elements = int(lengths[: n_grad_tensors * replicas].sum())
        hist_base = np.repeat(
            row[: n_grad_tensors * replicas], lengths[: n_grad_tensors * replicas]
        )
        return cls(starts, lengths, element_segment, hist_base, n_grad_elements)


@dataclass(frozen=True)
class _FusedBuffers:
    """Work buffers of the fused path, allocated once per run."""

    raw: torch.Tensor
    flat: torch.Tensor
    tmp: torch.Tensor
    mask: torch.Tensor
    bits: torch.Tensor

    @classmethod
    def allocate(
        cls, replicas: int, n_all: int, n_grad: int, dtype: torch.dtype, device: torch.device
    ) -> _FusedBuffers:
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


class GradientProbe:
    """Reduces a fixed list of tensors to one packed float64 device tensor per logged step.

    `measure` does the device work and returns the packed tensor; `unpack`
    later turns its host copy into (K, T, stats) and (K, T, bins) arrays with
    numpy. NaN and Inf counts are found one of two ways. On the CPU, unless
    `counts_nonfinite` is set, `repair_nonfinite` counts them on the host
    while the gradients are alive, only for tensors whose sum is not finite, so
    the fast path never counts them. On CUDA they are counted on the device at
    every logged step and sums accumulate in float64, so nothing waits for the
    host and the copy can be deferred to the end of the run.
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
        self.counts_nonfinite = counts_nonfinite or device.type != "cpu"
        self.param_index = [i for i, s in enumerate(specs) if s.is_param]
        self._n_grad = sum(s.numel for s in specs)
        self.fused = replicas * self._n_grad <= FUSED_MAX_ELEMENTS
        n_t = len(specs)
        self.on_host = (
            self.fused and HOST_REDUCTIONS and device.type == "cpu" and not self.counts_nonfinite
        )
        sizes = [s.numel for s in specs] + [specs[i].numel for i in self.param_index]
        if self.on_host:
            self._host = _HostLayout.build(sizes, replicas, n_t)
        elif self.fused:
            lengths = torch.tensor(sizes, device=device)
            self._lengths = lengths.expand(replicas, len(sizes)).contiguous()
            segment = torch.repeat_interleave(torch.arange(len(sizes), device=device), lengths)
            self._segment = segment.expand(replicas, -1).contiguous()
            rows = torch.arange(replicas, device=device)[:, None] * n_t
            self._hist_base = (
                (rows + segment[None, : self._n_grad]) * N_HIST_BINS
                + HIST_UNDERFLOW
                - _F64_WINDOW[0]
            )
            self._work = _FusedBuffers.allocate(replicas, sum(sizes), self._n_grad, dtype, device)
            self._extremes = torch.empty(
                2, replicas, len(sizes), dtype=torch.float64, device=device
            )
            self._no_rows = torch.zeros(
                replicas * n_t * len(STAT_COLUMNS), dtype=torch.float64, device=device
            )
        else:
            int_dtype, _, bias = _FLOAT_BITS[dtype]
            lo, _ = exponent_window(bias)
            rows = torch.arange(replicas, dtype=int_dtype, device=device)[:, None, None] * n_t
            self._stacks = []
            cap = STACK_MAX_ELEMENTS.get(device.type, STACK_MAX_ELEMENTS["cuda"])
            alone_above = ONE_PASS_MIN_ELEMENTS if device.type == "cpu" else None
            for stack, stack_params in _plan_stacks(specs, replicas, cap, alone_above):
                tensors = torch.tensor(stack, dtype=int_dtype, device=device)[None, :, None]
                offset = (
                    (rows + tensors) * N_HIST_BINS + HIST_UNDERFLOW - lo
                )  # the bits' dtype: mixed adds are 100x slower
                self._stacks.append(_Stack(stack, stack_params, offset))
            order = [i for stack in self._stacks for i in stack.specs]
            self._spec_order = torch.tensor(np.argsort(order), device=device)
            largest = max(
                replicas * len(st.specs) * specs[st.specs[0]].numel for st in self._stacks
            )
            self._scratch = torch.empty(largest, dtype=dtype, device=device)

    @torch.no_grad()
    def measure(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], with_hist: bool
    ) -> torch.Tensor:
        """Packed statistics of `grads` (in `specs` order) and of `params` (the specs marked is_param).

        The leading dim of every tensor is the replica.
        """
        if self.on_host:
            return torch.from_numpy(self._measure_numpy(grads, params, with_hist))
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
            n_blocks = 7 if self.counts_nonfinite else 5
            blocks = [a.reshape(k, n_seg) for a in np.split(rest[: n_blocks * k * n_seg], n_blocks)]
            sums, m2, hi, lo, zeros = blocks[:5]
            numel = np.array(
                [s.numel for s in self.specs] + [self.specs[i].numel for i in self.param_index]
            )
            for name, values in (("sum", sums), ("sumsq", m2 + sums**2 / numel), ("m2", m2)):
                stats[..., S[f"grad_{name}"]] = values[:, :n_t]
                stats[:, self.param_index, S[f"param_{name}"]] = values[:, n_t:]
            stats[..., S["grad_max"]], stats[..., S["grad_min"]] = hi[:, :n_t], lo[:, :n_t]
            stats[..., S["grad_n_zero"]] = zeros[:, :n_t]
            if self.counts_nonfinite:
                stats[..., S["grad_n_nan"]], stats[..., S["grad_n_inf"]] = (
                    blocks[5][:, :n_t],
                    blocks[6][:, :n_t],
                )
            rest = rest[n_blocks * k * n_seg :]
        if not with_hist:
            return stats, None
        hist = rest.reshape(k, n_t, N_HIST_BINS).astype(np.int64)
        _fix_special_bins(hist, *(stats[..., S[f"grad_n_{c}"]] for c in ("zero", "nan", "inf")))
        return stats, hist

    def repair_nonfinite(
        self, packed: np.ndarray, grads: list[torch.Tensor], params: list[torch.Tensor]
    ) -> None:
        """Exact float64 sums and NaN/Inf counts, in place, for every tensor whose sum is not finite.

        Runs on the host copy of `measure`'s output while `grads` are still alive.
        Reductions in float32 also overflow for |x| > ~1e19, in a gradient or a
        parameter, and those rows are recomputed here too; rows with finite sums
        hold no NaN or Inf. A probe that counts on the device has nothing to repair.
        """
        if self.counts_nonfinite:
            return
        k, n_t = self.replicas, len(self.specs)
        if self.fused:
            n_seg = n_t + len(self.param_index)
            base = k * n_t * len(STAT_COLUMNS)
            sums = packed[base : base + k * n_seg].reshape(k, n_seg)[:, :n_t]
            bad = ~np.isfinite(sums)
        else:
            stats = self._stats_block(packed)
            bad = ~np.isfinite(stats[..., S["grad_sum"]]) | ~np.isfinite(
                stats[..., S["grad_sumsq"]]
            )
            bad_param = ~np.isfinite(stats[..., S["param_sum"]]) | ~np.isfinite(
                stats[..., S["param_sumsq"]]
            )
            bad_param[:, [i for i in range(n_t) if i not in self.param_index]] = False
            for r, t in zip(*np.nonzero(bad_param)):
                p = params[self.param_index.index(t)].reshape(k, -1)[r].to(torch.float64)
                _exact_moments(stats[r, t], "param", p)
        for r, t in zip(*np.nonzero(bad)):
            g = grads[t].reshape(k, -1)[r].to(torch.float64)
            row = self._stats_block(packed)[r, t]
            row[S["grad_n_nan"]] = torch.isnan(g).sum().item()
            row[S["grad_n_inf"]] = torch.isinf(g).sum().item()
            if not self.fused:
                _exact_moments(row, "grad", g)

    def _measure_fused(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], with_hist: bool
    ) -> torch.Tensor:
        """All tensors in one float64 buffer, reduced by segment: a fixed, small number of ops.

        Every full-size intermediate lives in a buffer allocated once: a fresh
        large allocation per step costs page faults that dwarf the arithmetic.
        `unsafe=True` skips segment_reduce's check that the lengths sum to the
        row size, a host sync on CUDA; the lengths are built to match in __init__.
        """
        k, w = self.replicas, self._work
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
            index = _hist_exponent(flat[:, : self._n_grad], w.bits).add_(self._hist_base)
            parts.append(
                _bin_counts(index.view(-1), k * len(self.specs) * N_HIST_BINS).to(torch.float64)
            )
        return torch.cat(parts)

    def _measure_numpy(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], with_hist: bool
    ) -> np.ndarray:
        """The fused path in numpy, for tensors already in host memory: the same layout and numbers.

        On the CPU a numpy call costs ~1 us against ~3-5 us for a torch op, and
        small networks are bound by that per-call cost. The tensors are flattened
        in one C++ call, tensor-major; `_HostLayout` maps segments back.
        """
        k, n_t, lay = self.replicas, len(self.specs), self._host
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
            np.clip(np.right_shift(bits, 52, out=bits), *_F64_WINDOW, out=bits)
            parts.append(np.bincount(bits + lay.hist_base, minlength=k * n_t * N_HIST_BINS))
        return np.concatenate(parts).astype(np.float64, copy=False)

    def _measure_per_tensor(
        self, grads: list[torch.Tensor], params: list[torch.Tensor], with_hist: bool
    ) -> torch.Tensor:
        """Reductions along the last dim of each stack of same-sized tensors, writing no full-size temporaries."""
        k, n_t = self.replicas, len(self.specs)
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
                index = _hist_exponent(g, self._scratch[: g.numel()]).add_(stack.hist_offset)
                hist += _bin_counts(index.view(-1), k * n_t * N_HIST_BINS)
        stats = torch.cat(rows, 1).index_select(1, self._spec_order)
        parts = [stats.reshape(-1).to(torch.float64)]
        if hist is not None:
            parts.append(hist.to(torch.float64))
        return torch.cat(parts)


def _stacked(tensors: list[torch.Tensor], replicas: int) -> torch.Tensor:
    """(K, G, n) from G tensors of K x n elements: a view for one tensor, a copy for several."""
    if len(tensors) == 1:
        return tensors[0].reshape(replicas, 1, -1)
    return torch.stack([t.reshape(replicas, -1) for t in tensors], 1)
