"""Planning replica groups: which sweep jobs run together, and how a job learns its members.

The sweeper packs configurations that differ only in seed / init_scale into
groups (`hydra.sweeper.group_size`) and hands each job its members and its
position in the sweep through `hydra.job.env_set`. Planning needs neither torch
nor pandas, so the sweeper can plan a whole sweep before any run code is
imported; the stacked run of a group is `gradsweep.groups.ReplicaGroupRun`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig

GROUPABLE_KEYS: tuple[str, ...] = ("seed", "init_scale")
GROUP_ENV = "GRADSWEEP_GROUP"
POSITION_ENV = "GRADSWEEP_POSITION"


def override_key(override: str) -> str:
    """The config key of a `key=value` override string (without +, ++ or ~ prefixes)."""
    return override.split("=", 1)[0].lstrip("+~")


@dataclass
class JobPlan:
    """One launched job: its overrides (those of its first run) and the other members' overrides."""

    overrides: list[str]
    members: list[list[str]]

    @property
    def n_runs(self) -> int:
        """Runs this job writes: itself plus the other members."""
        return 1 + len(self.members)


def plan_groups(jobs: Sequence[Sequence[str]], group_size: int) -> list[JobPlan]:
    """Pack jobs differing only in GROUPABLE_KEYS into groups of at most `group_size`, in order."""
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
    """The members' differing overrides as a JSON string (carried in the job's env_set)."""
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
