"""Cost of gradsweep's instrumentation: an instrumented training step against a bare one.

Same model, same data, same optimizer: the two kinds of step alternate in
blocks, side by side, and the ratio of their medians is reported for the
exercise's network and for width 1024 x depth 20.

    python benchmarks/instrumentation_overhead.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gradsweep.allocator import keep_freed_memory
from gradsweep.config import RunConfig
from gradsweep.experiment import GradientFlowRun
from gradsweep.probe import HostCopies

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


def measure(
    overrides: dict, log_every: int, hist: bool, repeats: int, n_steps: int
) -> tuple[float, float]:
    """Median seconds per bare step and per step of a loop logging every `log_every` steps.

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

    for fn in (bare, logged):
        _block_seconds(fn, max(3, n_steps // 5), sync)
    bare_t, inst_t = [], []
    for _ in range(repeats):
        bare_t.append(_block_seconds(bare, n_steps, sync))
        inst_t.append(_block_seconds(logged, n_steps, sync))
    copies.arrays()
    return statistics.median(bare_t), statistics.median(inst_t)


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
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} blocks, "
        f"malloc {'as gradsweep runs it' if tuned else 'glibc defaults'}"
    )
    print(f"{'network':34s} {'logging':32s} {'bare ms':>9s} {'instr ms':>9s} {'ratio':>6s}")
    for name, overrides in NETWORKS.items():
        small = not overrides
        n_steps = 200 if small else 10
        cases = [
            ("every statistic, every step", 1, True),
            ("scalars every step, no histogram", 1, False),
            ("every statistic, log_every=10", 10, True),
        ]
        for label, log_every, hist in cases:
            bare, inst = measure(
                overrides, log_every, hist, args.repeats, n_steps if log_every == 1 else n_steps * 2
            )
            print(f"{name:34s} {label:32s} {bare * 1e3:9.3f} {inst * 1e3:9.3f} {inst / bare:6.3f}")


if __name__ == "__main__":
    main()
