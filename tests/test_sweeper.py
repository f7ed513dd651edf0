"""The sweeper in real multiruns: launchers, resume, failure isolation, replica groups, progress."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    REPO,
    assert_same_sweep,
    mounted_tmpfs,
    run_sweep,
    stats_files,
    sweep_cmd,
)

from gradsweep.config import RunConfig, run_dirname, run_values
from gradsweep.store import FAILURE_FILE, read_run

SWEEP = [
    "act=sigmoid,relu",
    "depth=3,6",
    "batchnorm=false,true",
    "steps=40",
    "clip=1.0",
    "optimizer=adam",
]
N_RUNS = 8


@pytest.fixture(scope="module")
def reference_sweep(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess]:
    """The SWEEP run once, uninterrupted, with the basic launcher."""
    sweep_dir = tmp_path_factory.mktemp("reference")
    return sweep_dir, run_sweep(sweep_dir, *SWEEP)


def test_basic_sweep_prints_one_line_per_run_and_a_summary(reference_sweep):
    sweep_dir, proc = reference_sweep
    lines = [line for line in proc.stdout.splitlines() if "] act=" in line and "s  ok" in line]
    assert len(lines) == N_RUNS
    assert "[1/8] act=sigmoid depth=3 batchnorm=False steps=40 clip=1.0 optimizer=adam" in lines[0]
    assert f"{N_RUNS} runs in" in proc.stdout and f"{N_RUNS} ok" in proc.stdout
    assert len(stats_files(sweep_dir)) == N_RUNS


@pytest.mark.parametrize(
    "launcher", ["joblib", pytest.param("submitit_local", marks=pytest.mark.slow)]
)
def test_launchers_write_identical_statistics(reference_sweep, tmp_path, launcher):
    run_sweep(tmp_path, *SWEEP, f"hydra/launcher={launcher}")
    assert_same_sweep(reference_sweep[0], tmp_path)


def test_resume_after_sigkill_equals_uninterrupted_sweep(reference_sweep, tmp_path):
    proc = subprocess.Popen(
        sweep_cmd(tmp_path, *SWEEP),
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not stats_files(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(stats_files(tmp_path))
    assert 1 <= done_before < N_RUNS, "the sweep must be killed part-way"
    resumed = run_sweep(tmp_path, *SWEEP)
    assert f"{done_before} skipped" in resumed.stdout
    assert_same_sweep(reference_sweep[0], tmp_path)
    assert not list(tmp_path.glob("*/.*.tmp")) and not list(tmp_path.glob("*/FAILED.txt"))


@pytest.mark.parametrize(
    "launcher",
    [
        "basic",
        pytest.param("joblib", marks=pytest.mark.slow),
        pytest.param("submitit_local", marks=pytest.mark.slow),
    ],
)
def test_failed_run_is_recorded_and_others_still_run(tmp_path, launcher):
    overrides = ["device=cpu,cuda,auto", "steps=2"] + (
        [] if launcher == "basic" else [f"hydra/launcher={launcher}"]
    )
    proc = run_sweep(tmp_path, *overrides, expect_rc=1)
    assert "gradsweep: 1 of 3 runs failed; see FAILED.txt in their run dirs" in proc.stderr
    assert "failed: device=cuda steps=2: DeviceUnavailableError" in proc.stdout
    assert "Traceback" not in proc.stderr
    done = stats_files(tmp_path)
    assert len(done) == 2
    (failed,) = tmp_path.glob("*/FAILED.txt")
    assert failed.parent.name not in done
    text = failed.read_text()
    assert text.startswith("status: failed\nerror: ")
    assert "DeviceUnavailableError: device=cuda was requested" in text
    assert "overrides: device=cuda steps=2" in text and "Traceback (most recent call last)" in text
    if launcher == "basic":
        rerun = run_sweep(tmp_path, *overrides, expect_rc=1)
        assert "2 skipped" in rerun.stdout and "1 failed" in rerun.stdout


def test_single_run_user_error_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "gradsweep", "device=cuda", f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("gradsweep: error: device=cuda was requested")
    assert (tmp_path / "FAILED.txt").read_text().startswith("status: failed\n")


def test_replica_groups_write_what_separate_runs_write(tmp_path):
    overrides = [
        "act=tanh",
        "seed=1,2,3",
        "init_scale=0.5,2",
        "steps=20",
        "clip=0.5",
        "optimizer=adam",
    ]
    run_sweep(tmp_path / "separate", *overrides)
    proc = run_sweep(tmp_path / "grouped", *overrides, "hydra.sweeper.group_size=4")
    assert (
        proc.stdout.count("(replica group of 4)") == 4
        and proc.stdout.count("(replica group of 2)") == 2
    )
    assert "Launching 2 jobs" in proc.stdout
    separate, grouped = stats_files(tmp_path / "separate"), stats_files(tmp_path / "grouped")
    assert_same_sweep(tmp_path / "separate", tmp_path / "grouped", exact=False)
    for name, path in grouped.items():
        assert (path.parent / ".hydra" / "config.yaml").exists()
        assert (
            read_run(path)["init_scale"].iloc[0] == read_run(separate[name])["init_scale"].iloc[0]
        )
    resumed = run_sweep(tmp_path / "grouped", *overrides, "hydra.sweeper.group_size=4")
    assert "6 skipped" in resumed.stdout


def test_slurm_preset_composes_with_documented_fields(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradsweep",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=a100",
            "--cfg",
            "hydra",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for line in (
        "SlurmLauncher",
        "partition: a100",
        "gpus_per_task: 1",
        "timeout_min: 60",
        "array_parallelism: 32",
    ):
        assert line in text


def _one_line_failures(proc: subprocess.CompletedProcess) -> list[str]:
    """The sweep's per-run failure lines; no traceback and no logging error anywhere."""
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output and "Logging error" not in output, output[-3000:]
    return [line for line in proc.stdout.splitlines() if "] failed: " in line]


