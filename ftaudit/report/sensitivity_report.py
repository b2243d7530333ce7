"""Renderers of a SensitivityReport: rich table, JSON (docs/sensitivity.schema.json), CSV, bars."""

from __future__ import annotations

import io
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

import numpy as np
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ftaudit._optional import require_matplotlib
from ftaudit.fileio import atomic_write, atomic_write_text
from ftaudit.report._registry import register_writer
from ftaudit.report.compare_report import payload_json
from ftaudit.report.csv_report import SafeCsvWriter, _cell
from ftaudit.report.plot import _plain_text
from ftaudit.report.table import (
    _COMPENSATION_LABELS,
    _noise_label,
    _percent,
    effects_caption_lines,
)
from ftaudit.text import escape
from ftaudit.units import format_time

if TYPE_CHECKING:
    from ftaudit.results.sensitivity import SensitivityReport

SENSITIVITY_CSV_COLUMNS = (
    "rank",
    "layer",
    "index",
    "op",
    "params",
    "sigma",
    "kpp_only",
    "mean_only",
    "kpp_drop",
    "kpp_all_but",
    "mean_all_but",
    "kpp_recovered",
    "time_s",
    "compensation",
)


def _model_name(report: SensitivityReport) -> str:
    return PurePath(str(report.model.get("path", "?"))).name


def _sigmas_text(sigmas: list[float]) -> str:
    return ", ".join(f"{s:g}" for s in sigmas)


def _times(report: SensitivityReport) -> list[float]:
    """The drift times of the report's rows, in order; empty without drift."""
    return list(dict.fromkeys(p.time_s for p in report.rows if p.time_s is not None))


def _conditions_text(report: SensitivityReport) -> str:
    """'sigma 0.3, 0.5', plus ' · t 1h, 1y' with drift."""
    text = f"sigma {_sigmas_text(report.sigmas)}"
    times = _times(report)
    if times:
        text += " · t " + ", ".join(format_time(t) for t in times)
    return text


