"""A job that failed outside its task: a failed JobReturn with the error, and its FAILED.txt.

Such a job never ran its task, or never reported back: its launcher raised for it,
Hydra's run_job could not write the job's `.hydra/` record or log (a read-only or full
run dir), or it ended without a result (a Slurm job cancelled or lost). Its task
recorded nothing, so this records the failure as a failed run does: FAILED.txt in each
of the job's run dirs (its replica-group members' too) that can be written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig, OmegaConf, open_dict

from gradsweep.group_plan import GROUP_ENV, decode_members
from gradsweep.run_plan import plan_runs, write_failure

log = logging.getLogger(__name__)


def job_config(owner: Any, overrides: Sequence[str], job_num: int) -> DictConfig:
    """The job's composed config, its run dir in hydra.runtime.output_dir as run_job sets it.

    `owner` is the sweep's launcher or sweeper: its `hydra_context` and sweep `config`.
    """
    cfg = owner.hydra_context.config_loader.load_sweep_config(owner.config, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.num = job_num
        run_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        cfg.hydra.runtime.output_dir = str(run_dir.absolute())
    return cfg


def write_failures(cfg: DictConfig, overrides: Sequence[str], error: str, details: str) -> None:
    """FAILED.txt, as a failed run writes it, in each run dir of the job without a complete file."""
    runs = plan_runs(
        cfg,
        Path(cfg.hydra.runtime.output_dir),
        filter_overrides(overrides),
        decode_members(cfg.hydra.job.env_set.get(GROUP_ENV)),
    )
    for run in runs:
        write_failure(run, error, details)


def failed_return(
    owner: Any, overrides: Sequence[str], job_num: int, error: BaseException, details: str
) -> JobReturn:
    """A failed JobReturn carrying `error`, and FAILED.txt in the job's run dirs.

    Where the job's config cannot be composed again (so its run dirs are unknown),
    the JobReturn has no config and no FAILED.txt is written.
    """
    try:
        cfg = job_config(owner, overrides, job_num)
    except Exception as err:
        log.warning(f"no FAILED.txt for {' '.join(filter_overrides(overrides))}: {err}")
        return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=error)
    write_failures(cfg, overrides, f"{type(error).__name__}: {error}", details)
    return JobReturn(
        overrides=list(overrides),
        cfg=OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]),
        hydra_cfg=OmegaConf.masked_copy(cfg, ["hydra"]),
        working_dir=os.getcwd(),
        task_name=str(cfg.hydra.job.name),
        status=JobStatus.FAILED,
        _return_value=error,
    )
