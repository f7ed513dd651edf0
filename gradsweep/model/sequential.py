"""One replica as the exercise writes it: an nn.Sequential built from the layer plan.

A residual layer is one `ResidualBlock` module in it; every other layer is its
modules in a row, as in the exercise.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn

from gradsweep.config import BiasInit, Init
from gradsweep.model.choices import choice
from gradsweep.model.inits import init_linear_
from gradsweep.model.parts import part_modules, plan_layers


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
    init_linear = _linear_init(init, init_scale, bias_init)
    with _drawing(seed):
        modules = [
            module
            for layer in plan
            for module in layer.assemble([part.build(init_linear) for part in layer.parts])
        ]
    return nn.Sequential(*modules)


def replica_networks(
    arch: Mapping[str, Any], inits: Sequence[tuple[int, float]]
) -> Iterator[nn.Sequential]:
    """`build_mlp(**arch, init_scale=scale, seed=seed)` for each (seed, scale) of `inits`.

    One network is built and drawn again in place for each next replica, which
    gives the values a new build_mlp would without building any module; so each
    must be read before the next is asked for.
    """
    (seed, scale), *rest = inits
    model = build_mlp(**{**arch, "init_scale": scale}, seed=seed)
    yield model
    modules = part_modules(model)
    for seed, scale in rest:
        init_linear = _linear_init(arch["init"], scale, arch["bias_init"])
        with _drawing(seed):
            for module in modules:
                # what the module's constructor drew (nn.Linear) or set (the norms), in build order
                reset = getattr(module, "reset_parameters", None)
                if reset is not None:
                    reset()
                if isinstance(module, nn.Linear):
                    init_linear(module)
        yield model


def _linear_init(init: str, init_scale: float, bias_init: str) -> Callable[[nn.Linear], None]:
    return partial(
        init_linear_,
        init=choice(Init, "init", init),
        init_scale=init_scale,
        bias_init=choice(BiasInit, "bias_init", bias_init),
    )


@contextmanager
def _drawing(seed: int | None) -> Iterator[None]:
    """Draw from the state of `seed`, leaving the global RNG untouched; without one, from it."""
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            # the CPU generator only: torch.manual_seed also queues a costly GPU seeding
            torch.default_generator.manual_seed(seed)
        yield


# The run's configuration keys that define its network: build_mlp's keyword arguments.
ARCH_KEYS: tuple[str, ...] = tuple(
    name for name in inspect.signature(build_mlp).parameters if name != "seed"
)
