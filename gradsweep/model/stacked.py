"""K replicas of one MLP, parameters stacked along a leading replica dim, run with batched matmuls.

Replica r holds exactly the parameters of the nn.Sequential `build_mlp` gives
for its (seed, init_scale); `replica(r)` gives that nn.Sequential back with the
current values. Both forms come from the same layer plan (`parts.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from gradsweep.model.parts import LayerPlan, plan_layers
from gradsweep.model.sequential import ARCH_KEYS, build_mlp
from gradsweep.probe.layout import TensorSpec


def plan_specs(plan: Sequence[LayerPlan], batch_size: int) -> list[TensorSpec]:
    """Each layer's parameters, then its z_l, in row order: known from the plan, before any tensor.

    A stacked parameter holds each replica's entry of the part's `numels`.
    """
    specs = []
    for index, layer in enumerate(plan):
        for part in layer.parts:
            for name, numel in zip(part.tensors, part.numels):
                specs.append(TensorSpec(index, name, numel, True))
        specs.append(TensorSpec(index, "preact", batch_size * layer.linear.fan_out, False))
    return specs


class StackedMLP:
    """The stacked network: (K, ...) leaf tensors per part, a batched forward, its tensor specs."""

    def __init__(
        self, plan: Sequence[LayerPlan], tensors: Sequence[Sequence[torch.Tensor]]
    ) -> None:
        """`tensors[i]`: the stacked parameters of the i-th part of the plan, layers in order."""
        self.plan = list(plan)
        parts = [part for layer in self.plan for part in layer.parts]
        if len(tensors) != len(parts):
            raise ValueError(f"{len(tensors)} parameter groups for a plan of {len(parts)} parts")
        own = iter(tuple(group) for group in tensors)
        self._layers = [(layer, [next(own) for _ in layer.parts]) for layer in self.plan]
        self.replicas = next(t for group in tensors for t in group).shape[0]
        # (Linear op, its tensors, (op, tensors) of each part after it): the forward's loop, bound
        # once, since small networks are bound by per-op overhead
        self._ops = [
            (
                layer.linear.forward,
                groups[0],
                tuple((part.forward, own) for part, own in zip(layer.after, groups[1:])),
            )
            for layer, groups in self._layers
        ]

    @classmethod
    def stack(
        cls,
        plan: Sequence[LayerPlan],
        models: Sequence[nn.Sequential],
        device: torch.device,
        dtype: torch.dtype,
    ) -> StackedMLP:
        """Stack the parameters of `models` (an nn.Sequential of `plan` a replica) into leaves."""
        parts = [part for layer in plan for part in layer.parts]
        for model in models:
            if len(model) != len(parts):
                raise ValueError(
                    f"a model of {len(model)} modules for a plan of {len(parts)} parts"
                )
        groups = []
        for index, part in enumerate(parts):
            per_model = [part.stacked(model[index]) for model in models]
            groups.append(
                [
                    torch.stack([own[i].detach() for own in per_model])
                    .to(device=device, dtype=dtype)
                    .requires_grad_(True)
                    for i in range(len(part.tensors))
                ]
            )
        return cls(plan, groups)

    @classmethod
    def build(
        cls,
        values: Mapping[str, Any],
        inits: Sequence[tuple[int, float]],
        device: torch.device,
        dtype: torch.dtype,
    ) -> StackedMLP:
        """The network of a run's `values`; replica r is build_mlp's for (seed, scale) inits[r]."""
        arch = {key: values[key] for key in ARCH_KEYS}
        models = [build_mlp(**{**arch, "init_scale": scale}, seed=seed) for seed, scale in inits]
        plan = plan_layers(
            arch["act"],
            arch["depth"],
            arch["width"],
            arch["in_features"],
            arch["out_features"],
            arch["output_act"],
            arch["batchnorm"],
        )
        return cls.stack(plan, models, device, dtype)

    def parameters(self) -> list[torch.Tensor]:
        """Every stacked parameter, layer by layer, each part's in its `tensors` order."""
        return [t for _, groups in self._layers for group in groups for t in group]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output (K, B, out) of one input (B, in) and each Linear layer's output z_l (K, B, n)."""
        h = x.expand(self.replicas, *x.shape)
        preacts = []
        for linear, tensors, after in self._ops:
            h = linear(h, tensors)
            preacts.append(h)
            for part, own in after:
                h = part(h, own)
        return h, preacts

    def tensor_specs(self, batch_size: int) -> list[TensorSpec]:
        """Each layer's parameters, then its z_l: the tensors a run measures, in row order."""
        return plan_specs(self.plan, batch_size)

    def replica(self, r: int) -> nn.Sequential:
        """Replica r as the nn.Sequential build_mlp makes, holding copies of its current values."""
        modules = [
            part.view([t[r].detach() for t in group])
            for layer, groups in self._layers
            for part, group in zip(layer.parts, groups)
        ]
        return nn.Sequential(*modules)
