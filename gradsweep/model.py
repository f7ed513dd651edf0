"""The MLPs gradsweep measures: an nn.Sequential builder and its init schemes.

`build_mlp` is the single source of truth for architecture and initialisation;
the run loop stacks several of its networks (one per replica) into batched
parameters, so a replica is exactly the network `build_mlp` gives for its seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from gradsweep.config import BiasInit, Init

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "gelu": nn.GELU,
    "selu": nn.SELU,
    "identity": nn.Identity,
}

INIT_SCHEMES: tuple[str, ...] = tuple(member.value for member in Init)
BIAS_INITS: tuple[str, ...] = tuple(member.value for member in BiasInit)


def _choice_error(key: str, value: str, choices: tuple[str, ...] | list[str]) -> ValueError:
    return ValueError(f"{key}={value!r} is not valid; choose one of: {', '.join(choices)}")


def init_linear_(layer: nn.Linear, init: str, init_scale: float, bias_init: str) -> None:
    """Initialise one freshly built Linear layer in place; `init_scale` multiplies the scheme's std.

    `default` keeps the draws nn.Linear made, weight and bias, so that a seeded
    network is exactly what `torch.manual_seed(seed)` and plain nn.Linear
    layers give, as in the exercise; other schemes redraw the weight only.
    """
    w = layer.weight
    with torch.no_grad():
        if init == "default":
            w.mul_(init_scale)
        elif init == "xavier_uniform":
            nn.init.xavier_uniform_(w, gain=init_scale)
        elif init == "xavier_normal":
            nn.init.xavier_normal_(w, gain=init_scale)
        elif init == "kaiming_uniform":
            nn.init.kaiming_uniform_(w, a=0.0, nonlinearity="relu")
            w.mul_(init_scale)
        elif init == "kaiming_normal":
            nn.init.kaiming_normal_(w, a=0.0, nonlinearity="relu")
            w.mul_(init_scale)
        elif init == "orthogonal":
            nn.init.orthogonal_(w, gain=init_scale)
        elif init == "normal":
            nn.init.normal_(w, mean=0.0, std=init_scale)
        elif init == "fan_in":
            nn.init.normal_(w, mean=0.0, std=init_scale / math.sqrt(layer.in_features))
        else:
            raise _choice_error("init", init, INIT_SCHEMES)
        if layer.bias is None:
            return
        if bias_init == "zeros":
            nn.init.zeros_(layer.bias)
        elif bias_init != "default":
            raise _choice_error("bias_init", bias_init, BIAS_INITS)


def layer_sizes(
    depth: int, width: int, in_features: int, out_features: int
) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of each Linear layer, input side first."""
    dims = [in_features] + [width] * (depth - 1) + [out_features]
    return list(zip(dims[:-1], dims[1:]))


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
    seed: int | None = None,
) -> nn.Sequential:
    """Linear -> [BatchNorm1d] -> activation, `depth` times, as in the exercise.

    BatchNorm follows every hidden Linear layer, never the 1-unit output where it
    would make a mean-of-output loss constant. The output layer gets the
    activation only when `output_act` is true. With `seed`, initialisation draws
    from a private generator state, so the global RNG is left untouched.
    """
    if act not in ACTIVATIONS:
        raise _choice_error("act", act, list(ACTIVATIONS))
    if depth < 1:
        raise ValueError(f"depth={depth} is not valid; depth must be >= 1")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if (
            seed is not None
        ):  # the CPU generator only: torch.manual_seed also queues GPU seeding, ~1 ms a call
            torch.default_generator.manual_seed(seed)
        modules: list[nn.Module] = []
        sizes = layer_sizes(depth, width, in_features, out_features)
        for index, (fan_in, fan_out) in enumerate(sizes):
            is_output = index == depth - 1
            linear = nn.Linear(fan_in, fan_out)
            init_linear_(linear, init, init_scale, bias_init)
            modules.append(linear)
            if batchnorm and not is_output:
                modules.append(nn.BatchNorm1d(fan_out))
            if output_act or not is_output:
                modules.append(ACTIVATIONS[act]())
    return nn.Sequential(*modules)
