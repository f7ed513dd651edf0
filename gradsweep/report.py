"""`python -m gradsweep.report PATH... [-o OUT]`: one comparison report from any sweep and run dirs.

Writes into OUT: sweep.parquet (every run's rows, without per-row histograms,
string columns dictionary-encoded), summary.csv and summary.md (one row per run
and replica), one PNG per figure (one per value of an axis a figure is split by),
and index.html with the figures embedded and their captions, so
it opens in a browser without a server. Files it cannot use are listed, never
dropped silently.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pyarrow.parquet as pq

from gradsweep import figures, recorded_figures, remedies, theory_figures
from gradsweep.drawn import FigureFiles, save_figures
from gradsweep.labels import axis_value, readable
from gradsweep.schema import CONFIG_COLUMNS, RECORDER_SOURCE, SWEEP_SOURCE
from gradsweep.store import Problem, RunSet
from gradsweep.summary import METRIC_COLUMNS, SUMMARY_COLUMNS, scan, summarize

CAPTIONS = {
    "layer_profile": "(a) Gradient L2 norm per layer at initialisation (step 0). Solid: weight "
    "gradient; dashed: dL/dz at the layer's output, the quantity signal-propagation theory "
    "predicts.",
    "ratio_heatmap": "(b) Vanishing/exploding ratio of each configuration: layer-0 (input side) "
    "norm over layer depth-1 (output side) norm at step 0, for the weight gradient and dL/dz.",
    "clipping": "(c) Total gradient norm before and after clipping, and the loss, over training "
    "steps.",
    "batchnorm": "(d) BatchNorm (or every norm, when LayerNorm is swept too) against none: "
    "weight-gradient norm per layer at step 0.",
    "histograms": "(e) Distribution of log10|g| of the weight-gradient elements of all layers at "
    "step 0, per configuration, from the fixed bins; each panel gives the fraction of exact zeros "
    "and of magnitudes below 2^-40, which the axis does not show.",
    "over_steps": "(f) Weight-gradient norm of the input-side, middle and output-side layers over "
    "training.",
    "devices": "(g) CPU against CUDA: the same configuration and seed measured on both devices.",
    **theory_figures.CAPTIONS,
    "remedies": remedies.CAPTION,
}
SKIPPED = {
    "ratio_heatmap": "fewer than two axes swept",
    "clipping": "clipping is off in every run",
    "batchnorm": "neither BatchNorm nor the norm swept",
    "over_steps": "no training steps logged",
    "devices": "not both CPU and CUDA runs present",
    **theory_figures.SKIPPED,
    "remedies": remedies.SKIPPED,
}
SHOWN_ROWS = 200
FIGURE_NOTE = (
    "No figure pools configurations: each shows every swept axis as hue, line style, panel or a "
    "file of its own, or draws only the runs its caption names. Only the seeds (replicas) of one "
    "configuration are pooled, as each caption says."
)


@dataclass
class Recorded:
    """The report's section on Recorder files: summary (one row a recording) and figure files."""

    summary: pd.DataFrame
    figures: dict[str, FigureFiles] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class Report:
    """What `build_report` wrote: output dir, summary table, figure files, the problems found.

    `summary` and `figures` are the sweep files' (empty without any); `recorded` is the section
    on Recorder files, None without any.
    """

    out_dir: Path
    summary: pd.DataFrame
    figures: dict[str, FigureFiles] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    recorded: Recorded | None = None


