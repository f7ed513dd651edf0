"""`gradsweep.run`: one configuration run in this process, written as the CLI writes it.

For notebooks and scripts: the run dir is named as a sweep names it
(`run_dirname`), so pointing `out_dir` at a sweep dir reuses that sweep's file
when it holds the same configuration, and a complete file is never run twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from gradsweep.config import AppConfig, run_dirname


def run(out_dir: str | Path, reuse: Sequence[str | Path] = (), **config: Any) -> Path:
    """Run the configuration `config` (keys as on the command line) into `out_dir`; its run file.

    Unknown keys and bad choices raise as on the command line; the run file is
    the one `python -m gradsweep -m ... hydra.sweep.dir=out_dir` writes. A
    complete run file of the same configuration in one of the `reuse` sweep dirs
    is returned instead of running.
    """
    from gradsweep.job import execute_runs
    from gradsweep.run_plan import plan_runs
    from gradsweep.store import is_complete

    cfg = OmegaConf.merge(OmegaConf.structured(AppConfig), config)
    for sweep_dir in reuse:
        existing = Path(sweep_dir) / run_dirname(cfg) / cfg.stats_file
        if is_complete(existing):
            return existing
    overrides = [f"{key}={'null' if value is None else value}" for key, value in config.items()]
    (planned,) = plan_runs(cfg, Path(out_dir) / run_dirname(cfg), overrides)
    execute_runs([planned])
    return planned.stats_path
