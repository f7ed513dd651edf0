"""Compare two sweep dirs run file by run file, number for number (no tolerance).

    python benchmarks/compare_sweeps.py BEFORE_DIR AFTER_DIR [--ignore COL ...] [--ignore-new]

Run files are matched by their path relative to each dir. Every column present in
both is compared exactly (NaN equals NaN, histograms element by element), and so
are the footer summaries; a column only one side has is a difference unless
ignored, or, with `--ignore-new`, one only AFTER_DIR's files have (the schema
gained it since BEFORE_DIR was written). Prints one line per difference, with
how many values differ and, for float columns and summary metrics, the largest
relative difference; then the largest per column over all files, and a closing
count. Exits 1 when anything
differs or a file is missing on one side.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
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


@dataclass
class Relative:
    """How two float columns differ: values that differ; the largest relative difference of
    a finite pair, elementwise and to the largest finite magnitude of the column; pairs where
    only one side is finite, or both are but differ in kind (NaN against Inf)."""

    count: int = 0
    elementwise: float = 0.0
    to_scale: float = 0.0
    nonfinite: int = 0

    def merge(self, other: Relative) -> None:
        self.count += other.count
        self.elementwise = max(self.elementwise, other.elementwise)
        self.to_scale = max(self.to_scale, other.to_scale)
        self.nonfinite += other.nonfinite

    def __str__(self) -> str:
        text = (
            f"{self.count} values differ, max relative {self.elementwise:.2e} "
            f"(to the column's largest magnitude {self.to_scale:.2e})"
        )
        return text + (
            f", {self.nonfinite} of them not finite on one side" if self.nonfinite else ""
        )


def _relative(a: object, b: object) -> Relative | None:
    """How two float columns differ; None when they are not plain float columns."""
    try:
        left, right = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if left.shape != right.shape or left.ndim != 1:
        return None
    both_nan = np.isnan(left) & np.isnan(right)
    differ = (left != right) & ~both_nan
    finite = np.isfinite(left) & np.isfinite(right)
    scale = np.abs(np.concatenate([left[np.isfinite(left)], right[np.isfinite(right)]]))
    gap = np.abs(left - right)[differ & finite]
    magnitude = np.maximum(np.abs(left), np.abs(right))[differ & finite]
    return Relative(
        int(differ.sum()),
        float((gap / magnitude).max(initial=0.0)),
        float(gap.max(initial=0.0) / scale.max(initial=0.0)) if gap.size else 0.0,
        int((differ & ~finite).sum()),
    )


def _flat_summary(summary: object, prefix: str = "") -> dict[str, object]:
    """Leaves of a footer summary by dotted path."""
    if isinstance(summary, dict):
        items = summary.items()
    elif isinstance(summary, list) and any(isinstance(v, (dict, list)) for v in summary):
        items = enumerate(summary)
    else:
        return {prefix.rstrip("."): summary}
    out: dict[str, object] = {}
    for key, value in items:
        out.update(_flat_summary(value, f"{prefix}{key}."))
    return out


def compare_file(
    before: Path,
    after: Path,
    ignore: set[str],
    worst: dict[str, Relative] | None = None,
    ignore_new: bool = False,
) -> list[str]:
    """Differences between two run files: columns, values and footer summaries.

    `worst` collects how each float column (and summary metric) differs over all files.
    """
    worst = {} if worst is None else worst
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
        left, right = a[name].to_pylist(), b[name].to_pylist()
        if not _same(left, right):
            found = _relative(left, right)
            if found is None:
                diffs.append(f"column {name} differs")
                continue
            worst.setdefault(name, Relative()).merge(found)
            diffs.append(f"column {name} differs: {found}")
    meta = [
        json.loads((t.schema.metadata or {}).get(b"gradsweep.summary", b"null")) for t in (a, b)
    ]
    if json.dumps(meta[0], sort_keys=True) != json.dumps(meta[1], sort_keys=True):
        left, right = _flat_summary(meta[0]), _flat_summary(meta[1])
        for key in sorted(set(left) | set(right)):
            if _same([left.get(key)], [right.get(key)]):
                continue
            found = _relative(np.ravel(left.get(key)), np.ravel(right.get(key)))
            if found is None:
                diffs.append(f"footer summary {key} differs")
                continue
            name = "summary " + "".join(c if not c.isdigit() else "" for c in key).strip(".")
            worst.setdefault(name, Relative()).merge(found)
            diffs.append(f"footer summary {key} differs: {found}")
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
    worst: dict[str, Relative] = {}
    for rel in sorted(set(before) & set(after)):
        problems += [
            f"{rel}: {d}"
            for d in compare_file(before[rel], after[rel], ignore, worst, args.ignore_new)
        ]
    for line in problems:
        print(line)
    if worst:
        print(
            "\n| column | values that differ | max relative | max relative to the column's "
            "largest | not finite on one side |"
        )
        print("|---|---:|---:|---:|---:|")
    for name, rel in sorted(worst.items()):
        print(
            f"| {name} | {rel.count} | {rel.elementwise:.2e} | {rel.to_scale:.2e} "
            f"| {rel.nonfinite} |"
        )
    print(f"{len(set(before) & set(after))} files compared, {len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
