"""The report built from a real smoke sweep: files, summary numbers against the run files, HTML, refusals and skips."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from gradsweep.report import build_report, main
from gradsweep.store import FAILURE_FILE, RunSet, read_sweep
from gradsweep.summary import SUMMARY_COLUMNS, scan, summarize, summary_table

SMOKE = [
    "act=sigmoid,tanh,relu",
    "depth=3,5",
    "batchnorm=false,true",
    "clip=null,1.0",
    "steps=2",
    "replicas=2",
]


@pytest.fixture(scope="session")
def smoke_sweep(make_sweep) -> Path:
    """A real multirun of the app: 24 runs, 2 replicas, 3 logged steps."""
    return make_sweep("sweep", *SMOKE)


@pytest.fixture(scope="session")
def report(smoke_sweep: Path, tmp_path_factory: pytest.TempPathFactory):
    return build_report([smoke_sweep], tmp_path_factory.mktemp("report"))


def test_report_writes_every_output(report) -> None:
    names = {p.name for p in report.out_dir.iterdir()}
    assert {"sweep.parquet", "summary.csv", "summary.md", "index.html"} <= names
    assert set(report.figures) == {
        "layer_profile",
        "ratio_heatmap",
        "clipping",
        "batchnorm",
        "histograms",
        "over_steps",
        "prediction_overlay",
        "bulk_error",
    }
    assert set(report.skipped) == {"devices", "phase_diagram", "batchnorm_depth", "glorot_fig8"}
    assert report.skipped["devices"] == "not both CPU and CUDA runs present"
    assert not report.problems


def test_sweep_parquet_holds_every_row(report, smoke_sweep: Path) -> None:
    rows = sum(pq.read_metadata(p).num_rows for p in smoke_sweep.glob("*/grad_stats.parquet"))
    table = pq.read_table(report.out_dir / "sweep.parquet")
    assert table.num_rows == rows and "grad_hist" not in table.column_names


def test_summary_matches_run_files(report, smoke_sweep: Path) -> None:
    summary = report.summary
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert len(summary) == 24 * 2
    csv = pd.read_csv(report.out_dir / "summary.csv")
    assert len(csv) == len(summary)
    for path in smoke_sweep.glob("*/grad_stats.parquet"):
        raw = pd.read_parquet(path)
        for replica, rows in raw.groupby("replica"):
            row = summary[
                (summary["run_key"] == rows["run_key"].iloc[0]) & (summary["replica"] == replica)
            ].iloc[0]
            at0 = rows[rows["step"] == 0].set_index(["tensor", "layer"])["grad_norm"]
            depth = rows["depth"].iloc[0]
            for tensor in ("weight", "preact"):
                ratio = at0[(tensor, 0)] / at0[(tensor, depth - 1)]
                np.testing.assert_allclose(row[f"{tensor}_ratio"], ratio, rtol=1e-12)
                np.testing.assert_allclose(
                    row[f"{tensor}_gain"], ratio ** (1 / (depth - 1)), rtol=1e-12
                )
            params = rows[rows["tensor"] != "preact"]
            assert row["max_grad_norm"] == params["grad_norm"].max()
            np.testing.assert_allclose(
                row["max_total_norm"], rows["total_grad_norm"].max(), rtol=1e-12
            )
            last = rows[rows["step"] == rows["step"].max()]
            assert row["final_loss"] == last["loss"].iloc[0] and row["final_step"] == 2
            assert row["diverged"] == (rows["status"].iloc[0] == "diverged")
            assert row["seed"] == rows["seed"].iloc[0]
            post = np.sqrt((params["grad_norm_clipped"] ** 2).groupby(params["step"]).sum())
            np.testing.assert_allclose(row["max_total_norm_clipped"], post.max(), rtol=1e-12)
            if pd.isna(row["clip"]):
                assert row["max_total_norm_clipped"] == pytest.approx(row["max_total_norm"])
            else:
                assert row["max_total_norm_clipped"] <= row["clip"] + 1e-6


def test_footer_summaries_equal_a_scan_of_the_data(smoke_sweep: Path) -> None:
    runs = RunSet([smoke_sweep])
    assert all(runs.footer_summaries.values())
    from_footers = summary_table(runs)
    scanned = summarize(*scan(runs)).sort_values(["run_key", "replica"], ignore_index=True)
    pd.testing.assert_frame_equal(from_footers, scanned, check_dtype=False)


def test_footer_summaries_keep_every_digit_of_tiny_ratios(tmp_path: Path) -> None:
    """A depth-20 sigmoid run's input/output ratio is ~1e-17: the footer must not round it to 0."""
    from gradsweep.config import RunConfig, run_values
    from gradsweep.groups import ReplicaGroupRun
    from gradsweep.store import run_metadata, write_run
    from gradsweep.summary import footer_metrics

    base = {**run_values(RunConfig()), "depth": 20, "steps": 2}
    group = ReplicaGroupRun([{**base, "seed": seed} for seed in (1, 2)])
    results = group.run_members()
    for values, result, footer in zip(
        group.members, results, footer_metrics([r.stats for r in results])
    ):
        meta = run_metadata(yaml.safe_dump(values), "cpu", "ok", footer)
        write_run(result.stats, tmp_path / f"s{values['seed']}" / "grad_stats.parquet", meta)
    runs = RunSet([tmp_path])
    from_footers = summary_table(runs)
    scanned = summarize(*scan(runs)).sort_values(["run_key", "replica"], ignore_index=True)
    assert ((from_footers["weight_ratio"] > 0) & (from_footers["weight_ratio"] < 1e-10)).all()
    pd.testing.assert_frame_equal(from_footers, scanned, check_dtype=False, rtol=1e-15, atol=0)


