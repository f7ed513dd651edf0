"""The fixed log10|g| histogram bins every run file uses, so histograms of any runs can be summed.

Kept free of torch so that reading and reporting run files does not import it.
Bins: 0 exact zero, 1 underflow (0 < |g| < 1e-12), 2..65 log10|g| in [-12, 4)
0.25 wide, 66 overflow (|g| >= 1e4, finite), 67 NaN, 68 +-Inf.
"""

from __future__ import annotations

import numpy as np

HIST_LOG10_MIN = -12.0
HIST_LOG10_MAX = 4.0
HIST_LOG10_STEP = 0.25
HIST_REGULAR_EDGES: np.ndarray = np.arange(
    HIST_LOG10_MIN, HIST_LOG10_MAX + HIST_LOG10_STEP / 2, HIST_LOG10_STEP
)
HIST_BIN_LABELS: tuple[str, ...] = (
    ("zero", "underflow")
    + tuple(f"[{a:g},{b:g})" for a, b in zip(HIST_REGULAR_EDGES[:-1], HIST_REGULAR_EDGES[1:]))
    + ("overflow", "nan", "inf")
)
N_HIST_BINS = len(HIST_BIN_LABELS)
HIST_ZERO, HIST_UNDERFLOW, HIST_OVERFLOW, HIST_NAN, HIST_INF = 0, 1, N_HIST_BINS - 3, N_HIST_BINS - 2, N_HIST_BINS - 1
