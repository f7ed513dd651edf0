"""A run's tidy rows: divergence status."""

from __future__ import annotations

import pandas as pd

from gradsweep.rows import divergence


def test_a_replica_diverges_at_its_first_non_finite_step() -> None:
    frame = pd.DataFrame(
        {
            "replica": [0, 0, 1, 1, 1, 2],
            "step": [0, 5, 0, 5, 10, 0],
            "grad_n_nan": [0, 0, 0, 2, 0, 0],
            "grad_n_inf": [0, 0, 0, 0, 1, 0],
            "grad_norm": [1.0, 1.0, 1.0, 1.0, 1.0, float("inf")],
            "loss": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
        }
    )
    assert divergence(frame, 4) == (["ok", "diverged", "diverged", "ok"], [None, 5, 0, None])
