"""The CUDA checks in one run: a device=cpu,cuda sweep, CPU/CUDA agreement, the Triton
kernel against the torch paths, its compile time, GPU overhead, syncs.

    python benchmarks/cuda_check.py --out DIR [--work DIR] [--repeats 9]

1. A real multirun with device=cpu,cuda (sigmoid/relu x depth 5/20 x float32/float64)
   into WORK/sweep (a temporary dir by default) and its report; the report's
   summary.md and devices.png are copied to DIR, so DIR holds a few files only.
2. Step-0 per-layer gradient norms of each configuration on CPU against CUDA:
   the largest relative difference per dtype (targets: float64 < 1e-6, float32 < 1e-3).
3. The one-pass Triton kernel (`one-pass-triton`) against the torch path the
   network's size picks without it (`fused-torch` or `per-tensor`), on one step's
   gradients with NaN, Inf, zeros, subnormals and both sides of every bin edge
   written into them, for the exercise's network and width 1024 x depth 20 in
   float32 and float64 (targets: histograms, zero/NaN/Inf counts, min and max
   equal; sums, sums of squares and centred sums within 1e-9 of their scale).
4. The Triton kernel's first call: a fresh process with an empty Triton cache
   (compiles) and a second one with that cache (loads), each timing its first
   and second instrumented step; the compile is paid once per process at most.
5. The instrumentation overhead ratio at width 1024 x depth 20 on the GPU,
   measured as benchmarks/instrumentation_overhead.py does (target <= 1.10x with
   every statistic every step), for the default statistics path and the torch
   path without the one-pass kernel, each named.
6. 300 logged steps under torch.cuda.set_sync_debug_mode("warn"): every
   synchronising call inside the step loop, with the line that made it (target: none).

Prints a summary and writes DIR/cuda_check.json after each check, so a check
that breaks loses none of the others; exits 1 when a target is missed or a
check broke. `--device cpu` runs the same code without CUDA, to check the script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from instrumentation_overhead import (  # this folder: run as python benchmarks/cuda_check.py
    measure,
    step_tensors,
)

import gradsweep.probe as probe_module
from gradsweep.allocator import keep_freed_memory
from gradsweep.config import RunConfig, run_values
from gradsweep.execution import planned_execution
from gradsweep.experiment import GradientFlowRun
from gradsweep.probe import GradientProbe, HostCopies, S, StepArrays
from gradsweep.store import RunSet, read_sweep

REPO = Path(__file__).resolve().parents[1]
AGREEMENT = {"float64": 1e-6, "float32": 1e-3}
TRITON_AGREEMENT = 1e-9
OVERHEAD_TARGET = 1.10
NETWORKS = {"exercise": {}, "1024x20": {"width": 1024, "depth": 20}}
EXACT = ("grad_n_zero", "grad_n_nan", "grad_n_inf", "grad_min", "grad_max")
# each moment, and the column its rounding is measured against
ROUNDED = {"sum": "sumsq", "sumsq": "sumsq", "m2": "sumsq"}
FIRST_CALL = """
import sys, time, torch
from gradsweep.config import RunConfig
from gradsweep.experiment import GradientFlowRun
run = GradientFlowRun(RunConfig(steps=10, width=1024, depth=20, device=sys.argv[1]))
sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
run.bare_step(0)
seconds = []
for _ in range(2):
    sync()
    start = time.perf_counter()
    run.instrumented_step(0, with_hist=True)
    sync()
    seconds.append(time.perf_counter() - start)
print(run.probe.strategy.name, *seconds)
"""


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


def _special_values(dtype: torch.dtype) -> torch.Tensor:
    """Zeros of both signs, subnormals, NaN, Inf, the largest float, both sides of each bin edge."""
    finfo = torch.finfo(dtype)
    at = (2.0 ** torch.arange(-41, 16, dtype=torch.float64)).to(dtype)
    below = torch.nextafter(at, torch.zeros_like(at))
    specials = [0.0, -0.0, finfo.smallest_normal / 3, finfo.smallest_normal / 2**20]
    specials += [math.nan, -math.nan, math.inf, -math.inf, finfo.max]
    return torch.cat([at, below, -at, -below, torch.tensor(specials, dtype=dtype)])


def _differences(mine: StepArrays, theirs: StepArrays, numel: np.ndarray, params: list) -> dict:
    """Whether bins, counts and extremes are equal, and each moment's largest rounding."""
    exact = {
        column: bool(
            np.array_equal(mine.stats[..., S[column]], theirs.stats[..., S[column]], equal_nan=True)
        )
        for column in EXACT
    }
    worst = {}
    for prefix, rows in (("grad", slice(None)), ("param", params)):
        a, b = mine.stats[:, rows], theirs.stats[:, rows]
        for name, against in ROUNDED.items():
            scale = b[..., S[f"{prefix}_{against}"]]
            if name == "sum":  # a sum rounds relative to the sum of |x| <= sqrt(n * sum of squares)
                scale = np.sqrt(numel[rows] * scale)
            diff = np.abs(a[..., S[f"{prefix}_{name}"]] - b[..., S[f"{prefix}_{name}"]])
            finite = np.isfinite(scale) & (scale > 0)
            worst[f"{prefix}_{name}"] = float((diff[finite] / scale[finite]).max(initial=0.0))
    return {"histograms_equal": bool(np.array_equal(mine.hist, theirs.hist)), **exact, **worst}


