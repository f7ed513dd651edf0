"""`python -m gradsweep`: the Hydra app. Thin: compose, run, write, report one line per run."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from gradsweep.allocator import keep_freed_memory
from gradsweep.cli import REFUSED, RUNS_FAILED, failure_line, run_command
from gradsweep.config import ConfigValueError, register_configs
from gradsweep.experiment import DeviceUnavailableError
from gradsweep.group_plan import GROUP_ENV, POSITION_ENV, decode_members
from gradsweep.job import execute_runs
from gradsweep.progress import ProgressBar, parse_position, run_line
from gradsweep.run_plan import PlannedRun, plan_runs, write_failure

log = logging.getLogger("gradsweep")

register_configs()


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