def sensitivity_table(report: SensitivityReport) -> Table:
    """One row per analog layer in rank order; values averaged over the report rows (in %)."""
    title = (
        f"{escape(_model_name(report))}: layer sensitivity\n"
        f"noise {escape(_noise_label(report.noise))} · {_conditions_text(report)} · "
        f"{report.samples} samples · k={report.k:g}"
    )
    clean = f"clean accuracy {_percent(report.clean_accuracy)}%"
    if _times(report):  # the all-analog KPP per row is in its own labelled table
        caption = [clean]
    else:
        kpp_all = ", ".join(_percent(p.kpp) for p in report.all_layers)
        caption = [f"{clean}; all analog: KPP {kpp_all}%"]
    caption += [
        "only: KPP, only this layer perturbed",
        "all but: KPP, this layer exact",
        "drop = clean - only; gain = all but - all analog",
    ]
    caption.extend(effects_caption_lines(report.device_effects))
    if _times(report):
        caption.append(f"averages over the {len(report.rows)} (sigma, t, comp) rows")
        caption.append("(per row: --json, --csv)")
    elif len(report.rows) > 1:
        caption.append("averages over sigma (per sigma: --json, --csv)")
    if report.always_digital:
        caption.append(f"{len(report.always_digital)} layer(s) not selected: always exact")
    table = Table(
        title=title,
        caption="\n".join(caption),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("layer", overflow="fold", max_width=30)
    for header in ("params", "only", "drop", "all but", "gain"):
        table.add_column(header, justify="right", no_wrap=True)
    for layer in report.layers:
        table.add_row(
            str(layer.rank),
            escape(layer.name),
            f"{layer.params:,}",
            _percent(float(np.mean([p.kpp for p in layer.only]))),
            _percent(layer.score),
            _percent(float(np.mean([p.kpp for p in layer.all_but]))),
            _percent(layer.recovered_score),
        )
    return table


def rows_table(report: SensitivityReport) -> Table:
    """All analog layers perturbed, one line per (sigma, time, compensation) row (in %)."""
    table = Table(
        title="all analog, per row",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for header in ("sigma", "t", "comp", "mean", "KPP"):
        table.add_column(header, justify="right", no_wrap=True)
    for point in report.rows:
        table.add_row(
            f"{point.sigma:g}",
            "" if point.time_s is None else format_time(point.time_s),
            _COMPENSATION_LABELS.get(point.compensation or "", ""),
            _percent(point.mean),
            _percent(point.kpp),
        )
    return table


def sensitivity_renderable(report: SensitivityReport) -> RenderableType:
    """The ranking table, with drift the all-analog rows, then the keep-digital answer when a
    target KPP was given."""
    parts: list[RenderableType] = [sensitivity_table(report)]
    if _times(report):
        parts.append(rows_table(report))
    if report.target is not None:
        parts.append(Text(report.target.message()))
    return parts[0] if len(parts) == 1 else Group(*parts)


def sensitivity_csv(report: SensitivityReport) -> str:
    """One row per (layer, report row), layers in rank order; accuracies as fractions; time_s
    and compensation are empty without drift."""
    buffer = io.StringIO()
    writer = SafeCsvWriter(buffer)
    writer.writerow(SENSITIVITY_CSV_COLUMNS)
    for layer in report.layers:
        for j, only in enumerate(layer.only):
            rest = layer.all_but[j]
            writer.writerow(
                [
                    layer.rank,
                    layer.name,
                    layer.index,
                    layer.op,
                    layer.params,
                    _cell(only.sigma),
                    _cell(only.kpp),
                    _cell(only.mean),
                    _cell(layer.kpp_drop[j]),
                    _cell(rest.kpp),
                    _cell(rest.mean),
                    _cell(layer.kpp_recovered[j]),
                    "" if only.time_s is None else _cell(only.time_s),
                    only.compensation or "",
                ]
            )
    return buffer.getvalue()


@register_writer("json", kind="sensitivity")
def write_sensitivity_json(report: SensitivityReport, path: Path) -> None:
    """The sensitivity report as JSON; schema in docs/sensitivity.schema.json."""
    atomic_write_text(Path(path), payload_json(report.to_dict()))


@register_writer("csv", kind="sensitivity")
def write_sensitivity_csv(report: SensitivityReport, path: Path) -> None:
    """Per-layer, per-row sensitivity as CSV."""
    atomic_write_text(Path(path), sensitivity_csv(report))


@register_writer("plot", kind="sensitivity")
def write_sensitivity_plot(report: SensitivityReport, path: Path) -> None:
    """PNG bar chart: per layer (rank order), KPP drop alone and KPP gained by keeping it exact."""
    plt = require_matplotlib("plots")
    layers = report.layers
    positions = np.arange(len(layers))
    drops = 100 * np.array([layer.score for layer in layers])
    gains = 100 * np.array([layer.recovered_score for layer in layers])
    height = 0.38
    fig, ax = plt.subplots(figsize=(7.0, 1.2 + 0.45 * max(len(layers), 2)), layout="constrained")
    try:
        ax.barh(
            positions - height / 2,
            drops,
            height,
            color="tab:red",
            label="KPP drop, only this layer perturbed",
        )
        ax.barh(
            positions + height / 2,
            gains,
            height,
            color="tab:green",
            label="KPP gained, this layer kept exact",
        )
        ax.set_yticks(positions, [_plain_text(layer.name) for layer in layers])
        ax.invert_yaxis()  # rank 1 on top
        ax.axvline(0, color="0.3", linewidth=0.8)
        suffix = " (mean over the rows)" if len(report.rows) > 1 else ""
        ax.set_xlabel(f"percentage points{suffix}")
        ax.set_title(
            _plain_text(
                f"{_model_name(report)} · {report.noise.get('name', '?')} noise · "
                f"{_conditions_text(report)} · k={report.k:g}"
            )
        )
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="best")
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    finally:
        plt.close(fig)
