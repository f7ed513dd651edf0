"""The sweeper in real multiruns: launchers, resume, failure isolation, replica groups, progress."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, assert_same_sweep, run_sweep, stats_files, sweep_cmd

from gradsweep.store import read_run

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
