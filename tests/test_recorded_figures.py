"""The report of Recorder files: figures over the module order, what does not apply, a summary."""

from __future__ import annotations

from html import escape
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import gradsweep
from gradsweep import recorded_figures
from gradsweep.report import CAPTIONS, build_report, main


def record_cnn(out: Path, seed: int, steps: int = 5) -> Path:
    """A small CNN with BatchNorm trained on synthetic images, recorded every other step."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 8 * 8, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradsweep.Recorder(
        model, out, watch_outputs=(nn.Conv2d, nn.Linear), log_every=2, hist_every=2
    ) as recorder:
        for step in range(steps):
            x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            recorder.step(step, loss)
            optimizer.step()
            optimizer.zero_grad()
    return recorder.path


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recordings")
    record_cnn(root / "cnn_a", seed=0)
    record_cnn(root / "cnn_b", seed=1)
    return root


def test_a_report_of_recordings_draws_every_module_figure(
    recordings: Path, tmp_path, capsys
) -> None:
    assert main([str(recordings), "-o", str(tmp_path)]) == 0
    assert capsys.readouterr().out.endswith(": 2 recordings, 4 recording figures\n")
    report_files = {p.name for p in tmp_path.iterdir()}
    figures = {f"{name}.png" for name in recorded_figures.CAPTIONS}
    assert figures | {"recorded.csv", "recorded.md", "index.html", "sweep.parquet"} <= report_files
    assert "summary.csv" not in report_files  # no sweep file, no sweep summary
    html = (tmp_path / "index.html").read_text()
    assert "Recorded models" in html and escape(recorded_figures.NOT_APPLICABLE) in html
    assert html.count("<img") == len(recorded_figures.CAPTIONS)
    for name, caption in CAPTIONS.items():  # no sweep or theory figure, none drawn empty
        assert escape(caption) not in html, name


def test_the_recordings_summary_holds_the_run_files_numbers(recordings: Path, tmp_path) -> None:
    report = build_report([recordings], tmp_path)
    summary = report.recorded.summary.set_index("recording")
    assert list(summary.index) == ["cnn_a", "cnn_b"]
    for name, row in summary.iterrows():
        frame = gradsweep.load(recordings / name)
        params = frame[frame["param_norm"].notna()]
        assert row["max_grad_norm"] == params["grad_norm"].max()
        assert row["final_step"] == 4 and row["logged_steps"] == 3
        assert row["modules"] == 4 and row["model"] == "Sequential"
        assert row["final_loss"] == frame.loc[frame["step"] == 4, "loss"].iloc[0]
    assert not summary["diverged"].any()
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "recorded.csv"), report.recorded.summary, check_dtype=False
    )


def test_the_module_profile_takes_the_module_order_as_its_layer_axis(recordings: Path) -> None:
    from gradsweep.store import RunSet

    rows = recorded_figures.module_rows(RunSet([recordings]).of_source("recorder"))
    first = rows[rows["step"] == 0]
    order = first.groupby("layer")["module"].first().to_dict()
    assert order == {0: "0", 1: "1", 2: "3", 3: "6"}
    (fig,) = recorded_figures.module_profile(rows)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["0: 0", "1: 1", "2: 3", "3: 6"]
    outputs = first[first["kind"] == "dL/d(output)"]
    assert sorted(outputs["module"].unique()) == ["0", "3", "6"]  # Conv2d, Conv2d, Linear


def test_sweep_and_recorder_files_get_a_section_each(recordings: Path, tmp_path: Path) -> None:
    sweep_file = gradsweep.run(tmp_path / "sweep", steps=1)
    report = build_report([recordings, sweep_file], tmp_path / "report")
    assert len(report.summary) == 1 and len(report.recorded.summary) == 2
    assert "layer_profile" in report.figures
    html = (tmp_path / "report" / "index.html").read_text()
    assert "<h2 id='summary'>Summary</h2>" in html and "Recorded models" in html


def test_histogram_counts_sum_the_first_histogram_step_of_each_recording(recordings: Path) -> None:
    from gradsweep.store import RunSet

    runs = RunSet([recordings]).of_source("recorder")
    counts = recorded_figures.histogram_counts(runs)
    names = recorded_figures.recordings(runs).set_index("run_key")["recording"]
    for key, part in counts.groupby("run_key"):
        frame = gradsweep.load(recordings / names[key], histograms=True, steps=0)
        params = frame[frame["tensor"] != "output"]
        expected = sum(params["grad_hist"])
        assert part.sort_values("bin")["count"].tolist() == list(expected)
        assert part["count"].sum() == params["numel"].sum()
