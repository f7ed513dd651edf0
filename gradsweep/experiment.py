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

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from gradsweep.bins import N_HIST_BINS
from gradsweep.config import run_key, validate
from gradsweep.model import build_mlp
from gradsweep.predictions import attach_predictions
from gradsweep.probe import GradientProbe, S, TensorSpec

BN_EPS = 1e-5
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
    """What one run produced: tidy statistics rows and per-replica outcome."""

    stats: pd.DataFrame
    status: list[str]
    diverged_step: list[int | None]
    device_name: str
    seconds: float


@dataclass
class _Layer:
    """One Linear layer of all replicas: weight is (K, in, out), nn.Linear's weight transposed,
    so that batched matmuls give it a contiguous gradient."""

    weight: torch.Tensor
    bias: torch.Tensor
    bn_weight: torch.Tensor | None
    bn_bias: torch.Tensor | None
    act: nn.Module | None


def _stack_layers(
    models: list[nn.Sequential], device: torch.device, dtype: torch.dtype
) -> list[_Layer]:
    """Stack the replicas' Linear/BatchNorm parameters into (K, ...) leaf tensors."""
    per_model = []
    for model in models:
        layers: list[dict[str, Any]] = []
        for module in model:
            if isinstance(module, nn.Linear):
                layers.append({"linear": module, "bn": None, "act": None})
            elif isinstance(module, nn.BatchNorm1d):
                layers[-1]["bn"] = module
            else:
                layers[-1]["act"] = module
        per_model.append(layers)

    def stack(get: Callable[[dict[str, Any]], torch.Tensor], i: int) -> torch.Tensor:
        data = torch.stack([get(layers[i]).detach() for layers in per_model])
        return data.to(device=device, dtype=dtype).requires_grad_(True)

    stacked = []
    for i, first in enumerate(per_model[0]):
        has_bn = first["bn"] is not None
        stacked.append(
            _Layer(
                weight=stack(lambda d: d["linear"].weight.T, i),
                bias=stack(lambda d: d["linear"].bias, i),
                bn_weight=stack(lambda d: d["bn"].weight, i) if has_bn else None,
                bn_bias=stack(lambda d: d["bn"].bias, i) if has_bn else None,
                act=first["act"],
            )
        )
    return stacked


def _tensor_specs(layers: list[_Layer], batch_size: int) -> list[TensorSpec]:
    specs = []
    for index, layer in enumerate(layers):
        specs.append(TensorSpec(index, "weight", layer.weight[0].numel(), True))
        specs.append(TensorSpec(index, "bias", layer.bias[0].numel(), True))
        if layer.bn_weight is not None:
            specs.append(TensorSpec(index, "bn_weight", layer.bn_weight[0].numel(), True))
            specs.append(TensorSpec(index, "bn_bias", layer.bn_bias[0].numel(), True))
        specs.append(TensorSpec(index, "preact", batch_size * layer.weight.shape[2], False))
    return specs


