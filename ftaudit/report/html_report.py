"""Self-contained HTML report of an audit: verdict, chart, results, gates, layers, provenance.

One file with inline CSS and an inline SVG chart drawn from the numbers (no matplotlib, no
network reference), so it can be attached to a CI run and opened anywhere. It is rendered from
``report.to_dict()``, the same canonical data the JSON report holds.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

from ftaudit.fileio import atomic_write_text
from ftaudit.report._registry import register_writer
from ftaudit.report.html_page import (
    ChartSeries,
    Raw,
    html_table,
    join,
    key_value_table,
    line_chart_svg,
    plain_value,
    report_page,
    tag,
)
from ftaudit.report.json_report import to_json_compatible
from ftaudit.results import AuditReport

MEAN_COLOR = "#1f6fb4"
KPP_COLOR = "#d9620b"
#: one colour per (sigma, compensation) line of the drift chart (colour-blind-safe order)
DRIFT_PALETTE = ("#1f6fb4", "#d9620b", "#2a9d4a", "#8e44ad", "#b8860b", "#c0392b", "#17a2b8")
EARLY_STOP_MARK = "*"


def _pct(value: float | None) -> str:
    """An accuracy (fraction) as a percentage with 2 decimals; a missing value is 'n/a'."""
    return "n/a" if value is None else f"{100 * value:.2f}"


def _level(interval: Mapping[str, Any] | None) -> str:
    confidence = (interval or {}).get("confidence")
    return "?" if confidence is None else f"{100 * confidence:g}%"


def _with_interval(value: float | None, interval: Mapping[str, Any]) -> str:
    """value [low, high]; a side the samples cannot reach (null) is a dash."""
    low, high = interval.get("low"), interval.get("high")
    side = {None: "–"}
    return f"{_pct(value)} [{side.get(low, _pct(low))}, {side.get(high, _pct(high))}]"


def _drop(reference: float | None, value: float | None) -> float | None:
    return None if reference is None or value is None else reference - value


def noise_label(noise: Mapping[str, Any]) -> str:
    """``name(param=value, ...)`` from a report's noise dict."""
    params = ", ".join(f"{key}={plain_value(v)}" for key, v in noise.items() if key != "name")
    name = str(noise.get("name", "?"))
    return f"{name}({params})" if params else name


def _verdict(gates: list[Mapping[str, Any]]) -> Raw:
    failed = [gate for gate in gates if not gate.get("passed")]
    if not gates:
        return tag("div", "No gates set", class_="verdict none")
    if failed:
        text = f"FAILED: {len(failed)} of {len(gates)} gate{'s' if len(gates) != 1 else ''} failed"
        return tag("div", text, class_="verdict fail")
    text = f"PASSED: all {len(gates)} gate{'s' if len(gates) != 1 else ''} passed"
    return tag("div", text, class_="verdict pass")


def _cards(data: Mapping[str, Any]) -> Raw:
    cards = [("clean accuracy", f"{_pct(data.get('clean_accuracy'))}%")]
    if data.get("quantized_accuracy") is not None:
        cards.append(("quantised clean accuracy", f"{_pct(data['quantized_accuracy'])}%"))
    results = data.get("results") or []
    with_kpp = [r for r in results if r.get("kpp") is not None]
    if with_kpp:
        worst = min(with_kpp, key=lambda r: r["kpp"])
        cards.append((f"lowest KPP (σ = {worst['sigma']:g})", f"{_pct(worst['kpp'])}%"))
    cards.append(("Monte Carlo samples / σ", f"{data.get('samples')}"))
    elapsed = data.get("elapsed_s")
    cards.append(("run time", "n/a" if elapsed is None else f"{elapsed:.1f} s"))
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


def _has_times(data: Mapping[str, Any]) -> bool:
    return any(r.get("time_s") is not None for r in data.get("results") or [])


def _time(value: float | None) -> str:
    from ftaudit.units import format_time

    return "" if value is None else format_time(value)


def _legend(items: list[tuple[str, str]]) -> Raw:
    return tag(
        "div",
        join(
            tag(
                "span",
                join([tag("span", "", class_="swatch", style=f"background:{c}"), label], ""),
            )
            for label, c in items
        ),
        class_="legend",
    )