def _cell(value: object) -> str:
    """A summary value as table text: floats in 4 significant digits, missing values empty."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a GitHub-flavoured Markdown table (floats in 4 significant digits)."""
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += [
        "| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


def _figure_plan(
    init: pd.DataFrame, totals: pd.DataFrame, summary: pd.DataFrame, runs: RunSet, swept: list[str]
) -> dict[str, Callable[[], list[plt.Figure]]]:
    return {
        "layer_profile": lambda: figures.layer_profile(init, swept),
        "ratio_heatmap": lambda: figures.ratio_heatmap(summary, swept),
        "clipping": lambda: figures.clipping(totals, swept),
        "batchnorm": lambda: figures.batchnorm(init, swept),
        "histograms": lambda: figures.histograms(figures.histogram_counts(runs), swept),
        "over_steps": lambda: (
            figures.over_steps(figures.layer_steps(runs), swept)
            if totals["step"].nunique() > 1
            else []
        ),
        "devices": lambda: figures.devices(init),
        **theory_figures.figure_plan(
            runs, {**theory_figures.MAKERS, "remedies": remedies.remedies}
        ),
    }


def write_sweep_parquet(runs: RunSet, path: Path) -> Path:
    """Every usable run's rows, without per-row histograms, in one dictionary-encoded zstd file."""
    columns = [c for c in runs.schema.names if c != "grad_hist"]
    pq.write_table(runs.table(columns=columns), path, compression="zstd")
    return path


def build_report(paths: Iterable[str | Path], out_dir: str | Path) -> Report:
    """Read the runs under `paths`; write the sweep parquet, summaries, figures and index.html.

    Sweep files and Recorder files get a section each (`gradsweep.recorded_figures`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = RunSet(paths)
    if runs.schema is None:
        raise ValueError(
            "no readable run files under: "
            + ", ".join(map(str, paths))
            + _problem_text(runs.problems)
        )
    write_sweep_parquet(runs, out / "sweep.parquet")
    sweep = runs.of_source(SWEEP_SOURCE)
    swept: list[str] = []
    report = Report(out, pd.DataFrame(columns=list(SUMMARY_COLUMNS)))
    if sweep.schema is not None:
        swept = _sweep_section(report, sweep)
    recorded = runs.of_source(RECORDER_SOURCE)
    if recorded.schema is not None:
        report.recorded = _recorded_section(out, recorded)
    report.problems = runs.problems
    (out / "index.html").write_text(render_html(report, swept, len(runs.files)))
    return report


def _sweep_section(report: Report, runs: RunSet) -> list[str]:
    """The sweep files' summaries and figures, into `report`; the swept axes."""
    out = report.out_dir
    totals, init = scan(runs)
    swept = figures.swept_axes(runs.runs)
    summary = summarize(totals, init).sort_values([*swept, "run_key", "replica"], ignore_index=True)
    report.summary = summary
    summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(markdown_table(summary))
    for name, make in _figure_plan(init, totals, summary, runs, swept).items():
        figs = make()
        if not figs:
            report.skipped[name] = SKIPPED[name]
            continue
        report.figures[name] = save_figures(figs, out, name)
    return swept


def _recorded_section(out: Path, runs: RunSet) -> Recorded:
    """The Recorder files' summary (recorded.csv, recorded.md) and figures."""
    rows = recorded_figures.module_rows(runs)
    section = Recorded(recorded_figures.summary(rows))
    section.summary.to_csv(out / "recorded.csv", index=False)
    (out / "recorded.md").write_text(markdown_table(section.summary))
    plan = {
        "module_profile": lambda: recorded_figures.module_profile(rows),
        "module_steps": lambda: recorded_figures.module_steps(rows),
        "loss_total": lambda: recorded_figures.loss_total(rows),
        "module_histograms": lambda: recorded_figures.module_histograms(
            recorded_figures.histogram_counts(runs), recorded_figures.recordings(runs)
        ),
    }
    for name, make in plan.items():
        figs = make()
        if figs:
            section.figures[name] = save_figures(figs, out, name)
        else:
            section.skipped[name] = recorded_figures.SKIPPED.get(name, "nothing to draw")
    return section


def _problem_text(problems: list[Problem]) -> str:
    return "".join(f"\n  {p.kind}: {p.path}: {p.message}" for p in problems)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{path.stem}" src="data:image/png;base64,{data}">'


def table_layout(summary: pd.DataFrame, swept: list[str]) -> tuple[list[str], dict[str, object]]:
    """The HTML table's columns (swept axes, seed, metrics) and the configuration runs share."""
    constant = {c: summary[c].iloc[0] for c in CONFIG_COLUMNS if c not in swept and len(summary)}
    return [*swept, "seed", *(c for c in METRIC_COLUMNS if c != "replica")], constant


def summary_html(summary: pd.DataFrame, swept: list[str], limit: int = SHOWN_ROWS) -> str:
    """The summary as an HTML table of swept axes and metrics; the shared configuration once."""
    esc = html.escape
    columns, constant = table_layout(summary, swept)
    shown = readable(summary.head(limit), swept)
    same = ", ".join(axis_value(c, v) for c, v in constant.items())
    head = "".join(f"<th>{esc(c).replace('_', '_<wbr>')}</th>" for c in columns)
    numeric = {c for c in columns if pd.api.types.is_numeric_dtype(summary[c])}
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='num'>{esc(_cell(v))}</td>" if c in numeric else f"<td>{esc(_cell(v))}</td>"
            for c, v in zip(columns, row)
        )
        + "</tr>"
        for row in shown[columns].itertuples(index=False)
    )
    return (
        f"<p>{len(shown)} of {len(summary)} rows (one per run and replica; seed = the replica's "
        f"init seed); every column in summary.csv.</p>"
        f"<p class='same'>Same in every run: {esc(same or 'nothing')}.</p>"
        f"<div class='wide'><table class='summary'><tr>{head}</tr>{body}</table></div>"
    )


