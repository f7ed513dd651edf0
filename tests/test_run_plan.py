"""gradsweep.run_plan: FAILED.txt written whole or not at all, never beside a complete run file."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import mounted_tmpfs
from omegaconf import OmegaConf

from gradsweep.config import AppConfig
from gradsweep.experiment import run_experiment
from gradsweep.run_plan import PlannedRun, write_failure
from gradsweep.store import FAILURE_FILE, STATS_FILE, run_metadata, write_run


def planned(run_dir: Path) -> PlannedRun:
    return PlannedRun(OmegaConf.structured(AppConfig(steps=1)), run_dir, ["steps=1"])


def test_a_failure_record_is_written_whole(tmp_path: Path) -> None:
    assert write_failure(planned(tmp_path / "run"), "OSError: disk full", "Traceback ...")
    text = (tmp_path / "run" / FAILURE_FILE).read_text()
    assert text.startswith("status: failed\nerror: OSError: disk full\nrun_key: ")
    assert text.endswith("overrides: steps=1\n\nTraceback ...\n")
    assert [p.name for p in (tmp_path / "run").iterdir()] == [FAILURE_FILE]


def test_no_failure_record_beside_a_complete_run_file(tmp_path: Path) -> None:
    run = planned(tmp_path)
    result = run_experiment(run.cfg)
    meta = run_metadata("", result.execution.metadata(), "ok", "[]")
    write_run(result.stats, tmp_path / STATS_FILE, meta)
    assert not write_failure(run, "FileNotFoundError: renamed by another sweep", "")
    assert [p.name for p in tmp_path.iterdir()] == [STATS_FILE]


def test_a_full_disk_leaves_no_empty_failure_record(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", size="8k") as disk:
        filler = disk / "filler"
        with pytest.raises(OSError, match="No space left"):
            filler.write_bytes(b"x" * 65536)
        assert not write_failure(planned(disk), "OSError: disk full", "x" * 65536)
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