#: labelled positions of the drift chart's log time axis
TIME_TICKS = (
    (1.0, "1 s"),
    (60.0, "1 min"),
    (3600.0, "1 h"),
    (86400.0, "1 d"),
    (7 * 86400.0, "1 w"),
    (365 * 86400.0, "1 y"),
    (3650 * 86400.0, "10 y"),
)


def _log_time(seconds: float) -> float:
    """The drift chart's x: log10 seconds, with times under 1 s drawn at 1 s (no drift yet)."""
    return math.log10(max(seconds, 1.0))


def time_ticks(times: list[float]) -> list[tuple[float, str]]:
    """Axis ticks 1 s, 1 min, 1 h, 1 d, 1 w, 1 y, 10 y within the times' range (the times
    themselves when fewer than two of those fall in it)."""
    low, high = _log_time(min(times)), _log_time(max(times))
    ticks = [
        (_log_time(t), label)
        for t, label in TIME_TICKS
        if low - 1e-9 <= _log_time(t) <= high + 1e-9
    ]
    if len(ticks) < 2:
        ticks = [(_log_time(t), _time(t)) for t in sorted(set(times))]
    return ticks


def _drift_chart(data: Mapping[str, Any]) -> Raw:
    """Mean and KPP against time after programming, side by side: one colour per sigma, solid
    with global drift compensation, dashed without; a log time axis labelled 1 s ... 1 y."""
    results = data.get("results") or []
    times = sorted({r["time_s"] for r in results})
    sigmas = sorted({r["sigma"] for r in results})
    compensations = [
        c for c in ("global", "none") if any(r.get("compensation") == c for r in results)
    ]
    rows = {(r["sigma"], r.get("compensation"), r["time_s"]): r for r in results}
    colors = {sigma: DRIFT_PALETTE[i % len(DRIFT_PALETTE)] for i, sigma in enumerate(sigmas)}
    reference = data.get("reference_accuracy")
    k = data.get("k")
    panels = []
    for key, heading in (("mean", "mean accuracy"), ("kpp", f"KPP, k={k:g}")):
        series = [
            ChartSeries(
                f"{heading}, σ={sigma:g}, compensation {compensation}",
                colors[sigma],
                [
                    rows[(sigma, compensation, t)].get(key)
                    if (sigma, compensation, t) in rows
                    else None
                    for t in times
                ],
                dashed=compensation == "none",
            )
            for sigma in sigmas
            for compensation in compensations
        ]
        svg = line_chart_svg(
            x=[_log_time(t) for t in times],
            series=series,
            reference=reference,
            x_label="time after programming (log scale)",
            y_label="accuracy (%)",
            title=f"{heading} against time after programming",
            width=560,
            height=380,
            x_ticks=time_ticks(times),
            x_names=[f"t = {_time(t)}" for t in times],
            reference_dash="2 4",
        )
        panels.append(tag("div", join([tag("h3", heading), svg])))
    legend = [
        tag(
            "span",
            join(
                [tag("span", "", class_="swatch", style=f"background:{colors[s]}"), f"σ = {s:g}"],
                "",
            ),
        )
        for s in sigmas
    ]
    styles = {
        "global": ("line-solid", "solid: compensation global"),
        "none": ("line-dashed", "dashed: compensation none"),
    }
    legend += [
        tag("span", join([tag("span", "", class_=f"swatch {styles[c][0]}"), styles[c][1]], ""))
        for c in compensations
    ]
    if reference is not None:
        what = (
            "clean accuracy"
            if data.get("quantized_accuracy") is None
            else "quantised clean accuracy"
        )
        legend.append(
            tag(
                "span",
                join([tag("span", "", class_="swatch dotted"), f"{what} ({_pct(reference)}%)"], ""),
            )
        )
    return tag(
        "div",
        join(
            [tag("div", join(panels), class_="charts2"), tag("div", join(legend), class_="legend")]
        ),
        class_="chart",
    )


