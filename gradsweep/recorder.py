"""`gradsweep.Recorder`: the sweep's gradient statistics from a user's own training loop.

Any nn.Module: every parameter of every module (rows under the module's
qualified name and the parameter's own name) and, for the modules chosen by
`watch_outputs`, dL/d(module output), caught by forward hooks that add a hook
to each output tensor, so the user's forward code is not changed. Each logged
step goes through the sweep's probe (`gradsweep.probe.GradientProbe`, the same
strategies and packed layout) and stays on the device until `close`, which
builds the rows as a sweep does (`rows.recorder_rows`) and writes the run file
atomically (`store.write_run`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradsweep.execution import Execution, device_name
from gradsweep.probe import GradientProbe, HostCopies, TensorSpec
from gradsweep.rows import LOSS, RecordedStep, recorder_rows
from gradsweep.schema import OUTPUT_TENSOR, RECORDER_SOURCE, STATS_FILE
from gradsweep.store import run_metadata, write_run

# A module type or a qualified module name, or several of them.
WatchOutputs = type[nn.Module] | str | Iterable[type[nn.Module] | str]
SHOWN_NAMES = 8  # module names an error about `watch_outputs` lists


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid: {name} must be an integer >= 1")
    return value


def _watched(model: nn.Module, watch: WatchOutputs) -> list[str]:
    """Qualified names of the modules whose outputs are watched, in `named_modules()` order."""
    items = [watch] if isinstance(watch, (str, type)) else list(watch)
    names = [name for name, _ in model.named_modules()]
    chosen: set[str] = set()
    for item in items:
        if isinstance(item, str):
            if item not in names:
                listing = ", ".join(repr(n) for n in names[:SHOWN_NAMES])
                more = ", ..." if len(names) > SHOWN_NAMES else ""
                raise ValueError(
                    f"watch_outputs names {item!r}, which is no module of the model; "
                    f"choose from its qualified names: {listing}{more}"
                )
            chosen.add(item)
        elif isinstance(item, type) and issubclass(item, nn.Module):
            chosen.update(name for name, m in model.named_modules() if isinstance(m, item))
        else:
            raise ValueError(
                f"watch_outputs holds {item!r}; give nn.Module types or qualified module names"
            )
    types = [item.__name__ for item in items if isinstance(item, type)]
    if types and not chosen:
        raise ValueError(
            f"watch_outputs={', '.join(types)}: the model has no module of these types"
        )
    return [name for name in names if name in chosen]


def _output_tensors(output: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a module's output (a tensor, or a tuple or list of them)."""
    items = output if isinstance(output, (tuple, list)) else (output,)
    return [
        t
        for t in items
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad
    ]


