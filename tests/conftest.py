"""Shared helpers: run the real gradsweep CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(
    *args: str, cwd: Path, module: str = "gradsweep", timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -m <module> ARGS` from `cwd`, with the repo's conf/, capturing text output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli(tmp_path: Path):
    """Run the CLI with tmp_path as working directory (so outputs/ lands there)."""
    return lambda *args, **kw: run_cli(*args, cwd=tmp_path, **kw)


@pytest.fixture(scope="session")
def make_sweep(tmp_path_factory: pytest.TempPathFactory):
    """Run a real multirun with the given overrides into a fresh dir; return the sweep dir."""

    def make(name: str, *overrides: str) -> Path:
        out = tmp_path_factory.mktemp(name)
        result = run_cli("-m", *overrides, f"hydra.sweep.dir={out}", cwd=out)
        assert result.returncode == 0, result.stderr
        return out

    return make


THREE_AXES = ["act=sigmoid,relu", "depth=3,5", "batchnorm=false,true", "replicas=2", "steps=2"]


@pytest.fixture(scope="session")
def three_axis_sweep(make_sweep) -> Path:
    """A real multirun over act x depth x batchnorm: 8 runs of 2 replicas, 3 logged steps."""
    return make_sweep("three_axes", *THREE_AXES)
