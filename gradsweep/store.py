"""The per-run parquet file: atomic write, metadata, completeness, schema version, sweep reader.

A run file is written under a temporary name in the same directory and renamed
into place only once complete, so a file under the final name is always whole.
The temporary name carries its writer's host and pid, so that a sweep removes
only temporary files whose writer is gone, never one another sweep is writing.
`RunSet` reads any number of run files as one pyarrow dataset, so every
consumer reads only the columns and rows it needs; files it cannot use are
listed as problems by path, never dropped silently.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import yaml

from gradsweep.bins import HIST_BIN_LABELS
from gradsweep.config import run_key, run_values
from gradsweep.schema import (
    ABSENT_VALUES,
    CONFIG_COLUMNS,
    CONFIG_KEYS,
    EXECUTION_METADATA,
    FAILURE_FILE,
    META_PREFIX,
    READ_VERSIONS,
    RECORDER_SOURCE,
    RUN_SCHEMA,
    SCHEMA_VERSION,
    STATS_FILE,
    STRING_COLUMNS,
    SWEEP_REQUIRED,
    SWEEP_SOURCE,
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
    holding a null that the schema does not allow (a sweep row's configuration included).
    """
    check_columns(frame.columns)
    table = pa.Table.from_pandas(frame, schema=RUN_SCHEMA, preserve_index=False)
    for name in SWEEP_REQUIRED:
        if not table[name].null_count:
            continue
        sweep_rows = pc.equal(table["source"], SWEEP_SOURCE)
        if pc.any(pc.and_(sweep_rows, table[name].is_null())).as_py():
            raise ValueError(
                f"column {name!r} holds a null on a {SWEEP_SOURCE!r} row: a sweep run file "
                "carries its whole configuration (only recordings leave it null)"
            )
    return table


WRITE_DELAY_ENV = "GRADSWEEP_WRITE_DELAY"


def temporary_path(path: Path, host: str | None = None, pid: int | None = None) -> Path:
    """Where `path` is written before its rename: `.NAME.HOST.PID.tmp`, naming its writer."""
    host = socket.gethostname() if host is None else host
    return path.with_name(f".{path.name}.{host}.{os.getpid() if pid is None else pid}.tmp")


