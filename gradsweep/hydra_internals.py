"""Every use gradsweep makes of Hydra's internals, each behind one name.

The sweeper extends Hydra's basic sweeper and reuses Hydra's own override and
composition code, none of which is a public Hydra API: any Hydra release may
move or change it. It is reached only through this module, and
tests/test_hydra_internals.py checks each use and names the Hydra API that
changed when one fails.

Hydra's plugin scan executes every module of `hydra._internal.core_plugins`
again, even one already imported, which redefines its classes: a class derived
from the old `BasicSweeper` is then no longer a `BasicSweeper`. The `gradsweep`
command imports this module before Hydra starts, so `BasicSweeper` is imported
when first asked for (by the sweeper, after the scan), never with this module.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn
from omegaconf import DictConfig

if TYPE_CHECKING:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

__all__ = [
    "FULL_ERROR_ENV",
    "BasicSweeper",
    "apply_value_overrides",
    "batches",
    "compose_job_config",
    "exceptions_raised",
    "expand_sweep",
    "failed_job_error",
    "is_config_group",
    "stop_from_callback",
    "sweeper_params",
]


def _basic_sweeper() -> type[BasicSweeper]:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return BasicSweeper


def __getattr__(name: str) -> Any:
    """`BasicSweeper`, imported on first use (see the module's docstring)."""
    if name == "BasicSweeper":
        return _basic_sweeper()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sweeper_params(sweeper: BasicSweeper) -> list[str]:
    """`hydra.sweeper.params` as override strings (`BasicSweeper._parse_config`)."""
    return sweeper._parse_config()


def expand_sweep(overrides: Sequence[Override]) -> list[list[str]]:
    """Every job of a sweep as its override strings, in Hydra's order (`split_arguments`)."""
    batched = _basic_sweeper().split_arguments(list(overrides), None)
    return [job for batch in batched for job in batch]


def batches(jobs: list[list[str]], max_batch_size: int | None) -> list[list[list[str]]]:
    """Jobs in launch batches of `hydra.sweeper.max_batch_size` (`split_overrides_to_chunks`)."""
    return list(_basic_sweeper().split_overrides_to_chunks(jobs, max_batch_size))


def is_config_group(config_loader: ConfigLoader, name: str) -> bool:
    """Whether `name` is a config group (`ConfigLoaderImpl.repository.group_exists`)."""
    return bool(config_loader.repository.group_exists(name))  # type: ignore[attr-defined]


def compose_job_config(
    config_loader: ConfigLoader, master_config: DictConfig, overrides: Sequence[str]
) -> DictConfig:
    """A sweep job's full config, composed as its launcher will (`load_sweep_config`)."""
    return config_loader.load_sweep_config(
        master_config=master_config, sweep_overrides=list(overrides)
    )


def apply_value_overrides(overrides: Sequence[Override], cfg: DictConfig) -> None:
    """Apply parsed `key=value` overrides to `cfg` in place, raising what composition would.

    (`ConfigLoaderImpl._apply_overrides_to_config`)
    """
    ConfigLoaderImpl._apply_overrides_to_config(list(overrides), cfg)


def failed_job_error(result: JobReturn) -> Any:
    """The exception a failed job raised (`JobReturn._return_value`; `return_value` re-raises)."""
    return result._return_value


FULL_ERROR_ENV = "HYDRA_FULL_ERROR"


@contextmanager
def exceptions_raised() -> Iterator[None]:
    """Within: Hydra's main raises an error as it is, instead of printing it and exiting 1.

    (`HYDRA_FULL_ERROR=1`, read by `hydra._internal.utils.run_and_report`; restored after)
    """
    saved = os.environ.get(FULL_ERROR_ENV)
    os.environ[FULL_ERROR_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(FULL_ERROR_ENV, None)
        else:
            os.environ[FULL_ERROR_ENV] = saved


def stop_from_callback(message: str, status: int) -> NoReturn:
    """Stop Hydra from inside a callback: print `message`, exit with `status`.

    Hydra's callback runner (`hydra._internal.callbacks.Callbacks._notify`) turns an
    Exception a callback raises into a warning and goes on; it lets SystemExit through.
    """
    print(message, file=sys.stderr)
    raise SystemExit(status)