def triton_agreement(device: str) -> dict[str, dict]:
    """The Triton kernel against the torch path without it, on one step with special values."""
    result = {}
    for network, overrides in NETWORKS.items():
        for dtype in ("float32", "float64"):
            run = GradientFlowRun(RunConfig(steps=1, device=device, dtype=dtype, **overrides))
            grads = [g.clone() for g in step_tensors(run)]
            special = _special_values(run.dtype).to(run.device)
            for g in grads[::2]:
                flat = g.view(-1)
                flat[-min(flat.numel(), special.numel()) :] = special[: flat.numel()]
            steps = {}
            for one_pass in (True, False):
                probe_module.ONE_PASS = one_pass
                try:
                    probe = GradientProbe(
                        run.specs, run.replicas, run.device, run.dtype, counts_nonfinite=True
                    )
                finally:
                    probe_module.ONE_PASS = True
                packed = probe.measure(grads, run.params, with_hist=True).cpu().numpy()
                steps[probe.strategy.name] = probe.layout.unpack(packed, with_hist=True)
            if len(steps) != 2:
                raise RuntimeError(f"one statistics path only ({list(steps)}): does triton import?")
            (mine, theirs), names = steps.values(), list(steps)
            numel = np.array([spec.numel for spec in run.specs], dtype=np.float64)
            params = [spec.is_param for spec in run.specs]
            result[f"{network} {dtype}"] = {
                "compared": " against ".join(names),
                **_differences(mine, theirs, numel, params),
            }
    return result


def triton_agreement_missed(result: dict[str, dict]) -> list[str]:
    missed = []
    for case, values in result.items():
        for key, value in values.items():
            if value is False or (isinstance(value, float) and not value <= TRITON_AGREEMENT):
                missed.append(f"{case} ({values['compared']}): {key} {value}")
    return missed


def first_calls(device: str) -> dict:
    """First and second instrumented step at 1024 x 20 in a fresh process: with an empty
    Triton cache (the kernels compile), then with the cache it left (they load)."""
    result = {}
    with tempfile.TemporaryDirectory(prefix="gradsweep-triton-cache-") as cache:
        env = {**os.environ, "TRITON_CACHE_DIR": cache}
        for label in ("empty_cache", "warm_cache"):
            proc = subprocess.run(
                [sys.executable, "-c", FIRST_CALL, device],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            path, first, second = proc.stdout.split()[-3:]
            result["stats_path"] = path
            result[f"{label}_first_step_s"] = float(first)
            result[f"{label}_second_step_s"] = float(second)
    return result


def overhead(device: str, repeats: int) -> dict[str, dict]:
    """Instrumented against bare step at width 1024 x depth 20, every step and log_every=10:
    on the default statistics path and on the torch path without the one-pass kernel."""
    result = {}
    overrides = dict(width=1024, depth=20, device=device)
    for label, one_pass in (("default", True), ("without_one_pass", False)):
        probe_module.ONE_PASS = one_pass
        try:
            members = [run_values(RunConfig(**overrides))]
            figures = {"stats_path": planned_execution(members, 1).stats_path}
            for logging, log_every in (("every_step", 1), ("log_every_10", 10)):
                bare, inst, ratio = measure(overrides, log_every, True, repeats, 50)
                figures[logging] = ratio
                figures[f"{logging}_bare_ms"] = bare * 1e3
                figures[f"{logging}_instrumented_ms"] = inst * 1e3
        finally:
            probe_module.ONE_PASS = True
        result[label] = figures
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
        "triton_agreement": lambda: (
            triton_agreement(args.device) if args.device == "cuda" else None
        ),
        "first_calls_1024x20": lambda: first_calls(args.device),
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
    if isinstance(results["triton_agreement"], dict):
        missed += triton_agreement_missed(results["triton_agreement"])
    if isinstance(results["overhead_1024x20"], dict):
        default = results["overhead_1024x20"]["default"]
        if default["every_step"] > OVERHEAD_TARGET:
            missed.append(
                f"overhead {default['every_step']:.2f}x > {OVERHEAD_TARGET}x "
                f"({default['stats_path']})"
            )
    if isinstance(results["syncs_in_step_loop"], list) and results["syncs_in_step_loop"]:
        missed.append(
            f"{len(results['syncs_in_step_loop'])} synchronising call sites in the step loop"
        )
    print("targets missed:" if missed else "every target met", *missed, sep="\n  ")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
