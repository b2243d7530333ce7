"""Self-contained HTML report of ``ftaudit compare``: verdict, the paired differences
(candidate - baseline) with their 95% intervals per row as a chart, both models' numbers, the
gates and the provenance. Rendered from ``CompareReport.to_dict()`` (the JSON report's data).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

from ftaudit.fileio import atomic_write_text
from ftaudit.report._registry import register_writer
from ftaudit.report.html_charts import ChartLine, Marker, interval_rows_svg, legend
from ftaudit.report.html_page import Raw, html_table, join, key_value_table, report_page, tag
from ftaudit.report.html_report import noise_label
from ftaudit.report.json_report import to_json_compatible

MEAN_COLOR = "#1f6fb4"
KPP_COLOR = "#d9620b"
GATE_COLOR = "#b42318"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.2f}"


def _interval(interval: Mapping[str, Any] | None) -> str:
    if not interval:
        return "n/a"
    return f"[{_points(interval.get('low'))}, {_points(interval.get('high'))}]"


def row_label(row: Mapping[str, Any]) -> str:
    """'σ 0.3', or 'σ 0.3 · 1y · global' for a drift row."""
    from ftaudit.units import format_time

    label = f"σ {row['sigma']:g}"
    if row.get("time_s") is not None:
        label += f" · {format_time(row['time_s'])} · {row.get('compensation')}"
    return label


def _name(data: Mapping[str, Any], role: str) -> str:
    return PurePath(str((data.get(role) or {}).get("path", "?"))).name


def _verdict(data: Mapping[str, Any]) -> Raw:
    gates = data.get("gates") or []
    if not gates:
        return tag("div", "No gate set (add --fail-if-worse TOL)", class_="verdict none")
    failed = [g for g in gates if not g.get("passed")]
    if failed:
        text = f"FAILED: the candidate is worse at {len(failed)} of {len(gates)} rows"
        return tag("div", text, class_="verdict fail")
    return tag("div", f"PASSED: no row of {len(gates)} is worse", class_="verdict pass")


def _cards(data: Mapping[str, Any]) -> Raw:
    results = data.get("results") or []
    cards = [
        (
            f"baseline clean ({_name(data, 'baseline')})",
            f"{_pct(data['baseline'].get('clean_accuracy'))}%",
        ),
        (
            f"candidate clean ({_name(data, 'candidate')})",
            f"{_pct(data['candidate'].get('clean_accuracy'))}%",
        ),
    ]
    if results:
        worst = min(results, key=lambda r: r["mean_difference"])
        cards.append(
            (
                f"worst mean difference ({row_label(worst)})",
                f"{_points(worst['mean_difference'])} pts",
            )
        )
    cards.append(("Monte Carlo samples / row", str(data.get("samples"))))
    return tag(
        "div",
        join(
            tag(
                "div",
                join([tag("div", label, class_="label"), tag("div", value, class_="value")]),
                class_="card",
            )
            for label, value in cards
        ),
        class_="cards",
    )


def _chart(data: Mapping[str, Any]) -> Raw:
    results = data.get("results") or []
    if not results:
        return tag("p", "No rows were compared.", class_="note")
    k = data.get("k")
    markers = [
        Marker("mean difference (95% interval)", MEAN_COLOR),
        Marker(f"KPP difference, k={k:g} (95% interval)", KPP_COLOR),
    ]

    def point(value: float | None, interval: Mapping[str, Any] | None) -> Any:
        if value is None:
            return None
        interval = interval or {}
        low, high = interval.get("low"), interval.get("high")
        return (
            100 * value,
            None if low is None else 100 * low,
            None if high is None else 100 * high,
        )

    points = [
        [point(r.get("mean_difference"), r.get("mean_difference_interval")) for r in results],
        [point(r.get("kpp_difference"), r.get("kpp_difference_interval")) for r in results],
    ]
    lines = [ChartLine(0.0, "no difference")]
    tolerance = data.get("fail_if_worse")
    if tolerance is not None:
        lines.append(
            ChartLine(
                -100 * tolerance, f"gate: -{100 * tolerance:g} points", GATE_COLOR, dashed=True
            )
        )
    svg = interval_rows_svg(
        labels=[row_label(r) for r in results],
        markers=markers,
        points=points,
        lines=lines,
        x_label="candidate − baseline, accuracy points (right of 0: the candidate is better)",
        title="paired differences per row",
    )
    return tag("div", join([svg, legend(markers, lines[1:])]), class_="chart")


def _results_table(data: Mapping[str, Any]) -> Raw:
    results = data.get("results") or []
    k = data.get("k")
    headers = [
        "row",
        "n",
        "baseline mean",
        "candidate mean",
        "Δ mean [95%]",
        f"baseline KPP k={k:g}",
        f"candidate KPP k={k:g}",
        "Δ KPP [95%]",
    ]
    rows = [
        [
            row_label(r),
            r.get("samples"),
            _pct(r["baseline"].get("mean")),
            _pct(r["candidate"].get("mean")),
            f"{_points(r.get('mean_difference'))} {_interval(r.get('mean_difference_interval'))}",
            _pct(r["baseline"].get("kpp")),
            _pct(r["candidate"].get("kpp")),
            f"{_points(r.get('kpp_difference'))} {_interval(r.get('kpp_difference_interval'))}",
        ]
        for r in results
    ]
    note = tag(
        "p",
        "Accuracies in %, differences in points (candidate − baseline, the same noise draws "
        "for both models, so each difference is measured sample by sample). A KPP difference "
        "interval of n/a: too few samples below the KPP's rank to bound it.",
        class_="note",
    )
    return join([html_table(headers, rows, numeric=range(1, len(headers))), note])


def _gates_table(data: Mapping[str, Any]) -> Raw:
    gates = data.get("gates") or []
    if not gates:
        return tag(
            "p",
            "No gate was set. --fail-if-worse TOL exits 1 when the candidate's mean is below the "
            "baseline's by more than TOL with 95% confidence at any row.",
            class_="note",
        )
    rows = []
    for gate in gates:
        passed = bool(gate.get("passed"))
        rows.append(
            [
                row_label(gate),
                _points(gate.get("mean_difference")),
                _points(gate.get("interval_high")),
                _points(-gate["tolerance"]) if gate.get("tolerance") is not None else "n/a",
                "n/a" if gate.get("p_value") is None else f"{gate['p_value']:.3g}",
                tag(
                    "span",
                    "passed" if passed else "FAILED",
                    class_=f"badge {'pass' if passed else 'fail'}",
                ),
            ]
        )
    headers = ["row", "Δ mean", "upper 95% bound", "fails below", "one-sided p", "verdict"]
    table = html_table(headers, rows, numeric=(1, 2, 3, 4), css_class="compact")
    rule = data.get("gate_rule")
    if not rule:
        return table
    return join([table, tag("p", f"Gate rule: {rule}.", class_="note")])


def _provenance(data: Mapping[str, Any]) -> Raw:
    command = data.get("command") or []
    run = {
        "command": shlex.join(str(part) for part in command) if command else None,
        "ftaudit version": data.get("ftaudit_version"),
        "seed": data.get("seed"),
        "samples per row": data.get("samples"),
        "k (percentile)": data.get("k"),
        "noise": noise_label(data.get("noise") or {}),
        "elapsed": None if data.get("elapsed_s") is None else f"{data['elapsed_s']:.2f} s",
    }
    analog = (data.get("options") or {}).get("analog") or {}
    for number, line in enumerate(analog.get("in_force") or [], start=1):
        run[f"analog non-ideality {number}"] = line
    sections: list[Any] = [tag("h3", "run"), key_value_table(run, monospace=("command",))]
    for role in ("baseline", "candidate"):
        sections += [
            tag("h3", role),
            key_value_table(dict(data.get(role) or {}), monospace=("path", "sha256")),
        ]
    sections += [
        tag("h3", "data"),
        key_value_table(dict(data.get("data") or {}), monospace=("path", "sha256")),
    ]
    if data.get("options"):
        sections += [tag("h3", "options"), key_value_table(dict(data["options"]))]
    return join(sections)


def html_from_compare_dict(data: Mapping[str, Any]) -> str:
    """The HTML page of a compare report dict (``CompareReport.to_dict()`` or a loaded one)."""
    names = f"{_name(data, 'baseline')} → {_name(data, 'candidate')}"
    subtitle = (
        f"noise {noise_label(data.get('noise') or {})} · {data.get('samples')} samples per row · "
        f"k={data.get('k'):g} · seed {data.get('seed')}"
    )
    body = join(
        [
            tag("h1", f"ftaudit compare: {names}"),
            tag("p", subtitle, class_="subtitle"),
            _verdict(data),
            _cards(data),
            tag("h2", "Paired differences"),
            _chart(data),
            tag("h2", "Results"),
            _results_table(data),
            tag("h2", "Gates"),
            _gates_table(data),
            tag("h2", "Provenance"),
            _provenance(data),
        ]
    )
    return report_page(
        title=f"ftaudit compare: {names}", body=body, version=data.get("ftaudit_version")
    )


def compare_html(report: Any) -> str:
    """A CompareReport as one self-contained HTML page."""
    return html_from_compare_dict(to_json_compatible(report.to_dict()))


@register_writer("html", kind="compare")
def write_compare_html(report: Any, path: Path) -> None:
    """A self-contained HTML page of the comparison."""
    atomic_write_text(Path(path), compare_html(report))
