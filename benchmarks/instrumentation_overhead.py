"""Cost of gradsweep's instrumentation: an instrumented training step against a bare one.

Same model, same data, same optimizer: the two kinds of step alternate in
blocks, side by side, and the median of the block pairs' ratios is reported for the
exercise's network and for width 1024 x depth 20. For every-step logging it also
measures, in alternating blocks, the statistics alone (the probe on one step's
gradients and parameters) against the one-pass floor: one read of every tensor
the statistics read (a sum over each). The statistics path, and what building or
loading the one-pass kernel cost this process (paid once, not per step), are
printed first; the tables are markdown.

    python benchmarks/instrumentation_overhead.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gradsweep.allocator import keep_freed_memory
from gradsweep.config import RunConfig, run_values
from gradsweep.execution import planned_execution
from gradsweep.experiment import GradientFlowRun
from gradsweep.probe import HostCopies
from gradsweep.probe.native import load_kernel

NETWORKS = {
    "exercise (10-20x4-1, sigmoid)": dict(),
    "width 1024 x depth 20 (sigmoid)": dict(width=1024, depth=20),
}


def _block_seconds(step_fn, n_steps: int, sync) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(n_steps):
        step_fn()
    sync()
    return (time.perf_counter() - start) / n_steps


def _alternate(base, other, repeats: int, n_steps: int, sync) -> tuple[float, float, float]:
    """Median seconds per step of `base` and of `other` over `repeats` adjacent block pairs
    (after a warm-up block each), and the median of the pairs' other / base ratios."""
    for fn in (base, other):
        _block_seconds(fn, max(3, n_steps // 5), sync)
    pairs = [
        (_block_seconds(base, n_steps, sync), _block_seconds(other, n_steps, sync))
        for _ in range(repeats)
    ]
    ratio = statistics.median(o / b for b, o in pairs)
    return statistics.median(b for b, _ in pairs), statistics.median(o for _, o in pairs), ratio


def measure(
    overrides: dict, log_every: int, hist: bool, repeats: int, n_steps: int
) -> tuple[float, float, float]:
    """Median seconds per bare step and per step of a loop logging every `log_every` steps,
    and the median of the instrumented / bare ratios of the adjacent block pairs.

    The pairs' ratio is the one to read: the machine's speed drifts by more than a
    few percent over the blocks, and a pair's two blocks see the same speed.
    Logged results go where a run sends them (`HostCopies`: asynchronous copies
    on CUDA), and on CUDA each block waits for the device before and after.
    """
    run = GradientFlowRun(RunConfig(steps=10**9, **overrides))
    sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
    copies = HostCopies(run.device)
    counter = iter(range(10**9))

    def bare() -> None:
        run.bare_step(0)

    def logged() -> None:
        i = next(counter)
        if i % log_every == 0:
            copies.add(run.instrumented_step(0, with_hist=hist))
        else:
            run.bare_step(0)

    timings = _alternate(bare, logged, repeats, n_steps, sync)
    copies.arrays()
    return timings


def step_tensors(run: GradientFlowRun) -> list[torch.Tensor]:
    """The gradients of `run`'s step 0 in the probe's order (parameters', then dL/dz)."""
    x, targets = run.batch(0)
    out, preacts = run.network.forward(x)
    grads = torch.autograd.grad(run.losses(out, targets).sum(), run.params + preacts)
    return [grads[i] for i in run._grad_order]


def statistics_and_floor(overrides: dict, hist: bool, repeats: int, n_steps: int) -> tuple:
    """Median seconds of the probe on one step's tensors and of one read of each (a sum).

    The two alternate in blocks; returns (statistics, floor, statistics path name, median of
    the block pairs' statistics / floor ratios).
    """
    run = GradientFlowRun(RunConfig(steps=10**9, **overrides))
    sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
    ordered = step_tensors(run)
    tensors = [*ordered, *run.params]

    def probe() -> None:
        run.probe.measure(ordered, run.params, hist)

    def floor() -> None:
        with torch.no_grad():
            for t in tensors:
                t.sum()

    floor_t, probe_t, ratio = _alternate(floor, probe, repeats, n_steps, sync)
    return probe_t, floor_t, run.probe.strategy.name, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc as it is (gradsweep's task tunes it: gradsweep/allocator.py)",
    )
    args = parser.parse_args()
    tuned = not args.default_malloc and keep_freed_memory()
    kernel = load_kernel()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} blocks, "
        f"malloc {'as gradsweep runs it' if tuned else 'glibc defaults'}"
    )
    if kernel is None:
        print("one-pass kernel: unavailable (no compiler, build failed or turned off)")
    else:
        how = "built" if kernel.built else "loaded from the disk cache"
        print(f"one-pass kernel: {how} in {kernel.seconds:.2f} s, once per process ({kernel.path})")
    print()
    print("| network | logging | path | bare ms | instr ms | ratio (median of pairs) |")
    print("|---|---|---|---:|---:|---:|")
    floors = []
    for name, overrides in NETWORKS.items():
        small = not overrides
        n_steps = 200 if small else 10
        cases = [
            ("every statistic, every step", 1, True),
            ("scalars every step, no histogram", 1, False),
            ("every statistic, log_every=10", 10, True),
        ]
        for label, log_every, hist in cases:
            bare, inst, ratio = measure(
                overrides, log_every, hist, args.repeats, n_steps if log_every == 1 else n_steps * 2
            )
            members = [run_values(RunConfig(**overrides))]
            path = planned_execution(members, torch.get_num_threads()).stats_path
            if log_every == 1:
                stats, floor, path, over_floor = statistics_and_floor(
                    overrides, hist, args.repeats, n_steps
                )
                floors.append((name, label, path, stats, floor, over_floor, bare, inst))
            print(
                f"| {name} | {label} | {path} | {bare * 1e3:.3f} | {inst * 1e3:.3f} | {ratio:.3f} |"
            )
    print()
    print(
        "| network | statistics | path | statistics ms | floor ms | statistics / floor "
        "| (instr - bare) / floor |"
    )
    print("|---|---|---|---:|---:|---:|---:|")
    for name, label, path, stats, floor, over_floor, bare, inst in floors:
        print(
            f"| {name} | {label} | {path} | {stats * 1e3:.3f} | {floor * 1e3:.3f} "
            f"| {over_floor:.2f} | {(inst - bare) / floor:.2f} |"
        )


if __name__ == "__main__":
    main()
