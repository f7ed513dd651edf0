"""Registers gradsweep's sweeper with Hydra as `hydra/sweeper=gradsweep`.

Hydra imports every module under `hydra_plugins` while it discovers plugins, in
every Hydra app of the environment, and it instantiates plugin classes only
from this package. So this module holds just the class Hydra instantiates and
its config node; the sweeper itself, `gradsweep.sweeper.GradsweepSweeper`, is
imported when a gradsweep sweep starts.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class ValidatingSweeper(Sweeper):
    """The plugin Hydra instantiates; every call goes to `gradsweep.sweeper.GradsweepSweeper`."""

    def __init__(
        self,
        max_batch_size: Optional[int],
        params: Optional[Dict[str, str]] = None,
        group_size: int = 1,
    ) -> None:
        from gradsweep.sweeper import GradsweepSweeper

        self.sweeper = GradsweepSweeper(
            max_batch_size=max_batch_size, params=params, group_size=group_size
        )

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        return self.sweeper.sweep(arguments)


@dataclass
class ValidatingSweeperConf:
    _target_: str = "hydra_plugins.gradsweep_sweeper.validating_sweeper.ValidatingSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None
    group_size: int = 1


ConfigStore.instance().store(
    group="hydra/sweeper", name="gradsweep", node=ValidatingSweeperConf, provider="gradsweep"
)
