"""What decides a run's bits: the threads key under every launcher, its record, and resuming."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import assert_same_sweep, run_sweep, stats_files

import gradsweep.probe as probe_module
from gradsweep import schema
from gradsweep.config import RunConfig, available_cores, run_values
from gradsweep.execution import (
    UNAVAILABLE,
    Execution,
    Resume,
    apply_threads,
    plan_resume,
    planned_execution,
)
from gradsweep.experiment import GradientFlowRun
from gradsweep.groups import ReplicaGroupRun
from gradsweep.probe.fused_torch import FusedTorchProbe
from gradsweep.probe.native import load_kernel
from gradsweep.probe.numpy_host import NumpyHostProbe
from gradsweep.probe.one_pass import OnePassProbe
from gradsweep.probe.one_pass_triton import OnePassTritonProbe, load_triton
from gradsweep.probe.per_tensor import PerTensorProbe
from gradsweep.store import read_metadata, run_metadata, write_run

SWEEP = ["act=sigmoid,tanh,relu", "depth=3,5", "seed=0,1", "steps=20"]
N_RUNS = 12


@pytest.fixture(scope="module")
def one_thread(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SWEEP with the basic launcher and the default `threads` (1)."""
    sweep_dir = tmp_path_factory.mktemp("one_thread")
    run_sweep(sweep_dir, *SWEEP)
    return sweep_dir


@pytest.fixture(scope="module")
def two_threads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SWEEP with the basic launcher and threads=2."""
    sweep_dir = tmp_path_factory.mktemp("two_threads")
    run_sweep(sweep_dir, *SWEEP, "threads=2")
    return sweep_dir


@pytest.mark.parametrize(
    ("launcher", "threads"),
    [
        ("joblib", 1),
        pytest.param("joblib", 2, marks=pytest.mark.slow),
        pytest.param("submitit_local", 1, marks=pytest.mark.slow),
    ],
)
def test_every_launcher_writes_the_basic_launchers_bits(
    request: pytest.FixtureRequest, tmp_path: Path, launcher: str, threads: int
) -> None:
    reference = request.getfixturevalue("one_thread" if threads == 1 else "two_threads")
    run_sweep(tmp_path, *SWEEP, f"threads={threads}", f"hydra/launcher={launcher}")
    assert_same_sweep(reference, tmp_path)
    for path in stats_files(tmp_path).values():
        assert read_metadata(path)["threads"] == str(threads)


def test_a_resumed_sweep_keeps_files_written_with_other_threads_unless_asked(
    one_thread: Path, two_threads: Path, tmp_path: Path
) -> None:
    with pytest.raises(AssertionError):  # the thread count does change the bits
        assert_same_sweep(one_thread, two_threads)
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(two_threads, sweep_dir)
    written = {name: path.read_bytes() for name, path in stats_files(sweep_dir).items()}

    kept = run_sweep(sweep_dir, *SWEEP)
    lines = [line for line in kept.stdout.splitlines() if "] act=" in line]
    assert len(lines) == N_RUNS
    assert all(line.endswith("skipped (complete; written with threads=2, now 1)") for line in lines)
    assert f"{N_RUNS} runs in" in kept.stdout and f"{N_RUNS} skipped" in kept.stdout
    assert f"{N_RUNS} complete run(s) were written with other threads" in kept.stdout
    assert {name: path.read_bytes() for name, path in stats_files(sweep_dir).items()} == written

    redone = run_sweep(sweep_dir, *SWEEP, "redo_mismatched=true")
    lines = [line for line in redone.stdout.splitlines() if "] act=" in line]
    assert len(lines) == N_RUNS and all(line.endswith("redone (threads 2 -> 1)") for line in lines)
    assert f"{N_RUNS} redone" in redone.stdout
    assert_same_sweep(one_thread, sweep_dir)


def _members(**overrides: object) -> list[dict]:
    return [{**run_values(RunConfig()), **overrides}]


@pytest.mark.parametrize("one_pass", [True, False])
@pytest.mark.parametrize(
    ("overrides", "stats_path"),
    [
        ({}, NumpyHostProbe.name),
        ({"batchnorm": True, "replicas": 3, "device": "auto"}, NumpyHostProbe.name),
        ({"width": 300, "depth": 3}, PerTensorProbe.name),
    ],
)
def test_the_planned_record_is_what_the_run_records(
    overrides: dict, stats_path: str, one_pass: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the one-pass kernel every CPU run takes it; without, the path its size picks."""
    monkeypatch.setattr(probe_module, "ONE_PASS", one_pass)
    if one_pass and load_kernel() is not None:
        stats_path = OnePassProbe.name
    members = _members(**overrides)
    planned = planned_execution(members, torch.get_num_threads())
    assert planned == GradientFlowRun(members[0]).run().execution
    assert planned.stats_path == stats_path


