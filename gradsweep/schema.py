"""The run file's schema: every column with its arrow type, nullability, role and meaning.

The writer, the readers, the configuration columns and the column tables in
docs/file-format.md are all derived from `COLUMNS`; no other module lists the
run file's columns. `python -m gradsweep.schema --markdown` prints the tables
that docs/file-format.md holds between its marker comments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import pyarrow as pa

from gradsweep.bins import N_HIST_BINS
from gradsweep.config import BRANCH_SCALES, CHOICES

SCHEMA_VERSION = 3
# Versions the readers accept; a version-2 file reads with the columns version 3 added as null.
READ_VERSIONS: tuple[int, ...] = (2, 3)
STATS_FILE = "grad_stats.parquet"
FAILURE_FILE = "FAILED.txt"
META_PREFIX = "gradsweep."
# The `source` column's values: gradsweep's own sweeps, and `gradsweep.Recorder` on any model.
SWEEP_SOURCE, RECORDER_SOURCE = "sweep", "recorder"
SOURCES: tuple[str, ...] = (SWEEP_SOURCE, RECORDER_SOURCE)
# The `tensor` of a watched module's output gradient in Recorder files.
OUTPUT_TENSOR = "output"


class Role(str, Enum):
    """What a column holds; decides how readers and the docs group it."""

    configuration = "configuration"
    index = "index"
    statistic = "statistic"
    prediction = "prediction"
    outcome = "outcome"
    histogram = "histogram"


@dataclass(frozen=True)
class Column:
    """One run file column; `config_key` is the run key a configuration column holds.

    `absent` is the value a reader gives rows of files written before the column
    existed (None: the column has been in every file of this schema version).
    """

    name: str
    type: pa.DataType
    nullable: bool
    role: Role
    meaning: str
    config_key: str | None = None
    absent: Any = None


STRING = pa.large_string()
INT = pa.int64()
FLOAT = pa.float64()
BOOL = pa.bool_()
NULL, NOT_NULL = True, False
CONFIG, INDEX, STAT = Role.configuration, Role.index, Role.statistic
PRED, OUTCOME, HIST = Role.prediction, Role.outcome, Role.histogram


def _one_of(key: str) -> str:
    return ", ".join(CHOICES[key])


COLUMNS: tuple[Column, ...] = (
    Column(
        "run_key",
        STRING,
        NOT_NULL,
        INDEX,
        "16 hex digits: hash of the run's resolved configuration keys (not the Hydra node, "
        "not output names); in Recorder files, of the recording's footer configuration, its "
        "start time included, so that every recording has its own key",
    ),
    Column(
        "source",
        STRING,
        NULL,
        INDEX,
        "what wrote the file: `sweep` (gradsweep's own MLPs, whose configuration fills the "
        "configuration columns) or `recorder` (`gradsweep.Recorder` on a user's model, where the "
        "configuration columns other than device and dtype are null); null in version-2 files, "
        "which are all sweep files",
    ),
    Column(
        "act", STRING, NOT_NULL, CONFIG, f"activation after every Linear layer: {_one_of('act')}"
    ),
    Column("depth", INT, NOT_NULL, CONFIG, "number of Linear layers"),
    Column("width", INT, NOT_NULL, CONFIG, "units of every hidden layer"),
    Column("init", STRING, NOT_NULL, CONFIG, f"weight init scheme: {_one_of('init')}"),
    Column(
        "init_scale",
        FLOAT,
        NOT_NULL,
        CONFIG,
        "multiplier of the init scheme's std that this replica used",
    ),
    Column("bias_init", STRING, NOT_NULL, CONFIG, f"bias init: {_one_of('bias_init')}"),
    Column(
        "batchnorm",
        BOOL,
        NOT_NULL,
        CONFIG,
        "BatchNorm1d after every hidden Linear layer, before its activation (`norm` = batch)",
    ),
    Column(
        "norm",
        STRING,
        NOT_NULL,
        CONFIG,
        f"normalisation of every hidden layer: {_one_of('norm')} (see docs/configuration.md)",
        absent="none",
    ),
    Column(
        "residual",
        BOOL,
        NOT_NULL,
        CONFIG,
        "skip connection around every hidden layer whose input and output widths agree",
        absent=False,
    ),
    Column(
        "branch_scale",
        STRING,
        NOT_NULL,
        CONFIG,
        "scale of the residual branch as configured: a number written as a float (`1.0`) or "
        f"{', '.join(BRANCH_SCALES)}",
        absent="1.0",
    ),
    Column(
        "norm_position",
        STRING,
        NOT_NULL,
        CONFIG,
        f"where a residual layer's norm sits: {_one_of('norm_position')} (pre: in the branch "
        "before the Linear layer; post: after the addition)",
        absent="pre",
    ),
    Column(
        "output_act", BOOL, NOT_NULL, CONFIG, "whether the output layer gets the activation too"
    ),
    Column("device", STRING, NOT_NULL, CONFIG, f"device as configured: {_one_of('device')}"),
    Column("dtype", STRING, NOT_NULL, CONFIG, f"parameter and gradient dtype: {_one_of('dtype')}"),
    Column("optimizer", STRING, NOT_NULL, CONFIG, f"optimizer: {_one_of('optimizer')}"),
    Column("lr", FLOAT, NOT_NULL, CONFIG, "learning rate"),
    Column("batch_size", INT, NOT_NULL, CONFIG, "inputs per step"),
    Column(
        "data_seed",
        INT,
        NOT_NULL,
        CONFIG,
        "seed of the input batches (and of the teacher for loss=mse)",
    ),
    Column("steps", INT, NOT_NULL, CONFIG, "optimizer updates the run makes"),
    Column(
        "loss_name",
        STRING,
        NOT_NULL,
        CONFIG,
        f"the `loss` key: {_one_of('loss')}",
        config_key="loss",
    ),
    Column(
        "clip",
        FLOAT,
        NULL,
        CONFIG,
        "clip threshold of each replica's total gradient L2 norm; null when clipping is off",
    ),
    Column(
        "seed",
        INT,
        NULL,
        INDEX,
        "the init seed this replica used (seed + replica); in Recorder files the `seed` given "
        "to it, else null",
    ),
    Column("replica", INT, NOT_NULL, INDEX, "replica index, 0..replicas-1"),
    Column(
        "step",
        INT,
        NOT_NULL,
        INDEX,
        "optimizer updates done before this measurement; 0 = the first backward pass, at "
        "initialisation",
    ),
    Column(
        "layer",
        INT,
        NOT_NULL,
        INDEX,
        "Linear layer index, 0 = input side, depth-1 = output side; in Recorder files the "
        "module's order among the recorded modules (`model.named_modules()` order)",
    ),
    Column(
        "module",
        STRING,
        NULL,
        INDEX,
        "qualified name of the module the row's tensor belongs to, as `model.named_modules()` "
        "gives it (Recorder files); null in sweep files, where `layer` names the Linear layer",
    ),
    Column(
        "tensor",
        STRING,
        NOT_NULL,
        INDEX,
        "`weight`, `bias`, `bn_weight`, `bn_bias` (BatchNorm affine parameters of that layer), "
        "`ln_weight`, `ln_bias` (LayerNorm's), `preact` (dL/dz_l at the Linear layer's output, "
        "before any norm) or `stream` (dL/dh_l at a residual layer's output h_l on the residual "
        "stream, after the addition and any post-norm); in Recorder files the parameter's own "
        "name (`weight`, `bias`, ...) or `output` (dL/d(module output), a watched module's output "
        "gradient)",
    ),
    Column("grad_norm", FLOAT, NULL, STAT, "L2 norm of the gradient, before clipping"),
    Column(
        "grad_norm_clipped",
        FLOAT,
        NULL,
        STAT,
        "L2 norm after clipping (grad_norm times the replica's clip factor; equal to "
        "grad_norm when clipping is off, for `preact` and `stream`, which are never clipped, and "
        "in Recorder files, which record the gradients before any clipping of the user's loop)",
    ),
    Column("grad_mean", FLOAT, NULL, STAT, "mean over the tensor's elements"),
    Column("grad_std", FLOAT, NULL, STAT, "population std (ddof=0) over the tensor's elements"),
    Column("grad_min", FLOAT, NULL, STAT, "smallest element (null when the tensor holds a NaN)"),
    Column("grad_max", FLOAT, NULL, STAT, "largest element (null when the tensor holds a NaN)"),
    Column(
        "grad_frac_zero",
        FLOAT,
        NOT_NULL,
        STAT,
        "fraction of elements exactly 0 (dead ReLU units show here)",
    ),
    Column("grad_n_nan", INT, NOT_NULL, STAT, "count of NaN elements"),
    Column("grad_n_inf", INT, NOT_NULL, STAT, "count of +-Inf elements"),
    Column("numel", INT, NOT_NULL, STAT, "elements per replica"),
    Column(
        "param_norm",
        FLOAT,
        NULL,
        STAT,
        "L2 norm of the parameter at the time of the gradient; null for `preact`, `stream` and "
        "`output`",
    ),
    Column(
        "param_std",
        FLOAT,
        NULL,
        STAT,
        "population std of the parameter at the time of the gradient; null for `preact`, "
        "`stream` and `output`",
    ),
    Column("loss", FLOAT, NULL, OUTCOME, "the replica's loss at this step"),
    Column(
        "total_grad_norm",
        FLOAT,
        NULL,
        STAT,
        "L2 norm over all the replica's parameter gradients, before clipping (what "
        "clip_grad_norm_ compares with the threshold)",
    ),
    Column(
        "grad_hist",
        pa.list_(INT),
        NULL,
        HIST,
        f"{N_HIST_BINS} counts of log10 abs(g) in the fixed bins (see Histogram bins), summable "
        "across runs; null on logged steps without a histogram (`hist_every`)",
    ),
    Column(
        "pred_preact_factor",
        FLOAT,
        NULL,
        PRED,
        "mean-field prediction of abs(dL/dz_l) / abs(dL/dz_{l+1}) at initialisation, with the"
        " replica's own init_scale; null on the output layer, on rows that are not `preact`, "
        "with BatchNorm below batch 4 and with BatchNorm in a residual network (no closed form)",
    ),
    Column(
        "pred_preact_norm",
        FLOAT,
        NULL,
        PRED,
        "predicted abs(dL/dz_l): the output layer's measured `preact` norm of the same "
        "replica and step times the predicted factors above it; null except on `preact` rows",
    ),
    Column(
        "status",
        pa.dictionary(pa.int8(), pa.string()),
        NOT_NULL,
        OUTCOME,
        "`ok`, or `diverged` when any NaN/Inf appeared in a gradient, a norm or the loss of "
        "this replica",
    ),
    Column("diverged_step", INT, NULL, OUTCOME, "first step with a non-finite value; null when ok"),
)

# Configuration columns a sweep file fills on every row; `store.run_table` checks them.
SWEEP_REQUIRED: tuple[str, ...] = tuple(
    c.name for c in COLUMNS if c.role is CONFIG and not c.nullable
)
# Recorder files have no MLP configuration: every configuration column may be null there.
COLUMNS = tuple(replace(c, nullable=True) if c.role is CONFIG else c for c in COLUMNS)
COLUMNS_BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
RUN_SCHEMA: pa.Schema = pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in COLUMNS])


def names(role: Role | None = None) -> tuple[str, ...]:
    """Column names in file order, all of them or those of one role."""
    return tuple(c.name for c in COLUMNS if role is None or c.role is role)


CONFIG_COLUMNS: tuple[str, ...] = names(Role.configuration)
# Configuration column -> the run key it holds (`loss_name` holds `loss`).
CONFIG_KEYS: dict[str, str] = {
    c.name: c.config_key or c.name for c in COLUMNS if c.role is Role.configuration
}
# `tensor` values of backpropagated activation gradients, not of parameters: never clipped, without
# parameter statistics, not part of total_grad_norm.
ACTIVATION_TENSORS: tuple[str, ...] = ("preact", "stream", OUTPUT_TENSOR)
# Columns newer than some files of this schema version -> the value their rows are read with.
ABSENT_VALUES: dict[str, Any] = {c.name: c.absent for c in COLUMNS if c.absent is not None}
PRED_COLUMNS: tuple[str, ...] = names(Role.prediction)
HIST_COLUMN: str = names(Role.histogram)[0]
# The string-valued columns: few distinct values over many rows.
STRING_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.type == STRING)

# The configuration columns in the order figures prefer them as axes, most telling first.
AXIS_PRIORITY: tuple[str, ...] = (
    "act",
    "depth",
    "init_scale",
    "width",
    "init",
    "batchnorm",
    "norm",
    "residual",
    "branch_scale",
    "norm_position",
    "clip",
    "output_act",
    "bias_init",
    "dtype",
    "device",
    "optimizer",
    "lr",
    "batch_size",
    "loss_name",
    "steps",
    "data_seed",
)

# What decides a run's bits besides its configuration (`gradsweep.execution`): a resumed sweep
# keeps or, when asked, redoes a complete file that records other values, never mixes silently.
EXECUTION_METADATA: dict[str, str] = {
    "torch_version": "torch version that ran the experiment",
    "threads": "intra-op threads the run used (the `threads` key, resolved: `auto` is written as "
    "the number of cores)",
    "device_name": "`cpu` or the CUDA device's name",
    "stats_path": "the statistics path (probe strategy) that reduced the gradients: "
    "`one-pass-cpp` (the C kernel, on the CPU wherever it builds), `one-pass-triton` (the "
    "Triton kernel, on CUDA wherever triton imports), `numpy-host`, `fused-torch` or "
    "`per-tensor`",
}

# Key-value metadata in every run file's footer, each key under META_PREFIX.
METADATA: dict[str, str] = {
    "summary": "the run's per-replica summary metrics (the summary columns) as JSON; in "
    "Recorder files final_step, final_loss, max_grad_norm, max_total_norm, diverged and "
    "diverged_step",
    "schema_version": f"version of this file format ({SCHEMA_VERSION})",
    "version": "gradsweep version that wrote the file",
    "config": "the resolved run configuration as YAML; in Recorder files the recording's "
    "`source`, `run_key`, `name`, `model` (class name), `device`, `dtype`, `seed`, "
    "`log_every`, `hist_every`, `watch_outputs` (qualified names), `started` (UTC) and the "
    "user's `config`",
    "status": "`ok`, or `diverged` when any replica diverged",
    "hist_bins": "labels of the `grad_hist` bins as a JSON list",
    **EXECUTION_METADATA,
}


def check_columns(found: Iterable[str]) -> None:
    """Raise a ValueError naming the columns missing from `found` and those the schema lacks."""
    found = list(found)
    missing = [n for n in names() if n not in found]
    extra = [n for n in found if n not in COLUMNS_BY_NAME]
    if missing or extra:
        raise ValueError(
            f"run file columns do not match the schema: missing {missing}, not in the schema "
            f"{extra}; see gradsweep.schema.COLUMNS"
        )


def markdown_table(header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> str:
    """A GitHub-flavoured Markdown table (a `|` in a cell is escaped)."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _null_cell(column: Column) -> str:
    if column.name in SWEEP_REQUIRED:
        return "in recordings"
    return "yes" if column.nullable else "no"


