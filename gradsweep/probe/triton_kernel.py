"""The one-pass statistics kernel in Triton: two launches a logged step, on the device.

`chunk_moments` reads each chunk of a (tensor, replica) segment once, BLOCK
elements at a time: every block gives its float64 sum and centred sum of squares
(the block is in registers, so centring it costs no second read), merged block
by block with Chan et al.'s pairwise update; sums of squares, extremes with NaN
left out, zero, NaN and Inf counts and, for gradients, the binade histogram
accumulate per lane and are reduced once, into one row of `work` and of
`hist_work` per chunk. `segment_rows` then merges each segment's chunks in their
fixed order and writes the stats rows and histogram block of
`gradsweep.probe.layout.PackedLayout`, so no float is ever added atomically and
the numbers do not depend on scheduling.

Imported only by `one_pass_triton.load_triton`, where triton imports. Whether
these kernels run compiled or in Triton's interpreter (CPU tensors, tests) is
fixed by TRITON_INTERPRET when triton itself is first imported in the process,
since triton decorates its own library (tl.zeros, tl.sum) then. Sizes are
runtime arguments, never specialised on; only block sizes and the element type
are compile-time constants, so a process compiles each kernel once per element
type.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gradsweep.bins import HIST_UNDERFLOW, N_HIST_BINS, exponent_window
from gradsweep.probe.layout import STAT_COLUMNS, S

# A chunk's row of the chunk table: input, offset, length, whether the input is a parameter.
CHUNK_FIELDS = tl.constexpr(4)
# A segment's row of the segment table: first chunk, end chunk, stats row, whether the
# segment is a parameter's, whether its stats row has a parameter segment.
SEGMENT_FIELDS = tl.constexpr(5)
# A chunk's row of `work`: count, sum, sum of squares, mean, centred sum of squares,
# min, max, zeros, NaNs, NaNs and Infs.
WORK_FIELDS = tl.constexpr(10)
# A chunk's histogram: the clamped exponent's offset in the window underflow..overflow, in
# a power-of-two number of lanes; the last lane takes the elements past a chunk's end.
HIST_LANES = tl.constexpr(64)
WINDOW_BINS = tl.constexpr(exponent_window(0)[1] - exponent_window(0)[0] + 1)
UNDERFLOW = tl.constexpr(HIST_UNDERFLOW)
N_BINS = tl.constexpr(N_HIST_BINS)
F32_LO, F32_HI = (tl.constexpr(e) for e in exponent_window(127))
F64_LO, F64_HI = (tl.constexpr(e) for e in exponent_window(1023))
# Columns of a stats row (`layout.STAT_COLUMNS`).
G_SUM, G_SUMSQ, G_M2, G_MIN, G_MAX, G_ZERO, G_NAN, G_INF = (
    tl.constexpr(S[f"grad_{name}"])
    for name in ("sum", "sumsq", "m2", "min", "max", "n_zero", "n_nan", "n_inf")
)
P_SUM, P_SUMSQ, P_M2 = (tl.constexpr(S[f"param_{name}"]) for name in ("sum", "sumsq", "m2"))
N_STATS = tl.constexpr(len(STAT_COLUMNS))
# The kernels' element type for each tensor dtype (a compile-time constant of chunk_moments).
ELEMENT_TYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


@triton.jit
def _merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al.'s update of (count, mean, centred sum of squares) with a second part."""
    n = n_a + n_b
    delta = mean_b - mean_a
    share = n_b / n
    m2 = tl.where(n_a == 0, m2_b, m2_a + m2_b + delta * delta * (n_a * share))
    return n, mean_a + delta * share, m2


@triton.jit(do_not_specialize=["with_hist"])
def chunk_moments(
    pointers, chunks, work, hist_work, with_hist, DTYPE: tl.constexpr, BLOCK: tl.constexpr
):
    """One program a chunk: its moments into row `pid` of `work`, its histogram of `hist_work`.

    `pointers[i]` is the address of input i (the gradients in spec order, then the
    parameters); a chunk reads `length` elements of its input from `offset`.
    """
    pid = tl.program_id(0)
    entry = chunks + pid * CHUNK_FIELDS
    source = tl.load(pointers + tl.load(entry)).to(tl.pointer_type(DTYPE))
    offset = tl.load(entry + 1)
    length = tl.load(entry + 2)
    counts_bins = (with_hist != 0) & (tl.load(entry + 3) == 0)
    lanes = tl.arange(0, BLOCK)
    n = tl.zeros((), tl.float64)
    mean = tl.zeros((), tl.float64)
    m2 = tl.zeros((), tl.float64)
    total = tl.zeros((), tl.float64)
    # per lane until the chunk's end, where each is reduced once
    sumsq = tl.zeros((BLOCK,), tl.float64)
    lo = tl.full((BLOCK,), float("inf"), tl.float64)
    hi = tl.full((BLOCK,), float("-inf"), tl.float64)
    zeros = tl.zeros((BLOCK,), tl.int32)
    nans = tl.zeros((BLOCK,), tl.int32)
    nonfinite = tl.zeros((BLOCK,), tl.int32)
    hist = tl.zeros((HIST_LANES,), tl.int32)
    for start in range(0, length, BLOCK):
        inside = start + lanes < length
        x = tl.load(source + offset + start + lanes, mask=inside, other=0.0)
        d = x.to(tl.float64)
        s_b = tl.sum(d)
        n_b = tl.minimum(length - start, BLOCK).to(tl.float64)
        mean_b = s_b / n_b
        centred = tl.where(inside, d - mean_b, 0.0)
        n, mean, m2 = _merge(n, mean, m2, n_b, mean_b, tl.sum(centred * centred))
        total += s_b
        sumsq += d * d
        is_nan = x != x
        lo = tl.minimum(lo, tl.where(inside & ~is_nan, d, float("inf")))
        hi = tl.maximum(hi, tl.where(inside & ~is_nan, d, float("-inf")))
        zeros += (inside & (x == 0)).to(tl.int32)
        nans += (inside & is_nan).to(tl.int32)
        nonfinite += (inside & (is_nan | (tl.abs(d) == float("inf")))).to(tl.int32)
        if counts_bins:
            if DTYPE == tl.float32:
                exponent = (x.to(tl.int32, bitcast=True) & 0x7FFFFFFF) >> 23
                window = tl.minimum(tl.maximum(exponent, F32_LO), F32_HI) - F32_LO
            else:
                exponent = (x.to(tl.int64, bitcast=True) & 0x7FFFFFFFFFFFFFFF) >> 52
                window = tl.minimum(tl.maximum(exponent, F64_LO), F64_HI) - F64_LO
            bins = tl.where(inside, window.to(tl.int32), HIST_LANES - 1)
            hist += tl.histogram(bins, HIST_LANES)
    part = work + pid * WORK_FIELDS
    tl.store(part, n)
    tl.store(part + 1, total)
    tl.store(part + 2, tl.sum(sumsq))
    tl.store(part + 3, mean)
    tl.store(part + 4, m2)
    tl.store(part + 5, tl.min(lo))
    tl.store(part + 6, tl.max(hi))
    tl.store(part + 7, tl.sum(zeros).to(tl.float64))
    tl.store(part + 8, tl.sum(nans).to(tl.float64))
    tl.store(part + 9, tl.sum(nonfinite).to(tl.float64))
    if counts_bins:
        tl.store(hist_work + pid * HIST_LANES + tl.arange(0, HIST_LANES), hist)


