"""Sweep throughput: 200 runs of the exercise's network, by launcher and as replica groups.

    python benchmarks/throughput.py    # 200 runs, 100 steps each, every statistic every step
    python benchmarks/throughput.py --seeds 10 # a quick look (10 seeds x 4 init scales)
    python benchmarks/throughput.py --replicas-only  # only replicas=64 against replicas=1

The 200 configurations are 50 seeds x 4 init scales of the exercise's network
(sigmoid, depth 5, width 20): compatible runs, which replica groups can stack.
Each mode runs the real `python -m gradsweep -m ...` into a fresh sweep dir and
is timed from the command's start to its exit (Python and torch start-up
included); every mode writes the same 200 run dirs. Per-run overhead is the
wall time per run minus the in-process cost of one run. The replica ratio
compares in-process runs of replicas=64 and replicas=1, alternated (median of
the pairs' ratios), with every statistic logged every step and with statistics
only at the first and last step.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gradsweep.allocator import keep_freed_memory
from gradsweep.experiment import GradientFlowRun

REPO = Path(__file__).resolve().parents[1]
INIT_SCALES = ("0.5", "1", "2", "4")


def sweep_seconds(sweep_dir: Path, overrides: list[str]) -> float:
    """Wall time of one real multirun into `sweep_dir`."""
    cmd = [sys.executable, "-m", "gradsweep", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds


def run_once(cfg: dict) -> float:
    """Seconds of one in-process run (build, train, measure, frame)."""
    start = time.perf_counter()
    GradientFlowRun(cfg).run()
    return time.perf_counter() - start


def run_seconds(cfg: dict, repeats: int) -> float:
    """Median in-process seconds of one run (build, train, measure, frame), after a warm-up."""
    GradientFlowRun(cfg).run()
    return statistics.median(run_once(cfg) for _ in range(repeats))


def main() -> None:
    """Print runs per second and per-run overhead per mode, then replicas=64 against replicas=1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds", type=int, default=50, help="seeds per init scale (4 init scales)"
    )
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the in-process timings")
    parser.add_argument(
        "--replicas-only", action="store_true", help="skip the sweeps: only the replica ratio"
    )
    args = parser.parse_args()
    keep_freed_memory()  # as in gradsweep's task, which the sweeps below run
    n_runs = args.seeds * len(INIT_SCALES)
    sweep = [
        f"seed=range(0,{args.seeds})",
        f"init_scale={','.join(INIT_SCALES)}",
        f"steps={args.steps}",
    ]
    if args.replicas_only:
        replica_ratios(args.steps, args.repeats)
        return
    one_run = run_seconds({"steps": args.steps}, args.repeats)
    modes = {
        "basic launcher": [],
        "joblib launcher": ["hydra/launcher=joblib"],
        f"replica groups of {n_runs}": [f"hydra.sweeper.group_size={n_runs}"],
        f"joblib + groups of {args.seeds}": [
            "hydra/launcher=joblib",
            f"hydra.sweeper.group_size={args.seeds}",
        ],
    }
    print(
        f"{n_runs} runs ({args.seeds} seeds x init_scale {','.join(INIT_SCALES)}), "
        "exercise network, "
        f"{args.steps} steps, every statistic every step; "
        f"one run in-process: {one_run * 1e3:.1f} ms"
    )
    print(f"{'mode':<28} {'wall s':>8} {'runs/s':>8} {'overhead ms/run':>16} {'vs basic':>9}")
    basic = None
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, extra) in enumerate(modes.items()):
            seconds = sweep_seconds(Path(tmp) / f"mode{index}", sweep + extra)
            basic = basic or seconds
            overhead = seconds / n_runs - one_run
            print(
                f"{name:<28} {seconds:8.1f} {n_runs / seconds:8.1f} "
                f"{overhead * 1e3:16.1f} {basic / seconds:8.1f}x"
            )
    replica_ratios(args.steps, args.repeats)


def replica_ratios(steps: int, repeats: int) -> None:
    """replicas=64 against replicas=1, logging every step or the first and last: side by side.

    The two runs alternate, so that both see the same machine state; the ratio is the
    median of the pairs' ratios.
    """
    for label, log_every in (("every step logged", 1), ("first/last step logged", steps)):
        cfg = {"steps": steps, "log_every": log_every}
        one, many = {**cfg, "replicas": 1}, {**cfg, "replicas": 64}
        GradientFlowRun(one).run()
        GradientFlowRun(many).run()
        pairs = [(run_once(one), run_once(many)) for _ in range(repeats)]
        t1 = statistics.median(p[0] for p in pairs)
        t64 = statistics.median(p[1] for p in pairs)
        ratio = statistics.median(p[1] / p[0] for p in pairs)
        print(
            f"replicas=64 / replicas=1, {label}: "
            f"{t64 * 1e3:.0f} ms / {t1 * 1e3:.0f} ms, median ratio {ratio:.2f}x"
        )


if __name__ == "__main__":
    main()
