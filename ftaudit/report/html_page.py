"""Building blocks for self-contained HTML reports: page shell, tables, key/value lists, SVG chart.

Everything is plain strings with no external reference of any kind (no scripts, fonts, style
sheets or images by URL); the page also carries a Content-Security-Policy that forbids the
browser to fetch anything, so a report opened from a CI artifact stays inert and offline.
Every value is escaped unless it is wrapped in :class:`Raw` (HTML this module built itself).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Inline style sheet; system fonts only (a web font would be a network reference).
STYLE = """
:root { --fg: #1d232b; --muted: #5b6470; --line: #d9dee4; --stripe: #f5f7f9; --pass: #17703a;
  --pass-bg: #e3f4e8; --fail: #b42318; --fail-bg: #fde8e6; --none-bg: #eef1f4; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.45;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 32px 40px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px;
  border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em; }
p.subtitle { margin: 0 0 18px; color: var(--muted); }
.verdict { padding: 12px 16px; border-radius: 8px; font-weight: 600; font-size: 17px;
  margin: 0 0 18px; border-left: 6px solid; }
.verdict.pass { background: var(--pass-bg); color: var(--pass); }
.verdict.fail { background: var(--fail-bg); color: var(--fail); }
.verdict.none { background: var(--none-bg); color: var(--muted); border-color: #9aa4af; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 0 0 8px; }
.card { flex: 1 1 150px; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.card .label { color: var(--muted); font-size: 13px; }
.card .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { background: var(--stripe); font-weight: 600; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fafbfc; }
table.compact { width: auto; min-width: 50%; }
td.num, th.num { text-align: right; white-space: nowrap; }
table.kv th { width: 210px; background: none; color: var(--muted); font-weight: 500; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
  font-size: 13px; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; font-size: 13px;
  font-weight: 600; }
.badge.pass { background: var(--pass-bg); color: var(--pass); }
.badge.fail { background: var(--fail-bg); color: var(--fail); }
.chart { border: 1px solid var(--line); border-radius: 8px; padding: 8px 8px 4px; }
.chart svg { display: block; width: 100%; height: auto; }
.legend { display: flex; flex-wrap: wrap; gap: 18px; margin: 8px 4px 0; font-size: 14px; }
.legend span.swatch { display: inline-block; width: 22px; height: 4px; margin-right: 6px;
  vertical-align: middle; border-radius: 2px; }
.legend span.swatch.dashed { height: 0; border-top: 2px dashed #6b7480; background: none; }
.legend span.swatch.dotted { height: 0; border-top: 2px dotted #6b7480; background: none; }
.legend span.swatch.line-dashed { height: 0; border-top: 3px dashed #1d232b; background: none; }
.legend span.swatch.line-solid { height: 0; border-top: 3px solid #1d232b; background: none; }
.charts2 { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.note { color: var(--muted); font-size: 13px; margin: 6px 0 0; }
footer { margin-top: 36px; color: var(--muted); font-size: 13px; }
@media print { main { padding: 0; } .chart, .card { break-inside: avoid; } }
"""

#: The browser may fetch nothing at all; inline styles and data: images only.
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


class Raw(str):
    """A string that is already HTML built by this package: inserted without escaping."""


def esc(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute; :class:`Raw` passes through."""
    if isinstance(value, Raw):
        return value
    return html.escape(str(value), quote=True)


def tag(name: str, content: Any = "", **attributes: Any) -> Raw:
    """``<name attr="...">content</name>`` with escaped attributes and content."""
    attrs = "".join(
        f' {key.rstrip("_").replace("_", "-")}="{esc(value)}"'
        for key, value in attributes.items()
        if value is not None
    )
    return Raw(f"<{name}{attrs}>{esc(content)}</{name}>")


def join(parts: Iterable[Any], separator: str = "\n") -> Raw:
    """Concatenate parts, escaping any that are not already :class:`Raw`."""
    return Raw(separator.join(esc(part) for part in parts))


def html_table(
    headers: Sequence[Any],
    rows: Iterable[Sequence[Any]],
    *,
    numeric: Sequence[int] = (),
    css_class: str | None = None,
) -> Raw:
    """A table; columns whose index is in ``numeric`` are right-aligned."""
    numeric_columns = set(numeric)

    def cell(name: str, index: int, value: Any) -> Raw:
        return tag(name, value, class_="num" if index in numeric_columns else None)

    head = tag("tr", join(cell("th", i, h) for i, h in enumerate(headers)))
    body = join(tag("tr", join(cell("td", i, v) for i, v in enumerate(row))) for row in rows)
    return tag("table", join([tag("thead", head), tag("tbody", body)]), class_=css_class)


def plain_value(value: Any) -> str:
    """A JSON-like value as short readable text: None -> '—', lists joined, dicts as JSON."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.10g}"
    if isinstance(value, list | tuple):
        return ", ".join(plain_value(item) for item in value) if value else "—"
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=False, default=str)
    return str(value)


def key_value_table(items: Mapping[str, Any], *, monospace: Sequence[str] = ()) -> Raw:
    """A two-column table of labels and values; keys in ``monospace`` are shown as code."""
    rows = []
    for key, value in items.items():
        text = value if isinstance(value, Raw) else plain_value(value)
        shown = tag("code", text) if key in monospace else text
        rows.append(tag("tr", join([tag("th", key), tag("td", shown)])))
    return tag("table", tag("tbody", join(rows)), class_="kv")


def report_page(*, title: str, body: Any, version: Any) -> str:
    """An ftaudit report page: ``body``, the self-contained footer, and the document around it."""
    footer = tag(
        "footer",
        f"Generated by ftaudit {version}. This file is self-contained: it loads nothing from "
        "the network.",
    )
    return html_document(title=title, body=join([body, footer]), generator=f"ftaudit {version}")


def html_document(*, title: str, body: Any, generator: str) -> str:
    """A complete HTML5 page: inline CSS, CSP meta, ``body`` inside <main>."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CONTENT_SECURITY_POLICY)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="{esc(generator)}">\n'
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<main>\n{esc(body)}\n</main>\n</body>\n</html>\n"
    )


# --- SVG line chart ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChartSeries:
    """One line with an optional interval band; None marks a missing (non-finite) value."""

    label: str
    color: str
    values: Sequence[float | None]
    low: Sequence[float | None] | None = None
    high: Sequence[float | None] | None = None
    dashed: bool = False  # e.g. drift rows without compensation


def nice_ticks(low: float, high: float, *, target: int = 6) -> list[float]:
    """Round tick positions (1, 2 or 5 times a power of ten) covering [low, high]."""
    span = high - low
    if not span > 0:
        return [low]
    raw_step = span / max(target - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw_step)
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def line_chart_svg(
    *,
    x: Sequence[float],
    series: Sequence[ChartSeries],
    reference: float | None = None,
    x_label: str,
    y_label: str,
    title: str,
    y_floor: float = 0.0,
    y_ceiling: float = 1.0,
    y_percent: bool = True,
    width: int = 760,
    height: int = 400,
    x_ticks: Sequence[tuple[float, str]] | None = None,
    x_names: Sequence[str] | None = None,
    reference_dash: str = "6 4",
) -> Raw:
    """An inline SVG chart of ``series`` against ``x``: lines, markers with tooltips, bands.

    The y axis starts at the nearest tenth below the lowest value shown (not below
    ``y_floor``) and ends at ``y_ceiling``; a single x value gets error bars instead of bands.
    ``x_ticks`` (position, label) replace the numeric ticks (e.g. 1 s, 1 h, 1 d, 1 y on a log
    time axis) and ``x_names`` name each x value in the tooltips (default ``σ = x``).
    """
    left, right, top, bottom = 64, 22, 16, 52
    plot_w, plot_h = width - left - right, height - top - bottom

    shown: list[float] = [v for s in series for v in (*s.values, *(s.low or ())) if _finite(v)]
    if _finite(reference):
        shown.append(float(reference))  # type: ignore[arg-type]
    y_min = max(y_floor, math.floor(min(shown, default=y_floor) * 10 - 1e-9) / 10)
    y_max = max(y_ceiling, max(shown, default=y_ceiling))
    if y_max - y_min < 0.05:
        y_min = max(y_floor, y_max - 0.1)
    x_values = [float(v) for v in x]
    x_min, x_max = min(x_values, default=0.0), max(x_values, default=1.0)
    if x_max - x_min <= 0:
        pad = max(abs(x_min) * 0.5, 0.05)
        x_min, x_max = x_min - pad, x_max + pad

    def px(value: float) -> float:
        return left + (value - x_min) / (x_max - x_min) * plot_w

    def py(value: float) -> float:
        return top + (y_max - value) / (y_max - y_min) * plot_h

    def y_text(value: float) -> str:
        return f"{100 * value:.4g}" if y_percent else f"{value:.4g}"

    parts: list[Any] = [tag("title", title)]
    # grid and tick labels
    for tick in nice_ticks(y_min, y_max):
        y = py(tick)
        parts.append(
            Raw(
                f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                'stroke="#e3e7eb" stroke-width="1"/>'
            )
        )
        parts.append(
            tag("text", y_text(tick), x=f"{left - 8}", y=f"{y + 4:.1f}", text_anchor="end")
        )
    ticks = (
        x_ticks
        if x_ticks is not None
        else [(t, f"{t:g}") for t in nice_ticks(x_min, x_max, target=7)]
    )
    for tick, tick_label in ticks:
        x_px = px(tick)
        parts.append(
            Raw(
                f'<line x1="{x_px:.1f}" y1="{top}" x2="{x_px:.1f}" y2="{top + plot_h}" '
                'stroke="#eef1f4" stroke-width="1"/>'
            )
        )
        parts.append(
            tag("text", tick_label, x=f"{x_px:.1f}", y=f"{top + plot_h + 18}", text_anchor="middle")
        )
    parts.append(
        Raw(
            f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
            'stroke="#9aa4af" stroke-width="1"/>'
        )
    )
    parts.append(
        tag("text", x_label, x=f"{left + plot_w / 2:.1f}", y=f"{height - 8}", text_anchor="middle")
    )
    parts.append(
        tag(
            "text",
            y_label,
            x="16",
            y=f"{top + plot_h / 2:.1f}",
            text_anchor="middle",
            transform=f"rotate(-90 16 {top + plot_h / 2:.1f})",
        )
    )
    if _finite(reference):
        y = py(float(reference))  # type: ignore[arg-type]
        parts.append(
            Raw(
                f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                f'stroke="#6b7480" stroke-width="1.5" stroke-dasharray="{esc(reference_dash)}"/>'
            )
        )

    for item in series:
        points = [
            (
                x_values[i],
                float(value),
                item.low[i] if item.low is not None else None,
                item.high[i] if item.high is not None else None,
            )
            for i, value in enumerate(item.values)
            if _finite(value)
        ]
        banded = [(xv, lo, hi) for xv, _, lo, hi in points if _finite(lo) and _finite(hi)]
        if len(x_values) > 1 and len(banded) > 1:
            outline = [(px(xv), py(hi)) for xv, _, hi in banded]
            outline += [(px(xv), py(lo)) for xv, lo, _ in reversed(banded)]
            coordinates = " ".join(f"{a:.1f},{b:.1f}" for a, b in outline)
            parts.append(
                Raw(
                    f'<polygon points="{coordinates}" fill="{esc(item.color)}" '
                    'fill-opacity="0.16" stroke="none"/>'
                )
            )
        elif banded:  # one point: a band has no area, draw error bars
            for xv, lo, hi in banded:
                x_px = px(xv)
                parts.append(
                    Raw(
                        f'<path d="M{x_px - 6:.1f},{py(hi):.1f}h12M{x_px:.1f},{py(hi):.1f}'
                        f'V{py(lo):.1f}M{x_px - 6:.1f},{py(lo):.1f}h12" '
                        f'stroke="{esc(item.color)}" stroke-width="1.5" fill="none"/>'
                    )
                )
        if len(points) > 1:
            coordinates = " ".join(f"{px(xv):.1f},{py(v):.1f}" for xv, v, _, _ in points)
            dash = ' stroke-dasharray="7 5"' if item.dashed else ""
            parts.append(
                Raw(
                    f'<polyline points="{coordinates}" fill="none" stroke="{esc(item.color)}" '
                    f'stroke-width="2.5" stroke-linejoin="round"{dash}/>'
                )
            )
        names = {x_values[i]: name for i, name in enumerate(x_names or [])}
        for xv, v, lo, hi in points:
            interval = f" [{y_text(lo)}, {y_text(hi)}]" if _finite(lo) and _finite(hi) else ""
            where = names.get(xv, f"σ = {xv:g}")
            tooltip = f"{item.label}\n{where}: {y_text(v)}{interval}"
            parts.append(
                tag(
                    "circle",
                    tag("title", tooltip),
                    cx=f"{px(xv):.1f}",
                    cy=f"{py(v):.1f}",
                    r="4",
                    fill=item.color,
                    stroke="#fff",
                    stroke_width="1.5",
                )
            )

    return tag(
        "svg",
        join(parts),
        viewBox=f"0 0 {width} {height}",
        role="img",
        font_size="13",
        font_family="system-ui, sans-serif",
        fill="#1d232b",
    )