@triton.jit(do_not_specialize=["hist_start", "with_hist"])
def segment_rows(segments, work, hist_work, out, hist_start, with_hist):
    """One program a segment: its chunks merged in order into its stats row (and histogram).

    A gradient's segment writes the grad columns of its row (NaN extremes where a NaN
    was read, as torch.aminmax gives) and NaN param columns where the row has no
    parameter segment; a parameter's segment writes the param columns. Histogram
    rows (from `hist_start`) hold zeros and subnormals in the underflow bin, NaN and
    Inf in the overflow bin, 0 in the zero/NaN/Inf bins, which
    `layout.PackedLayout.unpack` fills from the exact counts.
    """
    pid = tl.program_id(0)
    entry = segments + pid * SEGMENT_FIELDS
    first = tl.load(entry)
    end = tl.load(entry + 1)
    stats_row = tl.load(entry + 2)
    is_param = tl.load(entry + 3) != 0
    has_param = tl.load(entry + 4) != 0
    keeps_bins = (with_hist != 0) & (tl.load(entry + 3) == 0)
    lanes = tl.arange(0, HIST_LANES)
    # bin b of a histogram row is lane b - UNDERFLOW of a chunk's histogram
    window = (lanes >= UNDERFLOW) & (lanes < UNDERFLOW + WINDOW_BINS)
    n = tl.zeros((), tl.float64)
    mean = tl.zeros((), tl.float64)
    m2 = tl.zeros((), tl.float64)
    total = tl.zeros((), tl.float64)
    sumsq = tl.zeros((), tl.float64)
    lo = tl.full((), float("inf"), tl.float64)
    hi = tl.full((), float("-inf"), tl.float64)
    zeros = tl.zeros((), tl.float64)
    nans = tl.zeros((), tl.float64)
    nonfinite = tl.zeros((), tl.float64)
    hist = tl.zeros((HIST_LANES,), tl.int64)
    for c in range(first, end):
        part = work + c * WORK_FIELDS
        n, mean, m2 = _merge(n, mean, m2, tl.load(part), tl.load(part + 3), tl.load(part + 4))
        total += tl.load(part + 1)
        sumsq += tl.load(part + 2)
        lo = tl.minimum(lo, tl.load(part + 5))
        hi = tl.maximum(hi, tl.load(part + 6))
        zeros += tl.load(part + 7)
        nans += tl.load(part + 8)
        nonfinite += tl.load(part + 9)
        if keeps_bins:
            counts = tl.load(hist_work + c * HIST_LANES + lanes - UNDERFLOW, mask=window, other=0)
            hist += counts.to(tl.int64)
    stats = out + stats_row * N_STATS
    if is_param:
        tl.store(stats + P_SUM, total)
        tl.store(stats + P_SUMSQ, sumsq)
        tl.store(stats + P_M2, m2)
    else:
        tl.store(stats + G_SUM, total)
        tl.store(stats + G_SUMSQ, sumsq)
        tl.store(stats + G_M2, m2)
        tl.store(stats + G_MIN, tl.where(nans > 0, float("nan"), lo))
        tl.store(stats + G_MAX, tl.where(nans > 0, float("nan"), hi))
        tl.store(stats + G_ZERO, zeros)
        tl.store(stats + G_NAN, nans)
        tl.store(stats + G_INF, nonfinite - nans)
        if has_param == 0:
            tl.store(stats + P_SUM, float("nan"))
            tl.store(stats + P_SUMSQ, float("nan"))
            tl.store(stats + P_M2, float("nan"))
        if keeps_bins:
            target = out + hist_start + stats_row * N_BINS + lanes
            tl.store(target, hist.to(tl.float64), mask=lanes < N_BINS)
