"""The optional extras an export needs, imported on use, with one line naming a missing one."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """An export's optional dependency is not installed; the message names the extra."""


def require(extra: str, module: str) -> ModuleType:
    """Import `module` of the `extra` extra, or raise MissingExtra saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtra(
            f"gradsweep.export {extra} needs the `{extra}` extra: "
            f"pip install 'gradsweep[{extra}]' ({type(err).__name__}: {err})"
        ) from None
