"""gradsweep: Hydra-configured sweeps that measure how gradients flow through neural networks.

The public functions: `load` reads runs into one pandas DataFrame, `run` runs
one configuration in this process and writes its run file, `build_mlp` builds
the network of one replica, `Recorder` records the same statistics from a
user's own training loop on any nn.Module. Each is imported on first use, so that
`import gradsweep` (done by Hydra's plugin discovery and by the CLI) loads
neither pandas nor pyarrow nor torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Recorder", "build_mlp", "load", "run"]
_HOMES = {
    "Recorder": "gradsweep.recorder",
    "build_mlp": "gradsweep.model",
    "load": "gradsweep.loading",
    "run": "gradsweep.running",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        from importlib import import_module

        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'gradsweep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
