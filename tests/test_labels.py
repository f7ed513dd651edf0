"""Configuration values as a reader writes them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gradsweep.labels import axis_value, configuration_text, readable, value_text


def test_values_read_as_written() -> None:
    assert value_text("init_scale", 0.70710678) == "0.707"
    assert value_text("lr", 0.05) == "0.05"
    assert value_text("depth", np.int64(20)) == "20"
    assert value_text("act", "relu") == "relu"
    assert value_text("batchnorm", np.True_) == "on"
    assert value_text("clip", math.nan) == "off" and value_text("clip", None) == "off"
    assert value_text("clip", 1.0) == "1"


def test_axis_values_name_the_axis() -> None:
    assert axis_value("init_scale", 0.70710678) == "init_scale = 0.707"
    assert axis_value("clip", math.nan) == "clip off"
    assert axis_value("batchnorm", False) == "batchnorm off"
    assert configuration_text({"act": "relu", "depth": 20, "batchnorm": True}) == (
        "act = relu, depth = 20, batchnorm on"
    )


def test_readable_keeps_distinct_values_apart_in_natural_order() -> None:
    frame = pd.DataFrame(
        {"depth": [10, 5, 20], "lr": [0.1001, 0.1002, 0.1001], "clip": [1.0, math.nan, 0.5]}
    )
    out = readable(frame, ["depth", "lr", "clip"])
    assert list(out["depth"].cat.categories) == ["5", "10", "20"]
    assert list(out["lr"].cat.categories) == ["0.1001", "0.1002"]
    assert list(out["clip"].cat.categories) == ["0.5", "1", "off"]
    assert out["clip"].tolist() == ["1", "off", "0.5"]
