"""The model's tables of implementations are keyed by the config schema's Enums, and checked."""

from __future__ import annotations

from enum import Enum

import pytest

from gradsweep.config import Activation, BiasInit, Init
from gradsweep.model import ACTIVATIONS, BIAS_INITS, WEIGHT_INITS
from gradsweep.model.choices import check_covers, choice


@pytest.mark.parametrize(
    ("enum", "table"), [(Activation, ACTIVATIONS), (Init, WEIGHT_INITS), (BiasInit, BIAS_INITS)]
)
def test_every_schema_choice_has_an_implementation_and_nothing_else(
    enum: type[Enum], table: dict
) -> None:
    assert list(table) == list(enum)


class _Colour(str, Enum):
    red = "red"
    blue = "blue"


def test_a_table_missing_a_choice_or_implementing_a_non_choice_is_refused() -> None:
    check_covers(_Colour, {_Colour.red: 1, _Colour.blue: 2}, "COLOURS")
    with pytest.raises(TypeError, match=r"COLOURS .* missing \['blue'\]"):
        check_covers(_Colour, {_Colour.red: 1}, "COLOURS")
    with pytest.raises(TypeError, match=r"not a choice \['green'\]"):
        check_covers(_Colour, {_Colour.red: 1, _Colour.blue: 2, "green": 3}, "COLOURS")


def test_choice_takes_names_or_members_and_lists_the_enum_on_a_bad_value() -> None:
    assert choice(_Colour, "colour", "red") is _Colour.red
    assert choice(_Colour, "colour", _Colour.blue) is _Colour.blue
    with pytest.raises(
        ValueError, match=r"^colour='green' is not valid; choose one of: red, blue$"
    ):
        choice(_Colour, "colour", "green")
