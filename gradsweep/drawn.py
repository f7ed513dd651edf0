"""What a figure drew: one row per drawn number, with the values it shows and what it pooled.

Figures compute every median, band and sum with `pool`, which counts the seeds
(run and replica) and the configurations behind each number; the figure keeps
that frame (`record`, read back with `drawn`), so a caption can say what was
pooled and a test can check that no number mixes two configurations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from gradsweep.facets import Page, page_path
from gradsweep.schema import CONFIG_COLUMNS

SEED_ID = ["run_key", "replica"]
_ATTRIBUTE = "_gradsweep_drawn"


@dataclass(frozen=True)
class Pooling:
    """How one kind of mark pools seeds: `lines: median over 4 seeds; bands min to max`."""

    mark: str
    statistic: str
    band: str | None = None

    def text(self, seeds: str, pooled: bool) -> str:
        """This pooling as caption text; `seeds` counts them ('4 seeds', '2 to 4 seeds')."""
        if not pooled:
            return f"{self.mark}: one seed each"
        band = f"; {self.band}" if self.band else ""
        return f"{self.mark}: {self.statistic} over {seeds}{band}"


@dataclass(frozen=True)
class Drawn:
    """A figure's record: `data` has one row per drawn number (keys, statistics, seeds, configs)."""

    data: pd.DataFrame
    poolings: tuple[Pooling, ...]
    page: Page

    @property
    def pooling(self) -> str:
        """What this figure's marks pool, as caption text."""
        return pooling_text(self.data["seeds"], self.poolings)


def pool(
    frame: pd.DataFrame, by: Sequence[str], column: str, stats: Sequence[str] = ("median",)
) -> pd.DataFrame:
    """Per group of `by`: `stats` of `column`, the seeds pooled and how many configurations."""
    keys = [c for c in CONFIG_COLUMNS if c in frame]
    work = frame.assign(
        _config=frame.groupby(keys, dropna=False).ngroup(),
        _seed=frame.groupby(SEED_ID, dropna=False).ngroup(),
    )
    grouped = work.groupby(list(by), dropna=False, sort=True, observed=True)
    out = grouped[column].agg(list(stats))
    out["seeds"] = grouped["_seed"].nunique()
    out["configs"] = grouped["_config"].nunique()
    return out.reset_index()


def seeds_text(seeds: pd.Series) -> str:
    """'1 seed', '4 seeds' or '2 to 4 seeds'."""
    low, high = int(seeds.min()), int(seeds.max())
    if low == high:
        return f"{low} seed" + ("s" if low != 1 else "")
    return f"{low} to {high} seeds"


def pooling_text(seeds: pd.Series, poolings: Sequence[Pooling]) -> str:
    """Caption text of `poolings` over the given seed counts."""
    text = seeds_text(seeds)
    return "; ".join(p.text(text, pooled=int(seeds.max()) > 1) for p in poolings) + "."


def record(
    fig: plt.Figure, data: pd.DataFrame, *poolings: Pooling, page: Page | None = None
) -> plt.Figure:
    """Keep on `fig` what it drew (`data`, from `pool`) and how its marks pool seeds."""
    setattr(fig, _ATTRIBUTE, Drawn(data, poolings, page or Page({}, "", "")))
    return fig


def caption_note(records: Sequence[Drawn]) -> str:
    """What the pages of one figure pool, and how they are split into files."""
    seeds = pd.concat([r.data["seeds"] for r in records], ignore_index=True)
    text = pooling_text(seeds, records[0].poolings)
    if len(records) > 1:
        axes = list(records[0].page.values)
        each = f"value of {axes[0]}" if len(axes) == 1 else "combination of " + " and ".join(axes)
        text += f" One file per {each} ({len(records)} files)."
    return text


def drawn(fig: plt.Figure) -> Drawn:
    """The record `record` kept on a figure."""
    return getattr(fig, _ATTRIBUTE)


@dataclass(frozen=True)
class FigureFiles:
    """One figure's PNG files (one per page) and what each page drew."""

    paths: list[Path]
    records: list[Drawn]

    @property
    def titles(self) -> list[str]:
        """Each page's title ('' for a figure of one page)."""
        return [r.page.title for r in self.records]

    @property
    def note(self) -> str:
        """Caption text: what the marks pool, and the split into files."""
        return caption_note(self.records)


def save_figures(figs: list[plt.Figure], out: Path, name: str) -> FigureFiles:
    """Write a figure's pages as PNG (`name.png`, or `name--axis-value.png` each) and close them."""
    records = [drawn(fig) for fig in figs]
    paths = [page_path(out, name, r.page) for r in records]
    for fig, path in zip(figs, paths):
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
    return FigureFiles(paths, records)
