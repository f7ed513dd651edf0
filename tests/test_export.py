"""gradsweep.export: a real sweep exported to TensorBoard and W&B, read back with their readers.

TensorBoard's event files are read with its EventAccumulator; W&B's offline
transaction log (`run-<id>.wandb`, records in LevelDB's log format) is read
record by record as wandb's own `Record` protos. Everything read back is
compared with the run files: scalars (TensorBoard keeps float32), histogram
counts and bin edges exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli, run_sweep, stats_files

from gradsweep.bins import HIST_LOG10_STEP, HIST_REGULAR_EDGES
from gradsweep.export.series import tensor_tags, where
from gradsweep.store import read_run

SWEEP = ["act=tanh,relu", "depth=3", "width=8", "replicas=2", "steps=4", "log_every=2"]
SWEEP += ["hist_every=2", "loss=mse", "lr=0.05"]
SIZE_GUIDANCE = {"scalars": 0, "histograms": 0, "tensors": 0}
# The drawn bins: underflow, the binades 2^-40 .. 2^14, overflow (one binade wide each).
EDGES = np.arange(-41, 16) * np.log10(2.0)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 runs of 2 replicas, logged at steps 0, 2, 4, with histograms at steps 0 and 4."""
    out = tmp_path_factory.mktemp("export_sweep")
    run_sweep(out, *SWEEP)
    return out


def test_the_drawn_edges_are_the_run_files_bin_edges() -> None:
    assert np.allclose(EDGES[1:-1], HIST_REGULAR_EDGES, rtol=0, atol=1e-12)
    assert np.isclose(EDGES[1] - EDGES[0], HIST_LOG10_STEP)


def test_tags_name_the_module_where_a_run_file_has_one_else_the_layer() -> None:
    assert where(3) == "layer03" and where(12) == "layer12"
    assert where(3, "features.0") == "features.0"
    assert tensor_tags("layer03", "weight", activation=False) == (
        "grad_norm/layer03/weight",
        "grad_hist/layer03/weight",
    )
    assert tensor_tags("features.0", "output", activation=True) == (
        "dLdz_norm/features.0/output",
        "dLdz_hist/features.0/output",
    )


def expected(path: Path) -> dict[int, dict]:
    """Per replica of a run file: its seed, scalars {tag: {step: value}}, histograms likewise."""
    frame = read_run(path)
    out = {}
    for replica, rows in frame.groupby("replica"):
        scalars: dict[str, dict[int, float]] = {"loss": {}, "total_grad_norm": {}}
        hists: dict[str, dict[int, np.ndarray]] = {}
        for row in rows.itertuples():
            kind = "dLdz" if pd.isna(row.param_norm) else "grad"
            place = f"layer{row.layer:02d}/{row.tensor}"
            scalars.setdefault(f"{kind}_norm/{place}", {})[row.step] = row.grad_norm
            scalars["loss"][row.step] = row.loss
            scalars["total_grad_norm"][row.step] = row.total_grad_norm
            if row.grad_hist is not None:
                hists.setdefault(f"{kind}_hist/{place}", {})[row.step] = row.grad_hist[1:57]
        out[replica] = {"seed": int(rows["seed"].iloc[0]), "scalars": scalars, "hists": hists}
    return out


