"""The hydra/launcher=slurm preset and its launcher (gradsweep.slurm_launch), on a real Slurm.

The slow test brings up a single-node Slurm with benchmarks/slurm_single_node.sh (root and
apt on Debian; skipped where that cannot work), cancels a sweep's array job mid-run, and
checks that the sweep ends, reports the cancelled runs failed, and that rerunning the same
command completes them with the same bits as the basic launcher.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, assert_same_run_file, run_cli

SCRIPT = REPO / "benchmarks" / "slurm_single_node.sh"
SWEEP = ("act=sigmoid,relu", "depth=3", "seed=0,1", "steps=3000")
# Slurm's KillWait (30 s: a cancelled job's processes get SIGKILL that long after SIGTERM),
# then a state poll (at most 30 s apart) and the launcher's grace for a result (15 s).
CANCEL_TO_EXIT_BOUND_S = 150.0


def test_preset_uses_the_gradsweep_launcher_and_keeps_every_slurm_field(tmp_path: Path) -> None:
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    proc = run_cli(
        "hydra/launcher=slurm",
        "hydra.launcher.partition=cpu",
        "hydra.launcher.gpus_per_task=null",
        "hydra.launcher.account=proj",
        "+hydra.launcher.additional_parameters.reservation=maint",
        "--cfg",
        "hydra",
        "-p",
        "hydra.launcher",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert (
        "_target_: hydra_plugins.gradsweep_launcher.slurm_launcher.GradsweepSlurmLauncher" in text
    )
    keys = set(re.findall(r"^(\w+):", text, flags=re.MULTILINE))
    assert keys == {f.name for f in dataclasses.fields(SlurmQueueConf)}
    for line in ("partition: cpu", "gpus_per_task: null", "account: proj", "  reservation: maint"):
        assert line in text.splitlines()


def test_plugin_module_imports_neither_torch_nor_submitit_nor_pandas() -> None:
    code = (
        "import sys, hydra_plugins.gradsweep_launcher.slurm_launcher as m\n"
        "assert hasattr(m, 'GradsweepSlurmLauncher')\n"
        "print(sorted(k for k in ('torch', 'submitit', 'pandas', 'gradsweep') if k in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_sweep_without_slurm_commands_stops_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gradsweep", "-m", "act=sigmoid,relu", "hydra/launcher=slurm"],
        cwd=tmp_path,
        env={**os.environ, "PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "gradsweep: error: hydra/launcher=slurm needs Slurm's sbatch, srun, squeue on PATH "
        "(start the sweep on a machine that can submit jobs)"
    )


def _cannot_start_slurm() -> str | None:
    if os.geteuid() != 0:
        return "starting slurmctld, slurmd and munged needs root"
    if shutil.which("dpkg-query") is None:
        return "benchmarks/slurm_single_node.sh needs Debian's packages (dpkg, apt-get)"
    return None


@pytest.fixture(scope="module")
def slurm_partition():
    """A running single-node Slurm (started here, stopped after); its partition name."""
    reason = _cannot_start_slurm()
    if reason:
        pytest.skip(reason)
    up = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, timeout=900)
    if up.returncode != 0:
        pytest.skip(f"Slurm cannot be started here: {up.stderr.strip()}")
    yield up.stdout.strip().splitlines()[-1]
    subprocess.run([str(SCRIPT), "down"], check=True, timeout=300)


def _slurm_sweep(partition: str, sweep_dir: Path) -> list[str]:
    return [
        "-m",
        *SWEEP,
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={partition}",
        "hydra.launcher.gpus_per_task=null",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.array_parallelism=1",
        f"hydra.sweep.dir={sweep_dir}",
    ]


def _wait_for(what: Callable[[], Any], proc: subprocess.Popen, log: Path, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        assert proc.poll() is None, f"sweep ended early:\n{log.read_text()}"
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"timed out after {timeout} s:\n{log.read_text()}")


@pytest.mark.slow
def test_cancelled_array_fails_its_runs_and_a_rerun_completes_them_bit_for_bit(
    slurm_partition: str, tmp_path: Path
) -> None:
    basic = tmp_path / "basic"
    reference = run_cli("-m", *SWEEP, f"hydra.sweep.dir={basic}", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    swept = tmp_path / "slurm"
    log = tmp_path / "slurm.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gradsweep", *_slurm_sweep(slurm_partition, swept)],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        tasks = _wait_for(lambda: list(swept.glob(".submitit/*_0")), proc, log, 300)
        _wait_for(lambda: list(swept.glob("*/grad_stats.parquet")), proc, log, 600)
        subprocess.run(["scancel", tasks[0].name.split("_")[0]], check=True, timeout=60)
        cancelled = time.monotonic()
        try:
            status = proc.wait(timeout=CANCEL_TO_EXIT_BOUND_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"sweep still waiting {CANCEL_TO_EXIT_BOUND_S} s after scancel")
        print(f"scancel to sweep exit: {time.monotonic() - cancelled:.1f} s")
    output = log.read_text()
    assert status != 0, output
    complete = {p.parent.name for p in swept.glob("*/grad_stats.parquet")}
    failed = {p.parent.name for p in swept.glob("*/FAILED.txt")}
    every_run = {p.parent.name for p in basic.glob("*/grad_stats.parquet")}
    assert failed and not failed & complete and failed | complete == every_run
    failed_lines = [line for line in output.splitlines() if "failed: " in line]
    assert len(failed_lines) == len(failed), output
    for line in failed_lines:
        assert re.search(r"SlurmJobEnded: Slurm job \d+_\d ended CANCELLED without a result", line)
    assert f"gradsweep: {len(failed)} of {len(every_run)} runs failed" in output

    rerun = run_cli(*_slurm_sweep(slurm_partition, swept), cwd=tmp_path, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(failed)} ok, {len(complete)} skipped" in rerun.stderr + rerun.stdout
    assert not list(swept.glob("*/FAILED.txt"))
    for name in every_run:
        path = Path(name) / "grad_stats.parquet"
        assert_same_run_file(basic / path, swept / path)


@pytest.mark.slow
def test_refused_submission_names_the_partitions(slurm_partition: str, tmp_path: Path) -> None:
    args = _slurm_sweep(slurm_partition, tmp_path / "sweep")
    args[args.index(f"hydra.launcher.partition={slurm_partition}")] = (
        "hydra.launcher.partition=nope"
    )
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "gradsweep: error: Slurm refused the sweep's jobs: sbatch: error: invalid partition "
        f"specified: nope (partitions: {slurm_partition})"
    )
