"""The run loop: K replicas of one MLP trained together, measured at every logged step.

Replica r is the network `build_mlp` gives for seed `seed + r`; all replicas see
the same data stream (seeded by `data_seed`), so `replicas=K` equals K separate
runs with seeds seed..seed+K-1. Their parameters are stacked along a leading
replica dimension and run through batched matmuls, which costs far less than K
separate processes for the small networks gradsweep studies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from gradsweep.config import run_key, validate
from gradsweep.execution import Execution, device_name
from gradsweep.model import StackedMLP, build_mlp
from gradsweep.probe import GradientProbe, HostCopies
from gradsweep.rows import build_rows

TEACHER_WIDTH = 32
DATA_CHUNK = 256
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class DeviceUnavailableError(RuntimeError):
    """The configured device does not exist on this machine."""


def resolve_device(name: str) -> torch.device:
    """`auto` takes CUDA when present; `cuda` without CUDA is a clear error, not a crash later."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            "device=cuda was requested but CUDA is not available on this machine "
            f"(torch {torch.__version__}); use device=cpu or device=auto"
        )
    return torch.device(name)


@dataclass
class RunResult:
    """What one run produced: tidy statistics rows, per-replica outcome, what decided its bits."""

    stats: pd.DataFrame
    status: list[str]
    diverged_step: list[int | None]
    execution: Execution
    seconds: float