def columns_markdown() -> str:
    """The run file's columns as a Markdown table: name, arrow type, null, role, meaning."""
    return markdown_table(
        ("column", "type", "null", "role", "meaning"),
        ((f"`{c.name}`", str(c.type), _null_cell(c), c.role.value, c.meaning) for c in COLUMNS),
    )


def metadata_markdown() -> str:
    """The footer's key-value metadata as a Markdown table."""
    return markdown_table(
        ("key", "meaning"), ((f"`{META_PREFIX}{k}`", v) for k, v in METADATA.items())
    )


def summary_markdown(summary_columns: Mapping[str, str]) -> str:
    """The per-run summary columns (`summary.SUMMARY_COLUMNS`) as a Markdown table."""
    return markdown_table(
        ("column", "meaning"), ((f"`{k}`", v) for k, v in summary_columns.items())
    )


def doc_blocks() -> dict[str, str]:
    """The generated tables of docs/file-format.md, by the name in their marker comments."""
    from gradsweep.summary import SUMMARY_COLUMNS  # summary imports this module

    return {
        "columns": columns_markdown(),
        "metadata": metadata_markdown(),
        "summary": summary_markdown(SUMMARY_COLUMNS),
    }


def marked(name: str, block: str) -> str:
    """`block` between the marker comments that docs/file-format.md holds it between."""
    return f"<!-- {name}: begin -->\n{block}<!-- {name}: end -->\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the run file's schema.")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the tables of docs/file-format.md, each between its marker comments",
    )
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write("\n".join(marked(k, v) for k, v in doc_blocks().items()))
    else:
        sys.stdout.write(f"{RUN_SCHEMA}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
