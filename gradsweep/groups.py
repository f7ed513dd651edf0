"""Replica groups: configurations that differ only in seed or init_scale, run as one stacked job.

Tiny networks are bound by per-job and per-op overhead, so a sweep over seeds
(and init scales) of one architecture runs far faster as stacked replicas of
one process than as separate jobs. The sweeper packs such configurations into
groups (`hydra.sweeper.group_size`, planned by `gradsweep.group_plan`); the job
of a group is the first member's own job, and it writes every member's run dir
and parquet file exactly where and as the member's separate run would
(statistics equal to float rounding, the batched matmuls being the only
difference).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gradsweep.config import RUN_KEYS, run_key, run_values
from gradsweep.experiment import GradientFlowRun, RunResult
from gradsweep.group_plan import GROUPABLE_KEYS


class ReplicaGroupRun(GradientFlowRun):
    """Configurations differing only in seed / init_scale, stacked into one run, split after."""

    def __init__(self, configs: Sequence[Any]) -> None:
        self.members = [run_values(c) for c in configs]
        first = self.members[0]
        for values in self.members[1:]:
            differ = [k for k in RUN_KEYS if k not in GROUPABLE_KEYS and values[k] != first[k]]
            if differ:
                raise ValueError(
                    f"replica group members differ in {differ}; only {GROUPABLE_KEYS} may differ"
                )
        super().__init__(first)

    def replica_inits(self) -> list[tuple[int, float]]:
        """Member m's replica r is seeded seed_m + r at init_scale_m, as in its own run."""
        return [
            (m["seed"] + r, m["init_scale"]) for m in self.members for r in range(m["replicas"])
        ]

    def run_members(self, progress: Any = None) -> list[RunResult]:
        """Train the stacked group once; return each member's result as its own run would."""
        whole = self.run(progress)
        k = self.members[0]["replicas"]
        results = []
        for index, values in enumerate(self.members):
            rows = whole.stats[whole.stats["replica"] // k == index].reset_index(drop=True)
            rows["run_key"] = run_key(values)
            rows["replica"] = rows["replica"] - index * k
            part = slice(index * k, (index + 1) * k)
            results.append(
                RunResult(
                    rows,
                    whole.status[part],
                    whole.diverged_step[part],
                    whole.execution,
                    whole.seconds,
                )
            )
        return results
