"""`python -m gradsweep.export tensorboard|wandb PATH...`: export run files to a dashboard.

Exit statuses: 0 every usable run was exported (runs the readers skip are listed
on stderr); 1 an export failed; 2 refused before anything was written (a missing
extra, no run files under the paths).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gradsweep.export import to_tensorboard, to_wandb
from gradsweep.export.extras import MissingExtra
from gradsweep.export.series import ReplicaSeries, read_series
from gradsweep.loading import describe
from gradsweep.store import RunSet

EXPORTED, FAILED, REFUSED = 0, 1, 2


class NoRuns(ValueError):
    """No usable run file under the paths given."""


def find_runs(paths: Sequence[str | Path]) -> list[str]:
    """The usable run files under `paths`, skipped runs listed on stderr; NoRuns if none.

    A path that does not exist refuses the export (NoRuns) before anything is written.
    """
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise NoRuns(f"no such file or directory: {', '.join(missing)}")
    runs = RunSet(paths)
    if runs.problems:
        print(f"gradsweep.export: {describe(runs.problems)}", file=sys.stderr)
    if not runs.files:
        raise NoRuns(f"no run files found in {', '.join(map(str, paths))}")
    return runs.files


def export(
    files: Sequence[str], write: Callable[[list[ReplicaSeries]], object]
) -> tuple[int, int, list[str]]:
    """Write each run file with `write`; (runs, dashboard runs, one line per failed file)."""
    runs = replicas = 0
    failures = []
    for path in files:
        try:
            series = read_series(path)
            write(series)
        except Exception as err:
            failures.append(f"{path}: {type(err).__name__}: {err}".splitlines()[0])
            continue
        runs, replicas = runs + 1, replicas + len(series)
    return runs, replicas, failures


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gradsweep.export",
        description="Export gradsweep run files to TensorBoard or W&B: one dashboard run per "
        "replica, named by its configuration (docs/export.md).",
    )
    targets = parser.add_subparsers(dest="target", required=True)
    tensorboard = targets.add_parser("tensorboard", help="write TensorBoard event files")
    tensorboard.add_argument("paths", nargs="+", help="sweep dirs, run dirs or run files")
    tensorboard.add_argument(
        "--out", required=True, type=Path, help="TensorBoard log dir (tensorboard --logdir DIR)"
    )
    wandb = targets.add_parser("wandb", help="log W&B runs (WANDB_MODE=offline: no account)")
    wandb.add_argument("paths", nargs="+", help="sweep dirs, run dirs or run files")
    wandb.add_argument("--project", default=to_wandb.DEFAULT_PROJECT, help="W&B project")
    wandb.add_argument(
        "--dir", type=Path, default=Path("."), help="where W&B writes its wandb/ directory"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.target == "tensorboard":
            to_tensorboard.check_installed()
            files = find_runs(args.paths)
            args.out.mkdir(parents=True, exist_ok=True)
            where = str(args.out)
            result = export(files, lambda s: to_tensorboard.write_run(s, args.out))
        else:
            to_wandb.check_installed()
            files = find_runs(args.paths)
            where = f"{args.dir / 'wandb'} (project {args.project})"
            result = export(files, lambda s: to_wandb.write_run(s, args.project, args.dir))
    except (MissingExtra, NoRuns, OSError) as err:
        print(f"gradsweep.export: error: {err}", file=sys.stderr)
        return REFUSED
    runs, replicas, failures = result
    for line in failures:
        print(f"gradsweep.export: export failed: {line}", file=sys.stderr)
    print(f"exported {runs} run(s) as {replicas} {args.target} run(s) to {where}")
    return FAILED if failures else EXPORTED


if __name__ == "__main__":
    sys.exit(main())
