"""What decides the bits of a run besides its configuration, and resuming only runs written alike.

On one machine a run's numbers are a function of its configuration and of four
things every run file records (`schema.EXECUTION_METADATA`): the intra-op
thread count, which the `threads` key sets before any torch work of a run under
every launcher; the torch version; the device; and the statistics path, the
probe strategy that reduces the gradients. A resumed sweep compares a complete
file's record with what the run would use now and keeps a file written
otherwise (or redoes it, with `redo_mismatched=true`), saying which: a sweep
dir never mixes them silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gradsweep.config import resolve_threads
from gradsweep.model.parts import plan_for
from gradsweep.model.stacked import plan_specs
from gradsweep.probe import strategy_for
from gradsweep.progress import redone_status, skipped_status
from gradsweep.schema import EXECUTION_METADATA
from gradsweep.store import complete_metadata

UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Execution:
    """The values of `schema.EXECUTION_METADATA` for one run."""

    torch_version: str
    threads: int
    device_name: str
    stats_path: str

    @classmethod
    def now(cls, device_name: str, stats_path: str) -> Execution:
        """A run that used `device_name` and `stats_path` in this process, as it is now."""
        return cls(torch.__version__, torch.get_num_threads(), device_name, stats_path)

    def metadata(self) -> dict[str, str]:
        """As the run file's footer holds them."""
        return {key: str(getattr(self, key)) for key in EXECUTION_METADATA}


def apply_threads(value: Any) -> int:
    """Set torch's intra-op thread count from the `threads` key (an integer or `auto`)."""
    threads = resolve_threads(value)
    torch.set_num_threads(threads)
    return threads


def device_name(device: torch.device) -> str:
    """`cpu`, or the CUDA device's name: what a run file records as `device_name`."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _planned_device_name(device: str) -> str:
    """The device name a run of `device=...` would record here; `unavailable` for missing CUDA."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    return device_name(torch.device("cuda")) if torch.cuda.is_available() else UNAVAILABLE


def planned_execution(members: Sequence[Mapping[str, Any]], threads: int) -> Execution:
    """What a job's runs (`run_values` of each; stacked when several) would record, unrun.

    The statistics path depends on the stacked network's size and the device, so it
    is told from the layer plan, without building the network.
    """
    v = members[0]
    name = _planned_device_name(v["device"])
    plan = plan_for(v)
    replicas = sum(m["replicas"] for m in members)
    device_type = "cpu" if name == "cpu" else "cuda"
    strategy = strategy_for(plan_specs(plan, v["batch_size"]), replicas, device_type)
    return Execution(torch.__version__, threads, name, strategy.name)


# (key, value the file records or None where it records none, value a run would have now)
Difference = tuple[str, str | None, str]


def differences(recorded: Mapping[str, str], planned: Execution) -> list[Difference]:
    """The execution values a run file's metadata records otherwise than `planned`."""
    now = planned.metadata()
    return [(key, recorded.get(key), now[key]) for key in now if recorded.get(key) != now[key]]


@dataclass(frozen=True)
class Resume:
    """A run of a job: whether it runs now, and how its complete file was written otherwise."""

    run: bool
    differences: tuple[Difference, ...] = ()

    def status(self, outcome: str | None = None) -> str:
        """The run's status: `outcome` when it ran (noting what was redone), else why skipped."""
        if outcome is None:
            return skipped_status(self.differences)
        return redone_status(self.differences, outcome) if self.differences else outcome


def plan_resume(
    stats_paths: Sequence[Path],
    members: Sequence[Mapping[str, Any]],
    threads: int,
    redo_mismatched: bool,
) -> list[Resume]:
    """Per run of a job: run it when its file is incomplete; else keep the file, or redo it.

    A complete file whose record equals what the job would use now is kept; one written
    otherwise is kept too, with its differences, unless `redo_mismatched`.
    """
    planned: Execution | None = None
    plan = []
    for path in stats_paths:
        recorded = complete_metadata(path)
        if recorded is None:
            plan.append(Resume(True))
            continue
        planned = planned or planned_execution(members, threads)
        found = tuple(differences(recorded, planned))
        plan.append(Resume(bool(found) and redo_mismatched, found))
    return plan
