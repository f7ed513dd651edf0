"""The run file's schema: which columns a run file holds and what each means.

Every other module takes the run file's column names from here.
"""

from __future__ import annotations

CONFIG_COLUMNS: tuple[str, ...] = (
    "act",
    "depth",
    "width",
    "init",
    "init_scale",
    "bias_init",
    "batchnorm",
    "output_act",
    "device",
    "dtype",
    "optimizer",
    "lr",
    "batch_size",
    "data_seed",
    "steps",
    "loss_name",
    "clip",
)
# The configuration columns in the order figures prefer them as axes, most telling first.
AXIS_PRIORITY: tuple[str, ...] = (
    "act",
    "depth",
    "init_scale",
    "width",
    "init",
    "batchnorm",
    "clip",
    "output_act",
    "bias_init",
    "dtype",
    "device",
    "optimizer",
    "lr",
    "batch_size",
    "loss_name",
    "steps",
    "data_seed",
)
