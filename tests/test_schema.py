"""The run file's schema: the writer follows it, the config columns and docs are derived from it."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gradsweep import schema, store
from gradsweep.config import RUN_KEYS, RunConfig
from gradsweep.experiment import run_experiment
from gradsweep.summary import SUMMARY_COLUMNS

DOC = Path(__file__).resolve().parents[1] / "docs" / "file-format.md"


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return run_experiment(RunConfig(steps=2, clip=1.0, hist_every=2)).stats


def test_a_written_file_has_exactly_the_declared_schema(tmp_path: Path, frame) -> None:
    path = store.write_run(frame, tmp_path / schema.STATS_FILE, {})
    written = pq.read_schema(path).remove_metadata()
    assert written.names == list(schema.names())
    for field in schema.RUN_SCHEMA:
        assert written.field(field.name).type == field.type, field.name
        assert written.field(field.name).nullable == field.nullable, field.name


def _wide_strings(kind: pa.DataType) -> pa.DataType:
    """`kind` with string values as large_string: the width of string offsets is no value."""
    if pa.types.is_dictionary(kind):
        return pa.dictionary(kind.index_type, _wide_strings(kind.value_type))
    return pa.large_string() if kind == pa.string() else kind


def test_declared_types_are_those_the_rows_convert_to(frame) -> None:
    """The schema states the types the run's rows have, so declaring it changes no value."""
    inferred = pa.Table.from_pandas(frame, preserve_index=False).schema
    for column in schema.COLUMNS:
        found = inferred.field(column.name).type
        assert _wide_strings(found) == _wide_strings(column.type), column.name


def test_the_writer_names_missing_and_extra_columns(tmp_path: Path, frame) -> None:
    wrong = frame.drop(columns=["depth", "grad_hist"]).assign(colour="red")
    with pytest.raises(ValueError, match=r"missing \['depth', 'grad_hist'\].*\['colour'\]"):
        store.write_run(wrong, tmp_path / schema.STATS_FILE, {})
    assert not (tmp_path / schema.STATS_FILE).exists()


def test_the_writer_refuses_a_null_where_the_schema_has_none(tmp_path: Path, frame) -> None:
    with pytest.raises(ValueError, match="numel"):
        store.write_run(frame.assign(numel=None), tmp_path / schema.STATS_FILE, {})


@pytest.mark.parametrize(
    ("column", "null"), [("act", None), ("depth", pd.NA), ("lr", float("nan"))]
)
def test_the_writer_refuses_a_sweep_row_without_its_configuration(
    tmp_path: Path, frame, column: str, null
) -> None:
    assert column in schema.SWEEP_REQUIRED
    values = frame[column].astype(object)
    values.iloc[3] = null
    with pytest.raises(ValueError, match=f"column '{column}' holds a null on a 'sweep' row"):
        store.write_run(frame.assign(**{column: values}), tmp_path / schema.STATS_FILE, {})
    assert not (tmp_path / schema.STATS_FILE).exists()
    recording = frame.assign(**{column: values, "source": schema.RECORDER_SOURCE})
    store.write_run(recording, tmp_path / schema.STATS_FILE, {})


def test_configuration_columns_may_be_null_as_in_recorder_files() -> None:
    assert "clip" not in schema.SWEEP_REQUIRED
    assert set(schema.SWEEP_REQUIRED) | {"clip"} == set(schema.CONFIG_COLUMNS)
    for name in schema.CONFIG_COLUMNS:
        assert schema.RUN_SCHEMA.field(name).nullable, name
    assert schema.RUN_SCHEMA.field("module").nullable
    assert not schema.RUN_SCHEMA.field("layer").nullable


def test_configuration_columns_hold_run_keys() -> None:
    assert schema.CONFIG_KEYS["loss_name"] == "loss"
    assert set(schema.CONFIG_KEYS.values()) <= set(RUN_KEYS)
    assert tuple(schema.CONFIG_KEYS) == schema.CONFIG_COLUMNS
    assert sorted(schema.AXIS_PRIORITY) == sorted(schema.CONFIG_COLUMNS)
    assert {c: SUMMARY_COLUMNS[c] for c in schema.CONFIG_COLUMNS} == {
        c: schema.COLUMNS_BY_NAME[c].meaning for c in schema.CONFIG_COLUMNS
    }


def test_run_metadata_has_the_documented_keys() -> None:
    execution = run_experiment(RunConfig()).execution.metadata()
    assert list(execution) == list(schema.EXECUTION_METADATA)
    meta = store.run_metadata("act: sigmoid\n", execution, "ok", "[]")
    assert list(meta) == list(schema.METADATA)


def _block(text: str, name: str) -> str:
    found = re.search(rf"<!-- {name}: begin -->\n(.*?)<!-- {name}: end -->\n", text, re.S)
    assert found, f"docs/file-format.md has no {name} block"
    return found.group(1)


def test_every_column_is_documented_and_every_documented_column_exists() -> None:
    documented = re.findall(r"^\| `(\w+)` \|", _block(DOC.read_text(), "columns"), re.M)
    undocumented = [c for c in schema.names() if c not in documented]
    unknown = [c for c in documented if c not in schema.names()]
    assert not undocumented and not unknown, (
        f"undocumented columns {undocumented}, documented columns not in the schema {unknown}: "
        "paste `python -m gradsweep.schema --markdown` into docs/file-format.md"
    )


def test_the_docs_tables_are_the_generated_ones(capsys) -> None:
    assert schema.main(["--markdown"]) == 0
    printed = capsys.readouterr().out
    text = DOC.read_text()
    for name, block in schema.doc_blocks().items():
        assert schema.marked(name, block) in printed
        assert _block(text, name) == block, (
            f"the {name} table of docs/file-format.md is stale: "
            "paste `python -m gradsweep.schema --markdown` into it"
        )