def _writer(tmp: Path, path: Path) -> tuple[str, int] | None:
    """(host, pid) of the process that writes `tmp`, a temporary file of `path`; else None."""
    prefix, suffix = f".{path.name}.", ".tmp"
    if not (tmp.name.startswith(prefix) and tmp.name.endswith(suffix)):
        return None
    host, _, pid = tmp.name[len(prefix) : -len(suffix)].rpartition(".")
    return (host, int(pid)) if host and pid.isdigit() else None


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary files of `path` whose writer is gone; return them.

    Only this host's writers can be checked, so another host's temporary file
    (a run dir on a shared file system) is left alone, and so is one whose
    writer still runs: another sweep may be writing the same run.
    """
    path = Path(path)
    host = socket.gethostname()
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        writer = _writer(tmp, path)
        if writer is not None and writer[0] == host and not _is_alive(writer[1]):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _write_delay() -> float:
    """Test hook: seconds `GRADSWEEP_WRITE_DELAY` holds a temporary file open before its rename."""
    return float(os.environ.get(WRITE_DELAY_ENV) or 0.0)


def write_run(frame: pd.DataFrame, path: str | Path, metadata: dict[str, str]) -> Path:
    """Write `frame` to `path` atomically, with `metadata` under the `gradsweep.` prefix.

    Once the file is in place, a FAILED.txt beside it (an earlier attempt's, or a
    concurrent sweep's) is removed: a complete run file wins over a failure record.
    """
    path = Path(path)
    table = run_table(frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(table.schema.metadata or {})
    meta.update({f"{META_PREFIX}{k}".encode(): str(v).encode() for k, v in metadata.items()})
    table = table.replace_schema_metadata(meta)
    tmp = temporary_path(path)
    delay = _write_delay()
    try:
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle, compression="zstd")
            handle.flush()
            os.fsync(handle.fileno())
            if delay > 0:
                time.sleep(delay)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # gone, or a read-only dir: the error is raised
            tmp.unlink(missing_ok=True)
    (path.parent / FAILURE_FILE).unlink(missing_ok=True)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `gradsweep.` key-value metadata of a run file, prefix removed."""
    raw = pq.read_schema(path).metadata or {}
    return {
        k.decode()[len(META_PREFIX) :]: v.decode()
        for k, v in raw.items()
        if k.decode().startswith(META_PREFIX)
    }


def check_schema(path: str | Path, versions: tuple[int, ...] = READ_VERSIONS) -> dict[str, str]:
    """Metadata of a run file whose schema version is one of `versions`; else SchemaVersionError.

    The readers take every version in `schema.READ_VERSIONS`; a resumed sweep keeps only files of
    the current SCHEMA_VERSION (`complete_metadata`), so a sweep dir is never written in two.
    """
    meta = read_metadata(path)
    found = meta.get("schema_version")
    if found not in {str(v) for v in versions}:
        readable = ", ".join(map(str, versions))
        raise SchemaVersionError(
            f"{path}: schema version {found!r} is not supported "
            f"(this gradsweep reads version {readable})"
        )
    return meta


def complete_metadata(path: str | Path) -> dict[str, str] | None:
    """The metadata of a readable run file of the current schema version; None for any other."""
    try:
        return check_schema(path, (SCHEMA_VERSION,))
    except (OSError, ValueError, pa.ArrowException):
        return None


def is_complete(path: str | Path) -> bool:
    """True when `path` is a readable run file of the current schema version."""
    return complete_metadata(path) is not None


def conform(table: pa.Table) -> pa.Table:
    """A run file's table with the columns its older schema version lacks added as nulls."""
    for index, field in enumerate(RUN_SCHEMA):
        if field.name not in table.column_names:
            table = table.add_column(index, field, pa.nulls(table.num_rows, field.type))
    return table


def read_run_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """One run file as an arrow table in the current schema's columns (optionally only
    `columns`), read as `RunSet` reads it: nulls stay apart from NaN, and a sweep file older
    than a column gets its `absent` value."""
    meta = check_schema(path)
    if columns is None:
        table = conform(pq.read_table(path))
    else:
        present = set(pq.read_schema(path).names)
        table = conform(pq.read_table(path, columns=[c for c in columns if c in present]))
        table = table.select(columns)
    recorded = yaml.load(meta["config"], Loader=_YAML_LOADER).get("source") == RECORDER_SOURCE
    return table if recorded else with_absent_values(table)


def read_run(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """One run file as a DataFrame (optionally only `columns`), in the current schema's columns."""
    return read_run_table(path, columns).to_pandas()


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
    """Run files under sweep dirs, run dirs or given directly; failed runs are problems.

    A complete run file wins over a FAILED.txt beside it (left by an attempt
    that failed before, or by a concurrent sweep); a FAILED.txt without one, or
    beside an incomplete one, makes the run a problem. A file reached through
    several of `paths` (a sweep dir and a run dir inside it) is listed once.
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
            stats = here / STATS_FILE
            if STATS_FILE in filenames and (FAILURE_FILE not in filenames or is_complete(stats)):
                files.append(stats)
            elif FAILURE_FILE in filenames:
                stale = " (incomplete run file ignored)" if STATS_FILE in filenames else ""
                problems.append(
                    Problem(str(here), "failed", _failure_line(here / FAILURE_FILE) + stale)
                )
    first: dict[Path, Path] = {}
    for path in files:
        first.setdefault(path.resolve(), path)
    return list(first.values()), problems


def with_absent_values(table: pa.Table) -> pa.Table:
    """`table` of sweep files with the rows of files older than a column given its `absent` value.

    A sweep file always holds its configuration, so a null there can only come from a file
    without the column.
    """
    for name, value in ABSENT_VALUES.items():
        index = table.schema.get_field_index(name)
        if index >= 0 and table.column(index).null_count:
            filled = pc.fill_null(
                table.column(index), pa.scalar(value, table.schema.field(name).type)
            )
            table = table.set_column(index, table.schema.field(name), filled)
    return table


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
    source = values.get("source", SWEEP_SOURCE)
    if source == RECORDER_SOURCE:
        config = {column: values.get(key) for column, key in CONFIG_KEYS.items()}
        key = values["run_key"]
    else:
        resolved = run_values(values)  # keys newer than the file at their defaults
        config = {column: resolved[key] for column, key in CONFIG_KEYS.items()}
        key = run_key(values)
    record = {"path": str(path), "run_key": key, "source": source, **config}
    record["seed"] = values.get("seed")
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
            columns=["path", "run_key", "source", *CONFIG_COLUMNS, "seed", "footer_summary"],
        )
        self.footer_summaries: dict[str, str | None] = dict(
            zip(runs["path"], runs.pop("footer_summary"))
        )
        # what wrote each file, by path: `sweep` or `recorder` (`schema.SOURCES`)
        self.sources: dict[str, str] = dict(zip(runs["path"], runs.pop("source")))
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

    def of_source(self, source: str) -> RunSet:
        """The runs of this set that `source` wrote (`sweep` or `recorder`).

        Its `problems` is this set's list, so a file a scan of the part cannot read is listed here.
        """
        part = copy.copy(self)
        part.runs = self.runs[self.runs["path"].map(self.sources) == source].reset_index(drop=True)
        part.schema = RUN_SCHEMA if len(part.runs) else None
        return part

    @property
    def files(self) -> list[str]:
        """Paths of the run files that are read."""
        return self.runs["path"].tolist()

    def _scan(
        self, files: list[str], columns: list[str] | None, filter: ds.Expression | None
    ) -> pa.Table:
        """Sweep files with the values of columns newer than them filled in; recordings as read,
        since the configuration columns are null in them."""
        parts = []
        for recorded in (False, True):
            part = [f for f in files if (self.sources.get(f) == RECORDER_SOURCE) is recorded]
            if part:
                table = ds.dataset(part, schema=self.schema, format=_FORMAT).to_table(
                    columns=columns, filter=filter
                )
                parts.append(table if recorded else with_absent_values(table))
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

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
