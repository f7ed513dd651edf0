"""Registers `hydra/launcher: gradsweep_slurm`, hydra-submitit-launcher's Slurm launcher with
gradsweep's waiting (gradsweep.slurm_launch): a job that ends without a result (cancelled,
preempted, timed out, lost) becomes a failed run instead of a hang or a crashed sweep.

Hydra only instantiates launchers defined under `hydra_plugins`, so the class is here; its
work is imported when a sweep launches, so plugin discovery imports neither torch nor
submitit. Without the launchers extra (hydra-submitit-launcher) nothing is registered.
"""

from dataclasses import dataclass
from typing import List, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn

try:
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # the launchers extra is not installed: no gradsweep_slurm
    pass
else:

    class GradsweepSlurmLauncher(SlurmLauncher):
        """SlurmLauncher that waits by squeue and turns a job without a result into a failed run."""

        def launch(
            self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
        ) -> List[JobReturn]:
            from gradsweep.slurm_launch import launch

            return launch(self, job_overrides, initial_job_idx)

    @dataclass
    class GradsweepSlurmQueueConf(SlurmQueueConf):
        """Every SlurmQueueConf field, launched by GradsweepSlurmLauncher."""

        _target_: str = "hydra_plugins.gradsweep_launcher.slurm_launcher.GradsweepSlurmLauncher"

    ConfigStore.instance().store(
        group="hydra/launcher",
        name="gradsweep_slurm",
        node=GradsweepSlurmQueueConf(),
        provider="gradsweep",
    )
