"""gradsweep's Slurm launch: one array job per batch, waited for by job state, never forever.

hydra-submitit-launcher's SlurmLauncher submits the same array, then waits on each job's
result through submitit, which reads states from `sacct` only: where `sacct` cannot
answer (no accounting storage) a cancelled, preempted or lost job is waited for forever,
and where it can, the job's missing result raises out of the launcher and stops the whole
sweep. Here waiting uses `gradsweep.slurm_jobs` (squeue, then sacct), and a job that ended
without a result becomes a failed run: a failed JobReturn with the reason, and FAILED.txt
in each of its run dirs that has no complete run file, so the sweep reports it, exits
non-zero, and a rerun of the same command redoes it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from omegaconf import OmegaConf

from gradsweep.cli import CannotStart
from gradsweep.job_failure import failed_return
from gradsweep.slurm_jobs import SlurmStates, wait_for_jobs

log = logging.getLogger(__name__)


class SlurmJobEnded(RuntimeError):
    """A Slurm job that ended without a result: cancelled, preempted, timed out, lost."""


def make_executor(params: dict[str, Any]) -> Any:
    """A submitit Slurm executor set from SlurmQueueConf fields, as hydra-submitit-launcher does."""
    import submitit  # imported when a sweep launches, never at plugin discovery
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = dict(params)
    init = {"folder": params.pop("submitit_folder")}
    if "max_num_timeout" in params:
        init["slurm_max_num_timeout"] = params.pop("max_num_timeout")
    executor = submitit.AutoExecutor(cluster="slurm", **init)
    common = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{key if key in common else f"slurm_{key}": value for key, value in params.items()}
    )
    return executor


def failed(
    launcher: Any, overrides: Sequence[str], job_num: int, reason: str, details: str
) -> JobReturn:
    """A failed JobReturn for a job that left no result, and FAILED.txt in its run dirs."""
    return failed_return(launcher, overrides, job_num, SlurmJobEnded(reason), details)


def _refusal(stderr: str) -> str:
    """sbatch's reason in one line; for a bad partition, the cluster's partitions."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    reason = lines[0] if lines else "sbatch failed"
    if "partition" in reason.lower():
        try:
            names = subprocess.run(
                ["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=60
            ).stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            names = []
        if names:
            reason += f" (partitions: {', '.join(sorted(set(names)))})"
    return reason


def submit(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    """Submit the batch as one Slurm array; one line, not a traceback, when Slurm refuses it."""
    from submitit.core.utils import FailedJobError

    missing = [tool for tool in ("sbatch", "srun", "squeue") if shutil.which(tool) is None]
    if missing:
        raise CannotStart(
            f"hydra/launcher=slurm needs Slurm's {', '.join(missing)} on PATH "
            "(start the sweep on a machine that can submit jobs)"
        )
    executor = make_executor(launcher.params)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if "mode" in launcher.config.hydra.sweep:
        os.chmod(sweep_dir, mode=int(str(launcher.config.hydra.sweep.mode), 8))
    job_params = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        job_params.append(
            (list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
        )
    try:
        jobs = executor.map_array(launcher, *zip(*job_params))
    except FailedJobError as err:
        raise CannotStart(f"Slurm refused the sweep's jobs: {_refusal(str(err))}") from None
    log.info(
        f"Slurm job {jobs[0].job_id.split('_')[0]}: {len(jobs)} task(s), logs in "
        f"{jobs[0].paths.folder.parent}"
    )
    return jobs


def launch(
    launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> list[JobReturn]:
    """Submit the batch as one Slurm array, wait for every job, return one JobReturn per job."""
    from submitit.core.utils import pickle_load

    assert launcher.config is not None and launcher.hydra_context is not None
    jobs = submit(launcher, job_overrides, initial_job_idx)
    ends = wait_for_jobs(
        jobs, SlurmStates(), silence_limit_s=60.0 * float(launcher.params["timeout_min"])
    )
    returns = []
    for idx, (overrides, job, end) in enumerate(
        zip(job_overrides, jobs, ends), start=initial_job_idx
    ):
        log_file = job.paths.stdout
        if end is not None:
            returns.append(failed(launcher, overrides, idx, end, f"log: {log_file}"))
            continue
        try:
            outcome, value = pickle_load(job.paths.result_pickle)
        except Exception as err:  # unreadable result: as good as none
            outcome, value = "error", f"{type(err).__name__}: {err}"
        if outcome == "success":
            returns.append(value)
            continue
        lines = str(value).strip().splitlines()
        reason = f"Slurm job {job.job_id} failed outside the run: {lines[-1] if lines else '?'}"
        returns.append(failed(launcher, overrides, idx, reason, f"{value}\nlog: {log_file}"))
    return returns
