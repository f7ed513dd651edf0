"""The record of what a figure drew: seeds and configurations behind each number, caption text."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from gradsweep.drawn import Pooling, caption_note, drawn, pool, record
from gradsweep.facets import Page


def runs() -> pd.DataFrame:
    """Two configurations (batchnorm off and on) of two replicas each, two layers."""
    return pd.DataFrame(
        {
            "run_key": ["a"] * 4 + ["b"] * 4,
            "replica": [0, 0, 1, 1] * 2,
            "act": "relu",
            "batchnorm": [False] * 4 + [True] * 4,
            "layer": [0, 1] * 4,
            "grad_norm": [1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0],
        }
    )


def test_pool_counts_the_seeds_and_configurations_behind_each_number() -> None:
    apart = pool(runs(), ["batchnorm", "layer"], "grad_norm", ("median", "max"))
    assert apart["configs"].tolist() == [1, 1, 1, 1]
    assert apart["seeds"].tolist() == [2, 2, 2, 2]
    assert apart["median"].tolist() == [2.0, 3.0, 20.0, 30.0]
    pooled = pool(runs(), ["layer"], "grad_norm")
    assert pooled["configs"].tolist() == [2, 2] and pooled["seeds"].tolist() == [4, 4]


def test_the_caption_names_what_is_pooled_and_the_files() -> None:
    data = pool(runs(), ["batchnorm", "layer"], "grad_norm", ("median",))
    figs = [
        record(plt.figure(), data[data["batchnorm"] == bn], Pooling("lines", "median", "bands"))
        for bn in (False, True)
    ]
    assert drawn(figs[0]).pooling == "lines: median over 2 seeds; bands."
    pages = [
        record(fig, drawn(fig).data, *drawn(fig).poolings, page=Page({"batchnorm": bn}, "", ""))
        for fig, bn in zip(figs, (False, True))
    ]
    note = caption_note([drawn(fig) for fig in pages])
    assert note == "lines: median over 2 seeds; bands. One file per value of batchnorm (2 files)."
    single = record(plt.figure(), data.assign(seeds=1), Pooling("points", "mean"))
    assert drawn(single).pooling == "points: one seed each."
    plt.close("all")


def test_files_split_by_two_axes_are_named_as_combinations() -> None:
    data = pool(runs(), ["batchnorm", "layer"], "grad_norm")
    records = [
        drawn(record(plt.figure(), data, Pooling("lines", "median"), page=Page(values, "", "")))
        for values in ({"batchnorm": False, "act": "relu"}, {"batchnorm": True, "act": "relu"})
    ]
    assert caption_note(records).endswith(
        "One file per combination of batchnorm and act (2 files)."
    )
    plt.close("all")
