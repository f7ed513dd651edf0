"""The run file: metadata, atomic write, completeness, schema version, concurrent writers."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import REPO, assert_same_run_file, run_sweep, stats_files, sweep_cmd

import gradsweep.store as store
from gradsweep.bins import N_HIST_BINS
from gradsweep.config import RunConfig
from gradsweep.experiment import RunResult, run_experiment
from gradsweep.probe import strategy_for


@pytest.fixture(scope="module")
def result() -> RunResult:
    return run_experiment(RunConfig())


@pytest.fixture(scope="module")
def frame(result: RunResult) -> pd.DataFrame:
    return result.stats


@pytest.fixture(scope="module")
def execution(result: RunResult) -> dict[str, str]:
    return result.execution.metadata()


def test_metadata_round_trips(tmp_path: Path, frame: pd.DataFrame, execution: dict) -> None:
    path = store.write_run(
        frame,
        tmp_path / "r" / store.STATS_FILE,
        store.run_metadata("act: sigmoid\n", execution, "ok", "[]"),
    )
    meta = store.read_metadata(path)
    assert meta["schema_version"] == str(store.SCHEMA_VERSION)
    assert meta["config"] == "act: sigmoid\n" and meta["status"] == "ok"
    assert {key: meta[key] for key in execution} == execution
    assert (meta["device_name"], meta["stats_path"]) == ("cpu", strategy_for([], 1, "cpu").name)
    assert meta["torch_version"] and meta["version"]
    assert store.complete_metadata(path) == meta
    assert len(eval(meta["hist_bins"])) == N_HIST_BINS  # noqa: S307 - JSON list of strings
    assert store.is_complete(path)
    pd.testing.assert_frame_equal(store.read_run(path), frame)


def test_a_crash_while_writing_leaves_no_file_that_looks_complete(
    tmp_path: Path, frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(table, handle, **kwargs):
        handle.write(b"PAR1 partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(store.pq, "write_table", crash)
    target = tmp_path / store.STATS_FILE
    with pytest.raises(KeyboardInterrupt):
        store.write_run(frame, target, {})
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_truncated_or_foreign_files_are_not_complete(
    tmp_path: Path, frame: pd.DataFrame, execution: dict
) -> None:
    good = store.write_run(
        frame, tmp_path / "good.parquet", store.run_metadata("", execution, "ok", "[]")
    )
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:-100])
    assert not store.is_complete(truncated)
    old = tmp_path / "old.parquet"
    pq.write_table(
        pq.read_table(good).replace_schema_metadata({b"gradsweep.schema_version": b"0"}), old
    )
    assert not store.is_complete(old)
    with pytest.raises(
        store.SchemaVersionError, match="old.parquet: schema version '0' is not supported"
    ):
        store.read_run(old)
    assert not store.is_complete(tmp_path / "missing.parquet")
    assert store.complete_metadata(truncated) is None and store.complete_metadata(old) is None


def test_a_temporary_file_names_its_writer_and_only_a_gone_writers_is_removed(
    tmp_path: Path, frame: pd.DataFrame
) -> None:
    target = tmp_path / store.STATS_FILE
    here = socket.gethostname()
    gone = subprocess.Popen(["true"])
    gone.wait()
    mine = store.temporary_path(target)
    assert mine.name == f".{store.STATS_FILE}.{here}.{os.getpid()}.tmp"
    writing = [mine, store.temporary_path(target, host="other-node", pid=gone.pid)]
    stale = store.temporary_path(target, pid=gone.pid)
    for tmp in [*writing, stale]:
        tmp.write_bytes(b"PAR1 partial")
    assert store.remove_stale_temporaries(target) == [stale]
    assert sorted(tmp_path.iterdir()) == sorted(writing)


def test_a_complete_file_clears_a_failure_record_beside_it(
    tmp_path: Path, frame: pd.DataFrame, execution: dict
) -> None:
    (tmp_path / store.FAILURE_FILE).write_text("status: failed\nerror: OSError: disk full\n")
    meta = store.run_metadata("", execution, "ok", "[]")
    store.write_run(frame, tmp_path / store.STATS_FILE, meta)
    assert [p.name for p in tmp_path.iterdir()] == [store.STATS_FILE]


def test_the_write_delay_hook_holds_the_temporary_file_open(
    tmp_path: Path, frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(store.WRITE_DELAY_ENV, "0.5")
    target = tmp_path / store.STATS_FILE
    seen: list[list[str]] = []
    writer = threading.Thread(target=store.write_run, args=(frame, target, {}))
    writer.start()
    time.sleep(0.25)
    seen.append([p.name for p in tmp_path.iterdir()])
    writer.join()
    assert seen == [[store.temporary_path(target).name]]
    assert [p.name for p in tmp_path.iterdir()] == [store.STATS_FILE]


@pytest.mark.slow
def test_identical_sweeps_started_at_once_into_one_dir_complete_every_run(
    tmp_path: Path,
) -> None:
    overrides = ["act=sigmoid,relu,tanh", "depth=2,3", "steps=5"]
    reference = tmp_path / "reference"
    run_sweep(reference, *overrides)
    expected = stats_files(reference)
    env = {**os.environ, "OMP_NUM_THREADS": "1", store.WRITE_DELAY_ENV: "0.3"}
    for repetition in range(3):
        shared = tmp_path / f"shared{repetition}"
        procs = [
            subprocess.Popen(
                sweep_cmd(shared, *overrides),
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(3)
        ]
        outputs = [proc.communicate(timeout=600)[0] for proc in procs]
        for proc, output in zip(procs, outputs):
            assert proc.returncode == 0, output[-3000:]
        files = stats_files(shared)
        assert files.keys() == expected.keys()
        for name, path in files.items():
            assert_same_run_file(expected[name], path)
        assert not list(shared.glob(f"*/{store.FAILURE_FILE}"))
        assert not list(shared.glob("*/.*.tmp"))
        runs = store.RunSet([shared])
        assert runs.problems == [] and len(runs.files) == len(expected)
