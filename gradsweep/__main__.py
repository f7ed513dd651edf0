"""`python -m gradsweep`: the Hydra app. Thin: compose, run, write, report one line."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from gradsweep.config import ConfigValueError, register_configs, run_dirname, run_key
from gradsweep.experiment import DeviceUnavailableError, GradientFlowRun
from gradsweep.store import is_complete, run_metadata, write_run

log = logging.getLogger("gradsweep")

register_configs()

FAILURE_FILE = "FAILED.txt"


def _job_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def execute(cfg: DictConfig, job_dir: Path) -> str:
    """Run one configuration into `job_dir`; skip it if its stats file is already complete."""
    out = job_dir / cfg.stats_file
    if is_complete(out):
        log.info("%s: complete, skipped", out)
        return "skipped"
    (job_dir / FAILURE_FILE).unlink(missing_ok=True)
    runner = GradientFlowRun(cfg)
    result = runner.run()
    run_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    meta = run_metadata(OmegaConf.to_yaml(run_cfg, resolve=True), result.device_name,
                        "diverged" if "diverged" in result.status else "ok")
    write_run(result.stats, out, meta)
    status = ",".join(sorted(set(result.status)))
    log.info("%s  %s  %.2fs  %s", run_dirname(cfg), run_key(cfg), result.seconds, status)
    return status


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> str:
    """Hydra task: one run. User errors end the run with one line; other failures are recorded and re-raised."""
    job_dir = _job_dir()
    try:
        return execute(cfg, job_dir)
    except (ConfigValueError, DeviceUnavailableError) as err:
        (job_dir / FAILURE_FILE).write_text(f"{type(err).__name__}: {err}\n")
        print(f"gradsweep: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception:
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / FAILURE_FILE).write_text(traceback.format_exc())
        raise


if __name__ == "__main__":
    main()
