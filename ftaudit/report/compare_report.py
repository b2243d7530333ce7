"""Renderers of a CompareReport: a rich table, JSON (schema docs/compare.schema.json) and CSV."""

from __future__ import annotations

import io
import json
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

from ftaudit.fileio import atomic_write_text
from ftaudit.report._registry import register_writer
from ftaudit.report.csv_report import SafeCsvWriter, _cell
from ftaudit.report.json_report import to_json_compatible
from ftaudit.report.table import (
    _COMPENSATION_LABELS,
    _effects_caption,
    _noise_label,
    _percent,
    nonideality_lines,
)
from ftaudit.text import escape
from ftaudit.units import format_time

if TYPE_CHECKING:
    from ftaudit.results import Interval
    from ftaudit.results.compare import CompareReport, PairedSigmaResult, WorseGate

COMPARE_CSV_COLUMNS = (
    "sigma",
    "samples",
    "baseline_mean",
    "candidate_mean",
    "baseline_kpp",
    "candidate_kpp",
    "mean_difference",
    "mean_difference_low",
    "mean_difference_high",
    "kpp_difference",
    "kpp_difference_low",
    "kpp_difference_high",
    "gate",
    "time_s",
    "compensation",
)

RowKey = tuple[float, float | None, str | None]


def _row_gates(report: CompareReport) -> dict[RowKey, WorseGate]:
    """The gate of each row, by (sigma, time, compensation)."""
    return {(g.sigma, g.time_s, g.compensation): g for g in report.gates}


def _key(result: PairedSigmaResult) -> RowKey:
    return result.sigma, result.time_s, result.compensation


def payload_json(payload: dict[str, Any]) -> str:
    """A report dict as strict, indented JSON text (non-finite floats become null)."""
    return json.dumps(to_json_compatible(payload), indent=2, allow_nan=False) + "\n"


def _points(value: float) -> str:
    """A signed accuracy difference in percentage points."""
    return f"{100 * value:+.2f}"


def _difference(value: float, interval: Interval | None) -> str:
    if interval is None:
        return _points(value)
    return f"{_points(value)} [{_points(interval.low)}, {_points(interval.high)}]"