def device_summary(data: Mapping[str, Any]) -> dict[str, str]:
    """The device in a few readable lines: noise model, weight encoding, the per-level
    multipliers as a range, drift, compensation and stuck-at faults."""
    from ftaudit.units import format_time

    noise = dict(data.get("noise") or {})
    name = str(noise.pop("name", "?"))
    profile = noise.pop("profile", None)
    summary = {"noise model": name if profile in (None, name) else f"{name} (profile {profile})"}
    sigmas = sorted({r["sigma"] for r in data.get("results") or []})
    if sigmas:
        summary["device variation σ"] = ", ".join(f"{s:g}" for s in sigmas)
    bits, cell_bits = noise.pop("bits", None), noise.pop("cell_bits", None)
    if bits is not None and cell_bits is not None:
        cells = int(bits) // max(int(cell_bits), 1)
        summary["weights"] = f"{bits} bits in {cells} cell(s) of {cell_bits} bits"
    multipliers = noise.pop("sigma_multipliers", None)
    if multipliers:
        low, high = min(multipliers), max(multipliers)
        spread = f"{low:.3g}" if low == high else f"{low:.3g} to {high:.3g}"
        summary["σ per cell level"] = f"{spread} × σ over {len(multipliers)} levels"
    for key, value in noise.items():
        summary[key.replace("_", " ")] = plain_value(value)
    effects = data.get("device_effects") or {}
    drift = effects.get("drift")
    if drift and effects.get("times_s"):
        summary["drift"] = (
            f"g(t) = g0 (t/t0)^-ν, ν {drift['nu_mean']:g} ± {drift['nu_std']:g} across cells, "
            f"t0 = {format_time(drift['t0_s'])}"
        )
        summary["read at"] = ", ".join(format_time(t) for t in effects["times_s"])
        summary["drift compensation"] = ", ".join(effects.get("compensation") or [])
    stuck = effects.get("stuck_at") or {}
    if stuck.get("p_low") or stuck.get("p_high"):
        summary["stuck-at cells"] = (
            f"{100 * stuck['p_low']:g}% at the lowest, {100 * stuck['p_high']:g}% at the highest "
            "conductance"
        )
    if noise.get("differential"):
        summary["differential"] = "G+ - G- per weight, both devices programmed and noisy"
    analog = data.get("analog") or {}
    for number, line in enumerate(analog.get("in_force") or [], start=1):
        summary[f"analog non-ideality {number}"] = line
    return summary


def _chart(data: Mapping[str, Any]) -> Raw:
    if _has_times(data):
        return _drift_chart(data)
    results = sorted(data.get("results") or [], key=lambda r: r["sigma"])
    if not results:
        return tag("p", "No sigma was evaluated, so there is nothing to plot.", class_="note")
    k = data.get("k")
    mean_level = _level(results[0].get("mean_interval"))
    kpp_level = _level(results[0].get("kpp_interval"))
    series = [
        ChartSeries(
            f"mean ({mean_level} interval)",
            MEAN_COLOR,
            [r.get("mean") for r in results],
            [r["mean_interval"].get("low") for r in results],
            [r["mean_interval"].get("high") for r in results],
        ),
        ChartSeries(
            f"KPP, k={k:g} ({kpp_level} interval)",
            KPP_COLOR,
            [r.get("kpp") for r in results],
            [r["kpp_interval"].get("low") for r in results],
            [r["kpp_interval"].get("high") for r in results],
        ),
    ]
    reference = data.get("reference_accuracy")
    reference_label = (
        "clean accuracy" if data.get("quantized_accuracy") is None else "quantised clean accuracy"
    )
    svg = line_chart_svg(
        x=[r["sigma"] for r in results],
        series=series,
        reference=reference,
        x_label="device variation σ",
        y_label="accuracy (%)",
        title="accuracy against device variation",
    )
    legend = [
        tag(
            "span",
            join(
                [tag("span", "", class_="swatch", style=f"background:{s.color}"), s.label],
                separator="",
            ),
        )
        for s in series
    ]
    if reference is not None:
        legend.append(
            tag(
                "span",
                join(
                    [
                        tag("span", "", class_="swatch dashed"),
                        f"{reference_label} ({_pct(reference)}%)",
                    ],
                    separator="",
                ),
            )
        )
    return tag("div", join([svg, tag("div", join(legend), class_="legend")]), class_="chart")