class Recorder:
    """Records gradient statistics of `model` from its training loop into `out`/grad_stats.parquet.

    Call `step(step, loss)` after `loss.backward()` and before `optimizer.step()`, and `close()`
    at the end (or use the recorder as a context manager). Steps that are multiples of
    `log_every` are measured; every `hist_every`-th measured step also gets histograms.
    `watch_outputs` (nn.Module types or qualified names) chooses the modules whose output
    gradient dL/d(output) is recorded too, as tensor `output`. `name` (default: `out`'s name),
    `config` (any YAML-able mapping) and `seed` are written into the footer.
    """

    def __init__(
        self,
        model: nn.Module,
        out: str | Path,
        *,
        watch_outputs: WatchOutputs = (),
        log_every: int = 1,
        hist_every: int = 1,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Recorder records an nn.Module, not {type(model).__name__}")
        self.log_every = _count("log_every", log_every)
        self.hist_every = _count("hist_every", hist_every)
        self.path = Path(out) / STATS_FILE
        self.model = model
        self._params = self._owned_parameters(model)
        if not self._params:
            raise ValueError(
                f"{type(model).__name__} has no parameters that require a gradient; "
                "there is nothing to record"
            )
        watched = _watched(model, watch_outputs)
        recorded = {m for m, _, _ in self._params} | set(watched)
        order = [n for n, _ in model.named_modules() if n in recorded]
        # `layer` of each recorded module: its order among them, as named_modules() lists them
        self.layers = {module: index for index, module in enumerate(order)}
        self.watched = watched
        first = self._params[0][2]
        self.device = first.device
        devices = {p.device for _, _, p in self._params}
        if len(devices) > 1:
            raise ValueError(
                f"the model's parameters lie on {sorted(map(str, devices))}; "
                "Recorder records a model on one device"
            )
        floats = {p.dtype for _, _, p in self._params}
        self.dtype = torch.float64 if torch.float64 in floats else torch.float32
        self.footer = {
            "source": RECORDER_SOURCE,
            "name": name or Path(out).resolve().name,
            "model": type(model).__name__,
            "device": self.device.type,
            "dtype": str(self.dtype).removeprefix("torch."),
            "seed": seed,
            "log_every": self.log_every,
            "hist_every": self.hist_every,
            "watch_outputs": watched,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "config": dict(config or {}),
        }
        try:
            yaml.safe_dump(self.footer)
        except yaml.YAMLError as err:
            raise ValueError(
                f"config={config!r} cannot be written into the run file's footer as YAML: {err}"
            ) from None
        payload = json.dumps(self.footer, sort_keys=True, default=str)
        self.footer["run_key"] = hashlib.sha256(payload.encode()).hexdigest()[:16]
        self._outputs: dict[str, list[torch.Tensor]] = {name: [] for name in watched}
        modules = dict(model.named_modules())
        self._handles: list[RemovableHandle] = [
            modules[name].register_forward_hook(partial(self._on_forward, name)) for name in watched
        ]
        self._probes: dict[tuple[TensorSpec, ...], GradientProbe] = {}
        self._copies = HostCopies(self.device)
        self._logged: list[tuple[int, bool, tuple[TensorSpec, ...], tuple[str, ...]]] = []
        self.closed = False

    @staticmethod
    def _owned_parameters(model: nn.Module) -> list[tuple[str, str, nn.Parameter]]:
        """(module name, parameter name, parameter) of every trainable parameter, each once.

        A parameter shared by several modules (tied weights) belongs to the first that holds it.
        """
        seen: set[int] = set()
        owned = []
        for module_name, module in model.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                if param.requires_grad and id(param) not in seen:
                    seen.add(id(param))
                    owned.append((module_name, param_name, param))
        return owned

    def _on_forward(self, name: str, module: nn.Module, inputs: Any, output: Any) -> None:
        for tensor in _output_tensors(output):
            tensor.register_hook(partial(self._keep, name))

    def _keep(self, name: str, grad: torch.Tensor) -> None:
        self._outputs[name].append(grad)

    def logs(self, step: int) -> bool:
        """Whether `step` is measured: a multiple of `log_every`."""
        return step % self.log_every == 0

    def _tensors(
        self,
    ) -> tuple[list[TensorSpec], list[str], list[torch.Tensor], list[torch.Tensor]]:
        """Specs, module names, gradients and parameters of this step, module by module.

        A module's parameters come first, then its output; a parameter without a gradient this
        step (unused, or frozen) and a watched module that saw no backward pass have no rows.
        """
        by_module: dict[str, list[tuple[TensorSpec, torch.Tensor, torch.Tensor | None]]] = {}
        for module, param_name, param in self._params:
            if param.grad is not None:
                spec = TensorSpec(self.layers[module], param_name, param.numel(), True)
                by_module.setdefault(module, []).append((spec, param.grad, param))
        for module, grads in self._outputs.items():
            if grads:
                grad = grads[0] if len(grads) == 1 else torch.cat([g.reshape(-1) for g in grads])
                spec = TensorSpec(self.layers[module], OUTPUT_TENSOR, grad.numel(), False)
                by_module.setdefault(module, []).append((spec, grad, None))
        specs, modules, grads, params = [], [], [], []
        for module in self.layers:
            for spec, grad, param in by_module.get(module, ()):
                specs.append(spec)
                modules.append(module)
                grads.append(self._prepared(grad))
                if param is not None:
                    params.append(self._prepared(param.detach()))
        return specs, modules, grads, params

    def _prepared(self, tensor: torch.Tensor) -> torch.Tensor:
        """In the probe's dtype and contiguous (no copy when it already is)."""
        return tensor.to(self.dtype).contiguous()

    @torch.no_grad()
    def step(self, step: int, loss: torch.Tensor | float) -> None:
        """Measure the gradients of `step` (if `logs(step)`), before the optimizer changes them.

        `loss` (a tensor, kept on the device, or a number) is written on the step's rows.
        Nothing here waits for the device.
        """
        if self.closed:
            raise RuntimeError(f"Recorder for {self.path} is closed; step({step}) came after")
        try:
            if self.logs(step):
                self._measure(step, loss)
        finally:
            for grads in self._outputs.values():
                grads.clear()

    def _measure(self, step: int, loss: torch.Tensor | float) -> None:
        if isinstance(loss, torch.Tensor) and loss.numel() != 1:
            raise ValueError(f"loss must be one number, not a tensor of shape {tuple(loss.shape)}")
        specs, modules, grads, params = self._tensors()
        if not specs:
            raise RuntimeError(
                f"step({step}) found no gradient: call it after loss.backward() and before "
                "optimizer.zero_grad()"
            )
        key = tuple(specs)
        probe = self._probes.get(key)
        if probe is None:
            probe = self._probes[key] = GradientProbe(specs, 1, self.device, self.dtype)
        with_hist = len(self._logged) % self.hist_every == 0
        packed = probe.measure(grads, params, with_hist)
        value = torch.as_tensor(loss).detach().reshape(1)
        value = value.to(device=packed.device, dtype=torch.float64)
        result = torch.cat([packed, value])
        if not probe.counts_nonfinite:
            probe.repair_nonfinite(result.numpy(), grads, params)
        self._copies.add(result)
        self._logged.append((step, with_hist, key, tuple(modules)))

    def close(self) -> Path:
        """Remove the hooks, write the run file atomically, return its path; then a no-op."""
        if self.closed:
            return self.path
        self._remove_hooks()
        if not self._logged:
            raise ValueError(f"no step was recorded for {self.path}; call step() after backward")
        steps = [
            RecordedStep(step, with_hist, host, self._probes[key].layout.with_tail(LOSS), modules)
            for (step, with_hist, key, modules), host in zip(self._logged, self._copies.arrays())
        ]
        frame, summary = recorder_rows(steps, self.footer)
        paths = sorted({probe.strategy.name for probe in self._probes.values()})
        execution = Execution.now(device_name(self.device), ",".join(paths))
        status = "diverged" if (frame["status"] == "diverged").any() else "ok"
        config = yaml.safe_dump(self.footer, sort_keys=False)
        write_run(frame, self.path, run_metadata(config, execution.metadata(), status, summary))
        self.closed = True
        return self.path

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Write the run file when the block ends normally; after an error, write nothing."""
        if kind is None:
            self.close()
        else:
            self._remove_hooks()
            self.closed = True


__all__: Sequence[str] = ["Recorder"]
