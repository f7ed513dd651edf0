"""How each logged step's packed result reaches the host."""

from __future__ import annotations

import numpy as np
import pytest

from gradsweep.config import RunConfig, run_values
from gradsweep.experiment import GradientFlowRun
from gradsweep.probe import HostCopies


def test_batched_host_copies_return_every_step_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The way CUDA results reach the host (flushed in batches, split after) returns each step's."""
    monkeypatch.setattr(HostCopies, "FLUSH_EVERY", 3)
    run = GradientFlowRun({**run_values(RunConfig()), "steps": 10, "replicas": 2})
    direct, batched = HostCopies(run.device), HostCopies(run.device, batched=True)
    for step in range(8):
        # two sizes: with and without histogram
        packed = run.instrumented_step(step, with_hist=step % 2 == 0)
        direct.add(packed.clone())
        batched.add(packed)
    expected, got = direct.arrays(), batched.arrays()
    assert len(batched._copies) == 3 and len(got) == 8
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)
