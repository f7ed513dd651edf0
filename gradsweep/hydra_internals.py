"""Every use gradsweep makes of Hydra's internals, each behind one name.

The sweeper extends Hydra's basic sweeper and reuses Hydra's own override and
composition code, none of which is a public Hydra API: any Hydra release may
move or change it. It is reached only through this module, and
tests/test_hydra_internals.py checks each use and names the Hydra API that
changed when one fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn
from omegaconf import DictConfig

__all__ = [
    "BasicSweeper",
    "apply_value_overrides",
    "batches",
    "compose_job_config",
    "expand_sweep",
    "failed_job_error",
    "is_config_group",
    "sweeper_params",
]


def sweeper_params(sweeper: BasicSweeper) -> list[str]:
    """`hydra.sweeper.params` as override strings (`BasicSweeper._parse_config`)."""
    return sweeper._parse_config()


def expand_sweep(overrides: Sequence[Override]) -> list[list[str]]:
    """Every job of a sweep as its override strings, in Hydra's order (`split_arguments`)."""
    batched = BasicSweeper.split_arguments(list(overrides), None)
    return [job for batch in batched for job in batch]


def batches(jobs: list[list[str]], max_batch_size: int | None) -> list[list[list[str]]]:
    """Jobs in launch batches of `hydra.sweeper.max_batch_size` (`split_overrides_to_chunks`)."""
    return list(BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size))


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
