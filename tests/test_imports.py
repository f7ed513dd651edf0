"""Import weight: Hydra's plugin discovery, planning a sweep and reading runs need no torch.

Each check runs in a fresh interpreter, so that what the test process already
imported does not count.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = "hydra_plugins.gradsweep_sweeper.validating_sweeper"

UNRELATED_APP = f"""\
import sys

import hydra


@hydra.main(version_base=None, config_path=".", config_name="app")
def task(cfg):
    print("loaded:", *[m for m in ("torch", "pandas", "{PLUGIN}") if m in sys.modules])


task()
"""


def modules_after(code: str, cwd: Path) -> set[str]:
    """The modules loaded once `code` has run in a fresh interpreter started in `cwd`."""
    probe = f"{code}\nimport sys\nprint('loaded:', *sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.splitlines()[-1].split()[1:])


def test_an_unrelated_hydra_app_imports_neither_torch_nor_pandas(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(UNRELATED_APP)
    (tmp_path / "app.yaml").write_text("greeting: hello\n")
    for mode in ([], ["-m"]):
        proc = subprocess.run(
            [sys.executable, "app.py", *mode],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        loaded = set(proc.stdout.splitlines()[-1].split()[1:])
        assert PLUGIN in loaded, "Hydra's plugin discovery did not import gradsweep's sweeper"
        assert not loaded & {"torch", "pandas"}, f"loaded by plugin discovery: {loaded}"


NOT_NEEDED = {
    PLUGIN: {"torch", "pandas", "gradsweep"},
    "gradsweep.sweeper": {"torch", "pandas"},
    "gradsweep.group_plan": {"torch", "pandas"},
    "gradsweep.hydra_internals": {"torch", "pandas"},
    "gradsweep.theory": {"torch", "pandas"},
    "gradsweep.store": {"torch"},
    "gradsweep.summary": {"torch"},
    "gradsweep.report": {"torch"},
    "gradsweep.export.__main__": {"torch", "tensorboard", "wandb"},
    "gradsweep.export.callback": {"torch", "pandas", "tensorboard", "wandb"},
}


@pytest.mark.parametrize(("module", "unwanted"), NOT_NEEDED.items(), ids=list(NOT_NEEDED))
def test_importing_a_module_loads_nothing_it_does_not_need(
    module: str, unwanted: set[str], tmp_path: Path
) -> None:
    loaded = modules_after(f"import {module}", tmp_path)
    assert not loaded & unwanted, f"import {module} loads {sorted(loaded & unwanted)}"


def test_reading_a_sweep_imports_no_torch(make_sweep, tmp_path: Path) -> None:
    sweep = make_sweep("read_light", "act=sigmoid,relu", "depth=2", "steps=2")
    code = (
        "from gradsweep.store import RunSet\n"
        "from gradsweep.summary import summary_table\n"
        f"runs = RunSet([{str(sweep)!r}])\n"
        "assert len(runs.files) == 2, runs.files\n"
        "assert summary_table(runs)['run_key'].nunique() == 2\n"
    )
    assert "torch" not in modules_after(code, tmp_path)


@pytest.mark.slow
def test_building_a_report_imports_no_torch(make_sweep, tmp_path: Path) -> None:
    sweep = make_sweep("report_light", "act=sigmoid,relu", "depth=2", "steps=2")
    out = tmp_path / "report"
    code = (
        f"from gradsweep.report import main\nassert main([{str(sweep)!r}, '-o', {str(out)!r}]) == 0"
    )
    assert "torch" not in modules_after(code, tmp_path)
    assert (out / "index.html").is_file()