def render_html(report: Report, swept: list[str], n_files: int) -> str:
    """The self-contained HTML report: problems, figures (base64 PNG), summary, definitions."""
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>gradsweep report</title><style>",
        "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}img{max-width:100%}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
        "th{vertical-align:bottom}td.num{text-align:right;font-variant-numeric:tabular-nums}"
        "table.summary tr:nth-child(even){background:#f4f4f4}figure{margin:1.5em 0}"
        "figcaption{max-width:60em}.problems td{color:#a00}.wide{overflow-x:auto}",
        "</style></head><body><h1>gradsweep report</h1>",
    ]
    if len(report.summary):
        parts.append(
            f"<p>{n_files} run files, {len(report.summary)} summary rows (one per run and "
            f"replica). Swept axes: {esc(', '.join(swept) or 'none')}.</p>"
        )
    else:
        parts.append(f"<p>{n_files} run files.</p>")
    if report.problems:
        rows = "".join(
            f"<tr><td>{esc(p.kind)}</td><td>{esc(p.path)}</td><td>{esc(p.message)}</td></tr>"
            for p in report.problems
        )
        parts.append(
            f"<h2>Runs not read ({len(report.problems)})</h2><table class='problems'>"
            f"<tr><th>kind</th><th>path</th><th>why</th></tr>{rows}</table>"
        )
    if len(report.summary):
        parts += _sweep_html(report, swept)
    if report.recorded is not None:
        parts += _recorded_html(report.recorded)
    parts.append("</body></html>")
    return "\n".join(parts)


def _figures_html(figs: dict[str, FigureFiles], captions: dict[str, str]) -> list[str]:
    """One <figure> per figure: its pages, then its caption and what it pools."""
    esc = html.escape
    parts = []
    for name, files in figs.items():
        pages = "".join(
            (f"<h4>{esc(title)}</h4>" if title else "") + _img(path)
            for path, title in zip(files.paths, files.titles)
        )
        caption = f"{captions[name]} {files.note[:1].upper()}{files.note[1:]}"
        parts.append(f"<figure>{pages}<figcaption>{esc(caption)}</figcaption></figure>")
    return parts


def _skipped_html(skipped: dict[str, str], captions: dict[str, str]) -> list[str]:
    esc = html.escape
    if not skipped:
        return []
    items = "".join(
        f"<li>{esc(captions[n])} Not drawn: {esc(why)}.</li>" for n, why in skipped.items()
    )
    return [f"<ul>{items}</ul>"]


def _definitions_html(columns: dict[str, str]) -> str:
    esc = html.escape
    return "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in columns.items())


def _sweep_html(report: Report, swept: list[str]) -> list[str]:
    """The sweep files' figures, summary and column definitions."""
    parts = [f"<h2>Figures</h2><p>{FIGURE_NOTE}</p>"]
    parts += _figures_html(report.figures, CAPTIONS)
    parts += _skipped_html(report.skipped, CAPTIONS)
    parts.append("<h2 id='summary'>Summary</h2>" + summary_html(report.summary, swept))
    parts.append(f"<h2>Columns</h2><table>{_definitions_html(SUMMARY_COLUMNS)}</table>")
    return parts


def _recorded_html(section: Recorded) -> list[str]:
    """The Recorder files' figures over the module order, what does not apply, their summary."""
    captions = recorded_figures.CAPTIONS
    parts = [
        "<h2 id='recorded'>Recorded models</h2>",
        f"<p>{len(section.summary)} recordings of user models (gradsweep.Recorder). "
        f"{html.escape(recorded_figures.NOT_APPLICABLE)}</p>",
    ]
    parts += _figures_html(section.figures, captions)
    parts += _skipped_html(section.skipped, captions)
    parts.append(
        "<h3>Recordings</h3><div class='wide'><table class='summary'>"
        + _table_html(section.summary)
        + "</table></div>"
    )
    parts.append(
        "<h3>Columns</h3><table>" + _definitions_html(recorded_figures.SUMMARY_COLUMNS) + "</table>"
    )
    return parts


def _table_html(frame: pd.DataFrame) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(_cell(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<tr>{head}</tr>{body}"


def main(argv: list[str] | None = None) -> int:
    """Console entry point: build the report, print where it is and every file not read."""
    parser = argparse.ArgumentParser(prog="gradsweep-report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="sweep dirs, run dirs or run files")
    parser.add_argument("-o", "--out", help="output dir (default: <first path>/report)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.paths[0]) / "report"
    try:
        report = build_report(args.paths, out)
    except ValueError as err:
        print(f"gradsweep-report: error: {err}", file=sys.stderr)
        return 2
    for p in report.problems:
        print(f"gradsweep-report: {p.kind}: {p.path}: {p.message}", file=sys.stderr)
    parts = []
    if len(report.summary):
        n_runs = report.summary["run_key"].nunique()
        parts.append(
            f"{n_runs} runs, {len(report.summary)} run x replica rows, "
            f"{len(report.figures)} figures"
        )
    if report.recorded is not None:
        parts.append(
            f"{len(report.recorded.summary)} recordings, "
            f"{len(report.recorded.figures)} recording figures"
        )
    print(f"{out / 'index.html'}: {', '.join(parts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
