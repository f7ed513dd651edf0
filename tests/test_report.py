"""The report of real sweeps: files, summary numbers against run files, figures, HTML, refusals."""

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
from gradsweep.schema import CONFIG_COLUMNS
from gradsweep.store import FAILURE_FILE, RunSet, read_sweep
from gradsweep.summary import METRIC_COLUMNS, SUMMARY_COLUMNS, scan, summarize, summary_table

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


@pytest.fixture(scope="session")
def three_axis_report(three_axis_sweep: Path, tmp_path_factory: pytest.TempPathFactory):
    return build_report([three_axis_sweep], tmp_path_factory.mktemp("three_axis_report"))


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
        "remedies",
    }
    assert set(report.skipped) == {"devices", "phase_diagram", "batchnorm_depth", "glorot_fig8"}
    assert report.skipped["devices"] == "not both CPU and CUDA runs present"
    assert not report.problems
    for files in report.figures.values():
        assert all(path.exists() and path.parent == report.out_dir for path in files.paths)


@pytest.mark.parametrize(
    ("which", "swept"),
    [
        ("three_axis_report", ["act", "depth", "batchnorm"]),
        ("report", ["act", "depth", "batchnorm", "clip"]),
    ],
)
def test_no_drawn_number_pools_a_swept_axis(request, which: str, swept: list[str]) -> None:
    """Every number any figure drew comes from the seeds of one configuration."""
    report = request.getfixturevalue(which)
    configs = report.summary[swept].drop_duplicates()
    assert len(configs) == report.summary["run_key"].nunique()
    for name, files in report.figures.items():
        for record in files.records:
            data = record.data
            assert (data["configs"] == 1).all(), f"{name} {record.page.title}: pools configurations"
            assert data["seeds"].between(1, 2).all(), name
            if name not in ("phase_diagram", "glorot_fig8", "batchnorm_depth", "bulk_error"):
                missing = set(swept) - set(data.columns) - set(record.page.values)
                assert not missing, f"{name} drew without keys for {missing}"


def test_captions_say_what_is_pooled_and_how_figures_are_split(report) -> None:
    """Captions come from the data: 2 replicas pooled; clip, the fourth axis, gets a file each."""
    histograms = report.figures["histograms"]
    assert [p.name for p in histograms.paths] == [
        "histograms--clip-1.png",
        "histograms--clip-off.png",
    ]
    assert histograms.titles == ["clip = 1", "clip off"]
    assert histograms.note == (
        "histograms: counts summed over 2 seeds. One file per value of clip (2 files)."
    )
    assert report.figures["layer_profile"].note == (
        "lines: median over 2 seeds; bands min to max. One file per value of clip (2 files)."
    )
    html = (report.out_dir / "index.html").read_text()
    assert "Cells: median over 2 seeds." in html and "over axes not shown" not in html


def test_sweep_parquet_holds_every_row(report, smoke_sweep: Path) -> None:
    rows = sum(pq.read_metadata(p).num_rows for p in smoke_sweep.glob("*/grad_stats.parquet"))
    table = pq.read_table(report.out_dir / "sweep.parquet")
    assert table.num_rows == rows and "grad_hist" not in table.column_names


def test_summary_matches_run_files(report, smoke_sweep: Path) -> None:
    summary = report.summary
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert len(summary) == 24 * 2
    csv = pd.read_csv(report.out_dir / "summary.csv")
    assert len(csv) == len(summary) and list(csv.columns) == list(SUMMARY_COLUMNS)
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


