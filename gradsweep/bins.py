"""The fixed log10|g| histogram bins every run file uses, so histograms of any runs can be summed.

Regular bins are binades: [2^e, 2^(e+1)) for e in [-40, 14), one octave
(log10 2 = 0.301 decade) wide. A float's bin is its exponent field, so binning
is exact, with no rounding at the edges, and costs a shift instead of a log.
Kept free of torch so that reading and reporting run files does not import it.
Bins: 0 exact zero, 1 underflow (0 < |g| < 2^-40 = 9.1e-13), 2..55 the binades,
56 overflow (|g| >= 2^14 = 16384, finite), 57 NaN, 58 +-Inf.
"""

from __future__ import annotations

import math

import numpy as np

HIST_EXP_MIN = -40
HIST_EXP_MAX = 14
HIST_LOG10_STEP = math.log10(2.0)
HIST_REGULAR_EDGES: np.ndarray = np.arange(HIST_EXP_MIN, HIST_EXP_MAX + 1) * HIST_LOG10_STEP
HIST_BIN_LABELS: tuple[str, ...] = (
    ("zero", "underflow")
    + tuple(f"[2^{e},2^{e + 1})" for e in range(HIST_EXP_MIN, HIST_EXP_MAX))
    + ("overflow", "nan", "inf")
)
N_HIST_BINS = len(HIST_BIN_LABELS)
HIST_ZERO, HIST_UNDERFLOW, HIST_OVERFLOW, HIST_NAN, HIST_INF = (
    0,
    1,
    N_HIST_BINS - 3,
    N_HIST_BINS - 2,
    N_HIST_BINS - 1,
)


def exponent_window(exponent_bias: int) -> tuple[int, int]:
    """Biased-exponent values of the underflow and overflow bins for a float format.

    Clamping a float's biased exponent field to this window and subtracting
    the first value gives its bin minus HIST_UNDERFLOW: zeros and subnormals
    fall in underflow, Inf and NaN in overflow, until exact counts move them.
    """
    return exponent_bias + HIST_EXP_MIN - 1, exponent_bias + HIST_EXP_MAX
