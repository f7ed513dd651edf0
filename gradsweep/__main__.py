"""`python -m gradsweep`: the Hydra app. Thin: compose, run, write, report one line per run."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gradsweep.allocator import keep_freed_memory
from gradsweep.cli import REFUSED, RUNS_FAILED, failure_line, run_command
from gradsweep.config import ConfigValueError, register_configs, run_values
from gradsweep.execution import Resume, apply_threads, plan_resume
from gradsweep.experiment import DeviceUnavailableError, GradientFlowRun, RunResult
from gradsweep.group_plan import GROUP_ENV, POSITION_ENV, decode_members
from gradsweep.groups import ReplicaGroupRun
from gradsweep.progress import ProgressBar, parse_position, run_line
from gradsweep.run_plan import PlannedRun, plan_runs, write_failure
from gradsweep.store import (
    FAILURE_FILE,
    remove_stale_temporaries,
    run_metadata,
    write_run,
)
from gradsweep.summary import footer_metrics

log = logging.getLogger("gradsweep")

register_configs()

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


def _exit_single_run(err: Exception, run: PlannedRun, error: str, recorded: bool) -> NoReturn:
    """A single run's failure in one line on stderr; exit 2 for a user error, else 1."""
    if isinstance(err, (ConfigValueError, DeviceUnavailableError)):
        print(f"gradsweep: error: {err}", file=sys.stderr)
        raise SystemExit(REFUSED) from None
    print(failure_line(error, run.run_dir, recorded), file=sys.stderr)
    raise SystemExit(RUNS_FAILED) from None


@hydra.main(version_base="1.3", config_path="pkg://gradsweep.conf", config_name="config")
def task(cfg: DictConfig) -> list[str]:
    """Hydra task: one run, or one replica group of a sweep.

    Failures are written to each run dir, then raised (a single run exits).
    """
    keep_freed_memory()
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    env = hydra_cfg.job.env_set
    index, total = parse_position(env.get(POSITION_ENV)) or (1, 1)
    runs = plan_runs(
        cfg,
        Path(hydra_cfg.runtime.output_dir),
        list(hydra_cfg.overrides.task),
        decode_members(env.get(GROUP_ENV)),
    )
    bar = None if multirun else ProgressBar(cfg.steps + 1, label=runs[0].run_dir.name)
    try:
        outcomes = execute_runs(runs, bar)
    except Exception as err:
        tb = traceback.format_exc()
        error = tb.strip().splitlines()[-1]
        recorded = [write_failure(run, error, tb) for run in runs]
        if not multirun:
            _exit_single_run(err, runs[0], error, recorded[0])
        for offset, run in enumerate(runs):
            log.error(
                run_line(
                    index + offset, total, run.overrides, 0.0, f"failed ({type(err).__name__})"
                )
            )
        raise
    finally:
        if bar is not None:
            bar.close()
    for offset, (run, (status, seconds)) in enumerate(zip(runs, outcomes)):
        note = (
            f" (replica group of {len(runs)})"
            if len(runs) > 1 and not status.startswith("skipped")
            else ""
        )
        log.info(run_line(index + offset, total, run.overrides, seconds, status + note))
    return [status for status, _ in outcomes]


def main() -> None:
    """The `gradsweep` command: the Hydra task, with the exit statuses of `gradsweep.cli`."""
    run_command(task)


if __name__ == "__main__":
    main()
