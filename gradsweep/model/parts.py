"""The block structure of gradsweep's MLPs, written once: each layer, a Linear and parts around it.

Every part has both forms the run needs: the module of one replica (`build`
draws its init, `view` holds given values) and the batched op on K stacked
replicas (`forward`), with its parameters' names in the run file's `tensor`
column. `plan_layers` is the one place that says which parts a layer has, so
a new layer kind is a new Part here and a line in `plan_layers`. A residual
layer adds its branch (the parts before the Linear, the Linear, the parts
after it) to its input and applies its `post` parts to the sum.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradsweep.config import (
    Activation,
    Norm,
    NormPosition,
    branch_scale_text,
    branch_scale_value,
    residual_layers,
    resolve_norm,
)
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

BN_EPS = 1e-5  # nn.BatchNorm1d's default eps, which `BatchNormPart.make` uses
LN_EPS = 1e-5  # nn.LayerNorm's default eps, which `LayerNormPart.make` uses


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


class AffineNormPart(Part):
    """A normalisation with a per-feature affine weight and bias, as its nn.Module makes it."""

    def __init__(self, features: int) -> None:
        self.features = features

    @property
    def numels(self) -> tuple[int, ...]:
        return self.features, self.features

    @abstractmethod
    def make(self, **factory: Any) -> nn.Module:
        """The norm module of `features`, with torch's factory keywords (device, dtype)."""

    def build(self, init_linear: Callable[[nn.Linear], None]) -> nn.Module:
        return self.make()

    def stacked(self, module: nn.Module) -> tuple[torch.Tensor, ...]:
        return module.weight, module.bias

    def view(self, tensors: Sequence[torch.Tensor]) -> nn.Module:
        weight, bias = tensors
        norm = self.make(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            norm.weight.copy_(weight)
            norm.bias.copy_(bias)
        return norm


class BatchNormPart(AffineNormPart):
    """nn.BatchNorm1d in training mode: batch statistics; the stacked form keeps no running ones."""

    tensors = ("bn_weight", "bn_bias")

    def make(self, **factory: Any) -> nn.Module:
        return nn.BatchNorm1d(self.features, eps=BN_EPS, **factory)

    def forward(self, h: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        weight, bias = tensors
        mean = h.mean(dim=1, keepdim=True)
        var = h.var(dim=1, unbiased=False, keepdim=True)
        return (h - mean) * torch.rsqrt(var + BN_EPS) * weight.unsqueeze(1) + bias.unsqueeze(1)


class LayerNormPart(AffineNormPart):
    """nn.LayerNorm over each sample's features, with its affine weight and bias."""

    tensors = ("ln_weight", "ln_bias")

    def make(self, **factory: Any) -> nn.Module:
        return nn.LayerNorm(self.features, eps=LN_EPS, **factory)

    def forward(self, h: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        weight, bias = tensors
        normed = F.layer_norm(h, (self.features,), eps=LN_EPS)
        return normed * weight.unsqueeze(1) + bias.unsqueeze(1)


class BranchScale(nn.Module):
    """Multiplies its input by a fixed number: the residual branch scale."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale!r}"


class ScalePart(Part):
    """The residual branch scale, a fixed number; it has no parameters."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def build(self, init_linear: Callable[[nn.Linear], None]) -> nn.Module:
        return BranchScale(self.scale)

    def view(self, tensors: Sequence[torch.Tensor]) -> nn.Module:
        return BranchScale(self.scale)

    def forward(self, h: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return h * self.scale


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


class ResidualBlock(nn.Module):
    """One residual layer of one replica: h -> post(h + branch(h))."""

    def __init__(self, branch: nn.Sequential, post: nn.Sequential) -> None:
        super().__init__()
        self.branch = branch
        self.post = post

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.post(h + self.branch(h))


@dataclass(frozen=True)
class LayerPlan:
    """One layer: its Linear, whose output is the layer's z_l (`preact`), and the parts around it.

    A plain layer is `linear`, then `after`. A `residual` layer's branch is
    `before`, `linear`, `after`; its output h_l (`stream`) is `post` applied to
    the sum of its input and its branch.
    """

    linear: LinearPart
    after: tuple[Part, ...]
    residual: bool = False
    before: tuple[Part, ...] = ()
    post: tuple[Part, ...] = ()

    @property
    def parts(self) -> tuple[Part, ...]:
        """Every part, in the order of the layer's parameters: branch first, then post."""
        return (*self.before, self.linear, *self.after, *self.post)

    def assemble(self, modules: Sequence[nn.Module]) -> list[nn.Module]:
        """The modules of one replica's layer, given one per part in `parts` order."""
        if not self.residual:
            return list(modules)
        branch = len(self.parts) - len(self.post)
        return [ResidualBlock(nn.Sequential(*modules[:branch]), nn.Sequential(*modules[branch:]))]


def part_modules(model: nn.Sequential) -> list[nn.Module]:
    """One replica's modules, one per part of its plan: residual blocks opened up."""
    modules: list[nn.Module] = []
    for module in model:
        if isinstance(module, ResidualBlock):
            modules += [*module.branch, *module.post]
        else:
            modules.append(module)
    return modules


def layer_sizes(
    depth: int, width: int, in_features: int, out_features: int
) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of each Linear layer, input side first."""
    dims = [in_features] + [width] * (depth - 1) + [out_features]
    return list(zip(dims[:-1], dims[1:]))


NORM_PARTS: dict[Norm, Callable[[int], Part] | None] = {
    Norm.none: None,
    Norm.batch: BatchNormPart,
    Norm.layer: LayerNormPart,
}
check_covers(Norm, NORM_PARTS, "NORM_PARTS")


def plan_layers(
    act: str,
    depth: int,
    width: int,
    in_features: int,
    out_features: int,
    output_act: bool,
    batchnorm: bool,
    norm: str = "none",
    residual: bool = False,
    branch_scale: float | str = 1.0,
    norm_position: str = "pre",
) -> list[LayerPlan]:
    """Linear -> [norm] -> activation, `depth` times, as in the exercise; or residual layers.

    The norm (`batchnorm=true` is `norm=batch`) follows every hidden Linear
    layer, never the 1-unit output where BatchNorm would make a mean-of-output
    loss constant. The output layer gets the activation only when `output_act`
    is true. With `residual`, every hidden layer whose widths agree becomes
    h -> h + scale * act(Linear(norm(h))) (`pre`) or norm(h + scale * act(Linear(h))) (`post`).
    """
    activation = choice(Activation, "act", act)
    make_norm = NORM_PARTS[choice(Norm, "norm", resolve_norm(batchnorm, norm))]
    position = choice(NormPosition, "norm_position", norm_position)
    if depth < 1:
        raise ValueError(f"depth={depth} is not valid; depth must be >= 1")
    scale = branch_scale_value(branch_scale_text(branch_scale), depth)
    skips = residual_layers(depth, width, in_features) if residual else [False] * depth
    if residual and not any(skips):
        raise ValueError(
            f"residual=true needs a hidden layer of equal input and output widths; depth={depth}, "
            f"in_features={in_features}, width={width} has none"
        )
    plan = []
    for index, (fan_in, fan_out) in enumerate(layer_sizes(depth, width, in_features, out_features)):
        is_output = index == depth - 1
        linear = LinearPart(fan_in, fan_out)
        if skips[index]:
            normed = () if make_norm is None else (make_norm(fan_in),)
            pre = position is NormPosition.pre
            after = (ActivationPart(activation), ScalePart(scale))
            plan.append(
                LayerPlan(linear, after, True, normed if pre else (), () if pre else normed)
            )
            continue
        parts: list[Part] = []
        if make_norm is not None and not is_output:
            parts.append(make_norm(fan_out))
        if output_act or not is_output:
            parts.append(ActivationPart(activation))
        plan.append(LayerPlan(linear, tuple(parts)))
    return plan


# The run keys that decide the layer plan: plan_layers' arguments.
PLAN_KEYS: tuple[str, ...] = tuple(inspect.signature(plan_layers).parameters)


def plan_for(values: Mapping[str, Any]) -> list[LayerPlan]:
    """The layer plan of a run's values (`config.run_values`)."""
    return plan_layers(**{key: values[key] for key in PLAN_KEYS})
