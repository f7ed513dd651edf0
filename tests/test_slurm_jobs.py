"""gradsweep.slurm_jobs: job states from squeue / sacct output, and waiting that always ends."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from gradsweep.slurm_jobs import SlurmStates, parse_states, task_ids, wait_for_jobs


@pytest.mark.parametrize(
    ("job_id", "expected"),
    [
        ("12", ["12"]),
        ("12_3", ["12_3"]),
        ("12_[3-5%2]", ["12_3", "12_4", "12_5"]),
        ("12_[1,4-5]", ["12_1", "12_4", "12_5"]),
    ],
)
def test_task_ids_expand_array_ranges(job_id: str, expected: list[str]) -> None:
    assert task_ids(job_id) == expected


def test_parse_states_reads_squeue_and_sacct_lines() -> None:
    squeue = "5_1|PENDING\n5_0|RUNNING\n7|COMPLETING\n"
    assert parse_states(squeue) == {"5_1": "PENDING", "5_0": "RUNNING", "7": "COMPLETING"}
    sacct = "9_0|CANCELLED by 0\n9_0.batch|CANCELLED\n9_[1-2%1]|CANCELLED by 0\n\n"
    assert parse_states(sacct) == {"9_0": "CANCELLED", "9_1": "CANCELLED", "9_2": "CANCELLED"}


class FakeSlurm:
    """Answers squeue and sacct from canned (status, stdout, stderr); records the command lines."""

    def __init__(self, squeue: tuple[int, str, str], sacct: tuple[int, str, str]) -> None:
        self.answers = {"squeue": squeue, "sacct": sacct}
        self.calls: list[list[str]] = []

    def __call__(self, command: list[str], **_: object) -> subprocess.CompletedProcess:
        self.calls.append(command)
        code, out, err = self.answers[command[0]]
        return subprocess.CompletedProcess(command, code, out, err)


def test_states_come_from_squeue_and_sacct_only_for_what_squeue_forgot() -> None:
    slurm = FakeSlurm((0, "5_0|RUNNING\n", ""), (0, "5_1|COMPLETED\n", ""))
    states = SlurmStates(run=slurm)
    assert states(["5_0", "5_1", "5_2"]) == {"5_0": "RUNNING", "5_1": "COMPLETED"}
    assert slurm.calls[0][:1] == ["squeue"] and slurm.calls[0][-2:] == ["-j", "5"]
    assert slurm.calls[1][0] == "sacct"
    slurm.calls.clear()
    assert states(["5_0"]) == {"5_0": "RUNNING"}
    assert [c[0] for c in slurm.calls] == ["squeue"]


def test_squeue_invalid_job_id_means_forgotten_and_disabled_sacct_is_asked_once() -> None:
    slurm = FakeSlurm(
        (1, "", "slurm_load_jobs error: Invalid job id specified"),
        (1, "", "Slurm accounting storage is disabled"),
    )
    states = SlurmStates(run=slurm)
    assert states(["5_0"]) == {}
    assert states.sacct_error == "Slurm accounting storage is disabled"
    assert states(["5_0"]) == {}
    assert [c[0] for c in slurm.calls] == ["squeue", "sacct", "squeue"]


def test_squeue_failure_is_no_answer() -> None:
    slurm = FakeSlurm(
        (1, "", "slurm_load_jobs error: Unable to contact slurm controller"), (0, "", "")
    )
    states = SlurmStates(run=slurm)
    assert states(["5_0"]) is None
    assert "Unable to contact" in states.error


def test_missing_squeue_is_no_answer() -> None:
    def missing(command: list[str], **_: object) -> subprocess.CompletedProcess:
        raise FileNotFoundError(command[0])

    states = SlurmStates(run=missing)
    assert states(["5_0"]) is None
    assert states.error == "squeue: squeue"


@dataclass
class FakePaths:
    result_pickle: Path


@dataclass
class FakeJob:
    job_id: str
    paths: FakePaths


class ScriptedStates:
    """States per call from a script (the last entry repeats); None entries mean no answer."""

    def __init__(self, script: Sequence[dict[str, str] | None]) -> None:
        self.script = list(script)
        self.error = "controller down"
        self.sacct_error = "Slurm accounting storage is disabled"
        self.calls = 0

    def __call__(self, tasks: Sequence[str]) -> dict[str, str] | None:
        answer = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return answer


class FakeTime:
    """A clock that moves only when slept on; `actions[t]` run once it reaches t (files appear)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.actions: dict[float, list] = {}

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for at in [t for t in self.actions if t <= self.now]:
            for action in self.actions.pop(at):
                action()