def compare_table(report: CompareReport) -> Table:
    """One row per sigma (and time, compensation): both models' mean and KPP, and the paired
    differences (in %).

    Compact on purpose, so a row fits an 80-column terminal: the ΔKPP bootstrap interval is
    left to the JSON and CSV reports, and with drift t and comp take the place of the two KPP
    columns (ΔKPP stays)."""
    base, cand = report.baseline, report.candidate
    title = (
        f"{escape(PurePath(str(base.model['path'])).name)} (baseline) vs "
        f"{escape(PurePath(str(cand.model['path'])).name)} (candidate)\n"
        f"noise {escape(_noise_label(base.noise))} · {base.samples} samples · k={base.k:g} · "
        f"seed {base.seed}"
    )
    caption = [
        f"clean accuracy {_percent(base.clean_accuracy)}% (baseline), "
        f"{_percent(cand.clean_accuracy)}% (candidate)",
        "accuracies in %; Δ = candidate - baseline, same draws",
        "Δmean: paired t 95% interval; ΔKPP interval (bootstrap) in JSON/CSV",
    ]
    caption.extend(_effects_caption(base))
    caption.extend(nonideality_lines(base.noise, base.analog))
    if report.fail_if_worse is not None:
        caption.append(
            f"gate (--fail-if-worse {100 * report.fail_if_worse:.2f} points): {report.gate_rule()}"
        )
    table = Table(
        title=title,
        caption="\n".join(caption),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    with_time = any(r.time_s is not None for r in report.results)
    headers = ["sigma", "t", "comp"] if with_time else ["sigma"]
    headers += ["mean\nbase", "mean\ncand"]
    headers += [] if with_time else ["KPP\nbase", "KPP\ncand"]
    headers += ["Δmean", "ΔKPP"]
    gates = _row_gates(report)
    if gates:
        headers.append("gate")
    for header in headers:
        table.add_column(escape(header), justify="right", no_wrap=True)
    for result in report.results:
        row = [f"{result.sigma:g}"]
        if with_time:
            row += [
                "" if result.time_s is None else format_time(result.time_s),
                _COMPENSATION_LABELS.get(result.compensation or "", ""),
            ]
        row += [_percent(result.baseline.summary.mean), _percent(result.candidate.summary.mean)]
        if not with_time:
            row += [_percent(result.baseline.summary.kpp), _percent(result.candidate.summary.kpp)]
        row += [
            escape(_difference(result.mean_difference, result.mean_difference_interval)),
            escape(_points(result.kpp_difference)),
        ]
        if gates:
            passed = gates[_key(result)].passed
            row.append("[green]ok[/green]" if passed else "[bold red]FAILED[/bold red]")
        table.add_row(*row)
    return table


def compare_csv(report: CompareReport) -> str:
    """The per-row comparison as CSV text with a header row (accuracies as fractions); time_s
    and compensation are empty without drift."""
    buffer = io.StringIO()
    writer = SafeCsvWriter(buffer)
    writer.writerow(COMPARE_CSV_COLUMNS)
    gates = _row_gates(report)
    for r in report.results:
        kpp_interval = r.kpp_difference_interval
        gate = gates.get(_key(r))
        writer.writerow(
            [
                _cell(r.sigma),
                int(r.baseline.summary.n),
                _cell(r.baseline.summary.mean),
                _cell(r.candidate.summary.mean),
                _cell(r.baseline.summary.kpp),
                _cell(r.candidate.summary.kpp),
                _cell(r.mean_difference),
                _cell(r.mean_difference_interval.low),
                _cell(r.mean_difference_interval.high),
                _cell(r.kpp_difference),
                "" if kpp_interval is None else _cell(kpp_interval.low),
                "" if kpp_interval is None else _cell(kpp_interval.high),
                "" if gate is None else ("passed" if gate.passed else "failed"),
                "" if r.time_s is None else _cell(r.time_s),
                r.compensation or "",
            ]
        )
    return buffer.getvalue()


@register_writer("json", kind="compare")
def write_compare_json(report: CompareReport, path: Path) -> None:
    """The comparison as JSON; schema in docs/compare.schema.json."""
    atomic_write_text(Path(path), payload_json(report.to_dict()))


@register_writer("csv", kind="compare")
def write_compare_csv(report: CompareReport, path: Path) -> None:
    """The per-row comparison as CSV."""
    atomic_write_text(Path(path), compare_csv(report))


def compare_junit(report: CompareReport) -> str:
    """JUnit XML: one test case per ``--fail-if-worse`` row (none set: one passing case)."""
    from ftaudit.report.junit_report import junit_xml

    gates = [
        {
            **gate.to_dict(),
            "metric": "upper 95% bound of the mean difference",
            "value": gate.interval.high,
            "threshold": -gate.tolerance,
            "details": gate.message(),
        }
        for gate in report.gates
    ]
    data = report.to_dict()
    names = [Path(str(data[role]["path"])).name for role in ("baseline", "candidate")]
    return junit_xml(
        suite_name=f"ftaudit compare {names[0]} {names[1]}",
        classname="ftaudit.compare",
        gates=gates,
        properties={
            "ftaudit_version": data.get("ftaudit_version"),
            "baseline.sha256": data["baseline"].get("sha256"),
            "candidate.sha256": data["candidate"].get("sha256"),
            "seed": data.get("seed"),
            "samples": data.get("samples"),
            "gate_rule": data.get("gate_rule"),
        },
        elapsed_s=data.get("elapsed_s"),
    )


@register_writer("junit", kind="compare")
def write_compare_junit(report: CompareReport, path: Path) -> None:
    """JUnit XML: one test case per ``--fail-if-worse`` row, for CI."""
    atomic_write_text(path, compare_junit(report))
