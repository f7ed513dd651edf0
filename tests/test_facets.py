"""Where a figure shows each swept axis: encodings in order, determined axes joined, pages last."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd

from gradsweep import facets


def grid(**axes: list) -> pd.DataFrame:
    """Every combination of the given axis values, one row each."""
    return pd.DataFrame(list(itertools.product(*axes.values())), columns=list(axes))


def test_axes_fill_the_encodings_in_order_and_overflow_to_pages() -> None:
    frame = grid(act=["relu", "tanh"], depth=[5, 10], batchnorm=[False, True], width=[8, 16, 32])
    layout = facets.plan(frame, ["act", "depth", "batchnorm", "width", "lr"], ("hue", "col"))
    assert layout.slots == {"hue": ("act",), "col": ("depth",), "page": ("batchnorm", "width")}
    assert layout.shown == ["act", "depth", "batchnorm", "width"]


def test_an_axis_with_too_many_values_takes_the_next_encoding_that_holds_them() -> None:
    frame = grid(init_scale=[0.1 * i for i in range(1, 8)], act=["relu", "tanh"])
    layout = facets.plan(frame, ["init_scale", "act"], ("col", "row"))
    assert layout.slots == {"row": ("init_scale",), "col": ("act",)}


def test_an_axis_determined_by_a_placed_one_joins_it() -> None:
    frame = pd.DataFrame(
        {
            "sigma_w2": [1 / 3, 1.0, 1 / 3, 1.0],
            "init": ["default", "xavier"] * 2,
            "seed": [1, 1, 2, 2],
        }
    )
    layout = facets.plan(frame, ["sigma_w2", "init"], ("hue", "col"))
    assert layout.slots == {"hue": ("sigma_w2", "init")}
    encoded = facets.encode(frame, layout)
    assert encoded.keywords == {"hue": "sigma_w2, init"}
    assert list(encoded.frame["sigma_w2, init"].cat.categories) == ["0.333, default", "1, xavier"]
    assert encoded.title("hue", "0.333, default") == "sigma_w2 = 0.333, init = default"
    placed = facets.plan(frame, ["init"], (), placed={"x": ("sigma_w2",)})
    assert placed.slots == {"x": ("sigma_w2", "init")}


def test_pages_name_their_values_and_files(tmp_path: Path) -> None:
    frame = grid(act=["relu"], clip=[1.0, float("nan")], lr=[0.1, 0.2])
    layout = facets.plan(frame, ["clip", "lr"], ())
    pages = [page for page, _ in facets.pages(frame, layout)]
    assert [p.title for p in pages] == [
        "clip = 1, lr = 0.1",
        "clip = 1, lr = 0.2",
        "clip off, lr = 0.1",
        "clip off, lr = 0.2",
    ]
    assert facets.page_path(tmp_path, "fig", pages[2]).name == "fig--clip-off--lr-0.1.png"
    (only, rows), *rest = facets.pages(frame, facets.plan(frame, ["act"], ("hue",)))
    assert not rest and only.title == "" and len(rows) == len(frame)
    assert facets.page_path(tmp_path, "fig", only).name == "fig.png"


def test_batchnorm_and_norm_are_one_axis() -> None:
    """`batchnorm` is `norm == batch`: a batchnorm sweep shows batchnorm, a norm sweep norm."""
    legacy = pd.DataFrame({"batchnorm": [False, True], "norm": ["none", "batch"], "act": "relu"})
    assert facets.swept(legacy, facets.AXES) == ["batchnorm"]
    norms = pd.DataFrame(
        {"batchnorm": [False, True, False], "norm": ["none", "batch", "layer"], "depth": [5, 5, 9]}
    )
    assert facets.swept(norms, facets.AXES) == ["depth", "norm"]
