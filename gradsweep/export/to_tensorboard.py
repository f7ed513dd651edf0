"""Runs as TensorBoard event files, written with tensorboard's own protos and event writer.

Each run is written into a temporary directory beside its final one and renamed
into place, so a run directory under its final name is always whole, and
exporting a run again replaces it instead of adding a second copy of its points.
Scalars are TensorBoard's float32 `simple_value`; histograms are raw histograms
whose buckets are the run file's fixed bins (`series.DRAWN_EDGES`), counts exact.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradsweep.export.extras import require
from gradsweep.export.series import DRAWN_EDGES, ReplicaSeries

EXTRA = "tensorboard"
CONFIG_TAG = "config"


def check_installed() -> None:
    """Raise MissingExtra unless tensorboard's writer and protos can be imported."""
    for module in (
        "tensorboard.summary.writer.event_file_writer",
        "tensorboard.plugins.hparams.summary_v2",
        "tensorboard.plugins.text.summary_v2",
    ):
        require(EXTRA, module)


def histogram_proto(counts: np.ndarray) -> Any:
    """A raw HistogramProto of drawn-bin `counts`: bucket i ends at DRAWN_EDGES[i + 1].

    min and max are the outer edges of the first and last non-empty bins, so that
    TensorBoard draws every bin at its own edges; sum and sum_squares are taken at
    the bins' centres.
    """
    summary_pb2 = require(EXTRA, "tensorboard.compat.proto.summary_pb2")
    counts = np.asarray(counts, dtype=np.float64)
    filled = np.flatnonzero(counts)
    centres = (DRAWN_EDGES[:-1] + DRAWN_EDGES[1:]) / 2
    return summary_pb2.HistogramProto(
        min=float(DRAWN_EDGES[filled[0]]) if filled.size else 0.0,
        max=float(DRAWN_EDGES[filled[-1] + 1]) if filled.size else 0.0,
        num=float(counts.sum()),
        sum=float(counts @ centres),
        sum_squares=float(counts @ centres**2),
        bucket_limit=DRAWN_EDGES[1:].tolist(),
        bucket=counts.tolist(),
    )


def hparams(config: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """The configuration values TensorBoard's hparams dashboard can show: its scalars."""
    return {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}


def _write_replica(series: ReplicaSeries, logdir: Path) -> None:
    event_pb2 = require(EXTRA, "tensorboard.compat.proto.event_pb2")
    summary_pb2 = require(EXTRA, "tensorboard.compat.proto.summary_pb2")
    hparams_summary = require(EXTRA, "tensorboard.plugins.hparams.summary_v2")
    text_summary = require(EXTRA, "tensorboard.plugins.text.summary_v2")
    writer_module = require(EXTRA, "tensorboard.summary.writer.event_file_writer")
    writer = writer_module.EventFileWriter(str(logdir))
    now = time.time()
    indented = "\n".join(f"    {line}" for line in series.config_yaml.splitlines())
    for summary in (
        hparams_summary.hparams_pb(
            hparams(series.config), trial_id=series.name, start_time_secs=now
        ),
        text_summary.text_pb(CONFIG_TAG, f"{series.name}\n\n{indented}"),
    ):
        writer.add_event(event_pb2.Event(wall_time=now, step=0, summary=summary))
    for point in series.points:
        values = [
            summary_pb2.Summary.Value(tag=tag, simple_value=value)
            for tag, value in point.scalars.items()
        ]
        values += [
            summary_pb2.Summary.Value(tag=tag, histo=histogram_proto(counts))
            for tag, counts in point.histograms.items()
        ]
        summary = summary_pb2.Summary(value=values)
        writer.add_event(event_pb2.Event(wall_time=now, step=point.step, summary=summary))
    writer.close()


def write_run(replicas: Sequence[ReplicaSeries], out: str | Path) -> Path:
    """Write one gradsweep run's replicas under `out`/<run>, replacing an earlier export."""
    out = Path(out)
    run = replicas[0].run
    final = out / run
    tmp = out / f".{run}.{socket.gethostname()}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for series in replicas:
            logdir = tmp / Path(series.name).relative_to(run)
            logdir.mkdir(parents=True, exist_ok=True)
            _write_replica(series, logdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = tmp.with_suffix(".old")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final
