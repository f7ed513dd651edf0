"""The `gradsweep` command: Hydra's main with one-line errors and documented exit statuses.

Exit statuses:

- 0: every run is complete;
- 1: some runs failed (each with a one-line reason, and FAILED.txt in its run dir
  where that can be written), or gradsweep itself failed;
- 2: refused before any run started: an unknown key, a bad type, choice or value,
  a bad sweeper option, or a sweep dir that cannot be created (and, for a single
  run, a device that is not there).

Hydra prints an error raised before any job (composition, validation) over several
lines and exits 1, as it does for a run that fails. `run_command` runs Hydra's main with
its documented `HYDRA_FULL_ERROR=1`, so that every such error reaches it unchanged,
and the error's type decides: a user error (Hydra's and OmegaConf's exceptions,
`ConfigValueError`, `CannotStart`) exits 2, anything else 1. A single run that
fails outside its task (Hydra cannot write the run dir's `.hydra/` record or log)
is reported as a failed run. `CheckValues`, a Hydra callback, validates a single
run's values and the sweeper options before Hydra creates any run dir.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gradsweep.config import ConfigValueError, check_sweeper_options, validate
from gradsweep.hydra_internals import FULL_ERROR_ENV, exceptions_raised, stop_from_callback
from gradsweep.run_plan import PlannedRun, write_failure
from gradsweep.schema import FAILURE_FILE

RUNS_FAILED = 1
REFUSED = 2


class CannotStart(Exception):
    """Nothing can run (the sweep dir cannot be created); the message says why, in one line."""


USER_ERRORS = (HydraException, OmegaConfBaseException, ConfigValueError, CannotStart)

# The single run's composed config, once its values passed and Hydra starts its job.
_single_run: DictConfig | None = None


class CheckValues(Callback):
    """Refuses bad values before Hydra creates a run dir (`hydra.callbacks` in conf/config.yaml).

    A single run's values and every sweeper option are checked before the job
    starts; a sweep's jobs are checked by gradsweep's sweeper, before the first.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _single_run
        _refuse_bad_values(config, run=True)
        _single_run = config

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_bad_values(config, run=False)


def _refuse_bad_values(config: DictConfig, run: bool) -> None:
    """The sweeper options (and a single run's values) are valid, or Hydra stops with one line."""
    sweeper = config.hydra.get("sweeper") or {}
    try:
        check_sweeper_options(sweeper.get("group_size", 1), sweeper.get("max_batch_size"))
        if run:
            validate(config)
    except ConfigValueError as err:
        stop_from_callback(f"gradsweep: error: {err}", REFUSED)


def _joined(lines: list[str]) -> str:
    """Message lines as one: a list after a line ending in ':' is comma-separated."""
    text, listing = "", False
    for line in lines:
        if text:
            text += ", " if listing and not text.endswith(":") else " "
        text += line
        listing = listing or line.endswith(":")
    return text


def one_line(err: BaseException) -> str:
    """`err` in one line: its message, and its cause's first line (Hydra shows OmegaConf's)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if isinstance(err, OmegaConfBaseException):
        key = getattr(err, "full_key", None)
        lines = lines[:1] + ([f"(key: {key})"] if key else [])
    text = _joined(lines) or type(err).__name__
    if not isinstance(err, USER_ERRORS):
        text = f"{type(err).__name__}: {text}"
    cause = _cause_line(err.__cause__) if err.__cause__ is not None else ""
    return f"{text} ({cause})" if cause else text


def _cause_line(cause: BaseException) -> str:
    """A cause's first line; of a traceback formatted in a worker (joblib's), its first error."""
    lines = [line for line in str(cause).strip().strip('"').strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if lines[0].startswith("Traceback (most recent call last)"):
        errors = [line for line in lines[1:] if not line[0].isspace()]
        return errors[0] if errors else ""
    return lines[0] if isinstance(cause, USER_ERRORS) else f"{type(cause).__name__}: {lines[0]}"


def failure_line(error: str, run_dir: Path, written: bool) -> str:
    """The console line of a single run that failed: the reason, and where the traceback is."""
    where = (
        f"traceback in {run_dir / FAILURE_FILE}"
        if written
        else f"no {FAILURE_FILE} written in {run_dir}"
    )
    return f"gradsweep: run failed: {error} ({where})"


def _record_single_run_failure(cfg: DictConfig, err: BaseException) -> str:
    """FAILED.txt for a single run that failed outside its task, where it can be written."""
    run_dir = OmegaConf.select(cfg, "hydra.runtime.output_dir", default=None)
    error = one_line(err)
    if not run_dir:
        return f"gradsweep: run failed: {error}"
    app = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    run = PlannedRun(app, Path(run_dir), list(cfg.hydra.overrides.task))
    details = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return failure_line(error, run.run_dir, write_failure(run, error, details))


def is_user_error(err: BaseException) -> bool:
    """One of USER_ERRORS, not wrapping another error (Hydra wraps a plugin's crash in its own)."""
    cause = err.__cause__
    return isinstance(err, USER_ERRORS) and (cause is None or isinstance(cause, USER_ERRORS))


def run_command(hydra_main: Callable[[], Any]) -> None:
    """Run Hydra's main; print an error that reaches here in one line, exit with its status."""
    full_traceback = os.environ.get(FULL_ERROR_ENV) == "1"
    try:
        with exceptions_raised():
            hydra_main()
    except Exception as err:
        if full_traceback:
            traceback.print_exc()
        user_error = is_user_error(err)
        if _single_run is not None and not user_error:
            print(_record_single_run_failure(_single_run, err), file=sys.stderr)
        else:
            print(f"gradsweep: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(REFUSED if user_error else RUNS_FAILED) from None
