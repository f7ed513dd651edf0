"""Where a sweep's Slurm jobs stand, and waiting until each has a result or has ended without one.

submitit reads job states from `sacct` only; on a cluster without accounting storage
`sacct` cannot answer, so a job that ends without a result (cancelled, preempted, timed
out, lost with its node) is never seen to end and the sweep waits forever. Here the
states come from `squeue`, which slurmctld answers for live jobs and for finished ones
during MinJobAge; `sacct` is asked only about jobs squeue no longer lists.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

# States after which a job runs no more (squeue --long names; sacct prints the same words).
FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)
# How long an ended (or vanished) job may take to show its result file: a file system's
# attribute cache, a requeue after preemption.
GRACE_S = 15.0
# Slurm is asked at once, then 2, 4, 8, ... s apart up to POLL_MAX_S, and again 2 s after a
# job's state changed.
POLL_MAX_S = 30.0
QUERY_TIMEOUT_S = 60.0

_ARRAY_RANGE = re.compile(r"^(\d+)_\[([\d,\-]+)(?:%\d+)?\]$")


def task_ids(job_id: str) -> list[str]:
    """The task ids a squeue/sacct JobID stands for: `12_[3-5%2]` is 12_3, 12_4 and 12_5."""
    match = _ARRAY_RANGE.match(job_id)
    if match is None:
        return [job_id]
    main, ranges = match.groups()
    ids = []
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        ids += [f"{main}_{i}" for i in range(int(first), int(last or first) + 1)]
    return ids


def parse_states(text: str) -> dict[str, str]:
    """`JOBID|STATE` lines (squeue -o %i|%T, sacct -P -o JobID,State) as {task id: STATE}.

    Job steps (`12_3.batch`) are skipped; sacct's `CANCELLED by 0` reads CANCELLED.
    """
    states = {}
    for line in text.splitlines():
        job_id, _, state = line.strip().partition("|")
        if not job_id or "." in job_id or not state.strip():
            continue
        for task in task_ids(job_id):
            states[task] = state.split()[0].upper()
    return states


Runner = Callable[..., subprocess.CompletedProcess]


class SlurmStates:
    """States of Slurm jobs by task id: squeue first, sacct for the tasks squeue has forgotten.

    Calling it returns {task id: STATE} for the tasks Slurm knows, or None when squeue
    could not answer (controller unreachable); `error` then says why.
    """

    def __init__(self, run: Runner = subprocess.run) -> None:
        self._run = run
        self.error = ""
        self.sacct_error = ""

    def _query(self, command: list[str]) -> tuple[int, str, str]:
        try:
            done = self._run(command, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as err:
            return -1, "", f"{command[0]}: {err}"
        return done.returncode, done.stdout, done.stderr.strip()

    def __call__(self, tasks: Sequence[str]) -> dict[str, str] | None:
        jobs = ",".join(sorted({task.split("_")[0] for task in tasks}))
        code, out, err = self._query(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", jobs])
        if code != 0 and "Invalid job id" not in err:
            self.error = err or f"squeue exited with status {code}"
            return None
        states = parse_states(out)
        missing = [task for task in tasks if task not in states]
        if missing and "accounting storage is disabled" not in self.sacct_error:
            command = ["sacct", "-n", "-P", "-X", "-o", "JobID,State"]
            for job in sorted({task.split("_")[0] for task in missing}):
                command += ["-j", job]
            code, out, err = self._query(command)
            self.sacct_error = "" if code == 0 else err or f"sacct exited with status {code}"
            found = parse_states(out) if code == 0 else {}
            states.update({task: found[task] for task in missing if task in found})
        return states


class StateSource(Protocol):
    """A SlurmStates, or a stand-in: states by task id, None when Slurm did not answer."""

    error: str
    sacct_error: str

    def __call__(self, tasks: Sequence[str]) -> dict[str, str] | None: ...


class _Paths(Protocol):
    @property
    def result_pickle(self) -> Path: ...


class WaitedJob(Protocol):
    """What waiting needs of a submitit job: its Slurm id and where its result file appears."""

    @property
    def job_id(self) -> str: ...

    @property
    def paths(self) -> _Paths: ...


def _result_exists(job: WaitedJob, refresh: bool = False) -> bool:
    path = job.paths.result_pickle
    if refresh:  # a network file system may cache the folder's listing
        try:
            path.parent.chmod(path.parent.stat().st_mode)
        except OSError:
            pass
    return path.exists()


def _ended(job_id: str, state: str, sacct_error: str) -> str:
    """Why a job without a result failed: its final state, or that Slurm has forgotten it."""
    if state:
        return f"Slurm job {job_id} ended {state} without a result"
    sacct = f" (sacct: {sacct_error})" if sacct_error else ""
    return f"Slurm job {job_id} is no longer known to Slurm and left no result{sacct}"


def wait_for_jobs(
    jobs: Sequence[WaitedJob],
    states: StateSource,
    *,
    silence_limit_s: float,
    grace_s: float = GRACE_S,
    poll_max_s: float = POLL_MAX_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str | None]:
    """Block until every job has a result file or has ended without one.

    Per job: None when its result file is there, else why it failed: Slurm reports a
    final state (CANCELLED, PREEMPTED, TIMEOUT, ...) or no longer knows the job, for
    `grace_s` without a result file appearing; or Slurm has not answered for
    `silence_limit_s` (the jobs' time limit). Result files are looked for every second,
    of pending jobs only when Slurm has just been asked.
    """
    outcome: dict[int, str | None] = {}
    ended_since: dict[int, float] = {}
    last_state: dict[int, str] = {}
    last_answer = next_query = clock()
    interval = 1.0
    warned = False
    while len(outcome) < len(jobs):
        now = clock()
        waiting = [i for i in range(len(jobs)) if i not in outcome]
        polled = now >= next_query
        if polled:
            answer = states([jobs[i].job_id for i in waiting])
            if answer is None:
                if not warned:
                    log.warning(f"Slurm does not answer ({states.error}); waiting")
                    warned = True
            else:
                last_answer = now
                for i in waiting:
                    state = answer.get(jobs[i].job_id) or ""
                    if last_state.get(i) != state:
                        interval = 1.0
                    last_state[i] = state
                    if not state or state in FINAL_STATES:
                        ended_since.setdefault(i, now)
                    else:
                        ended_since.pop(i, None)
            interval = min(interval * 2, poll_max_s)
            next_query = now + interval
        for i in waiting:
            job = jobs[i]
            if (polled or last_state.get(i) != "PENDING") and _result_exists(job):
                outcome[i] = None
            elif i in ended_since and now - ended_since[i] >= grace_s:
                if _result_exists(job, refresh=True):
                    outcome[i] = None
                else:
                    outcome[i] = _ended(job.job_id, last_state[i], states.sacct_error)
            elif now - last_answer >= silence_limit_s:
                outcome[i] = (
                    f"Slurm has not answered for {now - last_answer:.0f} s "
                    f"({states.error}); job {job.job_id} left no result"
                )
        if len(outcome) < len(jobs):
            sleep(1.0)
    return [outcome[i] for i in range(len(jobs))]
