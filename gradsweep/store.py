"""The per-run parquet file: schema version, key-value metadata, atomic write, completeness.

A run file is written under a temporary name in the same directory and renamed
into place only once complete, so a file under the final name is always whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gradsweep.probe import HIST_BIN_LABELS

SCHEMA_VERSION = 1
STATS_FILE = "grad_stats.parquet"
META_PREFIX = "gradsweep."


class SchemaVersionError(ValueError):
    """A run file written by an incompatible version of gradsweep."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gradsweep")
    except PackageNotFoundError:
        return "unknown"


def run_metadata(config_yaml: str, device_name: str, status: str) -> dict[str, str]:
    """Key-value metadata stored in every run file's footer."""
    import torch

    return {
        "schema_version": str(SCHEMA_VERSION),
        "version": _version(),
        "torch_version": torch.__version__,
        "config": config_yaml,
        "device_name": device_name,
        "status": status,
        "hist_bins": json.dumps(list(HIST_BIN_LABELS)),
    }


def write_run(frame: pd.DataFrame, path: str | Path, metadata: dict[str, str]) -> Path:
    """Write `frame` to `path` atomically, with `metadata` under the `gradsweep.` prefix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
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
        k.decode()[len(META_PREFIX):]: v.decode() for k, v in raw.items() if k.decode().startswith(META_PREFIX)
    }


def check_schema(path: str | Path) -> dict[str, str]:
    """Metadata of a run file whose schema version this gradsweep reads; SchemaVersionError otherwise."""
    meta = read_metadata(path)
    found = meta.get("schema_version")
    if found != str(SCHEMA_VERSION):
        raise SchemaVersionError(
            f"{path}: schema version {found!r} is not supported (this gradsweep reads version {SCHEMA_VERSION})"
        )
    return meta


def is_complete(path: str | Path) -> bool:
    """True when `path` is a readable run file of the current schema version."""
    try:
        check_schema(path)
    except (OSError, ValueError, pa.ArrowException):
        return False
    return True


def read_run(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """One run file as a DataFrame (optionally only `columns`)."""
    check_schema(path)
    return pq.read_table(path, columns=columns).to_pandas()

