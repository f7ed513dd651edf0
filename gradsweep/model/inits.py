"""Weight and bias init schemes of a Linear layer, keyed by the schema's `Init` and `BiasInit`."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from gradsweep.config import BiasInit, Init
from gradsweep.model.choices import check_covers, choice


def _default(w: torch.Tensor, scale: float) -> None:
    w.mul_(scale)


def _kaiming_uniform(w: torch.Tensor, scale: float) -> None:
    nn.init.kaiming_uniform_(w, a=0.0, nonlinearity="relu")
    w.mul_(scale)


def _kaiming_normal(w: torch.Tensor, scale: float) -> None:
    nn.init.kaiming_normal_(w, a=0.0, nonlinearity="relu")
    w.mul_(scale)


def _fan_in(w: torch.Tensor, scale: float) -> None:
    nn.init.normal_(w, mean=0.0, std=scale / math.sqrt(w.shape[1]))


# Each redraws (`default`: rescales) an nn.Linear weight (out, in) in place, given init_scale.
WEIGHT_INITS: dict[Init, Callable[[torch.Tensor, float], None]] = {
    Init.default: _default,
    Init.xavier_uniform: lambda w, scale: nn.init.xavier_uniform_(w, gain=scale),
    Init.xavier_normal: lambda w, scale: nn.init.xavier_normal_(w, gain=scale),
    Init.kaiming_uniform: _kaiming_uniform,
    Init.kaiming_normal: _kaiming_normal,
    Init.orthogonal: lambda w, scale: nn.init.orthogonal_(w, gain=scale),
    Init.normal: lambda w, scale: nn.init.normal_(w, mean=0.0, std=scale),
    Init.fan_in: _fan_in,
}

# `default` keeps the bias nn.Linear drew.
BIAS_INITS: dict[BiasInit, Callable[[torch.Tensor], None]] = {
    BiasInit.default: lambda bias: None,
    BiasInit.zeros: nn.init.zeros_,
}

check_covers(Init, WEIGHT_INITS, "WEIGHT_INITS")
check_covers(BiasInit, BIAS_INITS, "BIAS_INITS")


def init_linear_(layer: nn.Linear, init: str, init_scale: float, bias_init: str) -> None:
    """Initialise one freshly built Linear layer in place; `init_scale` multiplies the scheme's std.

    `default` keeps the draws nn.Linear made, weight and bias, so that a seeded
    network is exactly what `torch.manual_seed(seed)` and plain nn.Linear
    layers give, as in the exercise; other schemes redraw the weight only.
    """
    weight_init = WEIGHT_INITS[choice(Init, "init", init)]
    bias_init_ = BIAS_INITS[choice(BiasInit, "bias_init", bias_init)]
    with torch.no_grad():
        weight_init(layer.weight, init_scale)
        if layer.bias is not None:
            bias_init_(layer.bias)