def test_stream_gradients_are_not_part_of_the_total_norm(new_axes_sweep: Path) -> None:
    """Residual runs record dL/dh on the stream; like dL/dz it is no parameter gradient."""
    summary = summarize(*scan(RunSet([new_axes_sweep])))
    for path in new_axes_sweep.glob("*res*/grad_stats.parquet"):
        raw = pd.read_parquet(path)
        assert (raw["tensor"] == "stream").any()
        for replica, rows in raw.groupby("replica"):
            row = summary[
                (summary["run_key"] == rows["run_key"].iloc[0]) & (summary["replica"] == replica)
            ].iloc[0]
            np.testing.assert_allclose(
                row["max_total_norm"], rows["total_grad_norm"].max(), rtol=1e-12
            )


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
        meta = run_metadata(yaml.safe_dump(values), result.execution.metadata(), "ok", footer)
        write_run(result.stats, tmp_path / f"s{values['seed']}" / "grad_stats.parquet", meta)
    runs = RunSet([tmp_path])
    from_footers = summary_table(runs)
    scanned = summarize(*scan(runs)).sort_values(["run_key", "replica"], ignore_index=True)
    assert ((from_footers["weight_ratio"] > 0) & (from_footers["weight_ratio"] < 1e-10)).all()
    pd.testing.assert_frame_equal(from_footers, scanned, check_dtype=False, rtol=1e-15, atol=0)


def test_html_embeds_every_figure(report) -> None:
    html = (report.out_dir / "index.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == sum(len(files.paths) for files in report.figures.values())
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'src="http' not in html and "<script" not in html
    assert "weight_ratio" in html and "Not drawn: not both CPU and CUDA runs present" in html


def test_html_summary_shows_swept_axes_and_metrics_and_the_rest_once(report) -> None:
    html = (report.out_dir / "index.html").read_text()
    table = re.search(r"<table class='summary'>(.*?)</table>", html, re.S).group(1)
    header = [h.replace("<wbr>", "") for h in re.findall(r"<th>(.*?)</th>", table)]
    metrics = [c for c in METRIC_COLUMNS if c != "replica"]
    assert header == ["act", "depth", "batchnorm", "clip", "seed", *metrics]
    same = re.search(r"<p class='same'>Same in every run: (.*?)\.</p>", html).group(1)
    constant = [c for c in CONFIG_COLUMNS if c not in header]
    assert [part.split(" ")[0] for part in same.split(", ")] == constant
    assert "width = 20" in same and "output_act on" in same and "steps = 2" in same
    rows = re.findall(r"<tr>(.*?)</tr>", table)[1:]
    assert len(rows) == len(report.summary)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[0])
    assert cells[:5] == ["relu", "3", "off", "1", "42"]


def test_markdown_summary_has_a_row_per_run(report) -> None:
    lines = (report.out_dir / "summary.md").read_text().splitlines()
    assert lines[0].startswith("| run_key | act |") and len(lines) == 2 + len(report.summary)


@pytest.fixture
def damaged(smoke_sweep: Path, tmp_path: Path) -> Path:
    """A copy of five runs: one refused (schema version 99), one truncated, one failed, 2 intact.

    The failed run's attempt left an incomplete file beside its FAILED.txt.
    """
    runs = sorted(smoke_sweep.glob("*/grad_stats.parquet"))[:5]
    for run in runs:
        shutil.copytree(run.parent, tmp_path / run.parent.name)
    files = sorted(tmp_path.glob("*/grad_stats.parquet"))
    table = pq.read_table(files[0])
    meta = {**table.schema.metadata, b"gradsweep.schema_version": b"99"}
    pq.write_table(table.replace_schema_metadata(meta), files[0])
    files[1].write_bytes(files[1].read_bytes()[:2000])
    files[2].write_bytes(files[2].read_bytes()[:2000])
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
    """The command on one run dir (the whole sweep's report is built in-process above)."""
    run_dir = sorted(smoke_sweep.glob("*/grad_stats.parquet"))[0].parent
    done = subprocess.run(
        [sys.executable, "-m", "gradsweep.report", str(run_dir), "-o", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "index.html").exists()


def test_cpu_and_cuda_runs_of_one_configuration_get_the_device_figure(
    smoke_sweep: Path, tmp_path: Path
) -> None:
    """A run file relabelled as measured on CUDA next to its CPU original draws figure (g)."""
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
    assert "devices" in report.figures
    assert report.figures["devices"].paths[0].read_bytes().startswith(b"\x89PNG")
