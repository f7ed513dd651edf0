"""The prediction columns of every run file: where they are null, how they are anchored."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from gradsweep import theory
from gradsweep.experiment import GradientFlowRun
from gradsweep.groups import ReplicaGroupRun
from gradsweep.schema import PRED_COLUMNS
from gradsweep.store import write_run

BASE = dict(
    act="tanh",
    depth=5,
    width=16,
    init="fan_in",
    init_scale=1.5,
    bias_init="zeros",
    replicas=2,
    steps=2,
    dtype="float64",
    output_act=False,
)


def _preact(stats, **where):
    rows = stats[stats["tensor"] == "preact"]
    for key, value in where.items():
        rows = rows[rows[key] == value]
    return rows.sort_values("layer")


def test_columns_are_null_except_on_preact_rows() -> None:
    stats = GradientFlowRun(BASE).run().stats
    other = stats[stats["tensor"] != "preact"]
    for column in PRED_COLUMNS:
        assert other[column].isna().all()
    preact = stats[stats["tensor"] == "preact"]
    assert preact["pred_preact_norm"].notna().all()
    output = preact["layer"] == BASE["depth"] - 1
    assert preact.loc[output, "pred_preact_factor"].isna().all()
    assert preact.loc[~output, "pred_preact_factor"].notna().all()


def test_factors_match_theory_and_norms_are_anchored_at_the_measured_output_layer() -> None:
    stats = GradientFlowRun(BASE).run().stats
    expected = theory.predict_preact_factors(
        "tanh", 5, 16, init="fan_in", init_scale=1.5, bias_init="zeros"
    )
    for step in range(BASE["steps"] + 1):
        for replica in range(BASE["replicas"]):
            rows = _preact(stats, step=step, replica=replica)
            np.testing.assert_allclose(
                rows["pred_preact_factor"].to_numpy(float)[:-1], expected, rtol=1e-12
            )
            anchor = rows["grad_norm"].iloc[-1]
            np.testing.assert_allclose(
                rows["pred_preact_norm"].to_numpy(float),
                theory.predict_preact_norms(expected, anchor),
                rtol=1e-12,
            )


def test_replica_group_members_get_their_own_init_scale() -> None:
    members = [dict(BASE, init_scale=0.5), dict(BASE, init_scale=2.0)]
    grouped = ReplicaGroupRun(members).run_members()
    for values, result in zip(members, grouped):
        alone = GradientFlowRun(values).run().stats
        np.testing.assert_allclose(
            _preact(result.stats, step=0, replica=1)["pred_preact_factor"].to_numpy(float)[:-1],
            _preact(alone, step=0, replica=1)["pred_preact_factor"].to_numpy(float)[:-1],
            rtol=1e-12,
        )
    assert not np.allclose(
        _preact(grouped[0].stats, step=0, replica=0)["pred_preact_factor"].to_numpy(float)[:-1],
        _preact(grouped[1].stats, step=0, replica=0)["pred_preact_factor"].to_numpy(float)[:-1],
    )


@pytest.mark.parametrize("batch, defined", [(2, False), (4, True)])
def test_batchnorm_below_four_samples_has_no_prediction(batch: int, defined: bool) -> None:
    stats = GradientFlowRun(dict(BASE, act="relu", batchnorm=True, batch_size=batch)).run().stats
    hidden = stats[(stats["tensor"] == "preact") & (stats["layer"] < BASE["depth"] - 1)]
    assert hidden["pred_preact_factor"].notna().all() == defined


def test_run_file_stores_nulls_not_nans(tmp_path) -> None:
    stats = GradientFlowRun(BASE).run().stats
    path = write_run(stats, tmp_path / "grad_stats.parquet", {})
    table = pq.read_table(path, columns=list(PRED_COLUMNS))
    n_not_preact = int((stats["tensor"] != "preact").sum())
    assert table["pred_preact_norm"].null_count == n_not_preact
    assert table["pred_preact_factor"].null_count == n_not_preact + BASE["replicas"] * (
        BASE["steps"] + 1
    )


@pytest.mark.parametrize(
    "architecture, defined",
    [
        ({"residual": True, "norm": "batch"}, False),
        ({"residual": True, "norm": "batch", "norm_position": "post"}, False),
        ({"residual": True, "norm": "layer", "branch_scale": "inv_sqrt_depth"}, True),
        ({"norm": "layer"}, True),
    ],
)
def test_batchnorm_in_a_residual_network_has_no_prediction(
    architecture: dict, defined: bool
) -> None:
    """No closed form there: null, never a guess; LayerNorm and residual networks get theirs,
    each residual layer's `stream` row none."""
    stats = GradientFlowRun(dict(BASE, act="relu", **architecture)).run().stats
    hidden = stats[(stats["tensor"] == "preact") & (stats["layer"] < BASE["depth"] - 1)]
    assert hidden["pred_preact_factor"].notna().all() == defined
    assert hidden["pred_preact_factor"].isna().all() != defined
    stream = stats[stats["tensor"] == "stream"]
    residual = hidden[hidden["layer"] > 0] if architecture.get("residual") else hidden[:0]
    assert sorted(zip(stream["layer"], stream["replica"], stream["step"])) == sorted(
        zip(residual["layer"], residual["replica"], residual["step"])
    )
    assert stream[list(PRED_COLUMNS)].isna().all().all()