class GradientFlowRun:
    """One configured run; `run()` trains and measures, `bare_step` is the uninstrumented baseline."""

    def __init__(self, cfg: Any) -> None:
        self.values = validate(cfg)
        self.key = run_key(self.values)
        v = self.values
        self.device = resolve_device(v["device"])
        self.dtype = _DTYPES[v["dtype"]]
        inits = self.replica_inits()
        self.replicas = len(inits)
        arch = {
            k: v[k]
            for k in (
                "act",
                "depth",
                "width",
                "in_features",
                "out_features",
                "output_act",
                "init",
                "init_scale",
                "bias_init",
                "batchnorm",
            )
        }
        models = [build_mlp(**{**arch, "init_scale": scale}, seed=seed) for seed, scale in inits]
        self.layers = _stack_layers(models, self.device, self.dtype)
        self.params = [
            t
            for layer in self.layers
            for t in (layer.weight, layer.bias, layer.bn_weight, layer.bn_bias)
            if t is not None
        ]
        self.specs = _tensor_specs(self.layers, v["batch_size"])
        self.probe = GradientProbe(self.specs, self.replicas, self.device, self.dtype)
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
        """A CPU tensor in the run's device and dtype; to CUDA from pinned memory, without blocking the host."""
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
        """Index into params + preacts for each spec, so grads can be listed in spec order."""
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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output (K, B, out) and each Linear layer's output z_l (K, B, n_l)."""
        h = x.expand(self.replicas, *x.shape)
        preacts = []
        for layer in self.layers:
            z = torch.baddbmm(layer.bias.unsqueeze(1), h, layer.weight)
            preacts.append(z)
            h = z
            if layer.bn_weight is not None:
                mean = h.mean(dim=1, keepdim=True)
                var = h.var(dim=1, unbiased=False, keepdim=True)
                h = (h - mean) * torch.rsqrt(var + BN_EPS) * layer.bn_weight.unsqueeze(
                    1
                ) + layer.bn_bias.unsqueeze(1)
            if layer.act is not None:
                h = layer.act(h)
        return h, preacts

    def losses(self, out: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """Per-replica loss (K,): the exercise's mean of the output, or MSE to the teacher."""
        if targets is None:
            return out.mean(dim=(1, 2))
        return F.mse_loss(out, targets.expand_as(out), reduction="none").mean(dim=(1, 2))

    def clip_(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Clip each replica's total gradient norm in place (clip_grad_norm_ semantics); return the factor (K,)."""
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
        out, _ = self.forward(x)
        self.losses(out, targets).sum().backward()
        if self.values["clip"] is not None:
            self.clip_([p.grad for p in self.params])
        self.optimizer.step()

    def instrumented_step(self, step: int, with_hist: bool) -> torch.Tensor:
        """Train one step; return its packed statistics, loss and clip factor, on the run's device.

        Nothing here waits for the device: on the CPU the probe's NaN/Inf repair
        reads the result in place, on CUDA the probe counted them on the device.
        Copying to the host (`_HostCopies`) and unpacking into rows (`_to_frame`)
        are left out of the step loop.
        """
        x, targets = self.batch(step)
        out, preacts = self.forward(x)
        losses = self.losses(out, targets)
        grads = torch.autograd.grad(losses.sum(), self.params + preacts)
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
        """Train for `steps` updates, measuring at step 0, every `log_every` steps and the last step.

        `progress(n)` is called after each of the steps + 1 passes; it sees no tensor, so adds no host sync.
        """
        v = self.values
        start = time.perf_counter()
        logged: list[tuple[int, bool]] = []
        copies = _HostCopies(self.device)
        for step in range(v["steps"] + 1):
            if step % v["log_every"] == 0 or step == v["steps"]:
                with_hist = len(logged) % v["hist_every"] == 0
                copies.add(self.instrumented_step(step, with_hist))
                logged.append((step, with_hist))
            else:
                self.bare_step(step)
            if progress is not None:
                progress(step + 1)
        stats = self._to_frame(
            [(step, hist, host) for (step, hist), host in zip(logged, copies.arrays())]
        )
        stats = attach_predictions(stats, v)
        status, diverged = _divergence(stats, self.replicas)
        stats["status"] = pd.Categorical(
            [status[r] for r in stats["replica"]], categories=["ok", "diverged"]
        )
        stats["diverged_step"] = pd.array([diverged[r] for r in stats["replica"]], dtype="Int64")
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return RunResult(stats, status, diverged, name, time.perf_counter() - start)

    def _to_frame(self, records: list[tuple[int, bool, np.ndarray]]) -> pd.DataFrame:
        """Tidy rows: one per replica x logged step x tensor, with derived norms and moments."""
        k, n_t = self.replicas, len(self.specs)
        n_tail = 2 * k if self.values["clip"] is not None else k
        unpacked = [self.probe.unpack(host[:-n_tail], with_hist) for _, with_hist, host in records]
        steps = np.array([r[0] for r in records])
        raw = np.stack([stats for stats, _ in unpacked])  # (steps, K, T, S)
        loss = np.stack([host[-n_tail:][:k] for _, _, host in records])  # (steps, K)
        coef = (
            np.stack([host[-k:] for _, _, host in records])
            if n_tail == 2 * k
            else np.ones_like(loss)
        )
        n_steps = len(records)
        numel = np.array([s.numel for s in self.specs], dtype=np.int64)
        is_param = np.array([s.is_param for s in self.specs])
        col = lambda name: raw[..., S[name]].reshape(-1)  # noqa: E731
        shape = (n_steps, k, n_t)
        numel_b = np.broadcast_to(numel, shape).reshape(-1)
        grad_norm = np.sqrt(col("grad_sumsq"))
        mean = col("grad_sum") / numel_b
        with np.errstate(invalid="ignore"):
            std = np.sqrt(np.maximum(col("grad_m2"), 0.0) / numel_b)
            param_std = np.sqrt(np.maximum(col("param_m2"), 0.0) / numel_b)
        param_sq = np.where(is_param, raw[..., S["param_sumsq"]], 0.0)
        grad_sq_params = np.where(is_param, raw[..., S["grad_sumsq"]], 0.0)
        total = np.sqrt(grad_sq_params.sum(-1))  # (steps, K)
        coef_rows = np.where(is_param, coef[:, :, None], 1.0).reshape(-1)
        v = self.values
        seeds, scales = (np.array(column) for column in zip(*self.replica_inits()))
        per_replica = lambda values: np.broadcast_to(values[None, :, None], shape).reshape(-1)  # noqa: E731
        frame = pd.DataFrame(
            {
                "run_key": self.key,
                **{key: v[key] for key in ("act", "depth", "width", "init")},
                "init_scale": per_replica(scales.astype(np.float64)),
                **{
                    key: v[key]
                    for key in (
                        "bias_init",
                        "batchnorm",
                        "output_act",
                        "device",
                        "dtype",
                        "optimizer",
                        "lr",
                        "batch_size",
                        "data_seed",
                        "steps",
                    )
                },
                "loss_name": v["loss"],
                "clip": pd.arrays.FloatingArray(
                    np.full(n_steps * k * n_t, v["clip"] or 0.0),
                    np.full(n_steps * k * n_t, v["clip"] is None),
                ),
                "seed": per_replica(seeds),
                "replica": per_replica(np.arange(k)),
                "step": np.broadcast_to(steps[:, None, None], shape).reshape(-1),
                "layer": np.broadcast_to(np.array([s.layer for s in self.specs]), shape).reshape(
                    -1
                ),
                "tensor": np.broadcast_to(np.array([s.tensor for s in self.specs]), shape).reshape(
                    -1
                ),
                "grad_norm": grad_norm,
                "grad_norm_clipped": grad_norm * coef_rows,
                "grad_mean": mean,
                "grad_std": std,
                "grad_min": col("grad_min"),
                "grad_max": col("grad_max"),
                "grad_frac_zero": col("grad_n_zero") / numel_b,
                "grad_n_nan": col("grad_n_nan").astype(np.int64),
                "grad_n_inf": col("grad_n_inf").astype(np.int64),
                "numel": numel_b,
                "param_norm": np.sqrt(
                    np.where(np.broadcast_to(is_param, shape), param_sq, np.nan)
                ).reshape(-1),
                "param_std": param_std,
                "loss": np.broadcast_to(loss[:, :, None], shape).reshape(-1),
                "total_grad_norm": np.broadcast_to(total[:, :, None], shape).reshape(-1),
            }
        )
        frame["grad_hist"] = _hist_column([hist for _, hist in unpacked], k, n_t)
        return frame


class _HostCopies:
    """Each logged step's packed result on its way to the host, without a sync in the step loop.

    CPU results are host memory already and are kept as they are. Device
    results (or CPU ones with `batched`, which tests use) are gathered
    FLUSH_EVERY at a time into one host buffer, pinned on CUDA, by an
    asynchronous copy; `arrays` waits for the device once, after the loop.
    """

    FLUSH_EVERY = 256

    def __init__(self, device: torch.device, batched: bool | None = None) -> None:
        self.device = device
        self.batched = device.type != "cpu" if batched is None else batched
        self._pending: list[torch.Tensor] = []
        self._copies: list[tuple[torch.Tensor, list[int]]] = []

    def add(self, packed: torch.Tensor) -> None:
        self._pending.append(packed)
        if self.batched and len(self._pending) >= self.FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        sizes = [t.numel() for t in self._pending]
        host = torch.empty(sum(sizes), dtype=torch.float64, pin_memory=self.device.type == "cuda")
        host.copy_(torch.cat(self._pending), non_blocking=True)
        self._copies.append((host, sizes))
        self._pending = []

    def arrays(self) -> list[np.ndarray]:
        """Host arrays of every added result, in order."""
        if not self.batched:
            return [t.numpy() for t in self._pending]
        self._flush()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return [part.numpy() for host, sizes in self._copies for part in torch.split(host, sizes)]


def _hist_column(hists: list[np.ndarray | None], k: int, n_t: int) -> list:
    """One list of N_HIST_BINS counts per row, None on logged steps without a histogram."""
    column: list = []
    for hist in hists:
        if hist is None:
            column.extend([None] * (k * n_t))
        else:
            column.extend(list(hist.reshape(k * n_t, N_HIST_BINS)))
    return column


def _divergence(stats: pd.DataFrame, replicas: int) -> tuple[list[str], list[int | None]]:
    """A replica diverged at the first step with a NaN/Inf gradient element, norm or loss."""
    bad = (
        (stats["grad_n_nan"] > 0)
        | (stats["grad_n_inf"] > 0)
        | ~np.isfinite(stats["grad_norm"])
        | ~np.isfinite(stats["loss"])
    )
    first = stats.loc[bad].groupby("replica")["step"].min()
    diverged = [int(first[r]) if r in first.index else None for r in range(replicas)]
    return ["ok" if d is None else "diverged" for d in diverged], diverged


def run_experiment(cfg: Any) -> RunResult:
    """Build, train and measure one configured run (K replicas)."""
    return GradientFlowRun(cfg).run()
