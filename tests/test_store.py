"""The run file: metadata, atomic write, completeness, schema version."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import gradsweep.store as store
from gradsweep.bins import N_HIST_BINS
from gradsweep.config import RunConfig
from gradsweep.experiment import RunResult, run_experiment


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
    assert (meta["device_name"], meta["stats_path"]) == ("cpu", "numpy-host")
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