def _jobs(tmp_path: Path, *ids: str) -> list[FakeJob]:
    return [FakeJob(i, FakePaths(tmp_path / f"{i}_result.pkl")) for i in ids]


def _wait(jobs, states, fake: FakeTime, **kw):
    kw.setdefault("silence_limit_s", 3600.0)
    return wait_for_jobs(jobs, states, clock=fake.clock, sleep=fake.sleep, **kw), fake.now


def test_results_end_the_wait_and_cancelled_jobs_fail_after_the_grace(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path, "5_0", "5_1", "5_2")
    fake = FakeTime()
    fake.actions[6.0] = [lambda: jobs[0].paths.result_pickle.touch()]
    states = ScriptedStates(
        [{"5_0": "RUNNING", "5_1": "PENDING", "5_2": "PENDING"}]
        + [{"5_0": "RUNNING", "5_1": "CANCELLED", "5_2": "CANCELLED"}]
    )
    outcome, elapsed = _wait(jobs, states, fake, grace_s=15.0)
    assert outcome[0] is None
    assert outcome[1] == outcome[2].replace("5_2", "5_1")
    assert outcome[1] == "Slurm job 5_1 ended CANCELLED without a result"
    assert 15.0 <= elapsed <= 20.0


def test_a_result_that_appears_within_the_grace_wins(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path, "5_0")
    fake = FakeTime()
    fake.actions[10.0] = [lambda: jobs[0].paths.result_pickle.touch()]
    outcome, _ = _wait(jobs, ScriptedStates([{"5_0": "COMPLETED"}]), fake, grace_s=15.0)
    assert outcome == [None]


def test_a_job_slurm_forgot_is_lost_and_says_why_sacct_could_not_tell(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path, "5_0")
    outcome, elapsed = _wait(jobs, ScriptedStates([{"5_0": "RUNNING"}, {}]), FakeTime())
    assert outcome == [
        "Slurm job 5_0 is no longer known to Slurm and left no result"
        " (sacct: Slurm accounting storage is disabled)"
    ]
    assert elapsed < 30.0


def test_requeued_job_is_waited_for_again(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path, "5_0")
    fake = FakeTime()
    fake.actions[60.0] = [lambda: jobs[0].paths.result_pickle.touch()]
    script = [{"5_0": "RUNNING"}, {"5_0": "PREEMPTED"}, {"5_0": "PENDING"}, {"5_0": "RUNNING"}]
    outcome, elapsed = _wait(jobs, ScriptedStates(script), fake, grace_s=15.0)
    assert outcome == [None]
    assert elapsed >= 60.0


def test_silent_slurm_fails_the_jobs_after_the_time_limit(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path, "5_0")
    outcome, elapsed = _wait(
        jobs, ScriptedStates([{"5_0": "RUNNING"}, None]), FakeTime(), silence_limit_s=120.0
    )
    assert outcome[0].startswith("Slurm has not answered for 12")
    assert "controller down" in outcome[0]
    assert 120.0 <= elapsed <= 125.0


def test_polls_back_off_to_the_cap(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path, "5_0")
    fake = FakeTime()
    fake.actions[300.0] = [lambda: jobs[0].paths.result_pickle.touch()]
    states = ScriptedStates([{"5_0": "RUNNING"}])
    outcome, _ = _wait(jobs, states, fake, poll_max_s=30.0)
    assert outcome == [None]
    assert 10 <= states.calls <= 16  # 0, 2, 4, 8, 16, 30, 30, ... s apart over 300 s
