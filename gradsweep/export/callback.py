"""A Hydra callback that exports each run as its job ends: `hydra/callbacks=export_tensorboard`.

It runs where the job runs (in the sweep's process, or in a launcher's worker)
and exports every complete run file of the job: its own run and its replica
group's members (`run_plan.plan_runs`). An export that fails is reported in
one line and never fails the run, which is already written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gradsweep.group_plan import GROUP_ENV, decode_members
from gradsweep.run_plan import plan_runs

log = logging.getLogger("gradsweep.export")

TARGETS = ("tensorboard", "wandb")


class ExportRuns(Callback):
    """Export each finished run to `to` (tensorboard or wandb).

    `out` is the TensorBoard log dir or the directory W&B writes its wandb/ into;
    unset, the sweep dir (a multirun) or the run dir (a single run), with
    `tensorboard/` below it for TensorBoard. `project` is the W&B project.
    """

    def __init__(self, to: str, out: str | None = None, project: str = "gradsweep") -> None:
        if to not in TARGETS:
            raise ValueError(
                f"export callback: to={to!r} is not valid; choose one of: {', '.join(TARGETS)}"
            )
        self.to, self.out, self.project = to, out, project

    def destination(self, config: DictConfig) -> Path:
        """Where this job's runs are exported."""
        if self.out is not None:
            return Path(self.out)
        multirun = config.hydra.mode == RunMode.MULTIRUN
        base = Path(config.hydra.sweep.dir if multirun else config.hydra.runtime.output_dir)
        return base / "tensorboard" if self.to == "tensorboard" else base

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        try:
            self._export(config)
        except Exception as err:
            line = f"{type(err).__name__}: {err}".strip().splitlines()[0]
            log.warning(f"gradsweep.export: {self.to} export failed (the run is kept): {line}")

    def _export(self, config: DictConfig) -> None:
        from gradsweep.export import to_tensorboard, to_wandb
        from gradsweep.export.series import read_series
        from gradsweep.store import is_complete

        module = to_tensorboard if self.to == "tensorboard" else to_wandb
        module.check_installed()
        app = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
        runs = plan_runs(
            app,
            Path(config.hydra.runtime.output_dir),
            list(config.hydra.overrides.task),
            decode_members(config.hydra.job.env_set.get(GROUP_ENV)),
        )
        out = self.destination(config)
        for run in runs:
            if not is_complete(run.stats_path):
                continue
            series = read_series(run.stats_path)
            if self.to == "tensorboard":
                out.mkdir(parents=True, exist_ok=True)
                to_tensorboard.write_run(series, out)
            else:
                to_wandb.write_run(series, self.project, out)
            log.info(f"{run.run_dir.name} exported to {self.to} in {out}")
