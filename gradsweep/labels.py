"""Configuration values as a reader writes them, for every figure title, legend and table.

`value_text` gives the value alone (`0.707`, `off`, `relu`); `axis_value` names the
axis too (`init_scale = 0.707`, `clip off`, `batchnorm on`). `readable` turns a
frame's axis columns into ordered text categories with enough digits to keep
distinct values distinct.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Integral, Real

import numpy as np
import pandas as pd

DIGITS = 3
# Axes whose null value means the feature is switched off.
OFF_WHEN_NULL = frozenset({"clip"})
ON_OFF = frozenset({"on", "off"})


def _is_null(value: object) -> bool:
    return value is None or (isinstance(value, Real) and value != value)


def value_text(axis: str, value: object, digits: int = DIGITS) -> str:
    """A value of `axis` as a reader writes it: `digits` significant digits, on/off for switches."""
    if isinstance(value, str):
        return value
    if _is_null(value):
        return "off" if axis in OFF_WHEN_NULL else "none"
    if isinstance(value, (bool, np.bool_)):
        return "on" if value else "off"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        return f"{float(value):.{digits}g}"
    return str(value)


def axis_value(axis: str, value: object, digits: int = DIGITS) -> str:
    """`axis = value` (`init_scale = 0.707`), or `axis on/off` for switches (`clip off`)."""
    text = value_text(axis, value, digits)
    return f"{axis} {text}" if text in ON_OFF else f"{axis} = {text}"


def configuration_text(values: Mapping[str, object], sep: str = ", ") -> str:
    """Several axis values in one line: `act = relu, depth = 20, batchnorm off`."""
    return sep.join(axis_value(axis, value) for axis, value in values.items())


def distinct_digits(axis: str, values: Iterable[object]) -> int:
    """The fewest significant digits (at least DIGITS) that keep distinct `values` apart as text."""
    unique = pd.unique(pd.Series(list(values), dtype=object))
    for digits in range(DIGITS, 17):
        if len({value_text(axis, v, digits) for v in unique}) == len(unique):
            return digits
    return 17


def natural_order(values: pd.Series) -> list:
    """Distinct values in natural order: numbers by value (null last), anything else by text."""
    unique = list(pd.unique(values))
    numbers = [
        v for v in unique if isinstance(v, Real) and not isinstance(v, (bool, np.bool_)) and v == v
    ]
    if len(numbers) + sum(_is_null(v) for v in unique) == len(unique):
        return sorted(numbers) + [v for v in unique if _is_null(v)]
    return sorted(unique, key=str)


def readable(frame: pd.DataFrame, axes: Iterable[str]) -> pd.DataFrame:
    """A copy of `frame` with each of `axes` as text categories (`value_text`) in natural order."""
    out = frame.copy()
    for axis in axes:
        column = out[axis].astype(object)
        digits = distinct_digits(axis, column)
        order = [value_text(axis, v, digits) for v in natural_order(column)]
        texts = column.map(lambda v, d=digits, a=axis: value_text(a, v, d))
        out[axis] = pd.Categorical(texts, categories=order, ordered=True)
    return out
