"""Compare two sweep dirs run file by run file, number for number (no tolerance).

    python benchmarks/compare_sweeps.py BEFORE_DIR AFTER_DIR [--ignore COL ...] [--ignore-new]

Run files are matched by their path relative to each dir. Every column present in
both is compared exactly (NaN equals NaN, histograms element by element), and so
are the footer summaries; with `--ignore-new` a column only AFTER_DIR's files have
(one the schema gained since BEFORE_DIR was written) is not a difference. Prints
one line per difference and a closing count; exits 1 when anything differs or a
file is missing on one side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

STATS_GLOB = "**/grad_stats.parquet"


def _same(a: object, b: object) -> bool:
    left, right = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    if left.shape != right.shape:
        return False
    for x, y in zip(left.ravel(), right.ravel()):
        if isinstance(x, (list, np.ndarray)) or isinstance(y, (list, np.ndarray)):
            if x is None or y is None or not np.array_equal(np.asarray(x), np.asarray(y)):
                if not (x is None and y is None):
                    return False
            continue
        x_nan = x is None or (isinstance(x, float) and x != x)
        y_nan = y is None or (isinstance(y, float) and y != y)
        if x_nan or y_nan:
            if x_nan != y_nan:
                return False
        elif x != y:
            return False
    return True


def compare_file(
    before: Path, after: Path, ignore: set[str], ignore_new: bool = False
) -> list[str]:
    """Differences between two run files: columns, values and footer summaries."""
    a, b = pq.read_table(before), pq.read_table(after)
    diffs = []
    new = set(b.column_names) - set(a.column_names) if ignore_new else set()
    for name in sorted(set(a.column_names) ^ set(b.column_names)):
        if name not in ignore | new:
            side = "before" if name in a.column_names else "after"
            diffs.append(f"column {name} only {side}")
    if a.num_rows != b.num_rows:
        return diffs + [f"rows {a.num_rows} != {b.num_rows}"]
    for name in a.column_names:
        if name in ignore or name not in b.column_names:
            continue
        if not _same(a[name].to_pylist(), b[name].to_pylist()):
            diffs.append(f"column {name} differs")
    meta = [
        json.loads((t.schema.metadata or {}).get(b"gradsweep.summary", b"null")) for t in (a, b)
    ]
    if json.dumps(meta[0], sort_keys=True) != json.dumps(meta[1], sort_keys=True):
        diffs.append("footer summary differs")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--ignore", nargs="*", default=[], help="columns not compared")
    parser.add_argument(
        "--ignore-new",
        action="store_true",
        help="columns only the AFTER files have (added to the schema since) are not differences",
    )
    args = parser.parse_args(argv)
    ignore = set(args.ignore)
    before = {p.relative_to(args.before): p for p in args.before.glob(STATS_GLOB)}
    after = {p.relative_to(args.after): p for p in args.after.glob(STATS_GLOB)}
    problems = [f"{rel}: only before" for rel in sorted(set(before) - set(after))]
    problems += [f"{rel}: only after" for rel in sorted(set(after) - set(before))]
    for rel in sorted(set(before) & set(after)):
        problems += [
            f"{rel}: {d}" for d in compare_file(before[rel], after[rel], ignore, args.ignore_new)
        ]
    for line in problems:
        print(line)
    print(f"{len(set(before) & set(after))} files compared, {len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
