"""The block structure of gradsweep's MLPs, written once: each layer is a Linear and parts after it.

Every part has both forms the run needs: the module of one replica (`build`
draws its init, `view` holds given values) and the batched op on K stacked
replicas (`forward`), with its parameters' names in the run file's `tensor`
column. `plan_layers` is the one place that says which parts a layer has, so
a new layer kind is a new Part here and a line in `plan_layers`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gradsweep.config import Activation
from gradsweep.model.choices import check_covers, choice

ACTIVATIONS: dict[Activation, Callable[[], nn.Module]] = {
    Activation.sigmoid: nn.Sigmoid,
    Activation.tanh: nn.Tanh,
    Activation.relu: nn.ReLU,
    Activation.leaky_relu: lambda: nn.LeakyReLU(0.01),
    Activation.gelu: nn.GELU,
    Activation.selu: nn.SELU,
    Activation.identity: nn.Identity,
}
check_covers(Activation, ACTIVATIONS, "ACTIVATIONS")

BN_EPS = 1e-5  # nn.BatchNorm1d's default eps, which `BatchNormPart.build` and `view` use


class Part(ABC):
    """One step of a layer, as a module of one replica and as a batched op on (K, B, n) inputs.

    `tensors` names the part's parameters in stacked order; a stacked parameter
    is (K, ...) with each replica's entry in the layout `stacked` gives.
    """

    tensors: tuple[str, ...] = ()

    @property
    def numels(self) -> tuple[int, ...]:
        """Elements of one replica's parameters, in `tensors` order."""
        return ()

    @abstractmethod
    def build(self, init_linear: Callable[[nn.Linear], None]) -> nn.Module:
        """A fresh module of one replica; a Linear is initialised by `init_linear`."""

    def stacked(self, module: nn.Module) -> tuple[torch.Tensor, ...]:
        """A replica's module's parameters in stacked layout, in `tensors` order."""
        return ()

    @abstractmethod
    def view(self, tensors: Sequence[torch.Tensor]) -> nn.Module:
        """The module of one replica holding copies of its stacked-layout parameters `tensors`."""

    @abstractmethod
    def forward(self, h: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The part applied to every replica's (B, n) batch at once, with (K, ...) parameters."""


class LinearPart(Part):
    """nn.Linear; stacked, the weight is (K, in, out), nn.Linear's transposed, so that batched
    matmuls give it a contiguous gradient."""

    tensors = ("weight", "bias")

    def __init__(self, fan_in: int, fan_out: int) -> None:
        self.fan_in, self.fan_out = fan_in, fan_out

    @property
    def numels(self) -> tuple[int, ...]:
        return self.fan_in * self.fan_out, self.fan_out

    def build(self, init_linear: Callable[[nn.Linear], None]) -> nn.Module:
        linear = nn.Linear(self.fan_in, self.fan_out)
        init_linear(linear)
        return linear

    def stacked(self, module: nn.Module) -> tuple[torch.Tensor, ...]:
        return module.weight.T, module.bias

    def view(self, tensors: Sequence[torch.Tensor]) -> nn.Module:
        weight, bias = tensors
        linear = nn.utils.skip_init(
            nn.Linear, self.fan_in, self.fan_out, device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            linear.weight.copy_(weight.T)
            linear.bias.copy_(bias)
        return linear

    def forward(self, h: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        weight, bias = tensors
        return torch.baddbmm(bias.unsqueeze(1), h, weight)


class BatchNormPart(Part):
    """nn.BatchNorm1d in training mode: batch statistics; the stacked form keeps no running ones."""

    tensors = ("bn_weight", "bn_bias")

    def __init__(self, features: int) -> None:
        self.features = features

    @property
    def numels(self) -> tuple[int, ...]:
        return self.features, self.features

    def build(self, init_linear: Callable[[nn.Linear], None]) -> nn.Module:
        return nn.BatchNorm1d(self.features)

    def stacked(self, module: nn.Module) -> tuple[torch.Tensor, ...]:
        return module.weight, module.bias

    def view(self, tensors: Sequence[torch.Tensor]) -> nn.Module:
        weight, bias = tensors
        norm = nn.BatchNorm1d(self.features, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            norm.weight.copy_(weight)
            norm.bias.copy_(bias)
        return norm

    def forward(self, h: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        weight, bias = tensors
        mean = h.mean(dim=1, keepdim=True)
        var = h.var(dim=1, unbiased=False, keepdim=True)
        return (h - mean) * torch.rsqrt(var + BN_EPS) * weight.unsqueeze(1) + bias.unsqueeze(1)


class ActivationPart(Part):
    """An elementwise activation from ACTIVATIONS; it has no parameters."""

    def __init__(self, act: Activation) -> None:
        self.make = ACTIVATIONS[act]
        self.module = self.make()

    def build(self, init_linear: Callable[[nn.Linear], None]) -> nn.Module:
        return self.make()

    def view(self, tensors: Sequence[torch.Tensor]) -> nn.Module:
        return self.make()

    def forward(self, h: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.module(h)


@dataclass(frozen=True)
class LayerPlan:
    """One layer: its Linear, whose output is the layer's z_l (`preact`), then the parts after."""

    linear: LinearPart
    after: tuple[Part, ...]

    @property
    def parts(self) -> tuple[Part, ...]:
        return (self.linear, *self.after)


def layer_sizes(
    depth: int, width: int, in_features: int, out_features: int
) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of each Linear layer, input side first."""
    dims = [in_features] + [width] * (depth - 1) + [out_features]
    return list(zip(dims[:-1], dims[1:]))


def plan_layers(
    act: str,
    depth: int,
    width: int,
    in_features: int,
    out_features: int,
    output_act: bool,
    batchnorm: bool,
) -> list[LayerPlan]:
    """Linear -> [BatchNorm1d] -> activation, `depth` times, as in the exercise.

    BatchNorm follows every hidden Linear layer, never the 1-unit output where it
    would make a mean-of-output loss constant. The output layer gets the
    activation only when `output_act` is true.
    """
    activation = choice(Activation, "act", act)
    if depth < 1:
        raise ValueError(f"depth={depth} is not valid; depth must be >= 1")
    plan = []
    for index, (fan_in, fan_out) in enumerate(layer_sizes(depth, width, in_features, out_features)):
        is_output = index == depth - 1
        after: list[Part] = []
        if batchnorm and not is_output:
            after.append(BatchNormPart(fan_out))
        if output_act or not is_output:
            after.append(ActivationPart(activation))
        plan.append(LayerPlan(LinearPart(fan_in, fan_out), tuple(after)))
    return plan
