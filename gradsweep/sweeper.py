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

Hydra finds it through the thin plugin in `hydra_plugins.gradsweep_sweeper`,
which imports this module only when a sweep starts. Planning a sweep needs no
torch or pandas: the jobs import the run code.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType, ValueType
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf, open_dict

from gradsweep.config import EXECUTION_KEYS, ConfigValueError, validate
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
from gradsweep.progress import kept_otherwise_note

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
        super().__init__(max_batch_size=max_batch_size, params=params)
        if group_size < 1:
            raise ValueError(
                f"hydra.sweeper.group_size={group_size} is invalid: it must be an integer >= 1"
            )
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
                    where = " ".join(overrides if member is None else member)
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

    def sweep(self, arguments: list[str]) -> Any:
        """Validate all jobs, launch them batch by batch, report; exit non-zero on any failure."""
        assert self.config is not None and self.launcher is not None
        launch_batches = batches(self._plan(arguments), self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        for batch in launch_batches:
            self.validate_batch_is_legal(batch)
        start = time.perf_counter()
        returns: list[Sequence[JobReturn]] = []
        initial_job_idx = 0
        for batch in launch_batches:
            returns.append(self.launcher.launch(batch, initial_job_idx=initial_job_idx))
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
            run_dir = (
                result.hydra_cfg.hydra.runtime.output_dir if result.hydra_cfg is not None else "?"
            )
            error = failed_job_error(result)
            log.error(
                f"failed: {' '.join(filter_overrides(result.overrides))}: "
                f"{type(error).__name__}: {error} (traceback in {run_dir}/FAILED.txt)"
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
