"""Replica groups: sweep configurations that differ only in seed or init_scale, run as one stacked job.

Tiny networks are bound by per-job and per-op overhead, so a sweep over seeds
(and init scales) of one architecture runs far faster as stacked replicas of
one process than as separate jobs. The sweeper packs such configurations into
groups (`hydra.sweeper.group_size`); the job of a group is the first member's
own job, and it writes every member's run dir and parquet file exactly where
and as the member's separate run would (statistics equal to float rounding,
the batched matmuls being the only difference).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gradsweep.config import RUN_KEYS, run_dirname, run_key, run_values
from gradsweep.experiment import GradientFlowRun, RunResult

GROUPABLE_KEYS: tuple[str, ...] = ("seed", "init_scale")
GROUP_ENV = "GRADSWEEP_GROUP"
POSITION_ENV = "GRADSWEEP_POSITION"


def override_key(override: str) -> str:
    """The config key of a `key=value` override string (without +, ++ or ~ prefixes)."""
    return override.split("=", 1)[0].lstrip("+~")


@dataclass
class JobPlan:
    """One launched job: its overrides (those of its first run) and the overrides of the other members."""

    overrides: list[str]
    members: list[list[str]]

    @property
    def n_runs(self) -> int:
        """Runs this job writes: itself plus the other members."""
        return 1 + len(self.members)


def plan_groups(jobs: Sequence[Sequence[str]], group_size: int) -> list[JobPlan]:
    """Pack jobs that differ only in GROUPABLE_KEYS into groups of at most `group_size`, in sweep order."""
    if group_size <= 1:
        return [JobPlan(list(job), []) for job in jobs]
    buckets: dict[tuple[str, ...], list[list[str]]] = {}
    for job in jobs:
        shared = tuple(sorted(o for o in job if override_key(o) not in GROUPABLE_KEYS))
        buckets.setdefault(shared, []).append(list(job))
    plans = []
    for members in buckets.values():
        for start in range(0, len(members), group_size):
            chunk = members[start : start + group_size]
            extra = [[o for o in job if override_key(o) in GROUPABLE_KEYS] for job in chunk[1:]]
            plans.append(JobPlan(chunk[0], extra))
    return plans


def encode_members(members: Sequence[Sequence[str]]) -> str:
    """The members' differing overrides as a JSON string (carried in the job's hydra.job.env_set)."""
    return json.dumps([list(m) for m in members], separators=(",", ":"))


def decode_members(text: str | None) -> list[list[str]]:
    """Inverse of `encode_members`; no text means a job of one run."""
    return json.loads(text) if text else []


def member_overrides(task_overrides: Sequence[str], member: Sequence[str]) -> list[str]:
    """A member's full task overrides: the job's, with the member's seed / init_scale in place."""
    replaced = {override_key(o): o for o in member}
    out = [replaced.pop(override_key(o), o) for o in task_overrides]
    return out + list(replaced.values())


def member_config(cfg: DictConfig, member: Sequence[str]) -> DictConfig:
    """The job's config with the member's seed / init_scale set through the typed schema."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = cfg.copy()
    for override in OverridesParser.create().parse_overrides(list(member)):
        key = override.get_key_element()
        if key not in GROUPABLE_KEYS:
            raise ValueError(
                f"replica group member override {key!r} is not one of {GROUPABLE_KEYS}"
            )
        out[key] = override.value()
    return out


class ReplicaGroupRun(GradientFlowRun):
    """Several configurations differing only in seed / init_scale, stacked into one run and split after."""

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
        """Train the stacked group once; return each member's result as its separate run would give it."""
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
                    whole.device_name,
                    whole.seconds,
                )
            )
        return results


def member_dir(job_dir: Path, values: dict[str, Any]) -> Path:
    """A member's run dir: the sibling of the job's dir named by `run_dirname`."""
    return job_dir.parent / run_dirname(values)
