"""benchmarks/chaos_sweep.py: a real sweep killed at random moments, resumed, equal bit for bit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "chaos_sweep.py"
FIGURES = re.compile(
    r"launcher (\w+): trials (\d+), kills during a write (\d+), runs redone (\d+), "
    r"files compared (\d+), differences (\d+)"
)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_sweep_killed_at_random_moments_resumes_bit_for_bit(tmp_path: Path, launcher: str):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--kills", "6", "--launcher", launcher, "--work", tmp_path],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = FIGURES.fullmatch(proc.stdout.strip().splitlines()[-1])
    assert found, proc.stdout[-3000:]
    name, trials, during_write, _, compared, differences = found.groups()
    assert (name, int(trials), int(differences)) == (launcher, 6, 0)
    assert int(compared) >= 30 and int(compared) % 30 == 0
    assert int(during_write) >= 1, "no kill landed while a run file was written"