def test_html_embeds_every_figure(report) -> None:
    html = (report.out_dir / "index.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == len(report.figures)
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'src="http' not in html and "<script" not in html
    assert "weight_ratio" in html and "Not drawn: not both CPU and CUDA runs present" in html


def test_markdown_summary_has_a_row_per_run(report) -> None:
    lines = (report.out_dir / "summary.md").read_text().splitlines()
    assert lines[0].startswith("| run_key | act |") and len(lines) == 2 + len(report.summary)


@pytest.fixture
def damaged(smoke_sweep: Path, tmp_path: Path) -> Path:
    """A copy of three runs: one refused (schema version 99), one truncated, one failed; plus the rest intact."""
    runs = sorted(smoke_sweep.glob("*/grad_stats.parquet"))[:5]
    for run in runs:
        shutil.copytree(run.parent, tmp_path / run.parent.name)
    files = sorted(tmp_path.glob("*/grad_stats.parquet"))
    table = pq.read_table(files[0])
    meta = {**table.schema.metadata, b"gradsweep.schema_version": b"99"}
    pq.write_table(table.replace_schema_metadata(meta), files[0])
    files[1].write_bytes(files[1].read_bytes()[:2000])
    (files[2].parent / FAILURE_FILE).write_text("RuntimeError: boom\nTraceback...\n")
    return tmp_path


def test_refused_unreadable_and_failed_runs_are_listed(
    damaged: Path, tmp_path_factory, capsys
) -> None:
    files = sorted(damaged.glob("*/grad_stats.parquet"))
    frame, problems = read_sweep([damaged], columns=["run_key"])
    kinds = {p.kind: p for p in problems}
    assert set(kinds) == {"refused", "unreadable", "failed"}
    assert str(files[0]) in kinds["refused"].message and "'99'" in kinds["refused"].message
    assert kinds["unreadable"].path == str(files[1])
    assert kinds["failed"].path == str(files[2].parent) and kinds["failed"].message.startswith(
        "RuntimeError: boom"
    )
    assert frame["run_key"].nunique() == 2
    out = tmp_path_factory.mktemp("damaged_report")
    assert main([str(damaged), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"refused: {files[0]}" in err and f"unreadable: {files[1]}" in err and "failed:" in err
    html = (out / "index.html").read_text()
    assert "Runs not read (3)" in html and str(files[1]) in html


def test_no_readable_runs_is_an_error(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "missing"), "-o", str(tmp_path / "out")]) == 2
    assert "no readable run files" in capsys.readouterr().err


def test_console_script_runs(smoke_sweep: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gradsweep.report", str(smoke_sweep), "-o", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "index.html").exists()


def test_cpu_and_cuda_runs_of_one_configuration_get_the_device_figure(
    smoke_sweep: Path, tmp_path: Path
) -> None:
    """A run file relabelled as measured on CUDA (no GPU here) next to its CPU original draws figure (g)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import yaml

    from gradsweep.config import run_key

    src = sorted(smoke_sweep.glob("sigmoid-*/grad_stats.parquet"))[
        0
    ]  # no dead output unit: every norm > 0
    table = pq.read_table(src)
    meta = dict(table.schema.metadata)
    config = yaml.safe_load(meta[b"gradsweep.config"])
    config["device"] = "cuda"
    meta[b"gradsweep.config"] = yaml.safe_dump(config).encode()

    def replaced(name: str, values: pa.Array) -> None:
        nonlocal table
        field = table.schema.field(name)
        table = table.set_column(table.schema.get_field_index(name), field, values.cast(field.type))

    replaced("run_key", pa.array([run_key(config)] * table.num_rows))
    replaced("device", pa.array(["cuda"] * table.num_rows))
    replaced("grad_norm", pc.multiply(table["grad_norm"], 1 + 2e-7))
    target = tmp_path / "cuda-run" / "grad_stats.parquet"
    target.parent.mkdir()
    pq.write_table(table.replace_schema_metadata(meta), target)
    report = build_report([src.parent, target.parent], tmp_path / "report")
    assert "devices" in report.figures and report.figures["devices"].read_bytes().startswith(
        b"\x89PNG"
    )
