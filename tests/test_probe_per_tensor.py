"""The per-tensor strategy's plan: which same-sized tensors are reduced together."""

from __future__ import annotations

from gradsweep.probe import TensorSpec
from gradsweep.probe.per_tensor import plan_stacks


def test_stacks_group_same_sized_tensors_of_one_kind_up_to_the_cap() -> None:
    specs = [
        TensorSpec(0, "weight", 200, True),
        TensorSpec(0, "bias", 20, True),
        TensorSpec(0, "preact", 640, False),
        TensorSpec(1, "weight", 400, True),
        TensorSpec(1, "bias", 20, True),
        TensorSpec(1, "preact", 640, False),
        TensorSpec(2, "weight", 400, True),
        TensorSpec(2, "bias", 20, True),
        TensorSpec(2, "preact", 640, False),
    ]
    assert plan_stacks(specs, 2, 1 << 16, None) == [
        ([0], [0]),
        ([1, 4, 7], [1, 3, 5]),
        ([2, 5, 8], []),
        ([3, 6], [2, 4]),
    ]
    assert plan_stacks(specs, 2, 2 * 640 * 2, None) == [
        ([0], [0]),
        ([1, 4, 7], [1, 3, 5]),
        ([2, 5], []),
        ([3, 6], [2, 4]),
        ([8], []),
    ]
    one_replica = plan_stacks(specs, 1, 1 << 16, 300)  # one replica's tensors above 300 stand alone
    assert one_replica == [
        ([0], [0]),
        ([1, 4, 7], [1, 3, 5]),
        ([2], []),
        ([3], [2]),
        ([5], []),
        ([6], [4]),
        ([8], []),
    ]
