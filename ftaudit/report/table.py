"""Terminal rendering of an AuditReport with rich: renderables only, the caller prints them."""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table

from ftaudit.results import AuditReport
from ftaudit.text import escape
from ftaudit.units import format_time

EARLY_STOP_MARK = "*"
#: table labels of the compensation modes: the names --compensation takes and the reports use
_COMPENSATION_LABELS = {"none": "none", "global": "global"}


def _percent(value: float) -> str:
    """An accuracy (fraction) as a percentage with 2 decimals, without the % sign."""
    return f"{100 * value:.2f}" if math.isfinite(value) else "n/a"


#: an interval side the samples cannot reach (see stats.kpp_min_samples)
UNAVAILABLE = "–"


def _side(value: float | None) -> str:
    return UNAVAILABLE if value is None else _percent(value)


def kpp_unavailable_line(k: float, confidence: float) -> str:
    """The footer line for KPP intervals with a side the samples cannot reach."""
    from ftaudit.stats import kpp_min_samples

    return (
        f"{UNAVAILABLE} unavailable: a two-sided {_level(confidence)} KPP interval at k={k:g} "
        f"needs at least {kpp_min_samples(k, confidence)} samples"
    )


def _level(confidence: float) -> str:
    return f"{100 * confidence:g}%"


def _noise_label(noise: dict[str, Any]) -> str:
    """``name(param=value, ...)`` from the report's noise dict."""
    skip = {"name", "profile", "sigma_multipliers"} if "profile" in noise else {"name"}
    params = ", ".join(f"{key}={value}" for key, value in noise.items() if key not in skip)
    name = str(noise.get("name", "?"))
    return f"{name}({params})" if params else name


def _model_name(report: AuditReport) -> str:
    return PurePath(str(report.model.get("path", "?"))).name


def audit_table(report: AuditReport) -> Table:
    """One row per sigma: samples, mean ± half-width, KPP [interval], min, max, drops (in %)."""
    title = (
        f"{escape(_model_name(report))}\nnoise {escape(_noise_label(report.noise))} · "
        f"{report.samples} samples · k={report.k:g} · seed {report.seed}"
    )
    caption_parts = [f"clean accuracy {_percent(report.clean_accuracy)}%"]
    if report.quantized_accuracy is not None:
        caption_parts.append(f"quantised clean accuracy {_percent(report.quantized_accuracy)}%")
    caption_parts.append("accuracies in %; n samples; Δ = drop from the unperturbed accuracy")
    caption_parts.append(escape(report.interval_scope()["statement"]))
    caption_parts.extend(_effects_caption(report))
    caption_parts.extend(nonideality_lines(report.noise, report.analog))
    with_time = any(result.time_s is not None for result in report.results)
    if any(result.stopped_early for result in report.results):
        caption_parts.append(f"{EARLY_STOP_MARK} stopped early: target interval width reached")
    one_sided = [r for r in report.results if not r.summary.kpp_interval.two_sided()]
    if one_sided:
        caption_parts.append(
            kpp_unavailable_line(report.k, one_sided[0].summary.kpp_interval.confidence)
        )
    # One caption line per fact: a long single line would wrap mid-phrase at the table's width.
    # compact on purpose: a row must fit an 80-column terminal without wrapping
    table = Table(
        title=title,
        caption="\n".join(caption_parts),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )

    # Interval levels come from the results (all sigmas share them), not an assumed 95%.
    first = report.results[0].summary if report.results else None
    mean_level = _level(first.mean_interval.confidence) if first else "95%"
    kpp_level = _level(first.kpp_interval.confidence) if first else "95%"
    kpp_header = f"KPP k={report.k:g} [{kpp_level}]"
    # with drift, time and compensation replace min/max (still in the JSON and CSV reports)
    headers = ["sigma", "t", "comp"] if with_time else ["sigma"]
    headers += ["n", f"mean ±{mean_level}", escape(kpp_header)]
    headers += ["Δmean", "ΔKPP"] if with_time else ["min", "max", "Δmean", "ΔKPP"]
    for header in headers:
        table.add_column(header, justify="right", no_wrap=True)

    for result in report.results:
        s = result.summary
        half_width = s.mean_interval.width() / 2
        samples = f"{s.n}{EARLY_STOP_MARK}" if result.stopped_early else f"{s.n}"
        cells = [f"{result.sigma:g}"]
        if with_time:
            cells += [
                "" if result.time_s is None else format_time(result.time_s),
                _COMPENSATION_LABELS.get(result.compensation or "", ""),
            ]
        cells += [
            samples,
            f"{_percent(s.mean)} ± {_percent(half_width)}",
            escape(
                f"{_percent(s.kpp)} [{_side(s.kpp_interval.low)}, {_side(s.kpp_interval.high)}]"
            ),
        ]
        if not with_time:
            cells += [_percent(s.min), _percent(s.max)]
        # The per-result reference is what the JSON report's drops use; keep them identical.
        cells += [
            _percent(result.reference_accuracy - s.mean),
            _percent(result.reference_accuracy - s.kpp),
        ]
        table.add_row(*cells)
    return table