def test_the_planned_record_of_a_replica_group_is_the_stacked_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(probe_module, "ONE_PASS", False)
    members = [{**run_values(RunConfig()), "seed": seed} for seed in range(20)]
    planned = planned_execution(members, torch.get_num_threads())
    assert planned.stats_path == PerTensorProbe.name  # alone, each would use numpy-host
    assert planned == ReplicaGroupRun(members).run_members()[0].execution


@pytest.mark.parametrize("one_pass", [True, False])
def test_cuda_without_cuda_is_planned_as_unavailable(
    one_pass: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CUDA the Triton kernel where triton imports, else the fused path (a small network)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(probe_module, "ONE_PASS", one_pass)
    planned = planned_execution(_members(device="cuda"), 1)
    triton = one_pass and load_triton() is not None
    stats_path = OnePassTritonProbe.name if triton else FusedTorchProbe.name
    assert (planned.device_name, planned.stats_path) == (UNAVAILABLE, stats_path)


def test_every_statistics_path_has_a_documented_name() -> None:
    names = [
        OnePassProbe.name,
        OnePassTritonProbe.name,
        NumpyHostProbe.name,
        FusedTorchProbe.name,
        PerTensorProbe.name,
    ]
    assert len(set(names)) == 5
    assert all(f"`{name}`" in schema.EXECUTION_METADATA["stats_path"] for name in names)


def test_apply_threads_sets_torchs_thread_count() -> None:
    before = torch.get_num_threads()
    try:
        assert apply_threads(1) == 1 and torch.get_num_threads() == 1
        assert apply_threads("auto") == available_cores() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _write(path: Path, execution: dict[str, str]) -> Path:
    result = GradientFlowRun(RunConfig()).run()
    return write_run(result.stats, path, run_metadata("", execution, "ok", "[]"))


def test_plan_resume_runs_the_incomplete_keeps_the_rest_and_redoes_only_when_asked(
    tmp_path: Path,
) -> None:
    members = _members()
    planned = planned_execution(members, 1)
    same = _write(tmp_path / "same.parquet", planned.metadata())
    other = Execution(planned.torch_version, 2, planned.device_name, planned.stats_path)
    otherwise = _write(tmp_path / "otherwise.parquet", other.metadata())
    missing = tmp_path / "missing.parquet"
    for redo in (False, True):
        plan = plan_resume([same, otherwise, missing], members * 3, 1, redo)
        assert plan[0] == Resume(False) and plan[2] == Resume(True)
        assert plan[1] == Resume(redo, (("threads", "2", "1"),))
    assert plan_resume([same], members, 1, False)[0].status() == "skipped (complete)"
    assert plan_resume([otherwise], members, 1, False)[0].status() == (
        "skipped (complete; written with threads=2, now 1)"
    )
    (redone,) = plan_resume([otherwise], members, 1, True)
    assert redone.status("ok") == "redone (threads 2 -> 1)"
    assert redone.status("diverged") == "redone (threads 2 -> 1; diverged)"


def test_a_file_without_the_record_is_kept_and_says_so(tmp_path: Path) -> None:
    """Files written before the record existed hold no `threads` or `stats_path`."""
    members = _members()
    planned = planned_execution(members, 1)
    path = _write(tmp_path / "new.parquet", planned.metadata())
    meta = read_metadata(path)
    del meta["threads"], meta["stats_path"]
    old = tmp_path / "old.parquet"
    pq.write_table(
        pq.read_table(path).replace_schema_metadata(
            {f"gradsweep.{k}".encode(): v.encode() for k, v in meta.items()}
        ),
        old,
    )
    (kept,) = plan_resume([old], members, 1, False)
    assert not kept.run
    assert kept.status() == (
        "skipped (complete; threads not recorded, now 1; "
        f"stats_path not recorded, now {planned.stats_path})"
    )
    assert plan_resume([old], members, 1, True)[0].status("ok") == (
        f"redone (threads not recorded -> 1, stats_path not recorded -> {planned.stats_path})"
    )