def test_a_recording_exports_under_its_name_with_module_tags(tmp_path: Path) -> None:
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch import nn

    from gradsweep import Recorder

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 1))
    with Recorder(model, tmp_path / "cnn", watch_outputs=(nn.Conv2d,)) as recorder:
        for step in range(2):
            loss = model(torch.randn(4, 1, 6, 6)).pow(2).mean()
            loss.backward()
            recorder.step(step, loss)
            model.zero_grad()
    key = recorder.footer["run_key"]
    proc = export("tensorboard", str(tmp_path / "cnn"), "--out", str(tmp_path / "tb"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (logdir,) = (tmp_path / "tb").iterdir()
    assert logdir.name == f"cnn-{key}"
    acc = EventAccumulator(str(logdir), size_guidance=SIZE_GUIDANCE)
    acc.Reload()
    frame = read_run(tmp_path / "cnn" / "grad_stats.parquet")
    assert set(acc.Tags()["scalars"]) == {"loss", "total_grad_norm"} | {
        f"{'dLdz' if pd.isna(row.param_norm) else 'grad'}_norm/{row.module}/{row.tensor}"
        for row in frame.itertuples()
    }
    assert "dLdz_norm/0/output" in acc.Tags()["scalars"]
    assert "grad_norm/3/weight" in acc.Tags()["scalars"]


def export(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    if env is None:
        return run_cli(*args, cwd=cwd, module="gradsweep.export")
    return subprocess.run(
        [sys.executable, "-m", "gradsweep.export", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_tensorboard_run_matches(logdir: Path, replica: dict, name: str) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    (events,) = logdir.glob("events.out.tfevents.*")
    acc = EventAccumulator(str(logdir), size_guidance=SIZE_GUIDANCE)
    acc.Reload()
    tags = acc.Tags()
    assert set(tags["scalars"]) == set(replica["scalars"])
    for tag, by_step in replica["scalars"].items():
        read = {e.step: e.value for e in acc.Scalars(tag)}
        assert read == {s: float(np.float32(v)) for s, v in by_step.items()}, tag
    assert set(tags["histograms"]) == set(replica["hists"])
    for tag, by_step in replica["hists"].items():
        read = {e.step: e.histogram_value for e in acc.Histograms(tag)}
        assert read.keys() == by_step.keys(), tag
        for step, counts in by_step.items():
            assert list(read[step].bucket) == counts.tolist(), (tag, step)
            assert list(read[step].bucket_limit) == pytest.approx(EDGES[1:], abs=1e-12)
            assert read[step].num == counts.sum()
    content = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.group_name == name
    assert start.hparams["seed"].number_value == replica["seed"]
    assert start.hparams["depth"].number_value == 3
    (text,) = acc.Tensors("config")
    assert "act: " in text.tensor_proto.string_val[0].decode()


def test_tensorboard_export_reads_back_as_the_run_files_hold_it(
    sweep: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tb"
    proc = export("tensorboard", str(sweep), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "exported 2 run(s) as 4 tensorboard run(s)" in proc.stdout
    files = stats_files(sweep)
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    for run, path in files.items():
        for replica, values in expected(path).items():
            assert values["scalars"]["loss"].keys() == {0, 2, 4}
            assert {s for h in values["hists"].values() for s in h} == {0, 4}, "hist_every=2"
            name = f"{run}/replica{replica}-seed{values['seed']}"
            assert_tensorboard_run_matches(out / name, values, name)
    again = export("tensorboard", str(sweep), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(list(out.glob("*/*/events.out.tfevents.*"))) == 4, "exporting again replaces"
    assert not list(out.glob(".*")), "no temporary directory left"


LEVELDB_BLOCK, LEVELDB_HEADER, FULL, LAST = 32768, 7, 1, 4


def wandb_records(path: Path) -> list:
    """The `Record` protos of a W&B transaction log: a 7-byte W&B header, then LevelDB's log
    format (32 KiB blocks of chunks: crc32c, length, type; FULL, or FIRST MIDDLE... LAST)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", LEVELDB_HEADER
    while pos + LEVELDB_HEADER <= len(data):
        left = LEVELDB_BLOCK - pos % LEVELDB_BLOCK
        if left < LEVELDB_HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + LEVELDB_HEADER])
        pending += data[pos + LEVELDB_HEADER : pos + LEVELDB_HEADER + length]
        pos += LEVELDB_HEADER + length
        if kind in (FULL, LAST):
            records.append(Record.FromString(pending))
            pending = b""
    return records


def history(records: list) -> dict[int, dict]:
    """{step: {key: value}} of the history records; a histogram's fields come nested under its
    key (`nested_key` [tag, "values"], [tag, "bins"], ...)."""
    out = {}
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        items: dict = {}
        for item in record.history.item:
            keys = [item.key] if item.key else list(item.nested_key)
            target = items
            for key in keys[:-1]:
                target = target.setdefault(key, {})
            target[keys[-1]] = json.loads(item.value_json)
        out[items.pop("_step")] = {k: v for k, v in items.items() if not k.startswith("_")}
    return out


def test_wandb_offline_export_reads_back_as_the_run_files_hold_it(
    sweep: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = export(
        "wandb", str(sweep), "--dir", str(tmp_path), "--project", "p", cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    logs = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 4
    runs = {}
    for log in logs:
        records = wandb_records(log)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        runs[run.display_name] = (run, config, history(records))
    for name, path in stats_files(sweep).items():
        for replica, values in expected(path).items():
            run, config, steps = runs[f"{name}/replica{replica}-seed{values['seed']}"]
            assert run.project == "p" and run.run_group == name
            assert config["seed"] == values["seed"]
            assert config["replica"] == replica and config["depth"] == 3
            for tag, by_step in values["scalars"].items():
                assert {s: steps[s][tag] for s in by_step} == by_step, tag
            for tag, by_step in values["hists"].items():
                assert {s for s in steps if tag in steps[s]} == by_step.keys()
                for step, counts in by_step.items():
                    assert steps[step][tag]["values"] == counts.tolist()
                    assert steps[step][tag]["bins"] == pytest.approx(EDGES, abs=1e-12)


@pytest.mark.parametrize("extra", ["tensorboard", "wandb"])
def test_a_missing_extra_is_one_line_and_writes_nothing(
    extra: str, sweep: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    where = ["--out", str(out)] if extra == "tensorboard" else ["--dir", str(out)]
    code = (
        f"import sys\nsys.modules[{extra!r}] = None\n"
        "from gradsweep.export.__main__ import main\n"
        f"sys.exit(main([{extra!r}, {str(sweep)!r}, *{where!r}]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert f"needs the `{extra}` extra: pip install 'gradsweep[{extra}]'" in line
    assert not out.exists()


def test_bad_paths_are_refused_in_one_line_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "tb"
    missing = export("tensorboard", str(tmp_path / "nope"), "--out", str(out), cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"gradsweep.export: error: no such file or directory: {tmp_path / 'nope'}"
    ]
    (tmp_path / "empty").mkdir()
    empty = export("tensorboard", str(tmp_path / "empty"), "--out", str(out), cwd=tmp_path)
    assert empty.returncode == 2 and "no run files found" in empty.stderr
    assert len(empty.stderr.strip().splitlines()) == 1 and not out.exists()


def test_a_run_that_cannot_be_exported_is_one_line_and_the_others_are(
    sweep: Path, tmp_path: Path
) -> None:
    damaged = tmp_path / "sweep"
    shutil.copytree(sweep, damaged)
    bad = sorted(stats_files(damaged).values())[0]
    data = bytearray(bad.read_bytes())
    data[4:2004] = bytes(2000)  # the data pages; the footer stays readable
    bad.write_bytes(bytes(data))
    out = tmp_path / "tb"
    proc = export("tensorboard", str(damaged), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"gradsweep.export: export failed: {bad}: "), line
    assert "exported 1 run(s) as 2 tensorboard run(s)" in proc.stdout
    assert [p.name for p in out.iterdir()] == [
        p.parent.name for p in stats_files(damaged).values() if p != bad
    ]


def test_the_callback_exports_each_run_of_a_multirun_and_a_failed_export_fails_no_run(
    tmp_path: Path,
) -> None:
    sweep = tmp_path / "sweep"
    proc = run_sweep(
        sweep,
        "act=tanh,relu",
        "seed=1,2",
        "hydra.sweeper.group_size=2",
        "depth=3",
        "width=8",
        "steps=2",
        "loss=mse",
        "hydra/callbacks=[export_tensorboard,export_wandb]",
        "hydra.callbacks.export_wandb.out=/dev/null/wandb",
    )
    assert proc.stdout.count("(replica group of 2)") == 4, "two jobs of two runs each"
    failed = [line for line in proc.stdout.splitlines() if "wandb export failed" in line]
    assert len(failed) == 2, proc.stdout + proc.stderr
    assert "NotADirectoryError" in failed[0] or "FileExistsError" in failed[0], failed
    files = stats_files(sweep)
    assert len(files) == 4
    assert sorted(p.name for p in (sweep / "tensorboard").iterdir()) == sorted(files)
    for run, path in files.items():
        (values,) = expected(path).values()
        assert_tensorboard_run_matches(sweep / "tensorboard" / run, values, run)


@pytest.mark.slow
def test_the_callback_exports_from_joblib_workers(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run_sweep(
        sweep,
        "act=tanh,relu",
        "depth=3",
        "width=8",
        "steps=2",
        "replicas=2",
        "hydra/launcher=joblib",
        "hydra/callbacks=export_tensorboard",
    )
    for run, path in stats_files(sweep).items():
        for replica, values in expected(path).items():
            name = f"{run}/replica{replica}-seed{values['seed']}"
            assert_tensorboard_run_matches(sweep / "tensorboard" / name, values, name)


def test_exporting_to_tensorboard_imports_no_torch(sweep: Path, tmp_path: Path) -> None:
    code = (
        "import sys\nfrom gradsweep.export.__main__ import main\n"
        f"assert main(['tensorboard', {str(sweep)!r}, '--out', {str(tmp_path / 'tb')!r}]) == 0\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "False"
