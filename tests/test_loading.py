"""`gradsweep.load`: sweep dirs, run dirs and run files into one frame; skipped runs reported."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

import gradsweep
from gradsweep import store
from gradsweep.loading import SkippedRunsError, SkippedRunsWarning
from gradsweep.schema import FAILURE_FILE, HIST_COLUMN, STATS_FILE, names


@pytest.fixture(scope="module")
def layout(make_sweep, tmp_path_factory) -> dict[str, Path]:
    """A real sweep of four runs, split into a sweep dir of two, a lone run dir and a lone file."""
    sweep = make_sweep("load", "act=sigmoid,relu", "depth=2,3", "steps=2")
    runs = sorted(p.parent for p in sweep.glob(f"*/{STATS_FILE}"))
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    run_dir = elsewhere / runs[2].name
    shutil.move(runs[2], run_dir)
    run_file = elsewhere / "lone.parquet"
    shutil.move(runs[3] / STATS_FILE, run_file)
    shutil.rmtree(runs[3])
    return {"sweep": sweep, "run_dir": run_dir, "file": run_file}


def test_a_sweep_dir_a_run_dir_and_a_file_load_into_one_frame(layout) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = gradsweep.load(layout["sweep"], layout["run_dir"], layout["file"])
    assert frame["run_key"].nunique() == 4
    assert set(frame["act"]) == {"sigmoid", "relu"} and set(frame["depth"]) == {2, 3}
    assert list(frame.columns) == [c for c in names() if c != HIST_COLUMN]
    assert frame.attrs["problems"] == []


def test_a_run_reached_through_two_paths_is_read_once(layout) -> None:
    inside = next(p.parent for p in layout["sweep"].glob(f"*/{STATS_FILE}"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = gradsweep.load(layout["sweep"], inside, inside / STATS_FILE)
    assert frame["run_key"].nunique() == 2


def test_columns_steps_and_filter_select_what_is_read(layout) -> None:
    frame = gradsweep.load(layout["sweep"], columns=["run_key", "step", "grad_norm"], steps=[0, 2])
    assert list(frame.columns) == ["run_key", "step", "grad_norm"]
    assert set(frame["step"]) == {0, 2}
    preact = gradsweep.load(
        layout["file"], columns=["tensor"], steps=1, filter=ds.field("tensor") == "preact"
    )
    assert len(preact) and set(preact["tensor"]) == {"preact"}
    with_hist = gradsweep.load(layout["file"], histograms=True, steps=0)
    assert with_hist[HIST_COLUMN].map(len).eq(59).all()


def test_an_unknown_column_or_mode_names_the_choices(layout) -> None:
    with pytest.raises(ValueError, match=r"\['colour'\] are not run file columns.*grad_norm"):
        gradsweep.load(layout["file"], columns=["grad_norm", "colour"])
    with pytest.raises(ValueError, match="problems='loud' is not valid; choose one of: warn"):
        gradsweep.load(layout["file"], problems="loud")
    with pytest.raises(TypeError, match="at least one"):
        gradsweep.load()


@pytest.fixture
def damaged(layout, tmp_path: Path) -> dict[str, Path]:
    """A copy of the two-run sweep with one run failed, plus a corrupt file and the lone file."""
    sweep = tmp_path / "sweep"
    shutil.copytree(layout["sweep"], sweep)
    failed = sorted(p.parent for p in sweep.glob(f"*/{STATS_FILE}"))[0]
    (failed / STATS_FILE).unlink()
    (failed / FAILURE_FILE).write_text("RuntimeError: boom\nTraceback ...\n")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(layout["file"].read_bytes()[:1500])
    return {"sweep": sweep, "failed": failed, "corrupt": corrupt, "file": layout["file"]}


def test_failed_and_corrupt_runs_are_skipped_and_reported(damaged) -> None:
    paths = (damaged["sweep"], damaged["corrupt"], damaged["file"])
    with pytest.warns(SkippedRunsWarning) as caught:
        frame = gradsweep.load(*paths)
    message = str(caught[0].message)
    assert f"{damaged['failed']}: failed: RuntimeError: boom" in message
    assert f"{damaged['corrupt']}: unreadable:" in message
    assert frame["run_key"].nunique() == 2
    assert {p.kind for p in frame.attrs["problems"]} == {"failed", "unreadable"}

    with pytest.raises(SkippedRunsError, match="skipped 2 run") as raised:
        gradsweep.load(*paths, problems="raise")
    assert {p.path for p in raised.value.problems} == {
        str(damaged["failed"]),
        str(damaged["corrupt"]),
    }

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = gradsweep.load(*paths, problems="ignore")
    assert len(quiet.attrs["problems"]) == 2


def test_a_complete_file_wins_over_a_failed_txt_beside_it(layout, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    shutil.copytree(layout["sweep"], sweep)
    complete, truncated = sorted(p.parent for p in sweep.glob(f"*/{STATS_FILE}"))
    for run in (complete, truncated):
        (run / FAILURE_FILE).write_text("RuntimeError: boom\nTraceback ...\n")
    (truncated / STATS_FILE).write_bytes((truncated / STATS_FILE).read_bytes()[:1500])
    with pytest.warns(SkippedRunsWarning):
        frame = gradsweep.load(sweep)
    assert frame["run_key"].nunique() == 1
    (problem,) = frame.attrs["problems"]
    assert (problem.path, problem.kind) == (str(truncated), "failed")
    assert problem.message == "RuntimeError: boom (incomplete run file ignored)"


def test_no_readable_run_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="(?s)no readable run files.*missing: unreadable"):
        gradsweep.load(tmp_path / "missing", problems="ignore")


def test_import_gradsweep_loads_neither_pandas_nor_torch() -> None:
    code = (
        "import sys, gradsweep\n"
        "heavy = [m for m in ('pandas', 'pyarrow', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert callable(gradsweep.load) and 'pandas' in sys.modules\n"
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _as_version_2(path: Path, out: Path) -> Path:
    """The run file as version 2 wrote it: no `source` nor `module` column, version 2 footer."""
    table = pq.read_table(path)
    meta = {**table.schema.metadata, b"gradsweep.schema_version": b"2"}
    table = table.drop_columns(["source", "module"]).replace_schema_metadata(meta)
    out.mkdir(parents=True)
    pq.write_table(table, out / STATS_FILE)
    return out / STATS_FILE


def test_version_2_files_load_with_the_new_columns_null(layout, tmp_path: Path) -> None:
    old = _as_version_2(layout["file"], tmp_path / "v2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = gradsweep.load(old, layout["run_dir"])
    assert list(frame.columns) == [c for c in names() if c != HIST_COLUMN]
    by_file = frame.groupby("run_key")
    assert sorted(by_file["source"].first().fillna("null")) == ["null", "sweep"]
    assert frame["module"].isna().all()
    current = gradsweep.load(layout["file"])
    pd.testing.assert_frame_equal(
        gradsweep.load(old).drop(columns=["source"]), current.drop(columns=["source"])
    )
    assert store.read_run(old)["source"].isna().all()
    assert not store.is_complete(old)  # a resumed sweep redoes it in the current version


def test_an_unknown_version_is_refused_by_name(layout, tmp_path: Path) -> None:
    table = pq.read_table(layout["file"])
    meta = {**table.schema.metadata, b"gradsweep.schema_version": b"1"}
    (tmp_path / "v1").mkdir()
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "v1" / STATS_FILE)
    frame = gradsweep.load(layout["file"], tmp_path / "v1", problems="ignore")
    (problem,) = frame.attrs["problems"]
    assert problem.kind == "refused"
    assert problem.message.endswith(
        "schema version '1' is not supported (this gradsweep reads version 2, 3)"
    )


NEWER_COLUMNS = ("norm", "residual", "branch_scale", "norm_position")


def _as_written_before_norm_and_residual(path: Path, into: Path) -> Path:
    """A copy of a run file as this schema version wrote it before the norm and residual keys:
    without their columns, and a footer config without their keys."""
    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    config = yaml.safe_load(meta[b"gradsweep.config"])
    meta[b"gradsweep.config"] = yaml.safe_dump(
        {k: v for k, v in config.items() if k not in NEWER_COLUMNS}
    ).encode()
    older = table.drop_columns(list(NEWER_COLUMNS)).replace_schema_metadata(meta)
    into.mkdir(parents=True)
    pq.write_table(older, into / STATS_FILE)
    return into / STATS_FILE


def test_files_older_than_the_norm_and_residual_columns_load_with_their_defaults(
    make_sweep, tmp_path: Path
) -> None:
    sweep = make_sweep("newer", "act=relu", "depth=4", "norm=none,layer", "steps=1")
    plain, layered = sorted(sweep.glob(f"*/{STATS_FILE}"), key=lambda p: "-ln1" in str(p))
    older = _as_written_before_norm_and_residual(plain, tmp_path / "older" / plain.parent.name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = gradsweep.load(older, layered)
    by_file = frame.groupby("run_key")[list(NEWER_COLUMNS)].agg(set)
    assert sorted(map(tuple, by_file.map(lambda s: next(iter(s))).to_numpy())) == [
        ("layer", False, "1.0", "pre"),
        ("none", False, "1.0", "pre"),
    ]
    runs = store.RunSet([older]).runs
    assert runs[list(NEWER_COLUMNS)].iloc[0].tolist() == ["none", False, "1.0", "pre"]
    single = store.read_run(older, columns=list(NEWER_COLUMNS))  # one file reads as RunSet does
    assert single.drop_duplicates().values.tolist() == [["none", False, "1.0", "pre"]]
