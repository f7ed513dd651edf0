"""The per-run summary metrics against the rows they summarise."""

from __future__ import annotations

import json

import pytest

from gradsweep.experiment import run_experiment
from gradsweep.summary import run_metrics


@pytest.mark.parametrize(
    "architecture", [{}, {"residual": True, "norm": "layer", "branch_scale": "inv_sqrt_depth"}]
)
def test_total_norms_count_parameter_gradients_only(architecture: dict) -> None:
    """`preact` and `stream` rows are activation gradients: no part of a parameter total."""
    stats = run_experiment(
        dict(act="relu", depth=5, replicas=2, steps=3, clip=0.5, **architecture)
    ).stats
    metrics = json.loads(run_metrics(stats))
    per_replica = stats.groupby("replica")
    for replica, found in enumerate(metrics):
        rows = per_replica.get_group(replica)
        params = rows[~rows["tensor"].isin(["preact", "stream"])]
        assert found["max_total_norm"] == pytest.approx(rows["total_grad_norm"].max(), rel=1e-12)
        assert found["max_grad_norm"] == pytest.approx(params["grad_norm"].max(), rel=1e-12)
    assert ("stream" in set(stats["tensor"])) == bool(architecture)
