"""The analysis notebooks, executed headless against a real smoke sweep."""

from __future__ import annotations

import os
import re
from pathlib import Path

import jupytext
import pytest
from nbclient import NotebookClient

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"
SMOKE = ["act=sigmoid,tanh", "batchnorm=false,true", "clip=null,1.0", "steps=2"]


@pytest.fixture(scope="module")
def sweep_dir(make_sweep) -> Path:
    """A real multirun of the exercise's sigmoid, tanh and BatchNorm networks, depth 5, seed 42."""
    return make_sweep("nb_sweep", *SMOKE)


def execute(name: str, sweep_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run analysis/<name>.py as a notebook; return all its text output."""
    monkeypatch.setenv("GRADSWEEP_SWEEP_DIR", str(sweep_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = jupytext.read(ANALYSIS / f"{name}.py")
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": os.getcwd()}}
    ).execute()
    outputs = [
        o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    ]
    return "".join(o.get("text", "") for o in outputs), outputs


def test_exercise_notebook_agrees_with_run_files(
    sweep_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text, _ = execute("gradient_flow_exercise", sweep_dir, monkeypatch)
    assert text.count("agrees with the run file") == 6
    for config in (
        "{'act': 'sigmoid', 'batchnorm': False, 'clip': None}",
        "{'act': 'tanh', 'batchnorm': False, 'clip': None}",
        "{'act': 'sigmoid', 'batchnorm': True, 'clip': None}",
    ):
        assert f"{config}: compared with {sweep_dir}/" in text
    ratio = float(re.search(r"last / first \(input side / output side\) = (\S+)", text).group(1))
    assert (
        ratio < 0.01
    )  # the exercise's vanishing criterion; the values themselves are checked against the run files
    deep = {
        (act, name): float(value)
        for act, name, value in re.findall(
            r"depth 50, (\w+), ([\w +]+): dL/dz last / first = (\S+)", text
        )
    }
    assert len(deep) == 12
    for act in ("sigmoid", "tanh", "relu"):
        assert deep[act, "plain"] < 1e-10  # every activation vanishes at depth 50
        for name in ("residual", "residual + LayerNorm"):
            assert 1e-2 < deep[act, name] < 1e2, (act, name)  # the answer's factor of 100
    assert 0.1 < deep["tanh", "LayerNorm"] < 10 and deep["sigmoid", "LayerNorm"] < 1e-10


def test_sweep_explorer_draws_the_report_figures(
    sweep_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text, outputs = execute("sweep_explorer", sweep_dir, monkeypatch)
    assert "8 run files; swept axes: ['act', 'batchnorm', 'clip']" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # all but the CPU vs CUDA figure; clipping (hue clip, panels act) is one file per batchnorm
    assert len(images) == 7
    assert "lines: median over 1 seed" not in text and "lines: one seed each." in text


def test_recorder_walkthrough_records_a_cnn_and_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRADSWEEP_RECORDER_DIR", str(tmp_path))
    text, outputs = execute("recorder_walkthrough", tmp_path, monkeypatch)
    assert "the run file's row agrees with the gradient" in text
    assert "logged steps: [0, 5, 10, 15, 20, 25, 30, 35, 40]" in text
    first, last = map(float, re.search(r"step 0: (\S+), at step 40: (\S+)", text).groups())
    assert last < 0.5 * first  # the CNN learns the synthetic classes
    assert (tmp_path / "small_cnn" / "grad_stats.parquet").is_file()
    assert (tmp_path / "report" / "index.html").is_file()
    assert "'loss_total', 'module_histograms', 'module_profile', 'module_steps'" in text
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 2
