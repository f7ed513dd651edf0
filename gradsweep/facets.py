"""Which swept axis a figure shows where: as hue, line style, panel column or row, or one file each.

A figure never pools a swept axis it does not show. `plan` gives every axis
with more than one value a place, in priority order: the first free encoding
that holds its number of values, or the encoding of the axes that already
determine it (sigma_w^2 and init in a sweep over init alone), or else one file
per value (a page) when panels would become unreadable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gradsweep.config import Norm
from gradsweep.labels import axis_value, distinct_digits, natural_order, value_text
from gradsweep.schema import AXIS_PRIORITY, CONFIG_COLUMNS

# Every configuration column, in the order figures prefer them as axes (a column the schema
# gains without a place in AXIS_PRIORITY still counts as an axis, last).
AXES: tuple[str, ...] = (*AXIS_PRIORITY, *(c for c in CONFIG_COLUMNS if c not in AXIS_PRIORITY))
# The most values each encoding shows readably; more go to the next encoding or to pages.
CAPACITY = {"hue": 8, "style": 4, "col": 6, "row": 8}
ENCODINGS = tuple(CAPACITY)
PAGE = "page"


def swept(frame: pd.DataFrame, axes: Iterable[str]) -> list[str]:
    """The `axes` (in their order) that hold more than one value in `frame`.

    `batchnorm` is `norm == batch`, so the two are one axis: `batchnorm` where
    `norm` holds only none and batch (as in every sweep before `norm` existed),
    `norm` where it holds layer too.
    """
    found = [a for a in axes if a in frame and frame[a].nunique(dropna=False) > 1]
    if "batchnorm" in found and "norm" in found:
        only_batch = set(frame["norm"]) <= {Norm.none.value, Norm.batch.value}
        found.remove("norm" if only_batch else "batchnorm")
    return found


def _determined(frame: pd.DataFrame, by: Sequence[str], axis: str) -> bool:
    """True when each combination of `by` holds one value of `axis`."""
    return bool((frame.groupby(list(by), dropna=False)[axis].nunique(dropna=False) <= 1).all())


@dataclass(frozen=True)
class Layout:
    """Encoding (hue, style, col, row, page) -> the swept axes it shows, in the order given."""

    slots: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def axes(self, slot: str) -> tuple[str, ...]:
        """The axes an encoding shows (empty when unused)."""
        return self.slots.get(slot, ())

    @property
    def shown(self) -> list[str]:
        """Every swept axis this layout shows, pages included."""
        return [a for axes in self.slots.values() for a in axes]

    @property
    def pages(self) -> tuple[str, ...]:
        """Axes drawn one file per value."""
        return self.axes(PAGE)

    def column(self, slot: str) -> str | None:
        """Name of the label column `encode` writes for an encoding, None when unused."""
        axes = self.axes(slot)
        return ", ".join(axes) if axes else None


def plan(
    frame: pd.DataFrame,
    axes: Iterable[str],
    slots: Sequence[str],
    capacity: dict[str, int] | None = None,
    placed: dict[str, Sequence[str]] | None = None,
) -> Layout:
    """Place each swept axis in `slots`, in order, or with the axes that determine it; else pages.

    `placed` holds axes a figure has put in place itself (heatmap cells, x):
    they take no slot, and axes they determine join them.
    """
    capacity = {**CAPACITY, **(capacity or {})}
    held: dict[str, list[str]] = {s: list(a) for s, a in (placed or {}).items()}
    for axis in swept(frame, axes):
        if any(axis in axes_ for axes_ in held.values()):
            continue
        owner = next((s for s, axes_ in held.items() if _determined(frame, axes_, axis)), None)
        if owner is None:
            n = frame[axis].nunique(dropna=False)
            owner = next((s for s in slots if s not in held and n <= capacity.get(s, n)), PAGE)
        held.setdefault(owner, []).append(axis)
    return Layout({s: tuple(a) for s, a in held.items()})


@dataclass(frozen=True)
class Encoded:
    """A frame with a text label column per used encoding, seaborn's keywords, facet titles."""

    frame: pd.DataFrame
    keywords: dict[str, str]
    titles: dict[str, dict[str, str]]

    def title(self, slot: str, label: object) -> str:
        """The title of one label of an encoding (`init_scale = 0.707`); '' for an unused one."""
        return self.titles[slot][str(label)] if slot in self.titles and label is not None else ""

    def panel_title(self, row: object, col: object) -> str:
        """A panel's row and column values as a reader writes them: `row | col`."""
        return " | ".join(t for t in (self.title("row", row), self.title("col", col)) if t)