def _methods(results: list[Mapping[str, Any]], key: str) -> str:
    """The distinct interval methods of a column, in order of appearance."""
    methods = dict.fromkeys(str((r.get(key) or {}).get("method", "?")) for r in results)
    return " / ".join(methods) or "?"


def _kpp_side_unavailable(result: Mapping[str, Any]) -> bool:
    """True when a side of the KPP interval is unavailable (null: too few samples)."""
    interval = result.get("kpp_interval") or {}
    return result.get("kpp") is not None and (
        interval.get("low") is None or interval.get("high") is None
    )


def _results_table(data: Mapping[str, Any]) -> Raw:
    results = data.get("results") or []
    first = results[0] if results else {}
    k = data.get("k")
    drift = _has_times(data)
    headers = [
        "σ",
        *(["t", "comp"] if drift else []),
        "n",
        f"mean [{_level(first.get('mean_interval'))}]",
        f"KPP k={k:g} [{_level(first.get('kpp_interval'))}]",
        "std",
        "min",
        "max",
        "Δmean",
        "ΔKPP",
    ]
    reference = data.get("reference_accuracy")
    rows = []
    for r in results:
        samples = f"{r['samples']}{EARLY_STOP_MARK if r.get('stopped_early') else ''}"
        rows.append(
            [
                f"{r['sigma']:g}",
                *([_time(r.get("time_s")), r.get("compensation") or ""] if drift else []),
                samples,
                _with_interval(r.get("mean"), r.get("mean_interval") or {}),
                _with_interval(r.get("kpp"), r.get("kpp_interval") or {}),
                _pct(r.get("std")),
                _pct(r.get("min")),
                _pct(r.get("max")),
                _pct(r.get("drop_mean", _drop(reference, r.get("mean")))),
                _pct(r.get("drop_kpp", _drop(reference, r.get("kpp")))),
            ]
        )
    notes = [
        f"Accuracies in %. Intervals: mean by {_methods(results, 'mean_interval')}; KPP by "
        f"{_methods(results, 'kpp_interval')}. Δ = drop from the unperturbed accuracy."
    ]
    one_sided = [r for r in results if _kpp_side_unavailable(r)]
    if one_sided:
        from ftaudit.report.table import kpp_unavailable_line

        confidence = (one_sided[0].get("kpp_interval") or {}).get("confidence", 0.95)
        notes.append(kpp_unavailable_line(float(k), float(confidence)) + " (run more --samples).")
    scope = (data.get("interval_scope") or {}).get("statement")
    if scope:
        notes.append(scope[0].upper() + scope[1:] + ".")
    if any(r.get("stopped_early") for r in results):
        notes.append(f"{EARLY_STOP_MARK} stopped early: the target interval width was reached.")
    return join(
        [
            html_table(
                headers, rows, numeric=[i for i, h in enumerate(headers) if h not in ("comp",)]
            ),
            *(tag("p", note, class_="note") for note in notes),
        ]
    )


def _gates_table(data: Mapping[str, Any]) -> Raw:
    gates = data.get("gates") or []
    if not gates:
        return tag(
            "p",
            "No gates were set. Add --fail-under-kpp or --fail-under-mean to make the audit a "
            "CI check.",
            class_="note",
        )
    drift = any(gate.get("time_s") is not None for gate in gates)
    rows = []
    for gate in gates:
        passed = bool(gate.get("passed"))
        badge = tag(
            "span", "passed" if passed else "FAILED", class_=f"badge {'pass' if passed else 'fail'}"
        )
        rows.append(
            [
                gate.get("metric", "?"),
                f"{gate['sigma']:g}",
                *([_time(gate.get("time_s")), gate.get("compensation") or ""] if drift else []),
                _pct(gate.get("value")),
                _pct(gate.get("threshold")),
                badge,
            ]
        )
    headers = [
        "metric",
        "σ",
        *(["t", "comp"] if drift else []),
        "value %",
        "threshold %",
        "verdict",
    ]
    numeric = [i for i, h in enumerate(headers) if h not in ("metric", "comp", "verdict")]
    return html_table(headers, rows, numeric=numeric, css_class="compact")