class GradientFlowRun:
    """One configured run: `run()` trains and measures; `bare_step` is the bare baseline step."""

    def __init__(self, cfg: Any) -> None:
        self.values = validate(cfg)
        self.key = run_key(self.values)
        v = self.values
        self.device = resolve_device(v["device"])
        self.dtype = _DTYPES[v["dtype"]]
        inits = self.replica_inits()
        self.replicas = len(inits)
        self.network = StackedMLP.build(v, inits, self.device, self.dtype)
        self.params = self.network.parameters()
        self.specs = self.network.tensor_specs(v["batch_size"])
        self.probe = GradientProbe(self.specs, self.replicas, self.device, self.dtype)
        # What instrumented_step appends to the probe's packed result, one value per replica.
        self.tail: tuple[str, ...] = ("loss",) if v["clip"] is None else ("loss", "clip_factor")
        self._teacher = self._make_teacher()
        self._chunk = -1
        self.optimizer = self._make_optimizer()
        self._grad_order = self._spec_order()

    def _make_teacher(self) -> nn.Sequential | None:
        v = self.values
        if v["loss"] != "mse":
            return None
        return build_mlp(
            act="tanh",
            depth=2,
            width=TEACHER_WIDTH,
            in_features=v["in_features"],
            out_features=v["out_features"],
            output_act=False,
            seed=v["data_seed"] + 1_000_003,
        ).double()

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inputs (and teacher targets) of `step`, the same on every device and dtype.

        Batches are drawn on the CPU in float64, DATA_CHUNK steps at a time from a
        generator seeded by (data_seed, chunk), so any step can be reproduced
        without drawing all the steps before it and memory stays bounded.
        """
        chunk = step // DATA_CHUNK
        if chunk != self._chunk:
            v = self.values
            gen = torch.Generator().manual_seed(v["data_seed"] * 1_000_003 + chunk)
            x = torch.randn(
                DATA_CHUNK, v["batch_size"], v["in_features"], generator=gen, dtype=torch.float64
            )
            targets = None
            if self._teacher is not None:
                with torch.no_grad():
                    targets = self._to_device(self._teacher(x))
            self._inputs, self._targets, self._chunk = self._to_device(x), targets, chunk
        i = step % DATA_CHUNK
        return self._inputs[i], None if self._targets is None else self._targets[i]

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        """A CPU tensor in the run's device and dtype; to CUDA from pinned memory, not blocking."""
        host = host.to(self.dtype)
        if self.device.type != "cuda":
            return host.to(self.device)
        return host.pin_memory().to(self.device, non_blocking=True)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        v = self.values
        if v["optimizer"] == "adam":
            return torch.optim.Adam(self.params, lr=v["lr"])
        return torch.optim.SGD(self.params, lr=v["lr"], momentum=v["momentum"])

    def _spec_order(self) -> list[int]:
        """Index into params + recorded activations (each z_l, a residual layer's h_l) for each
        spec, so grads can be listed in spec order."""
        n_params = len(self.params)
        order, p, z = [], 0, n_params
        for spec in self.specs:
            if spec.is_param:
                order.append(p)
                p += 1
            else:
                order.append(z)
                z += 1
        return order

    def losses(self, out: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """Per-replica loss (K,): the exercise's mean of the output, or MSE to the teacher."""
        if targets is None:
            return out.mean(dim=(1, 2))
        return F.mse_loss(out, targets.expand_as(out), reduction="none").mean(dim=(1, 2))

    def clip_(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Clip each replica's total gradient norm in place (clip_grad_norm_ semantics).

        Returns the factor (K,) each replica's gradients were multiplied by.
        """
        k = self.replicas
        norms = torch.stack([torch.linalg.vector_norm(g.reshape(k, -1), dim=1) for g in grads])
        total = torch.linalg.vector_norm(norms, dim=0)
        coef = torch.clamp(self.values["clip"] / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef.view(k, *([1] * (g.dim() - 1))))
        return coef

    def _update(self, grads: list[torch.Tensor]) -> None:
        for p, g in zip(self.params, grads):
            p.grad = g
        self.optimizer.step()

    def bare_step(self, step: int) -> None:
        """The same training step without any instrumentation: the overhead baseline."""
        self.optimizer.zero_grad(set_to_none=True)
        x, targets = self.batch(step)
        out, _ = self.network.forward(x)
        self.losses(out, targets).sum().backward()
        if self.values["clip"] is not None:
            self.clip_([p.grad for p in self.params])
        self.optimizer.step()

    def instrumented_step(self, step: int, with_hist: bool) -> torch.Tensor:
        """Train one step; return its packed statistics, loss and clip factor, on the run's device.

        Nothing here waits for the device: on the CPU the probe's NaN/Inf repair
        reads the result in place, on CUDA the probe counted them on the device.
        Copying to the host (`HostCopies`) and unpacking into rows (`build_rows`)
        are left out of the step loop. The tail after the probe's result is `self.tail`.
        """
        x, targets = self.batch(step)
        out, recorded = self.network.forward(x)
        losses = self.losses(out, targets)
        grads = torch.autograd.grad(losses.sum(), self.params + recorded)
        ordered = [grads[i] for i in self._grad_order]
        packed = self.probe.measure(ordered, self.params, with_hist)
        param_grads = list(grads[: len(self.params)])
        tail = [losses.detach().to(torch.float64)]
        if self.values["clip"] is not None:
            tail.append(self.clip_(param_grads).to(torch.float64))
        result = torch.cat([packed, *tail])
        if not self.probe.counts_nonfinite:
            self.probe.repair_nonfinite(result.numpy(), ordered, self.params)
        if step < self.values["steps"]:
            self._update(param_grads)
        return result

    def replica_inits(self) -> list[tuple[int, float]]:
        """(seed, init_scale) of each stacked replica: seed + r at the configured scale."""
        v = self.values
        return [(v["seed"] + r, v["init_scale"]) for r in range(v["replicas"])]

    def run(self, progress: Callable[[int], None] | None = None) -> RunResult:
        """Train for `steps` updates, measuring at step 0, every `log_every` steps and the last.

        `progress(n)` is called after each of the steps + 1 passes; it sees no tensor, so it
        adds no host sync.
        """
        v = self.values
        start = time.perf_counter()
        logged: list[tuple[int, bool]] = []
        copies = HostCopies(self.device)
        for step in range(v["steps"] + 1):
            if step % v["log_every"] == 0 or step == v["steps"]:
                with_hist = len(logged) % v["hist_every"] == 0
                copies.add(self.instrumented_step(step, with_hist))
                logged.append((step, with_hist))
            else:
                self.bare_step(step)
            if progress is not None:
                progress(step + 1)
        records = [(step, hist, host) for (step, hist), host in zip(logged, copies.arrays())]
        layout = self.probe.layout.with_tail(self.tail)
        stats, status, diverged = build_rows(records, layout, v, self.key, self.replica_inits())
        execution = Execution.now(device_name(self.device), self.probe.strategy.name)
        return RunResult(stats, status, diverged, execution, time.perf_counter() - start)


def run_experiment(cfg: Any) -> RunResult:
    """Build, train and measure one configured run (K replicas)."""
    return GradientFlowRun(cfg).run()
