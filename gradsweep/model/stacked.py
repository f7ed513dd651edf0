"""K replicas of one MLP, parameters stacked along a leading replica dim, run with batched matmuls.

Replica r holds exactly the parameters of the nn.Sequential `build_mlp` gives
for its (seed, init_scale); `replica(r)` gives that nn.Sequential back with the
current values. Both forms come from the same layer plan (`parts.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from gradsweep.model.parts import LayerPlan, part_modules, plan_for
from gradsweep.model.sequential import ARCH_KEYS, replica_networks
from gradsweep.probe.layout import TensorSpec


def plan_specs(plan: Sequence[LayerPlan], batch_size: int) -> list[TensorSpec]:
    """Each layer's parameters, its z_l, then a residual layer's h_l, in row order: known from the
    plan, before any tensor.

    A stacked parameter holds each replica's entry of the part's `numels`.
    """
    specs = []
    for index, layer in enumerate(plan):
        for part in layer.parts:
            for name, numel in zip(part.tensors, part.numels):
                specs.append(TensorSpec(index, name, numel, True))
        specs.append(TensorSpec(index, "preact", batch_size * layer.linear.fan_out, False))
        if layer.residual:
            specs.append(TensorSpec(index, "stream", batch_size * layer.linear.fan_out, False))
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
        # (Linear op, its tensors, (op, tensors) of each part after it): a plain layer's forward,
        # bound once, since small networks are bound by per-op overhead; a residual layer's
        # adds its parts before the Linear and after the addition
        self._ops = [
            (layer.linear.forward, *self._bound(layer, groups)) for layer, groups in self._layers
        ]

    @staticmethod
    def _bound(
        layer: LayerPlan, groups: Sequence[tuple[torch.Tensor, ...]]
    ) -> tuple[tuple[torch.Tensor, ...], tuple[Any, ...], tuple[tuple[Any, ...], ...] | None]:
        """A layer's Linear tensors, (op, tensors) of its parts after the Linear, and for a
        residual layer those of its parts before the Linear and after the addition."""
        bound = [(part.forward, own) for part, own in zip(layer.parts, groups)]
        n_before, n_after = len(layer.before), len(layer.after)
        after = tuple(bound[n_before + 1 : n_before + 1 + n_after])
        if not layer.residual:
            return groups[0], after, None
        return (
            groups[n_before],
            after,
            (tuple(bound[:n_before]), tuple(bound[n_before + 1 + n_after :])),
        )

    @classmethod
    def stack(
        cls,
        plan: Sequence[LayerPlan],
        models: Iterable[nn.Sequential],
        device: torch.device,
        dtype: torch.dtype,
    ) -> StackedMLP:
        """Stack the parameters of `models` (an nn.Sequential of `plan` a replica) into leaves.

        Each model is copied before the next is taken, so `models` may redraw one network.
        """
        parts = [part for layer in plan for part in layer.parts]
        copies = []  # per model, per part: its parameters in stacked layout
        for model in models:
            own = part_modules(model)
            if len(own) != len(parts):
                raise ValueError(f"a model of {len(own)} modules for a plan of {len(parts)} parts")
            copies.append(
                [
                    [t.detach().clone() for t in part.stacked(module)]
                    for part, module in zip(parts, own)
                ]
            )
        groups = [
            [
                torch.stack([per_model[index][i] for per_model in copies])
                .to(device=device, dtype=dtype)
                .requires_grad_(True)
                for i in range(len(part.tensors))
            ]
            for index, part in enumerate(parts)
        ]
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
        return cls.stack(plan_for(values), replica_networks(arch, inits), device, dtype)

    def parameters(self) -> list[torch.Tensor]:
        """Every stacked parameter, layer by layer, each part's in its `tensors` order."""
        return [t for _, groups in self._layers for group in groups for t in group]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output (K, B, out) of one input (B, in) and the recorded tensors (K, B, n) in spec
        order: each Linear layer's output z_l, and after it a residual layer's output h_l."""
        h = x.expand(self.replicas, *x.shape)
        recorded = []
        for linear, tensors, after, residual in self._ops:
            if residual is None:
                h = linear(h, tensors)
                recorded.append(h)
                for part, own in after:
                    h = part(h, own)
                continue
            before, post = residual
            branch = h
            for part, own in before:
                branch = part(branch, own)
            branch = linear(branch, tensors)
            recorded.append(branch)
            for part, own in after:
                branch = part(branch, own)
            h = h + branch
            for part, own in post:
                h = part(h, own)
            recorded.append(h)
        return h, recorded

    def tensor_specs(self, batch_size: int) -> list[TensorSpec]:
        """Each layer's parameters, its z_l, a residual layer's h_l: the tensors a run measures,
        in row order."""
        return plan_specs(self.plan, batch_size)

    def replica(self, r: int) -> nn.Sequential:
        """Replica r as the nn.Sequential build_mlp makes, holding copies of its current values."""
        modules = [
            module
            for layer, groups in self._layers
            for module in layer.assemble(
                [
                    part.view([t[r].detach() for t in group])
                    for part, group in zip(layer.parts, groups)
                ]
            )
        ]
        return nn.Sequential(*modules)
