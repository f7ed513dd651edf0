"""Configuration choices as the schema's Enums, and tables of their implementations keyed by them.

`gradsweep.config` owns the valid names; the model's tables map each member to
its implementation, and `check_covers` makes a member without an
implementation (or an implementation for no member) an error at import.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any, TypeVar

from gradsweep.config import choice_error

E = TypeVar("E", bound=Enum)


def choice(enum: type[E], key: str, value: Any) -> E:
    """`value` (a member or its name) as a member of `enum`; a bad value lists the Enum's names."""
    try:
        return enum(value)
    except ValueError:
        raise choice_error(key, value, [str(member.value) for member in enum]) from None


def check_covers(enum: type[Enum], table: Mapping[Any, Any], name: str) -> None:
    """Raise unless `table`'s keys are exactly the members of `enum`."""
    missing = [member.value for member in enum if member not in table]
    extra = [key for key in table if not isinstance(key, enum)]
    if missing or extra:
        raise TypeError(
            f"{name} must implement every {enum.__name__} choice and nothing else: "
            f"missing {missing}, not a choice {extra}"
        )