@pytest.mark.parametrize("launcher", ["basic", pytest.param("joblib", marks=pytest.mark.slow)])
def test_a_read_only_run_dir_fails_that_run_alone(tmp_path: Path, launcher: str) -> None:
    overrides = ["act=sigmoid,relu,tanh", "steps=2"] + (
        [] if launcher == "basic" else [f"hydra/launcher={launcher}"]
    )
    relu = run_dirname({**run_values(RunConfig()), "act": "relu", "steps": 2})
    with mounted_tmpfs(tmp_path / relu, read_only=True):
        proc = run_sweep(tmp_path, *overrides, expect_rc=1)
    assert "gradsweep: 3 runs in" in proc.stdout and "1 failed, 2 ok" in proc.stdout
    failures = _one_line_failures(proc)
    assert failures and all(
        "act=relu steps=2: ValueError: Unable to configure" in f for f in failures
    )
    assert "Read-only file system" in failures[-1]
    assert failures[-1].endswith("(no FAILED.txt could be written)")
    assert sorted(stats_files(tmp_path)) == sorted(
        run_dirname({**run_values(RunConfig()), "act": act, "steps": 2})
        for act in ("sigmoid", "tanh")
    )


def test_a_full_disk_fails_the_runs_that_do_not_fit_and_the_sweep_reports(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", size="150k") as disk:
        proc = run_sweep(disk, "act=sigmoid,relu,tanh", "depth=3,5", "steps=2", expect_rc=1)
        complete = stats_files(disk)
        records = {p.parent.name: p.read_text() for p in disk.glob(f"*/{FAILURE_FILE}")}
    reported = [line for line in _one_line_failures(proc) if "FAILED.txt" in line]
    failed = int(proc.stderr.split("gradsweep: ")[-1].split(" of 6 runs failed")[0])
    assert "gradsweep: 6 runs in" in proc.stdout and f"{failed} failed" in proc.stdout
    assert 1 <= len(complete) and 1 <= failed and len(complete) + failed == 6
    assert len(reported) == failed and all("No space left on device" in f for f in reported)
    assert all(text.startswith("status: failed\nerror: ") for text in records.values())
    assert not set(records) & set(complete)


def _limit_address_space() -> None:
    """8 GiB of address space: torch starts, a 100000 x 100000 float32 weight (40 GB) cannot."""
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


def test_a_run_that_cannot_allocate_its_network_fails_alone(tmp_path: Path) -> None:
    proc = subprocess.run(
        sweep_cmd(tmp_path, "width=20,100000", "depth=3", "steps=1"),
        cwd=REPO,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        preexec_fn=_limit_address_space,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1
    assert "gradsweep: 2 runs in" in proc.stdout and "1 failed, 1 ok" in proc.stdout
    (failure,) = _one_line_failures(proc)
    assert "width=100000 depth=3 steps=1: RuntimeError: " in failure
    assert "can't allocate memory" in failure and "(traceback in " in failure
    (record,) = tmp_path.glob(f"*/{FAILURE_FILE}")
    assert record.read_text().startswith("status: failed\nerror: RuntimeError: ")
