"""One replica as the exercise writes it: an nn.Sequential built from the layer plan.

A residual layer is one `ResidualBlock` module in it; every other layer is its
modules in a row, as in the exercise.
"""

from __future__ import annotations

import inspect
from functools import partial

import torch
from torch import nn

from gradsweep.config import BiasInit, Init
from gradsweep.model.choices import choice
from gradsweep.model.inits import init_linear_
from gradsweep.model.parts import plan_layers


def build_mlp(
    act: str = "sigmoid",
    depth: int = 5,
    width: int = 20,
    in_features: int = 10,
    out_features: int = 1,
    output_act: bool = True,
    init: str = "default",
    init_scale: float = 1.0,
    bias_init: str = "default",
    batchnorm: bool = False,
    norm: str = "none",
    residual: bool = False,
    branch_scale: float | str = 1.0,
    norm_position: str = "pre",
    seed: int | None = None,
) -> nn.Sequential:
    """Linear -> [norm] -> activation, `depth` times, as in the exercise, or the residual network
    of `residual=true` (`plan_layers`).

    With `seed`, initialisation draws from a private generator state, so the
    global RNG is left untouched.
    """
    plan = plan_layers(
        act,
        depth,
        width,
        in_features,
        out_features,
        output_act,
        batchnorm,
        norm,
        residual,
        branch_scale,
        norm_position,
    )
    init_linear = partial(
        init_linear_,
        init=choice(Init, "init", init),
        init_scale=init_scale,
        bias_init=choice(BiasInit, "bias_init", bias_init),
    )
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            # the CPU generator only: torch.manual_seed also queues a costly GPU seeding
            torch.default_generator.manual_seed(seed)
        modules = [
            module
            for layer in plan
            for module in layer.assemble([part.build(init_linear) for part in layer.parts])
        ]
    return nn.Sequential(*modules)


# The run's configuration keys that define its network: build_mlp's keyword arguments.
ARCH_KEYS: tuple[str, ...] = tuple(
    name for name in inspect.signature(build_mlp).parameters if name != "seed"
)
