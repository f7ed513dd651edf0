"""Kill a real sweep with SIGKILL at random moments, resume after each kill, compare bit for bit.

    python benchmarks/chaos_sweep.py [--kills 20] [--launcher basic|joblib] [--seed 0] [--work DIR]

An uninterrupted sweep is the reference. The same sweep is then started into a
second dir and killed (its whole process group, launcher workers included) at
random moments spread over its duration; half of the kills wait for a run file
to be mid-write (a new temporary file present; `GRADSWEEP_WRITE_DELAY` holds
each write open long enough to hit). Each kill is followed by a resume, the
same command into the same dir; a resume that completes the sweep before its
kill comes has its files compared with the reference, and a new sweep starts,
until `--kills` kills have landed mid-sweep. A last resume completes the sweep,
and every run file is compared with the reference exactly (a leftover
temporary file or FAILED.txt counts as a difference). Prints trials, kills that
landed during a write, runs redone, files compared and differences (expected
0); exits 1 if any.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_sweeps import STATS_GLOB, compare_file  # noqa: E402

SWEEP = ["act=sigmoid,tanh,relu", "depth=3,6", "seed=0,1,2,3,4", "steps=60", "batchnorm=true"]
LAUNCHERS = {"basic": [], "joblib": ["hydra/launcher=joblib"]}
TMP_GLOB = "*/.grad_stats.parquet.*.tmp"
WRITE_DELAY_S = "0.3"


def sweep_command(sweep_dir: Path, launcher: str) -> list[str]:
    """The sweep under test, into `sweep_dir`."""
    return [
        sys.executable,
        "-m",
        "gradsweep",
        "-m",
        *SWEEP,
        *LAUNCHERS[launcher],
        f"hydra.sweep.dir={sweep_dir}",
    ]


def start(sweep_dir: Path, launcher: str, delay: bool) -> subprocess.Popen:
    """Start the sweep in its own process group, output discarded."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    if delay:
        env["GRADSWEEP_WRITE_DELAY"] = WRITE_DELAY_S
    return subprocess.Popen(
        sweep_command(sweep_dir, launcher),
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the sweep and every process it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def in_progress(sweep_dir: Path) -> int:
    """Run dirs started but without a complete run file: the runs a resume must redo."""
    started = sweep_dir.glob("*/.hydra")
    return sum(1 for d in started if not (d.parent / "grad_stats.parquet").exists())


def compare_sweeps(reference: Path, chaotic: Path) -> tuple[int, int]:
    """Files compared and differences: missing or extra files, values, leftovers."""
    before = {p.relative_to(reference): p for p in reference.glob(STATS_GLOB)}
    after = {p.relative_to(chaotic): p for p in chaotic.glob(STATS_GLOB)}
    differences = len(set(before) ^ set(after))
    for rel in sorted(set(before) & set(after)):
        differences += len(compare_file(before[rel], after[rel], set()))
    leftovers = list(chaotic.glob(TMP_GLOB)) + list(chaotic.glob("*/FAILED.txt"))
    return len(before), differences + len(leftovers)


def chaos(work: Path, kills: int, launcher: str, seed: int) -> int:
    """Kill, resume, repeat until `kills` kills landed mid-sweep; compare each finished sweep.

    A resumed sweep may finish before its kill comes: that sweep is compared with
    the reference and a new one started, so that the kills land all over a sweep.
    """
    rng = random.Random(seed)
    reference, chaotic = work / "reference", work / "chaos"
    began = time.perf_counter()
    subprocess.run(sweep_command(reference, launcher), check=True, capture_output=True)
    duration = time.perf_counter() - began
    landed = landed_in_write = redone = compared = differences = 0
    while landed < kills:
        during_write = landed % 2 == 1
        stale = set(chaotic.glob(TMP_GLOB))
        proc = start(chaotic, launcher, delay=during_write)
        deadline = time.perf_counter() + duration * 2
        if during_write:
            while proc.poll() is None and time.perf_counter() < deadline:
                if set(chaotic.glob(TMP_GLOB)) - stale:
                    break
                time.sleep(0.002)
        else:
            time.sleep(rng.uniform(0.0, duration))
        writing = bool(set(chaotic.glob(TMP_GLOB)) - stale)
        finished = proc.poll() is not None
        kill(proc)
        if finished:
            files, diffs = compare_sweeps(reference, chaotic)
            compared, differences = compared + files, differences + diffs
            print(f"the sweep ended before the kill: {files} files compared, {diffs} differences")
            shutil.rmtree(chaotic)
            continue
        landed += 1
        landed_in_write += writing
        redone += in_progress(chaotic)
        print(
            f"kill {landed:2d}: mid-sweep{', during a write' if writing else ''}; "
            f"{len(list(chaotic.glob(STATS_GLOB)))} run files complete",
            flush=True,
        )
    subprocess.run(sweep_command(chaotic, launcher), check=True, capture_output=True)
    files, diffs = compare_sweeps(reference, chaotic)
    compared, differences = compared + files, differences + diffs
    print(
        f"launcher {launcher}: trials {kills}, kills during a write {landed_in_write}, "
        f"runs redone {redone}, files compared {compared}, differences {differences}"
    )
    return 1 if differences else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--launcher", choices=sorted(LAUNCHERS), default="basic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="work dir (default: a new temporary dir)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="gradsweep-chaos-"))
    return chaos(work, args.kills, args.launcher, args.seed)


if __name__ == "__main__":
    sys.exit(main())
