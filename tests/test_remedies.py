"""The remedies figure: a line per remedy, the seeds of one configuration, only where compared."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from gradsweep import remedies
from gradsweep.drawn import drawn
from gradsweep.store import RunSet
from gradsweep.theory_figures import RUN_AXES, theory_frame

BASE = {  # one run's configuration as the theory frame holds it (the run file's columns)
    "act": "relu",
    "width": 64,
    "init": "fan_in",
    "init_scale": 1.41421356,
    "sigma_w2": 2.0,
    "bias_init": "zeros",
    "batchnorm": False,
    "norm": "none",
    "residual": False,
    "branch_scale": "1.0",
    "norm_position": "pre",
    "clip": None,
    "output_act": False,
    "device": "cpu",
    "dtype": "float32",
    "optimizer": "sgd",
    "lr": 0.01,
    "batch_size": 32,
    "loss_name": "mean",
    "steps": 0,
    "data_seed": 0,
}
# remedy name -> (its configuration keys, measured factor |dL/dz_l| / |dL/dz_{l+1}|, predicted)
REMEDIES = {
    "plain": ({}, 0.5, 0.5),
    "BatchNorm": ({"norm": "batch", "batchnorm": True}, 1.2, 1.25),
    "LayerNorm": ({"norm": "layer"}, 0.9, None),
    "residual": ({"residual": True}, 1.6, 1.5),
    "residual, branch_scale = inv_sqrt_depth": (
        {"residual": True, "branch_scale": "inv_sqrt_depth"},
        1.02,
        1.02,
    ),
    "residual + LayerNorm (post)": (
        {"residual": True, "norm": "layer", "norm_position": "post"},
        1.1,
        None,
    ),
}
REPLICAS = 3


def run_rows(name: str, depth: int, **config: object) -> pd.DataFrame:
    """Step-0 preact rows of one run: |dL/dz_l| = factor ** (L-1-l), the replicas 1% apart."""
    keys, factor, predicted = REMEDIES[name]
    values = {**BASE, **keys, **config, "depth": depth}
    run_key = f"{name}|{sorted(values.items())}"
    rows = []
    for replica in range(REPLICAS):
        output = 0.1 * (1 + 0.01 * replica)
        for layer in range(depth):
            hops = depth - 1 - layer
            rows.append(
                {
                    **values,
                    "run_key": run_key,
                    "replica": replica,
                    "seed": replica,
                    "layer": layer,
                    "tensor": "preact",
                    "grad_norm": output * factor**hops * (1 + 0.01 * replica) ** (hops > 0),
                    "pred_preact_factor": predicted if layer < depth - 1 else None,
                    "pred_preact_norm": None if predicted is None else output * predicted**hops,
                }
            )
    return pd.DataFrame(rows)


def frame_of(*runs: pd.DataFrame) -> pd.DataFrame:
    frame = pd.concat(runs, ignore_index=True)
    for column in ("pred_preact_factor", "pred_preact_norm"):
        frame[column] = frame[column].astype(float)
    assert set(RUN_AXES) <= set(frame.columns)
    return frame


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_names_read_as_a_reader_names_remedies() -> None:
    assert remedies.remedy_name("none", False, "pre", "1.0") == "plain"
    assert remedies.remedy_name("batch", False, "pre", "1.0") == "BatchNorm"
    assert remedies.remedy_name("layer", True, "pre", "1.0") == "residual + LayerNorm (pre)"
    assert remedies.remedy_name("none", True, "pre", "0.5") == "residual, branch_scale = 0.5"


def test_every_line_is_the_seeds_of_one_remedy_relative_to_its_output_layer() -> None:
    frame = frame_of(*(run_rows(name, 50) for name in REMEDIES))
    (fig,) = remedies.remedies(frame)
    data = drawn(fig).data
    assert (data["configs"] == 1).all() and (data["seeds"] == REPLICAS).all()
    measured = data[data["quantity"] == "measured"]
    assert list(measured["remedy"].cat.categories) == list(REMEDIES)
    for name, (_, factor, predicted) in REMEDIES.items():
        line = measured[measured["remedy"] == name].set_index("layer")
        np.testing.assert_allclose(line["median"], factor ** (49 - line.index), rtol=0.02)
        assert line.loc[49, "median"] == pytest.approx(1.0)
        dashed = data[(data["quantity"] == "predicted") & (data["remedy"] == name)]
        if predicted is None:
            assert dashed.empty, f"{name}: a prediction drawn where the run files carry none"
        else:
            steps = np.diff(np.log(dashed.sort_values("layer")["median"].to_numpy()))
            np.testing.assert_allclose(steps, -np.log(predicted), rtol=1e-9)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [*REMEDIES, "prediction"]


def test_batchnorm_prediction_is_anchored_at_the_last_hidden_layer() -> None:
    frame = frame_of(run_rows("plain", 10), run_rows("BatchNorm", 10))
    (fig,) = remedies.remedies(frame)
    data = drawn(fig).data
    dashed = data[(data["quantity"] == "predicted") & (data["remedy"] == "BatchNorm")]
    measured = data[(data["quantity"] == "measured") & (data["remedy"] == "BatchNorm")]
    assert 9 not in set(dashed["layer"])
    at = dashed.set_index("layer")["median"][8]
    assert at == pytest.approx(measured.set_index("layer")["median"][8], rel=0.02)


def test_only_depths_with_two_remedies_are_drawn_and_other_axes_are_panels() -> None:
    frame = frame_of(
        run_rows("plain", 5),
        run_rows("plain", 20),
        run_rows("residual", 20),
        run_rows("plain", 20, act="tanh"),
        run_rows("LayerNorm", 20, act="tanh"),
    )
    (fig,) = remedies.remedies(frame)
    data = drawn(fig).data
    assert data.groupby(["act", "remedy"], observed=True)["layer"].max().eq(19).all()
    assert set(zip(data["act"], data["remedy"].astype(str))) == {
        ("relu", "plain"),
        ("relu", "residual"),
        ("tanh", "plain"),
        ("tanh", "LayerNorm"),
    }
    titles = {ax.get_title() for ax in fig.axes if ax.get_visible()}
    assert titles == {"act = relu", "act = tanh"}


@pytest.mark.parametrize(
    "runs",
    [
        [("plain", 50)],
        [("plain", 5), ("residual", 50)],
        [("LayerNorm", 20), ("LayerNorm", 50)],
    ],
)
def test_no_figure_without_two_remedies_at_one_depth(runs) -> None:
    frame = frame_of(*(run_rows(name, depth) for name, depth in runs))
    assert remedies.remedies(frame) == []


def test_a_real_sweep_draws_each_remedy_from_its_own_seeds(new_axes_sweep: Path) -> None:
    frame = theory_frame(RunSet([new_axes_sweep]))
    (fig,) = remedies.remedies(frame)
    data = drawn(fig).data
    assert (data["configs"] == 1).all() and (data["seeds"] == 2).all()
    measured = data[data["quantity"] == "measured"]
    assert set(measured["remedy"].astype(str)) == {
        "plain",
        "LayerNorm",
        "residual",
        "residual + LayerNorm (pre)",
    }
    assert len(measured[["remedy", "init_scale"]].drop_duplicates()) == 12
    assert (measured[measured["layer"] == 3]["median"] == 1.0).all()
    titles = {ax.get_title() for ax in fig.axes if ax.get_visible()}
    assert titles == {
        f"sigma_w2 = {w}, init_scale = {s}" for w, s in (("0.25", "0.5"), ("1", "1"), ("4", "2"))
    }
