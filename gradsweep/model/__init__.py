"""The MLPs gradsweep measures, in both forms: one replica's nn.Sequential and K stacked replicas.

`parts.py` describes the block structure once; `build_mlp` builds one replica
from it (the exercise's network, with its RNG draws; a residual layer is one
`ResidualBlock` in it), `StackedMLP` stacks K of them for the run loop and
gives any replica back as an nn.Sequential.
"""

from gradsweep.model.inits import BIAS_INITS, WEIGHT_INITS, init_linear_
from gradsweep.model.parts import (
    ACTIVATIONS,
    BN_EPS,
    LN_EPS,
    ResidualBlock,
    layer_sizes,
    plan_for,
    plan_layers,
)
from gradsweep.model.sequential import ARCH_KEYS, build_mlp
from gradsweep.model.stacked import StackedMLP

__all__ = [
    "ACTIVATIONS",
    "ARCH_KEYS",
    "BIAS_INITS",
    "BN_EPS",
    "LN_EPS",
    "WEIGHT_INITS",
    "ResidualBlock",
    "StackedMLP",
    "build_mlp",
    "init_linear_",
    "layer_sizes",
    "plan_for",
    "plan_layers",
]
