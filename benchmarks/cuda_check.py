"""The CUDA checks in one run: a device=cpu,cuda sweep, CPU/CUDA agreement, GPU overhead, syncs.

    python benchmarks/cuda_check.py --out DIR [--work DIR] [--repeats 9]

1. A real multirun with device=cpu,cuda (sigmoid/relu x depth 5/20 x float32/float64)
   into WORK/sweep (a temporary dir by default) and its report; the report's
   summary.md and devices.png are copied to DIR, so DIR holds a few files only.
2. Step-0 per-layer gradient norms of each configuration on CPU against CUDA:
   the largest relative difference per dtype (targets: float64 < 1e-6, float32 < 1e-3).
3. The instrumentation overhead ratio at width 1024 x depth 20 on the GPU,
   measured as benchmarks/instrumentation_overhead.py does (target <= 1.10x with
   every statistic every step).
4. 300 logged steps under torch.cuda.set_sync_debug_mode("warn"): every
   synchronising call inside the step loop, with the line that made it (target: none).

Prints a summary and writes DIR/cuda_check.json after each check, so a check
that breaks loses none of the others; exits 1 when a target is missed or a
check broke. `--device cpu` runs the same code without CUDA, to check the script.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from instrumentation_overhead import measure  # this folder: run as python benchmarks/cuda_check.py

from gradsweep.allocator import keep_freed_memory
from gradsweep.config import RunConfig
from gradsweep.experiment import GradientFlowRun
from gradsweep.probe import HostCopies
from gradsweep.store import RunSet, read_sweep

REPO = Path(__file__).resolve().parents[1]
AGREEMENT = {"float64": 1e-6, "float32": 1e-3}
OVERHEAD_TARGET = 1.10


def sweep_and_report(work: Path, out: Path, devices: str) -> Path:
    """Run the device sweep and its report in `work`; copy summary and device figure to `out`."""
    sweep = work / "sweep"
    overrides = [
        f"device={devices}",
        "act=sigmoid,relu",
        "depth=5,20",
        "dtype=float32,float64",
        "replicas=3",
        "steps=20",
        "log_every=5",
        "loss=mse",
        "output_act=false",
    ]
    for cmd in (
        [sys.executable, "-m", "gradsweep", "-m", *overrides, f"hydra.sweep.dir={sweep}"],
        [sys.executable, "-m", "gradsweep.report", str(sweep)],
    ):
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}")
    for name in ("summary.md", "devices.png"):
        if (sweep / "report" / name).exists():
            shutil.copy(sweep / "report" / name, out / name)
    return sweep


def agreement(sweep: Path) -> dict[str, float]:
    """Largest relative difference of step-0 gradient norms, CPU against the other device."""
    frame, problems = read_sweep([sweep])
    if problems:
        raise SystemExit(f"unusable run files: {problems}")
    frame = frame[frame["step"] == 0]
    keys = ["act", "depth", "dtype", "seed", "layer", "tensor"]
    cpu = frame[frame["device"] == "cpu"].set_index(keys)["grad_norm"]
    other = frame[frame["device"] != "cpu"].set_index(keys)["grad_norm"]
    rel = (other / cpu.reindex(other.index) - 1).abs()
    return {dtype: float(rel.xs(dtype, level="dtype").max()) for dtype in AGREEMENT}


def overhead(device: str, repeats: int) -> dict[str, float]:
    """Instrumented against bare step at width 1024 x depth 20: every step, and log_every=10."""
    result = {}
    for label, log_every in (("every_step", 1), ("log_every_10", 10)):
        bare, inst = measure(
            dict(width=1024, depth=20, device=device), log_every, True, repeats, 50
        )
        result[label] = inst / bare
        result[f"{label}_bare_ms"], result[f"{label}_instrumented_ms"] = bare * 1e3, inst * 1e3
    return result


def syncs_in_step_loop(device: str) -> list[str]:
    """Distinct synchronising calls of 300 logged steps (every statistic) and their host copies."""
    run = GradientFlowRun(RunConfig(steps=400, width=256, depth=10, device=device))
    copies = HostCopies(run.device)
    run.instrumented_step(0, with_hist=True)  # first-call set-up happens before the check
    found: set[str] = set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            for step in range(1, 301):
                copies.add(run.instrumented_step(step, with_hist=True))
        finally:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        found.add(f"{Path(w.filename).name}:{w.lineno}: {str(w.message).splitlines()[0]}")
    copies.arrays()
    return sorted(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.mkdtemp(prefix="gradsweep-cuda-check-"))
    )
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    keep_freed_memory()  # as in gradsweep's task
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "this check needs CUDA (torch.cuda.is_available() is False); "
            "--device cpu checks the script"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {name}")
    results: dict = {"device_name": name, "torch": torch.__version__}
    devices = "cpu,cuda" if args.device == "cuda" else "cpu"
    checks = {
        "sweep_runs": lambda: len(RunSet([sweep_and_report(args.work, args.out, devices)]).runs),
        "agreement_max_rel_diff": lambda: (
            agreement(args.work / "sweep") if args.device == "cuda" else None
        ),
        "overhead_1024x20": lambda: overhead(args.device, args.repeats),
        "syncs_in_step_loop": lambda: syncs_in_step_loop(args.device),
    }
    missed = []
    for key, check in checks.items():
        try:
            results[key] = check()
        except (Exception, SystemExit) as error:  # noqa: BLE001 - one broken check must not lose the others
            results[key] = f"broke: {error!r}"
            missed.append(f"{key} broke: {error!r}")
        (args.out / "cuda_check.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    if isinstance(results["agreement_max_rel_diff"], dict):
        missed += [
            f"{dtype} agreement {rel:.2e} >= {AGREEMENT[dtype]:g}"
            for dtype, rel in results["agreement_max_rel_diff"].items()
            if not rel < AGREEMENT[dtype]
        ]
    if (
        isinstance(results["overhead_1024x20"], dict)
        and results["overhead_1024x20"]["every_step"] > OVERHEAD_TARGET
    ):
        missed.append(
            f"overhead {results['overhead_1024x20']['every_step']:.2f}x > {OVERHEAD_TARGET}x"
        )
    if isinstance(results["syncs_in_step_loop"], list) and results["syncs_in_step_loop"]:
        missed.append(
            f"{len(results['syncs_in_step_loop'])} synchronising call sites in the step loop"
        )
    print("targets missed:" if missed else "every target met", *missed, sep="\n  ")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
