"""The runs a job writes and where: its own run dir, its replica-group members' dirs, FAILED.txt.

Kept free of torch and pandas: the sweep's parent process (a launcher that
records failures of jobs which never reported back) uses it too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gradsweep.config import run_dirname, run_key, run_values
from gradsweep.group_plan import member_config, member_overrides
from gradsweep.schema import FAILURE_FILE


@dataclass
class PlannedRun:
    """One configuration of a job: its config, run dir and task overrides."""

    cfg: DictConfig
    run_dir: Path
    overrides: list[str]

    @property
    def stats_path(self) -> Path:
        return self.run_dir / self.cfg.stats_file


def member_dir(job_dir: Path, values: dict[str, Any]) -> Path:
    """A member's run dir: the sibling of the job's dir named by `run_dirname`."""
    return job_dir.parent / run_dirname(values)


def plan_runs(
    cfg: DictConfig, job_dir: Path, overrides: Sequence[str], members: Sequence[Sequence[str]] = ()
) -> list[PlannedRun]:
    """The job's own run, then one run per other replica-group member (sibling run dirs)."""
    runs = [PlannedRun(cfg, job_dir, list(overrides))]
    for member in members:
        member_cfg = member_config(cfg, member)
        runs.append(
            PlannedRun(
                member_cfg,
                member_dir(job_dir, run_values(member_cfg)),
                member_overrides(overrides, member),
            )
        )
    return runs


def failure_text(run: PlannedRun, error: str, details: str) -> str:
    """What FAILED.txt holds: status, the one-line error, the run's key and overrides, details."""
    return (
        f"status: failed\nerror: {error}\nrun_key: {run_key(run.cfg)}\n"
        f"overrides: {' '.join(run.overrides)}\n\n{details.rstrip()}\n"
    )


def write_failure(run: PlannedRun, error: str, details: str) -> bool:
    """Write the run's FAILED.txt whole or not at all; False where it was not written.

    Written under a temporary name and renamed, so a full disk leaves no empty or
    truncated record. Never left beside a complete run file: none is written
    where one exists, and one written while a concurrent sweep completed the
    run is removed again (that sweep's writer removes it too, once its file is
    in place).
    """
    from gradsweep.store import is_complete, temporary_path  # pyarrow, once a run has failed

    path = run.run_dir / FAILURE_FILE
    if is_complete(run.stats_path):
        return False
    tmp = temporary_path(path)
    try:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        tmp.write_text(failure_text(run, error, details))
        os.replace(tmp, path)
    except OSError:  # the caller says that there is none
        with contextlib.suppress(OSError):  # a read-only dir refuses even this
            tmp.unlink(missing_ok=True)
        return False
    if is_complete(run.stats_path):
        path.unlink(missing_ok=True)
        return False
    return True
