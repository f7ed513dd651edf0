"""The `gradsweep` command (gradsweep.cli): one-line errors, exit statuses, no dir for bad input."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, mounted_tmpfs, run_cli
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from gradsweep.cli import REFUSED, RUNS_FAILED, CannotStart, is_user_error, one_line
from gradsweep.config import ConfigValueError

# Composition (unknown key, bad type, bad choice, missing preset), range, infinite value,
# sweeper option: refused before any run, in a single run and in a sweep alike.
BAD_INPUT = [
    ("act=foo", "Error merging override act=foo (Invalid value 'foo', expected one of [sigmoid,"),
    ("foo=1", "Could not override 'foo'. To append to your config use +foo=1 (Key 'foo' not in"),
    ("depth=abc", "Error merging override depth=abc (Value 'abc' of type 'str' could not be"),
    ("experiment=nope", "Could not find 'experiment/nope' Available options in 'experiment': "),
    ("depth=0", "depth=0 is invalid: depth must be an integer >= 1"),
    ("init_scale=inf", "init_scale=inf is invalid: init_scale must be a finite number > 0"),
    ("hydra.sweeper.group_size=0", "hydra.sweeper.group_size=0 is invalid: it must be an integer"),
    ("hydra.sweeper.max_batch_size=0", "hydra.sweeper.max_batch_size=0 is invalid: it must be"),
]


def test_one_line_joins_messages_and_names_the_cause() -> None:
    try:
        try:
            raise ValidationError("Invalid value 'foo'\n    full_key: act\n    object_type=X")
        except ValidationError as cause:
            raise ConfigCompositionException("Error merging override act=foo") from cause
    except ConfigCompositionException as err:
        assert one_line(err) == "Error merging override act=foo (Invalid value 'foo')"
        assert is_user_error(err)
    listing = ConfigCompositionException("Could not find 'x/y'\n\nOptions in 'x':\n\ta\n\tb\n")
    assert one_line(listing) == "Could not find 'x/y' Options in 'x': a, b"
    crashed = OSError(28, "No space left on device")
    wrapped = ValueError("Unable to configure handler 'file'")
    wrapped.__cause__ = crashed
    assert one_line(wrapped) == (
        "ValueError: Unable to configure handler 'file' "
        "(OSError: [Errno 28] No space left on device)"
    )
    assert not is_user_error(wrapped)
    remote = ValueError("Unable to configure handler 'file'")
    remote.__cause__ = RuntimeError(
        '\n"""\nTraceback (most recent call last):\n  File "x.py", line 1, in f\n'
        "OSError: [Errno 30] Read-only file system: 'gradsweep.log'\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        'Traceback (most recent call last):\n  File "y.py"\nValueError: Unable\n"""'
    )
    assert one_line(remote) == (
        "ValueError: Unable to configure handler 'file' "
        "(OSError: [Errno 30] Read-only file system: 'gradsweep.log')"
    ), "the root error of a traceback a worker formatted (joblib)"
    plugin_crash = ConfigCompositionException("Error in call to target 'Sweeper'")
    plugin_crash.__cause__ = TypeError("a bug")
    assert not is_user_error(plugin_crash), "a crash wrapped by Hydra is not a user error"
    assert is_user_error(ConfigValueError("depth=0 is invalid")) and is_user_error(CannotStart())
    assert (REFUSED, RUNS_FAILED) == (2, 1)


@pytest.mark.parametrize(("override", "line"), BAD_INPUT, ids=[o for o, _ in BAD_INPUT])
def test_bad_input_in_a_single_run_exits_2_with_one_line_and_no_run_dir(
    tmp_path: Path, override: str, line: str
) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli(override, "steps=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == REFUSED, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("gradsweep: error: ") and line in proc.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize(("override", "line"), BAD_INPUT[::2], ids=[o for o, _ in BAD_INPUT[::2]])
def test_bad_input_in_a_sweep_exits_2_with_one_line_and_no_sweep_dir(
    tmp_path: Path, override: str, line: str
) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "seed=0,1", override, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == REFUSED, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("gradsweep: error: ") and line in proc.stderr
    assert not sweep.exists()


def test_a_sweep_dir_that_cannot_be_created_is_one_line_before_anything_starts(
    tmp_path: Path,
) -> None:
    (tmp_path / "file").write_text("not a dir")
    sweep = tmp_path / "file" / "sweep"
    proc = run_cli("-m", "seed=0,1", "steps=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == REFUSED
    assert (
        proc.stderr.strip()
        == f"gradsweep: error: cannot write the sweep dir {sweep}: Not a directory"
    )
    assert "Launching" not in proc.stdout


def test_a_single_run_that_hydra_cannot_record_fails_with_one_line(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "readonly", read_only=True) as run_dir:
        proc = run_cli("steps=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert not list(run_dir.iterdir())
    assert proc.returncode == RUNS_FAILED
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("gradsweep: run failed: ValueError: Unable to configure handler")
    assert "Read-only file system" in proc.stderr and f"no FAILED.txt written in {run_dir}" in (
        proc.stderr
    )


def _limit_address_space() -> None:
    """8 GiB of address space: torch starts, a 100000 x 100000 float32 weight (40 GB) cannot."""
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


def test_a_single_run_that_cannot_allocate_its_network_fails_with_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "gradsweep", "width=100000", "depth=3", f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        preexec_fn=_limit_address_space,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == RUNS_FAILED
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("gradsweep: run failed: RuntimeError: ")
    assert "can't allocate memory" in proc.stderr
    assert proc.stderr.strip().endswith(f"(traceback in {run_dir / 'FAILED.txt'})")
    failure = (run_dir / "FAILED.txt").read_text()
    assert failure.startswith("status: failed\nerror: RuntimeError: ") and "Traceback" in failure