def label_column(frame: pd.DataFrame, axes: Sequence[str]) -> tuple[pd.Series, dict[str, str]]:
    """Ordered text labels of the value combinations of `axes`, and each one's title."""
    codes, texts = [], []
    for axis in axes:
        axis_codes, uniques = pd.factorize(frame[axis].astype(object), use_na_sentinel=False)
        digits = distinct_digits(axis, uniques)
        rank = {_key(v): i for i, v in enumerate(natural_order(pd.Series(uniques, dtype=object)))}
        texts.append(
            [
                (rank[_key(v)], value_text(axis, v, digits), axis_value(axis, v, digits))
                for v in uniques
            ]
        )
        codes.append(axis_codes)
    ids, combos = pd.factorize(pd.MultiIndex.from_arrays(codes))
    entries = sorted(
        ([texts[i][c] for i, c in enumerate(combo)], k) for k, combo in enumerate(combos)
    )
    position = np.empty(len(entries), dtype=int)
    position[[k for _, k in entries]] = np.arange(len(entries))
    labels = [", ".join(text for _, text, _ in parts) for parts, _ in entries]
    titles = {
        label: ", ".join(t for _, _, t in parts) for label, (parts, _) in zip(labels, entries)
    }
    column = pd.Categorical.from_codes(position[ids], categories=labels, ordered=True)
    return pd.Series(column, index=frame.index), titles


def _key(value: object) -> object:
    """Null values as one dictionary key (NaN != NaN)."""
    return None if value is None or value != value else value


def encode(frame: pd.DataFrame, layout: Layout) -> Encoded:
    """`frame` with a label column per used encoding (hue, style, col, row), and the keywords."""
    out = frame.copy()
    keywords: dict[str, str] = {}
    titles: dict[str, dict[str, str]] = {}
    for slot, axes in layout.slots.items():
        if slot not in ENCODINGS:
            continue
        name = layout.column(slot)
        out[name], titles[slot] = label_column(frame, axes)
        keywords[slot] = name
    return Encoded(out, keywords, titles)


def select(frame: pd.DataFrame, column: str | None, value: object) -> pd.DataFrame:
    """The rows whose label `column` is `value`; all rows when there is no such column."""
    return frame if column is None else frame[frame[column] == value]


def present(frame: pd.DataFrame, column: str | None) -> list:
    """The label values of `column` found in `frame`, in order; [None] without such a column."""
    if column is None:
        return [None]
    return [v for v in frame[column].cat.categories if (frame[column] == v).any()]


def title_facets(grid, encoded: Encoded) -> None:
    """Facet titles of a seaborn grid as a reader writes the values: `row title | col title`."""
    facets = [s for s in ("row", "col") if s in encoded.keywords]
    for key, ax in grid.axes_dict.items():
        names = dict(zip(facets, key if isinstance(key, tuple) else (key,)))
        ax.set_title(encoded.panel_title(names.get("row"), names.get("col")), fontsize=10)


@dataclass(frozen=True)
class Page:
    """One file of a figure: its page axes' values, as title and file-name part ('' if only one)."""

    values: dict[str, object]
    title: str
    slug: str


def pages(frame: pd.DataFrame, layout: Layout) -> Iterator[tuple[Page, pd.DataFrame]]:
    """(page, its rows), one per value combination of the page axes; one page without any."""
    axes = list(layout.pages)
    if not axes:
        yield Page({}, "", ""), frame
        return
    digits = {a: distinct_digits(a, frame[a].astype(object)) for a in axes}
    for values, part in frame.groupby(axes, dropna=False, sort=True):
        page = dict(zip(axes, values))
        title = ", ".join(axis_value(a, v, digits[a]) for a, v in page.items())
        slug = "--".join(f"{a}-{value_text(a, v, digits[a])}" for a, v in page.items())
        yield Page(page, title, re.sub(r"[^A-Za-z0-9._=-]+", "_", slug)), part


def page_path(out_dir: Path, name: str, page: Page) -> Path:
    """`name.png`, or `name--axis-value.png` for one page of several."""
    return out_dir / (f"{name}--{page.slug}.png" if page.slug else f"{name}.png")
