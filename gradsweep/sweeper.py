"""gradsweep's sweeper (`hydra/sweeper=gradsweep`), a basic sweeper that

- checks every job's values before the first job starts: Hydra already
  rejects unknown keys and bad choices while composing each job; this adds
  the numeric ranges of `gradsweep.config.validate`, so that `depth=5,0`
  fails at once instead of after the first run. Composition is Hydra's main
  per-job cost, so jobs that differ only in plain `key=value` overrides share
  one composed config, and their values are applied to a typed copy of its
  app part by Hydra's own override code, which raises the errors composition
  would (unknown key, wrong type, bad choice);
- optionally packs configurations that differ only in seed / init_scale into
  replica groups (`hydra.sweeper.group_size`), one stacked job per group that
  still writes one run dir and parquet file per configuration;
- refuses a sweep over `threads` or `redo_mismatched`, which would write the
  same runs once per value (they are not part of a run's identity);
- tells each job its position in the sweep, so it can print index/total;
- runs every job even when some fail, then lists the failures and exits
  non-zero (BasicSweeper stops at the first failed job of a batch), and says
  how many complete runs were kept though written otherwise
  (`gradsweep.execution`).
  non-zero (BasicSweeper stops at the first failed job of a batch); a job
  that fails outside its task, so that the launcher raises (Hydra cannot
  write its run dir), fails alone too.

Hydra finds it through the thin plugin in `hydra_plugins.gradsweep_sweeper`,
which imports this module only when a sweep starts. Planning a sweep needs no
torch or pandas: the jobs import the run code.
"""

from __future__ import annotations

import copy
import logging
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType, ValueType
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf, open_dict

from gradsweep.cli import CannotStart, one_line
from gradsweep.config import EXECUTION_KEYS, ConfigValueError, check_sweeper_options, validate
from gradsweep.group_plan import (
    GROUP_ENV,
    POSITION_ENV,
    JobPlan,
    encode_members,
    member_config,
    plan_groups,
)
from gradsweep.hydra_internals import (
    BasicSweeper,
    apply_value_overrides,
    batches,
    compose_job_config,
    expand_sweep,
    failed_job_error,
    is_config_group,
    sweeper_params,
)
from gradsweep.job_failure import failed_return
from gradsweep.progress import kept_otherwise_note
from gradsweep.run_plan import plan_runs
from gradsweep.schema import FAILURE_FILE

log = logging.getLogger(__name__)

RUN_DIRNAME_SUBDIR = "${run_dirname:}"


def refuse_swept_execution_keys(overrides: Sequence[Override]) -> None:
    """One line for a sweep over `threads` or `redo_mismatched`, which are not part of a run."""
    for override in overrides:
        if override.is_sweep_override() and override.key_or_group in EXECUTION_KEYS:
            raise ConfigCompositionException(
                f"{override.input_line} cannot be swept: {override.key_or_group} is not part of a "
                "run's identity, so every value would write the same runs into the same run dirs; "
                "run one sweep per value, each into its own hydra.sweep.dir"
            )


