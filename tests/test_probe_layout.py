"""The packed result's layout: every strategy writes what it describes, and it unpacks by name."""

from __future__ import annotations

import numpy as np
import pytest

import gradsweep.probe as probe_module
from gradsweep.bins import HIST_UNDERFLOW, HIST_ZERO, N_HIST_BINS
from gradsweep.config import RunConfig, run_values
from gradsweep.experiment import GradientFlowRun
from gradsweep.probe import STAT_COLUMNS, PackedLayout, S, TensorSpec
from gradsweep.probe.layout import SEGMENT_BLOCKS
from gradsweep.probe.native import load_kernel

SPECS = (TensorSpec(0, "weight", 6, True), TensorSpec(0, "preact", 4, False))


@pytest.mark.parametrize(
    "strategy", ["OnePassProbe", "NumpyHostProbe", "FusedTorchProbe", "PerTensorProbe"]
)
@pytest.mark.parametrize("clip", [None, 0.5])
def test_every_strategy_packs_what_its_layout_and_the_run_tail_describe(
    strategy: str, clip: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if strategy == "OnePassProbe" and load_kernel() is None:
        pytest.skip("the one-pass kernel does not build here (no C compiler)")
    monkeypatch.setattr(probe_module, "ONE_PASS", strategy == "OnePassProbe")
    monkeypatch.setattr(probe_module, "HOST_REDUCTIONS", strategy == "NumpyHostProbe")
    monkeypatch.setattr(
        probe_module, "FUSED_MAX_ELEMENTS", 0 if strategy == "PerTensorProbe" else 1 << 16
    )
    run = GradientFlowRun({**run_values(RunConfig()), "replicas": 2, "steps": 2, "clip": clip})
    assert type(run.probe.strategy).__name__ == strategy
    layout = run.probe.layout.with_tail(run.tail)
    assert layout.tail == (("loss",) if clip is None else ("loss", "clip_factor"))
    for step, with_hist in ((0, True), (1, False)):
        packed = run.instrumented_step(step, with_hist).numpy()
        assert packed.size == layout.size(with_hist)
        arrays = layout.unpack(packed, with_hist)
        assert arrays.stats.shape == (2, len(run.specs), len(STAT_COLUMNS))
        assert (arrays.hist is not None) == with_hist
        assert set(arrays.tail) == set(layout.tail)
        assert all(values.shape == (2,) for values in arrays.tail.values())


def test_per_tensor_layout_unpacks_stats_histogram_and_tail() -> None:
    layout = PackedLayout(SPECS, replicas=2, tail=("loss", "clip_factor"))
    stats = np.arange(2 * 2 * len(STAT_COLUMNS), dtype=np.float64).reshape(2, 2, -1)
    stats[..., S["grad_n_zero"]] = 1
    stats[..., S["grad_n_nan"]] = stats[..., S["grad_n_inf"]] = 0
    hist = np.zeros((2, 2, N_HIST_BINS))
    hist[..., HIST_UNDERFLOW] = 3
    packed = np.concatenate([stats.ravel(), hist.ravel(), [0.1, 0.2], [1.0, 0.5]])
    arrays = layout.unpack(packed, with_hist=True)
    np.testing.assert_array_equal(arrays.stats, stats)
    assert (arrays.hist[..., HIST_ZERO] == 1).all() and (
        arrays.hist[..., HIST_UNDERFLOW] == 2
    ).all()
    np.testing.assert_array_equal(arrays.tail["loss"], [0.1, 0.2])
    np.testing.assert_array_equal(arrays.tail["clip_factor"], [1.0, 0.5])
    no_hist = np.concatenate([stats.ravel(), [0.1, 0.2], [1.0, 0.5]])
    assert layout.unpack(no_hist, with_hist=False).hist is None
    with pytest.raises(ValueError, match="does not match its layout"):
        layout.unpack(no_hist, with_hist=True)


def test_fused_layout_fills_statistics_from_the_segment_blocks() -> None:
    """Segments: the weight, the preact, then the weight again for its parameter values."""
    layout = PackedLayout(SPECS, replicas=1, segment_blocks=SEGMENT_BLOCKS)
    blocks = {
        "sum": [3.0, -2.0, 12.0],
        "m2": [5.0, 1.0, 6.0],
        "max": [2.0, 0.5, 4.0],
        "min": [-1.0, -2.0, 1.0],
        "n_zero": [1.0, 2.0, 0.0],
    }
    zero_rows = np.zeros(layout.n_stats)
    packed = np.concatenate([zero_rows, *(blocks[name] for name in SEGMENT_BLOCKS), [7.0]])
    layout = layout.with_tail(("loss",))
    stats = layout.unpack(packed, with_hist=False).stats[0]
    weight, preact = stats
    assert weight[S["grad_sum"]] == 3.0 and weight[S["grad_m2"]] == 5.0
    assert weight[S["grad_sumsq"]] == 5.0 + 3.0**2 / 6
    assert (weight[S["grad_max"]], weight[S["grad_min"]], weight[S["grad_n_zero"]]) == (2, -1, 1)
    assert weight[S["param_sum"]] == 12.0 and weight[S["param_sumsq"]] == 6.0 + 12.0**2 / 6
    assert preact[S["grad_sumsq"]] == 1.0 + 4.0 / 4
    assert preact[S["param_sum"]] == preact[S["param_m2"]] == 0.0  # a preact has no parameter
