"""Report at scale: the report of 1,000 runs and the summary of 10,000 run files; time and peak RSS.

Every run file is real data: one small real sweep runs with many replicas, and
each replica of each run is written as its own one-replica run file (replica 0,
its own seed and run key), as a sweep over seeds would have written it. Files
are cached under --cache. Each measurement runs in a fresh process, so its peak
RSS (VmHWM) includes the interpreter and imports; times include the imports.

    python benchmarks/report_scale.py [--cache DIR] [--baselines]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from gradsweep.config import run_key
from gradsweep.store import SCHEMA_VERSION
from gradsweep.summary import footer_metrics

BASE_SWEEP = ["act=sigmoid,tanh,relu", "depth=8,12", "init_scale=1,2", "clip=null,1.0", "steps=16"]
N_CONFIGS = 24


def base_sweep(cache: Path, replicas: int) -> Path:
    """Run the real base sweep once (24 runs of `replicas` replicas each)."""
    out = cache / f"base-r{replicas}"
    if not (out / "multirun.yaml").exists():
        cmd = [
            sys.executable,
            "-m",
            "gradsweep",
            "-m",
            *BASE_SWEEP,
            f"replicas={replicas}",
            f"hydra.sweep.dir={out}",
        ]
        subprocess.run(cmd, check=True, capture_output=True)
    return out


def split_replicas(base: Path, out: Path, n_runs: int) -> Path:
    """Write each base run's first replicas, each as its own run file, until `n_runs` files exist.

    Each file is what `seed=seed+r replicas=1` would have written: replica 0,
    its own seed in the data and in the footer's config, that config's run key,
    and the footer summary `gradsweep.summary.footer_metrics` computes at write time.
    """
    done = out / ".complete"
    if done.exists():
        return out
    written = 0
    paths = sorted(base.glob("*/grad_stats.parquet"))
    for path in paths:
        table = pq.read_table(path)
        meta = dict(table.schema.metadata)
        config = yaml.safe_load(meta[b"gradsweep.config"])
        replicas = pc.unique(table["replica"]).to_pylist()[
            : min(-(-n_runs // len(paths)), n_runs - written)
        ]
        parts, configs = [], []
        for r in replicas:
            part = table.filter(pc.equal(table["replica"], r))
            configs.append({**config, "seed": part["seed"][0].as_py(), "replicas": 1})
            key = run_key(configs[-1])
            part = part.set_column(
                part.schema.get_field_index("run_key"),
                "run_key",
                pa.array([key] * len(part), pa.large_string()),
            )
            parts.append(
                part.set_column(
                    part.schema.get_field_index("replica"),
                    "replica",
                    pa.array([0] * len(part), pa.int64()),
                )
            )
        for part, run_config, summary in zip(
            parts, configs, footer_metrics([p.to_pandas() for p in parts])
        ):
            meta[b"gradsweep.config"] = yaml.safe_dump(run_config).encode()
            meta[b"gradsweep.summary"] = summary.encode()
            target = out / f"{path.parent.name}-seed{run_config['seed']}" / "grad_stats.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(part.replace_schema_metadata(meta), target, compression="zstd")
        written += len(parts)
    done.write_text(str(written))
    return out


MEASURE = {
    "report": ("from gradsweep.report import build_report\nbuild_report([{src!r}], {dst!r})"),
    "summary": (
        "from gradsweep.store import RunSet\n"
        "from gradsweep.summary import summary_table\n"
        "n = len(summary_table(RunSet([{src!r}])))"
    ),
    "baseline_pandas_loop": (
        "import glob, pandas as pd\n"
        "pd.concat([pd.read_parquet(f) for f in glob.glob({src!r} + '/*/grad_stats.parquet')])"
    ),
    "baseline_dataset_all": (
        "import glob, pyarrow.dataset as ds\n"
        "ds.dataset(glob.glob({src!r} + '/*/grad_stats.parquet'), format='parquet')"
        ".to_table().to_pandas()"
    ),
}

# Peak RSS from VmHWM: ru_maxrss survives fork and exec, so a child would report its parent's peak.
_CHILD = """
import time, json
t0 = time.perf_counter()
{body}
seconds = time.perf_counter() - t0
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"seconds": seconds, "peak_rss_mb": int(hwm.split()[1]) / 1024}}))
"""


def measure(kind: str, src: Path, dst: Path, repeats: int) -> dict[str, float]:
    """Median wall time and max peak RSS of `repeats` fresh processes doing `kind`."""
    code = _CHILD.format(body=MEASURE[kind].format(src=str(src), dst=str(dst)))
    results = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        )
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    seconds = sorted(r["seconds"] for r in results)[len(results) // 2]
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in results)),
    }


def main() -> None:
    """Prepare the run files, then time the 1,000-run report and the 10,000-file summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/gradsweep-report-bench"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--baselines", action="store_true", help="also time reading every column of every file"
    )
    args = parser.parse_args()
    args.cache = (
        args.cache / f"schema{SCHEMA_VERSION}"
    )  # files of another schema version would be refused
    args.cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base = base_sweep(args.cache, replicas=-(-10_000 // N_CONFIGS))
    runs_1k = split_replicas(base, args.cache / "split-1000", 1_000)
    runs_10k = split_replicas(base, args.cache / "split-10000", 10_000)
    rows = pq.ParquetDataset(str(runs_1k)).read(columns=["step"]).num_rows / 1_000
    print(
        f"run files ready in {time.perf_counter() - start:.0f} s "
        f"({rows:.0f} rows per file on average)"
    )
    plan = [("report", runs_1k, 1_000), ("summary", runs_10k, 10_000)]
    if args.baselines:
        plan += [
            ("baseline_pandas_loop", runs_10k, 10_000),
            ("baseline_dataset_all", runs_10k, 10_000),
        ]
    for kind, src, n in plan:
        result = measure(kind, src, args.cache / "report", args.repeats)
        print(
            f"{kind:<22} {n:>6} files  {result['seconds']:>6.2f} s  "
            f"peak RSS {result['peak_rss_mb']:>5} MB"
        )


if __name__ == "__main__":
    main()