class GradsweepSweeper(BasicSweeper):
    """BasicSweeper with range checks, replica groups, sweep positions and failure isolation."""

    def __init__(
        self,
        max_batch_size: int | None,
        params: dict[str, str] | None = None,
        group_size: int = 1,
    ) -> None:
        check_sweeper_options(group_size, max_batch_size)
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.group_size = group_size
        self.plans: list[JobPlan] = []
        self._members: dict[tuple, list[list[str]]] = {}
        self._composed: dict[tuple, DictConfig] = {}

    def _is_plain_value(self, override: Override) -> bool:
        """`key=value` on the app config: no config group, no hydra key, no +/~, no sweep."""
        assert self.hydra_context is not None
        return (
            override.type == OverrideType.CHANGE
            and override.value_type == ValueType.ELEMENT
            and override.package is None
            and not override.is_hydra_override()
            and not is_config_group(self.hydra_context.config_loader, override.key_or_group)
        )

    def _job_config(self, overrides: Sequence[str]) -> DictConfig:
        """A job's app config (no `hydra` node); composes only for new structural overrides."""
        assert self.hydra_context is not None and self.config is not None
        loader = self.hydra_context.config_loader
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(list(overrides))
        plain = [self._is_plain_value(o) for o in parsed]
        values = [o for o, is_plain in zip(parsed, plain) if is_plain]
        # hydra.job.env_set.* (each job's position and group) cannot change the app config
        structural = tuple(
            o.input_line
            for o, is_plain in zip(parsed, plain)
            if not is_plain and not o.key_or_group.startswith("hydra.job.env_set.")
        )
        if structural not in self._composed:
            app = compose_job_config(loader, self.config, structural)
            with open_dict(app):
                del app["hydra"]
            self._composed[structural] = app
        job_cfg = copy.deepcopy(self._composed[structural])
        apply_value_overrides(values, job_cfg)
        return job_cfg

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Range-check each job and every replica-group member it carries, before any job runs."""
        for overrides in batch:
            job_cfg = self._job_config(overrides)
            members = self._members.get(tuple(overrides), [])
            for cfg, member in [(job_cfg, None)] + [
                (member_config(job_cfg, m), m) for m in members
            ]:
                try:
                    validate(cfg)
                except ConfigValueError as err:
                    where = " ".join(filter_overrides(overrides) if member is None else member)
                    raise ConfigCompositionException(f"{err} (job overrides: {where})") from None

    def _plan(self, arguments: list[str]) -> list[list[str]]:
        """Expand the sweep, pack replica groups, add each job's position (and group)."""
        assert self.hydra_context is not None and self.config is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides(sweeper_params(self) + list(arguments))
        refuse_swept_execution_keys(parsed)
        jobs = expand_sweep(parsed)
        if self.group_size > 1:
            subdir = OmegaConf.to_container(self.config.hydra.sweep)["subdir"]
            if subdir != RUN_DIRNAME_SUBDIR:
                raise ConfigCompositionException(
                    f"hydra.sweeper.group_size>1 needs hydra.sweep.subdir={RUN_DIRNAME_SUBDIR} "
                    f"(got {subdir!r}): group members are written to the run dirs their own "
                    "jobs would use"
                )
        self.plans = plan_groups(jobs, self.group_size)
        total = sum(plan.n_runs for plan in self.plans)
        position = 1
        launched = []
        for plan in self.plans:
            job = plan.overrides + [f"hydra.job.env_set.{POSITION_ENV}={position}/{total}"]
            if plan.members:
                job.append(f"hydra.job.env_set.{GROUP_ENV}='{encode_members(plan.members)}'")
            self._members[tuple(job)] = plan.members
            launched.append(job)
            position += plan.n_runs
        return launched

    def _create_sweep_dir(self) -> None:
        """The sweep dir and its multirun.yaml, or one line saying why they cannot be written."""
        assert self.config is not None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        except OSError as err:
            raise CannotStart(
                f"cannot write the sweep dir {sweep_dir}: {err.strerror or err}"
            ) from None

    def _restore_logging(self) -> None:
        """Hydra's console logging, as launchers set it between jobs.

        A job that failed inside Hydra's run_job leaves logging writing to its own
        log file, in the run dir that failed (full, read-only).
        """
        assert self.config is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

    def _launch(self, batch: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
        """Launch a batch; if the launcher raises, its jobs one at a time, each failing alone.

        A launcher raises for the whole batch when one job fails outside its task
        (Hydra cannot write its `.hydra/` record or log, a joblib worker dies): the
        jobs are then launched again one by one; runs completed meanwhile are skipped
        but counted with their own status, and a job the launcher raises for becomes
        a failed run.
        """
        assert self.launcher is not None
        began = time.time()
        try:
            return list(self.launcher.launch(batch, initial_job_idx=initial_job_idx))
        except CannotStart:
            raise
        except Exception as err:
            self._restore_logging()
            log.warning(
                f"gradsweep: the launcher stopped ({one_line(err)}); launching the batch's "
                f"{len(batch)} jobs one at a time"
            )
        return [
            self._recount(job, self._launch_one(job, initial_job_idx + i), began)
            for i, job in enumerate(batch)
        ]

    def _recount(self, job: list[str], result: JobReturn, since: float) -> JobReturn:
        """A relaunched job whose runs the stopped launcher completed: their status, not skipped.

        A run file written since the batch began is this sweep's (or a concurrent
        one's) work, so it counts as its footer's status, as it would have.
        """
        if result.status != JobStatus.COMPLETED or result.hydra_cfg is None:
            return result
        runs = plan_runs(
            result.cfg,
            Path(result.hydra_cfg.hydra.runtime.output_dir),
            filter_overrides(job),
            self._members.get(tuple(job), []),
        )
        result.return_value = [
            written_status(run.stats_path, since) if status.startswith("skipped") else status
            for run, status in zip(runs, result.return_value)
        ]
        return result

    def _launch_one(self, job: list[str], idx: int) -> JobReturn:
        """One job; an exception the launcher raises becomes its failed JobReturn."""
        assert self.launcher is not None
        try:
            (result,) = self.launcher.launch([job], initial_job_idx=idx)
        except Exception as err:
            self._restore_logging()
            details = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            log.error(f"failed: {' '.join(filter_overrides(job))}: {one_line(err)}")
            return failed_return(self, job, idx, err, details)
        return result

    def sweep(self, arguments: list[str]) -> Any:
        """Validate all jobs, launch them batch by batch, report; exit non-zero on any failure."""
        assert self.config is not None and self.launcher is not None
        launch_batches = batches(self._plan(arguments), self.max_batch_size)
        for batch in launch_batches:
            self.validate_batch_is_legal(batch)
        self._create_sweep_dir()
        start = time.perf_counter()
        returns: list[Sequence[JobReturn]] = []
        initial_job_idx = 0
        for batch in launch_batches:
            returns.append(self._launch(batch, initial_job_idx))
            initial_job_idx += len(batch)
        self._report([r for results in returns for r in results], time.perf_counter() - start)
        return returns

    def _report(self, results: list[JobReturn], seconds: float) -> None:
        """One summary line; for failures, one line each and a non-zero exit."""
        counts: dict[str, int] = {}
        failed = []
        for plan, result in zip(self.plans, results):
            if result.status == JobStatus.COMPLETED:
                for status in result.return_value:
                    key = status.split(" ")[0]
                    counts[key] = counts.get(key, 0) + 1
            else:
                counts["failed"] = counts.get("failed", 0) + plan.n_runs
                failed.append(result)
        total = sum(counts.values())
        summary = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
        log.info(f"gradsweep: {total} runs in {seconds:.1f}s: {summary}")
        _note_kept_otherwise(results)
        if not failed:
            return
        for result in failed:
            error = failed_job_error(result)
            log.error(
                f"failed: {' '.join(filter_overrides(result.overrides))}: "
                f"{one_line(error)} ({_failure_record(result)})"
            )
        raise SystemExit(
            f"gradsweep: {counts['failed']} of {total} runs failed; "
            "see FAILED.txt in their run dirs"
        )


def _note_kept_otherwise(results: list[JobReturn]) -> None:
    """One line when complete runs were kept though written otherwise (`gradsweep.execution`)."""
    statuses = [
        status
        for result in results
        if result.status == JobStatus.COMPLETED
        for status in result.return_value
    ]
    note = kept_otherwise_note(statuses)
    if note is not None:
        log.warning(note)


def _failure_record(result: JobReturn) -> str:
    """Where a failed job's traceback is: its FAILED.txt, or why there is none."""
    if result.hydra_cfg is None:
        return "its run dir is unknown"
    failed = Path(result.hydra_cfg.hydra.runtime.output_dir) / FAILURE_FILE
    return f"traceback in {failed}" if failed.exists() else f"no {FAILURE_FILE} could be written"


def written_status(path: Path, since: float) -> str:
    """The footer status of a run file written since `since`; else "skipped (complete)"."""
    from gradsweep.store import read_metadata  # pyarrow, only after a launcher stopped

    try:
        if path.stat().st_mtime >= since:
            return read_metadata(path).get("status", "ok")
    except (OSError, ValueError):  # gone or unreadable since: as the task saw it
        pass
    return "skipped (complete)"
