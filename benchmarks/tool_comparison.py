"""gradsweep against the tools people watch gradients with, side by side in one process.

For the exercise's network and width 1024 x depth 20, each of these training
steps runs in turn, in alternating blocks, and its median is reported as a
ratio to a plain nn.Sequential SGD step on the same network and batch:

* plain: the nn.Sequential step, nothing watched;
* W&B `wandb.watch(log="gradients", log_freq=1)` and `log="all"`, offline
  (WANDB_MODE=offline), with one `wandb.log` of the loss a step;
* TensorBoard: `add_histogram` and `add_scalar` (the norm) of every parameter's
  gradient a step;
* a hand-written loop of `.item()` statistics per parameter gradient (norm,
  mean, std, min, max; no histogram, no dL/dz);
* gradsweep: its bare step, every statistic and the histogram every step,
  scalars only every step, and every statistic at log_every=10.

W&B and TensorBoard come with the `bench` extra (pip install -e ".[bench]").
Prints markdown tables.

    python benchmarks/tool_comparison.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gradsweep.allocator import keep_freed_memory
from gradsweep.config import RunConfig, run_values
from gradsweep.experiment import GradientFlowRun
from gradsweep.model import ARCH_KEYS, build_mlp
from gradsweep.probe import HostCopies

NETWORKS = {
    "exercise (10-20x4-1, sigmoid)": (dict(), 100),
    "width 1024 x depth 20 (sigmoid)": (dict(width=1024, depth=20), 3),
}
Step = Callable[[], None]


def sequential_step(overrides: dict) -> tuple[torch.nn.Sequential, Step, Callable[[], None]]:
    """A plain nn.Sequential of the configured network, its SGD step, and a hook for logging."""
    v = run_values(RunConfig(**overrides))
    net = build_mlp(**{k: v[k] for k in ARCH_KEYS}, seed=v["seed"])
    opt = torch.optim.SGD(net.parameters(), lr=v["lr"])
    x = torch.randn(v["batch_size"], v["in_features"])
    after: list[Callable[[torch.Tensor], None]] = []

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = net(x).mean()
        loss.backward()
        for fn in after:
            fn(loss)
        opt.step()

    return net, step, after.append


def item_loop(net: torch.nn.Module) -> Callable[[torch.Tensor], None]:
    """Per-parameter norm, mean, std, min and max, each read to the host with .item()."""

    def log(_loss: torch.Tensor) -> None:
        for p in net.parameters():
            g = p.grad
            for value in (g.norm(), g.mean(), g.std(), g.min(), g.max()):
                value.item()

    return log


def tensorboard_logger(net: torch.nn.Module, logdir: Path) -> Callable[[torch.Tensor], None]:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(logdir))
    counter = iter(range(10**9))

    def log(_loss: torch.Tensor) -> None:
        step = next(counter)
        for name, p in net.named_parameters():
            writer.add_histogram(f"{name}/grad", p.grad, step)
            writer.add_scalar(f"{name}/grad_norm", p.grad.norm(), step)

    return log


def wandb_logger(net: torch.nn.Module, log: str, run) -> Callable[[torch.Tensor], None]:
    import wandb

    wandb.watch(net, log=log, log_freq=1)
    return lambda loss: run.log({"loss": loss.item()})


def gradsweep_step(overrides: dict, log_every: int, hist: bool) -> Step:
    """gradsweep's own step, logging every `log_every` steps (0: never, the bare step)."""
    run = GradientFlowRun(RunConfig(steps=10**9, **overrides))
    copies = HostCopies(run.device)
    counter = iter(range(10**9))

    def step() -> None:
        i = next(counter)
        if log_every and i % log_every == 0:
            copies.add(run.instrumented_step(0, with_hist=hist))
        else:
            run.bare_step(0)

    return step


def steps_of(overrides: dict, tmp: Path, wandb_run) -> dict[str, Step]:
    """Every compared step on the network `overrides` describe, by label."""
    steps: dict[str, Step] = {}
    _, steps["nn.Sequential SGD step (plain)"], _ = sequential_step(overrides)
    if wandb_run is not None:
        for log in ("gradients", "all"):
            net, step, add = sequential_step(overrides)
            add(wandb_logger(net, log, wandb_run))
            steps[f'wandb.watch(log="{log}", log_freq=1), offline'] = step
    try:
        net, step, add = sequential_step(overrides)
        add(tensorboard_logger(net, tmp / f"tb{len(os.listdir(tmp))}"))
        steps["TensorBoard add_histogram + add_scalar per parameter"] = step
    except ImportError:
        pass
    net, step, add = sequential_step(overrides)
    add(item_loop(net))
    steps["hand-written .item() loop (norm, mean, std, min, max)"] = step
    steps["gradsweep bare step"] = gradsweep_step(overrides, 0, False)
    steps["gradsweep, every statistic + histogram every step"] = gradsweep_step(overrides, 1, True)
    steps["gradsweep, scalars every step"] = gradsweep_step(overrides, 1, False)
    steps["gradsweep, every statistic, log_every=10"] = gradsweep_step(overrides, 10, True)
    return steps


def medians(steps: dict[str, Step], repeats: int, n_steps: int) -> dict[str, float]:
    """Median seconds a step of each, over `repeats` rounds of alternating blocks."""
    times: dict[str, list[float]] = {label: [] for label in steps}
    for step in steps.values():
        step()
    for _ in range(repeats):
        for label, step in steps.items():
            start = time.perf_counter()
            for _ in range(n_steps):
                step()
            times[label].append((time.perf_counter() - start) / n_steps)
    return {label: statistics.median(t) for label, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    keep_freed_memory()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        try:
            import wandb

            wandb_run = wandb.init(project="gradsweep-bench", dir=tmp_name, mode="offline")
        except ImportError:
            wandb_run = None
            print("wandb is not installed (pip install -e '.[bench]'): its rows are left out")
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"median of {args.repeats} rounds of alternating blocks"
        )
        for name, (overrides, n_steps) in NETWORKS.items():
            found = medians(steps_of(overrides, tmp, wandb_run), args.repeats, n_steps)
            plain = next(iter(found.values()))
            print(f"\n{name}, {n_steps} steps a block\n")
            print("| step | ms | ratio to plain |")
            print("|---|---:|---:|")
            for label, seconds in found.items():
                print(f"| {label} | {seconds * 1e3:.3f} | {seconds / plain:.2f} |")
        if wandb_run is not None:
            wandb_run.finish()


if __name__ == "__main__":
    main()
