"""gradsweep: Hydra-configured sweeps that measure how gradients flow through neural networks.

`gradsweep.load(paths...)` reads runs into one pandas DataFrame. It is imported
on first use, so that `import gradsweep` (done by Hydra's plugin discovery and
by the CLI) loads neither pandas nor pyarrow nor torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from gradsweep.loading import load

        return load
    raise AttributeError(f"module 'gradsweep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
