"""gradsweep's Hydra sweeper plugin (Hydra loads plugins only from `hydra_plugins`).

A basic sweeper that checks every job's values before the first job starts.

Hydra already rejects unknown keys and bad choices while composing each job;
this adds the numeric ranges of `gradsweep.config.validate`, so that
`depth=5,0` fails at once instead of after the first run.
"""


from dataclasses import dataclass
from typing import Dict, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException

from gradsweep.config import ConfigValueError, validate


class ValidatingSweeper(BasicSweeper):
    """BasicSweeper whose batch validation also applies gradsweep's range checks."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        assert self.hydra_context is not None and self.config is not None
        for overrides in batch:
            job_cfg = self.hydra_context.config_loader.load_sweep_config(
                master_config=self.config, sweep_overrides=list(overrides)
            )
            try:
                validate(job_cfg)
            except ConfigValueError as err:
                raise ConfigCompositionException(f"{err} (job overrides: {' '.join(overrides)})") from None


@dataclass
class ValidatingSweeperConf:
    _target_: str = "hydra_plugins.gradsweep_sweeper.validating_sweeper.ValidatingSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="gradsweep", node=ValidatingSweeperConf, provider="gradsweep")