def nonideality_lines(noise: dict[str, Any] | None, analog: dict[str, Any] | None) -> list[str]:
    """One line per device and analog non-ideality in force beyond the noise model's name:
    differential pairs, then the forward pipeline's ``in_force`` lines (none when ideal)."""
    lines = []
    if (noise or {}).get("differential"):
        lines.append("differential pairs: w = G+ - G-, both devices noisy")
    if analog is not None:
        lines.extend(f"analog: {line}" for line in analog.get("in_force") or [])
    return lines


def _effects_caption(report: AuditReport) -> list[str]:
    """Caption lines for drift and stuck-at faults (none when the report has neither)."""
    return effects_caption_lines(report.device_effects)


def effects_caption_lines(effects: dict[str, Any] | None) -> list[str]:
    """Caption lines for a report's ``device_effects`` dict (none when it is None)."""
    if not effects:
        return []
    lines = []
    drift = effects.get("drift")
    if drift:
        lines.append(
            f"drift g0 (t/t0)^-nu, t0 {format_time(drift['t0_s'])}, nu {drift['nu_mean']:g} ± "
            f"{drift['nu_std']:g}"
        )
        lines.append("t: time after programming; comp: drift compensation, global or none")
    stuck = effects.get("stuck_at") or {}
    if stuck.get("p_low") or stuck.get("p_high"):
        lines.append(
            f"stuck-at: {100 * stuck['p_low']:g}% of cells low, {100 * stuck['p_high']:g}% high"
        )
    return lines


def gates_table(report: AuditReport) -> Table:
    """The CI gate verdicts: metric, sigma, value, threshold, passed/FAILED (values in %)."""
    table = Table(title="gates")
    table.add_column("metric")
    table.add_column("sigma", justify="right")
    with_time = any(gate.time_s is not None for gate in report.gates)
    if with_time:
        table.add_column("t", justify="right")
        table.add_column("comp")
    table.add_column("value %", justify="right")
    table.add_column("threshold %", justify="right")
    table.add_column("verdict")
    for gate in report.gates:
        verdict = "[green]passed[/green]" if gate.passed else "[bold red]FAILED[/bold red]"
        where = [f"{gate.sigma:g}"]
        if with_time:
            time_s = gate.time_s
            where += [
                "" if time_s is None else format_time(time_s),
                escape(gate.compensation or ""),
            ]
        table.add_row(
            escape(gate.metric),
            *where,
            _percent(gate.value),
            _percent(gate.threshold),
            verdict,
        )
    return table


def report_renderable(report: AuditReport) -> RenderableType:
    """The audit table, followed by the gates table when the report has gates."""
    if not report.gates:
        return audit_table(report)
    return Group(audit_table(report), gates_table(report))