def _layers_table(data: Mapping[str, Any]) -> Raw:
    layers = data.get("layers") or []
    if not layers:
        return tag("p", "No crossbar layers recorded.", class_="note")
    rows = [
        [
            tag("code", layer.get("name", "?")),
            layer.get("op", "?"),
            "×".join(str(d) for d in layer.get("shape") or []),
            f"{layer.get('params', 0):,}",
            "—" if layer.get("macs") is None else f"{layer['macs']:,}",
            "n/a" if layer.get("max_abs") is None else f"{layer['max_abs']:.4g}",
            "yes" if layer.get("selected") else "no (exact)",
        ]
        for layer in layers
    ]
    selected = sum(1 for layer in layers if layer.get("selected"))
    return join(
        [
            html_table(
                ["weight", "op", "shape", "params", "MACs", "max |w|", "perturbed"],
                rows,
                numeric=(3, 4, 5),
            ),
            tag(
                "p",
                f"{selected} of {len(layers)} crossbar weight tensors perturbed.",
                class_="note",
            ),
        ]
    )


def _provenance(data: Mapping[str, Any]) -> Raw:
    model = dict(data.get("model") or {})
    dataset = dict(data.get("data") or {})
    command = data.get("command") or []
    run = {
        "command": shlex.join(str(part) for part in command) if command else None,
        "ftaudit version": data.get("ftaudit_version"),
        "report schema": data.get("schema_version"),
        "seed": data.get("seed"),
        "samples per σ": data.get("samples"),
        "k (percentile)": data.get("k"),
        "target interval width": data.get("target_ci"),
        "device": data.get("device"),
        "elapsed": None if data.get("elapsed_s") is None else f"{data['elapsed_s']:.2f} s",
    }
    sections: list[Any] = [
        tag("h3", "run"),
        key_value_table(run, monospace=("command",)),
        tag("h3", "model"),
        key_value_table(model, monospace=("path", "sha256")),
        tag("h3", "data"),
        key_value_table(dataset, monospace=("path", "sha256")),
        tag("h3", "noise"),
        key_value_table(
            {"model": noise_label(data.get("noise") or {}), **dict(data.get("noise") or {})}
        ),
    ]
    options = data.get("options") or {}
    if options:
        sections += [tag("h3", "options"), key_value_table(options)]
    return join(sections)


def html_from_report_dict(data: Mapping[str, Any]) -> str:
    """The HTML page for an audit report dict (``AuditReport.to_dict()`` or a loaded report)."""
    model_name = PurePath(str((data.get("model") or {}).get("path", "?"))).name
    device = device_summary(data)
    subtitle = (
        f"{model_name} · noise {device['noise model']} · {data.get('samples')} samples per σ · "
        f"k={data.get('k'):g} · seed {data.get('seed')}"
    )
    gates = list(data.get("gates") or [])
    body = join(
        [
            tag("h1", f"ftaudit report: {model_name}"),
            tag("p", subtitle, class_="subtitle"),
            _verdict(gates),
            _cards(data),
            tag("h2", "Device"),
            key_value_table(device),
            tag("h2", "Accuracy under device variation"),
            _chart(data),
            tag("h2", "Results"),
            _results_table(data),
            tag("h2", "Gates"),
            _gates_table(data),
            tag("h2", "Crossbar layers"),
            _layers_table(data),
            tag("h2", "Provenance"),
            _provenance(data),
        ]
    )
    return report_page(
        title=f"ftaudit report: {model_name}", body=body, version=data.get("ftaudit_version")
    )


def report_html(report: AuditReport) -> str:
    """The report as one self-contained HTML page."""
    return html_from_report_dict(to_json_compatible(report.to_dict()))


@register_writer("html")
def write_html(report: AuditReport, path: Path) -> None:
    """Self-contained HTML page: verdict, chart, results, gates, layers, provenance; no network."""
    atomic_write_text(Path(path), report_html(report))
