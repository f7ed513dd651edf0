"""The per-run parquet file: atomic write, metadata, completeness, schema version, sweep reader.

A run file is written under a temporary name in the same directory and renamed
into place only once complete, so a file under the final name is always whole.
`RunSet` reads any number of run files as one pyarrow dataset, so every
consumer reads only the columns and rows it needs; files it cannot use are
listed as problems by path, never dropped silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import yaml

from gradsweep.bins import HIST_BIN_LABELS
from gradsweep.config import run_key
from gradsweep.schema import (
    CONFIG_COLUMNS,
    CONFIG_KEYS,
    EXECUTION_METADATA,
    FAILURE_FILE,
    META_PREFIX,
    RUN_SCHEMA,
    SCHEMA_VERSION,
    STATS_FILE,
    STRING_COLUMNS,
    check_columns,
)

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SchemaVersionError(ValueError):
    """A run file written by an incompatible version of gradsweep."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gradsweep")
    except PackageNotFoundError:
        return "unknown"


def run_metadata(
    config_yaml: str, execution: Mapping[str, str], status: str, summary: str
) -> dict[str, str]:
    """The footer's key-value metadata (`schema.METADATA`); `summary` is per-replica JSON.

    `execution` holds the values of `schema.EXECUTION_METADATA`
    (`gradsweep.execution.Execution.metadata`).
    """
    return {
        "summary": summary,
        "schema_version": str(SCHEMA_VERSION),
        "version": _version(),
        "config": config_yaml,
        "status": status,
        "hist_bins": json.dumps(list(HIST_BIN_LABELS)),
        **{key: execution[key] for key in EXECUTION_METADATA},
    }


def run_table(frame: pd.DataFrame) -> pa.Table:
    """A run's rows as an arrow table of the run file's schema (`schema.RUN_SCHEMA`).

    Raises a ValueError naming the missing and extra columns, or the column
    holding a null that the schema does not allow.
    """
    check_columns(frame.columns)
    return pa.Table.from_pandas(frame, schema=RUN_SCHEMA, preserve_index=False)


def write_run(frame: pd.DataFrame, path: str | Path, metadata: dict[str, str]) -> Path:
    """Write `frame` to `path` atomically, with `metadata` under the `gradsweep.` prefix."""
    path = Path(path)
    table = run_table(frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(table.schema.metadata or {})
    meta.update({f"{META_PREFIX}{k}".encode(): str(v).encode() for k, v in metadata.items()})
    table = table.replace_schema_metadata(meta)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle, compression="zstd")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `gradsweep.` key-value metadata of a run file, prefix removed."""
    raw = pq.read_schema(path).metadata or {}
    return {
        k.decode()[len(META_PREFIX) :]: v.decode()
        for k, v in raw.items()
        if k.decode().startswith(META_PREFIX)
    }


def check_schema(path: str | Path) -> dict[str, str]:
    """Metadata of a run file whose schema version this gradsweep reads; else SchemaVersionError."""
    meta = read_metadata(path)
    found = meta.get("schema_version")
    if found != str(SCHEMA_VERSION):
        raise SchemaVersionError(
            f"{path}: schema version {found!r} is not supported "
            f"(this gradsweep reads version {SCHEMA_VERSION})"
        )
    return meta


def complete_metadata(path: str | Path) -> dict[str, str] | None:
    """The metadata of a readable run file of the current schema version; None for any other."""
    try:
        return check_schema(path)
    except (OSError, ValueError, pa.ArrowException):
        return None


def is_complete(path: str | Path) -> bool:
    """True when `path` is a readable run file of the current schema version."""
    return complete_metadata(path) is not None


def read_run(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """One run file as a DataFrame (optionally only `columns`)."""
    check_schema(path)
    return pq.read_table(path, columns=columns).to_pandas()


@dataclass(frozen=True)
class Problem:
    """A run the reader could not use: `kind` is refused (schema version), unreadable or failed."""

    path: str
    kind: str
    message: str


def _failure_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError as err:
        return f"FAILED.txt unreadable: {err}"
    return lines[0] if lines else "(empty FAILED.txt)"


def find_run_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Problem]]:
    """Run files under sweep dirs, run dirs or given directly; runs with FAILED.txt are problems.

    A FAILED.txt means the latest attempt of that run raised, so a run file next
    to it is stale and is not read. A file reached through several of `paths`
    (a sweep dir and a run dir inside it) is listed once.
    """
    files: list[Path] = []
    problems: list[Problem] = []
    for root in map(Path, paths):
        if root.is_file():
            files.append(root)
            continue
        if not root.is_dir():
            problems.append(Problem(str(root), "unreadable", "no such file or directory"))
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            here = Path(dirpath)
            if FAILURE_FILE in filenames:
                stale = " (stale grad_stats.parquet ignored)" if STATS_FILE in filenames else ""
                problems.append(
                    Problem(str(here), "failed", _failure_line(here / FAILURE_FILE) + stale)
                )
            elif STATS_FILE in filenames:
                files.append(here / STATS_FILE)
    first: dict[Path, Path] = {}
    for path in files:
        first.setdefault(path.resolve(), path)
    return list(first.values()), problems


_FORMAT = ds.ParquetFileFormat(
    read_options=ds.ParquetReadOptions(dictionary_columns=list(STRING_COLUMNS))
)
SCAN_CHUNK_FILES = 1000


def _inspect(path: Path) -> tuple[dict[str, object] | None, Problem | None]:
    """One run file's footer: its configuration columns, or why the file cannot be used."""
    try:
        meta = check_schema(path)
        values = yaml.load(meta["config"], Loader=_YAML_LOADER)
    except SchemaVersionError as err:
        return None, Problem(str(path), "refused", str(err))
    except (OSError, KeyError, ValueError, yaml.YAMLError, pa.ArrowException) as err:
        return None, Problem(str(path), "unreadable", f"{type(err).__name__}: {err}")
    config = {column: values.get(key) for column, key in CONFIG_KEYS.items()}
    record = {"path": str(path), "run_key": run_key(values), **config, "seed": values.get("seed")}
    return {**record, "footer_summary": meta.get("summary")}, None


