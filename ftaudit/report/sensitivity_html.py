"""Self-contained HTML and JUnit reports of ``ftaudit sensitivity``: the keep-digital answer,
the per-layer bars (KPP lost with only the layer perturbed, KPP won back with it kept digital),
the greedy steps, the layer table and the provenance. Rendered from
``SensitivityReport.to_dict()`` (the JSON report's data).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

from ftaudit.fileio import atomic_write_text
from ftaudit.report._registry import register_writer
from ftaudit.report.compare_html import row_label
from ftaudit.report.html_charts import ChartLine, Marker, bar_rows_svg, legend
from ftaudit.report.html_page import Raw, html_table, join, key_value_table, report_page, tag
from ftaudit.report.html_report import noise_label
from ftaudit.report.json_report import to_json_compatible

DROP_COLOR = "#c0392b"
GAIN_COLOR = "#2a9d4a"
#: target statuses that answer the question with some layers left analog
REACHED = ("already_met", "met")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _model_name(data: Mapping[str, Any]) -> str:
    return PurePath(str((data.get("model") or {}).get("path", "?"))).name


def _answer(data: Mapping[str, Any]) -> Raw:
    target = data.get("target")
    if target is None:
        return tag(
            "div",
            "No --target-kpp given: the ranking below says which layers lose the most.",
            class_="verdict none",
        )
    style = "pass" if target.get("status") in REACHED else "fail"
    return tag("div", str(target.get("message")), class_=f"verdict {style}")


def _cards(data: Mapping[str, Any]) -> Raw:
    rows = data.get("all_layers") or []
    layers = data.get("layers") or []
    cards = [("clean accuracy", f"{_pct(data.get('clean_accuracy'))}%")]
    if rows:
        worst = min(rows, key=lambda r: r["kpp"])
        cards.append((f"KPP, all layers analog ({row_label(worst)})", f"{_pct(worst['kpp'])}%"))
    if layers:
        cards.append(("most sensitive layer", str(layers[0]["name"])))
    cards.append(("Monte Carlo samples / run", str(data.get("samples"))))
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


def _digital(data: Mapping[str, Any]) -> list[str]:
    target = data.get("target") or {}
    return list(target.get("digital") or [])


def _chart(data: Mapping[str, Any]) -> Raw:
    layers = data.get("layers") or []
    if not layers:
        return tag("p", "No analog layer was ranked.", class_="note")
    digital = set(_digital(data))
    labels = [
        f"{layer['rank']}. {layer['name']}{' (digital)' if layer['name'] in digital else ''}"
        for layer in layers
    ]
    markers = [
        Marker("KPP lost with only this layer perturbed (drop)", DROP_COLOR),
        Marker("KPP won back with this layer kept digital (gain)", GAIN_COLOR),
    ]
    svg = bar_rows_svg(
        labels=labels,
        markers=markers,
        values=[
            [100 * layer["score"] for layer in layers],
            [100 * layer["recovered_score"] for layer in layers],
        ],
        x_label="accuracy points (averaged over the report rows)",
        title="per-layer sensitivity",
        lines=[ChartLine(0.0, "zero")],
    )
    return tag("div", join([svg, legend(markers)]), class_="chart")


def _steps_table(data: Mapping[str, Any]) -> Raw:
    target = data.get("target")
    if target is None:
        return tag(
            "p",
            "Pass --target-kpp X to find the layers to keep digital so the KPP reaches X at "
            "every row (greedy in rank order, every step measured).",
            class_="note",
        )
    rows_of_report = data.get("all_layers") or []
    headers = [
        "digital layers",
        *(f"KPP {row_label(r)}" for r in rows_of_report),
        f"≥ {_pct(target.get('target_kpp'))}%",
    ]
    rows = [
        [
            ", ".join(step.get("digital") or []) or "none (all analog)",
            *(_pct(v) for v in step.get("kpp") or []),
            "yes" if step.get("meets") else "no",
        ]
        for step in target.get("steps") or []
    ]
    return html_table(headers, rows, numeric=range(1, len(headers) - 1), css_class="compact")


def _layers_table(data: Mapping[str, Any]) -> Raw:
    digital = set(_digital(data))
    rows = [
        [
            layer["rank"],
            tag("code", layer["name"]),
            layer.get("op", "?"),
            f"{layer.get('params', 0):,}",
            _pct(_mean([p["kpp"] for p in layer.get("only") or []])),
            _pct(layer.get("score")),
            _pct(_mean([p["kpp"] for p in layer.get("all_but") or []])),
            _pct(layer.get("recovered_score")),
            "keep digital" if layer["name"] in digital else "",
        ]
        for layer in data.get("layers") or []
    ]
    headers = ["#", "layer", "op", "params", "only", "drop", "all but", "gain", "answer"]
    notes = [
        "KPP in %, averaged over the report rows: only = only this layer perturbed; drop = "
        "clean − only; all but = this layer exact, the others perturbed; gain = all but − all "
        "analog."
    ]
    if data.get("always_digital"):
        notes.append(
            "Not selected (always exact): " + ", ".join(str(n) for n in data["always_digital"])
        )
    return join(
        [
            html_table(headers, rows, numeric=(0, 3, 4, 5, 6, 7)),
            *(tag("p", note, class_="note") for note in notes),
        ]
    )


def _provenance(data: Mapping[str, Any]) -> Raw:
    command = data.get("command") or []
    run = {
        "command": shlex.join(str(part) for part in command) if command else None,
        "ftaudit version": data.get("ftaudit_version"),
        "seed": data.get("seed"),
        "samples per run": data.get("samples"),
        "k (percentile)": data.get("k"),
        "noise": noise_label(data.get("noise") or {}),
        "elapsed": None if data.get("elapsed_s") is None else f"{data['elapsed_s']:.2f} s",
    }
    sections: list[Any] = [
        tag("h3", "run"),
        key_value_table(run, monospace=("command",)),
        tag("h3", "model"),
        key_value_table(dict(data.get("model") or {}), monospace=("path", "sha256")),
        tag("h3", "data"),
        key_value_table(dict(data.get("data") or {}), monospace=("path", "sha256")),
    ]
    if data.get("options"):
        sections += [tag("h3", "options"), key_value_table(dict(data["options"]))]
    return join(sections)


def html_from_sensitivity_dict(data: Mapping[str, Any]) -> str:
    """The HTML page of a sensitivity report dict (``SensitivityReport.to_dict()``)."""
    name = _model_name(data)
    sigmas = ", ".join(f"{s:g}" for s in data.get("sigmas") or [])
    subtitle = (
        f"noise {noise_label(data.get('noise') or {})} · σ {sigmas} · {data.get('samples')} "
        f"samples per run · k={data.get('k'):g} · seed {data.get('seed')}"
    )
    body = join(
        [
            tag("h1", f"ftaudit sensitivity: {name}"),
            tag("p", subtitle, class_="subtitle"),
            _answer(data),
            _cards(data),
            tag("h2", "Which layers lose the most"),
            _chart(data),
            tag("h2", "Keeping layers digital"),
            _steps_table(data),
            tag("h2", "Layers"),
            _layers_table(data),
            tag("h2", "Provenance"),
            _provenance(data),
        ]
    )
    return report_page(
        title=f"ftaudit sensitivity: {name}", body=body, version=data.get("ftaudit_version")
    )


def sensitivity_html(report: Any) -> str:
    return html_from_sensitivity_dict(to_json_compatible(report.to_dict()))


@register_writer("html", kind="sensitivity")
def write_sensitivity_html(report: Any, path: Path) -> None:
    """A self-contained HTML page of the ranking."""
    atomic_write_text(Path(path), sensitivity_html(report))


def sensitivity_junit(report: Any) -> str:
    """JUnit XML: with --target-kpp one test case per report row, KPP of the answer's
    configuration >= the target, failed when no set of digital layers leaves an analog one
    (all_digital, unreachable); without it one passing case."""
    from ftaudit.report.junit_report import junit_xml

    data = to_json_compatible(report.to_dict())
    target = data.get("target")
    gates = []
    if target is not None:
        final = (target.get("steps") or [{}])[-1]
        reached = target.get("status") in REACHED
        digital = ", ".join(target.get("digital") or []) or "none"
        for row, kpp in zip(data.get("all_layers") or [], final.get("kpp") or [], strict=False):
            gates.append(
                {
                    "metric": f"kpp with digital layers [{digital}]",
                    "sigma": row["sigma"],
                    "time_s": row.get("time_s"),
                    "compensation": row.get("compensation"),
                    "value": kpp,
                    "threshold": target["target_kpp"],
                    "passed": reached and kpp >= target["target_kpp"],
                    "details": target.get("message"),
                }
            )
    return junit_xml(
        suite_name=f"ftaudit sensitivity {_model_name(data)}",
        classname="ftaudit.sensitivity",
        gates=gates,
        properties={
            "ftaudit_version": data.get("ftaudit_version"),
            "model.sha256": (data.get("model") or {}).get("sha256"),
            "seed": data.get("seed"),
            "samples": data.get("samples"),
            "target.status": None if target is None else target.get("status"),
        },
        elapsed_s=data.get("elapsed_s"),
        system_out=None if target is None else str(target.get("message")),
    )


@register_writer("junit", kind="sensitivity")
def write_sensitivity_junit(report: Any, path: Path) -> None:
    """JUnit XML: the ``--target-kpp`` answer per row, for CI."""
    atomic_write_text(Path(path), sensitivity_junit(report))
