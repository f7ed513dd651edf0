"""A job's runs executed: each run, or one replica group, run in this process and written.

The Hydra task and `gradsweep.run` both go through `execute_runs`: it sets the
thread count, keeps complete files a resume may keep, runs the rest (stacked
when the job is a replica group) and writes each run file atomically.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from omegaconf import OmegaConf

from gradsweep.config import run_values
from gradsweep.execution import Resume, apply_threads, plan_resume
from gradsweep.experiment import GradientFlowRun, RunResult
from gradsweep.groups import ReplicaGroupRun
from gradsweep.run_plan import PlannedRun
from gradsweep.store import FAILURE_FILE, remove_stale_temporaries, run_metadata, write_run
from gradsweep.summary import footer_metrics

# Keys of the app config that the run file's `config` leaves out: how to resume, not the run.
UNRECORDED_KEYS = ("hydra", "redo_mismatched")


def _prepare_dir(run: PlannedRun, own_job: bool) -> None:
    """Remove temporary files whose writer is gone; give a group member its own .hydra record.

    A FAILED.txt of an earlier attempt stays until the run's file is in place.
    """
    run.run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run.stats_path)
    if not own_job:
        record = run.run_dir / ".hydra"
        record.mkdir(exist_ok=True)
        OmegaConf.save(run.cfg, record / "config.yaml")
        OmegaConf.save(OmegaConf.create(run.overrides), record / "overrides.yaml")


def _clear_stale_failures(kept: list[PlannedRun]) -> None:
    """A complete run file wins: remove the FAILED.txt an earlier or concurrent attempt left."""
    for run in kept:
        with contextlib.suppress(OSError):  # a read-only run dir: the complete file wins anyway
            (run.run_dir / FAILURE_FILE).unlink(missing_ok=True)


def _write(run: PlannedRun, result: RunResult, summary: str) -> str:
    run_cfg = OmegaConf.masked_copy(
        run.cfg, [k for k in run.cfg.keys() if k not in UNRECORDED_KEYS]
    )
    status = "diverged" if "diverged" in result.status else "ok"
    meta = run_metadata(
        OmegaConf.to_yaml(run_cfg, resolve=True), result.execution.metadata(), status, summary
    )
    write_run(result.stats, run.stats_path, meta)
    return ",".join(sorted(set(result.status)))


def execute_runs(
    runs: list[PlannedRun], progress: Callable[[int], None] | None = None
) -> list[tuple[str, float]]:
    """Run a job's configurations (stacked when several), write those `_resume` says to run.

    Returns (status, seconds) of each run.
    """
    threads = apply_threads(runs[0].cfg.threads)  # before any torch work of the job
    resume = _resume(runs, threads)
    pending = [i for i, decision in enumerate(resume) if decision.run]
    _clear_stale_failures([run for i, run in enumerate(runs) if i not in pending])
    if not pending:
        return [(decision.status(), 0.0) for decision in resume]
    for i in pending:
        _prepare_dir(runs[i], own_job=i == 0)
    if len(runs) == 1:
        results = [GradientFlowRun(runs[0].cfg).run(progress)]
    else:
        results = ReplicaGroupRun([run.cfg for run in runs]).run_members(progress)
    summaries = dict(zip(pending, footer_metrics([results[i].stats for i in pending])))
    outcomes = []
    for i, (run, result) in enumerate(zip(runs, results)):
        if i in pending:
            outcomes.append((resume[i].status(_write(run, result, summaries[i])), result.seconds))
        else:
            outcomes.append((resume[i].status(), 0.0))
    return outcomes


def _resume(runs: list[PlannedRun], threads: int) -> list[Resume]:
    """Per run of the job: run it, redo it or keep its complete file (`execution.plan_resume`)."""
    members = [run_values(run.cfg) for run in runs]
    redo = runs[0].cfg.redo_mismatched
    return plan_resume([run.stats_path for run in runs], members, threads, redo)