class RunSet:
    """The usable run files of some sweep dirs, run dirs or files, scanned with pyarrow.dataset.

    Footers are read once (schema version and configuration, one row per file
    in `runs`); scans then decode only the columns and rows asked for, a chunk
    of files at a time so that parquet metadata never piles up in memory.
    """

    def __init__(self, paths: Iterable[str | Path], threads: int | None = None) -> None:
        files, self.problems = find_run_files(paths)
        with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
            inspected = list(pool.map(_inspect, files))
        self.problems += [p for _, p in inspected if p is not None]
        runs = pd.DataFrame(
            [r for r, _ in inspected if r is not None],
            columns=["path", "run_key", *CONFIG_COLUMNS, "seed", "footer_summary"],
        )
        self.footer_summaries: dict[str, str | None] = dict(
            zip(runs["path"], runs.pop("footer_summary"))
        )
        repeated = runs.duplicated("run_key")
        first = runs.drop_duplicates("run_key").set_index("run_key")["path"]
        self.problems += [
            Problem(
                path,
                "duplicate",
                f"same configuration (run_key {key}) already read from {first[key]}",
            )
            for path, key in zip(runs.loc[repeated, "path"], runs.loc[repeated, "run_key"])
        ]
        self.runs = runs[~repeated].reset_index(drop=True)
        self.schema: pa.Schema | None = RUN_SCHEMA if len(self.runs) else None

    @property
    def files(self) -> list[str]:
        """Paths of the run files that are read."""
        return self.runs["path"].tolist()

    def _scan(
        self, files: list[str], columns: list[str] | None, filter: ds.Expression | None
    ) -> pa.Table:
        dataset = ds.dataset(files, schema=self.schema, format=_FORMAT)
        return dataset.to_table(columns=columns, filter=filter)

    def _scan_each(
        self, files: list[str], columns: list[str] | None, filter: ds.Expression | None
    ) -> list[pa.Table]:
        """File by file, so that a file failing mid-scan (corrupt page, valid footer) is dropped."""
        parts = []
        for path in files:
            try:
                parts.append(self._scan([path], columns, filter))
            except (OSError, pa.ArrowException) as err:
                self.problems.append(Problem(path, "unreadable", f"{type(err).__name__}: {err}"))
                self.runs = self.runs[self.runs["path"] != path]
        return parts

    def chunks(
        self, columns: list[str] | None = None, filter: ds.Expression | None = None
    ) -> Iterator[pa.Table]:
        """`columns` and rows matching `filter`, a chunk of files at a time."""
        if self.schema is None:
            raise ValueError("no readable run files")
        files = self.files
        for start in range(0, len(files), SCAN_CHUNK_FILES):
            chunk = files[start : start + SCAN_CHUNK_FILES]
            try:
                yield self._scan(chunk, columns, filter)
            except (OSError, pa.ArrowException):
                yield from self._scan_each(chunk, columns, filter)

    def table(
        self, columns: list[str] | None = None, filter: ds.Expression | None = None
    ) -> pa.Table:
        """Only `columns` and the rows matching `filter`, from every usable file."""
        return pa.concat_tables(
            list(self.chunks(columns, filter)), promote_options="permissive"
        ).unify_dictionaries()

    def frame(
        self, columns: list[str] | None = None, filter: ds.Expression | None = None
    ) -> pd.DataFrame:
        """`table(columns, filter)` as a DataFrame."""
        return self.table(columns, filter).to_pandas()


def read_sweep(
    paths: Iterable[str | Path],
    columns: list[str] | None = None,
    filter: ds.Expression | None = None,
) -> tuple[pd.DataFrame, list[Problem]]:
    """Rows of every usable run file under `paths` (`columns`, rows matching `filter`); problems."""
    runs = RunSet(paths)
    return runs.frame(columns, filter), runs.problems
