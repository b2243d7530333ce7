"""Row charts for the compare and sensitivity HTML reports, as inline SVG (no scripts, no
network): a dot-and-interval chart (one row per report row, e.g. a paired difference with its
95% interval) and a grouped horizontal bar chart (one row per layer).

Rows instead of an x axis of sigma: drift rows (sigma, time, compensation) and layer names are
categories, and a row per category stays readable for any number of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ftaudit.report.html_page import Raw, esc, join, nice_ticks, tag

ROW_HEIGHT = 34
#: average width of a 13px system-ui character, to size the row-label column
CHAR_WIDTH = 7.4


@dataclass(frozen=True)
class Marker:
    """One series of a row chart: its legend label and colour."""

    label: str
    color: str


@dataclass(frozen=True)
class ChartLine:
    """A vertical line across a row chart at ``value`` (e.g. zero, or a gate's tolerance)."""

    value: float
    label: str
    color: str = "#6b7480"
    dashed: bool = False


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _frame(
    *,
    labels: Sequence[str],
    values: Sequence[float],
    lines: Sequence[ChartLine],
    x_label: str,
    title: str,
    width: int,
    include_zero: bool,
) -> tuple[list[Raw], float, float, int, int]:
    """Axis, grid, row labels and lines; returns the parts, the x scale and the plot size."""
    right, top, bottom = 24, 14, 50
    label_width = int(min(width / 2, max(90, CHAR_WIDTH * max(map(len, labels), default=0) + 22)))
    plot_w = width - label_width - right
    plot_h = ROW_HEIGHT * max(len(labels), 1)
    shown = [v for v in values if _finite(v)] + [line.value for line in lines]
    if include_zero:
        shown.append(0.0)
    low, high = min(shown, default=0.0), max(shown, default=1.0)
    if high - low <= 0:
        low, high = low - 1.0, high + 1.0
    pad = 0.06 * (high - low)
    low, high = low - pad, high + pad
    scale = plot_w / (high - low)
    offset = label_width - low * scale
    height = top + plot_h + bottom
    parts: list[Raw] = [tag("title", title)]
    for tick in nice_ticks(low, high, target=7):
        x = offset + tick * scale
        parts.append(
            Raw(
                f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" '
                'stroke="#e3e7eb" stroke-width="1"/>'
            )
        )
        parts.append(
            tag("text", f"{tick:g}", x=f"{x:.1f}", y=f"{top + plot_h + 18}", text_anchor="middle")
        )
    for index, label in enumerate(labels):
        y = top + ROW_HEIGHT * index + ROW_HEIGHT / 2
        if index % 2:
            parts.append(
                Raw(
                    f'<rect x="{label_width}" y="{top + ROW_HEIGHT * index}" width="{plot_w}" '
                    f'height="{ROW_HEIGHT}" fill="#f7f8fa"/>'
                )
            )
        parts.append(
            tag("text", label, x=f"{label_width - 10}", y=f"{y + 4:.1f}", text_anchor="end")
        )
    parts.append(
        Raw(
            f'<rect x="{label_width}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
            'stroke="#9aa4af" stroke-width="1"/>'
        )
    )
    for line in lines:
        x = offset + line.value * scale
        parts.append(
            tag(
                "line",
                tag("title", line.label),
                x1=f"{x:.1f}",
                y1=f"{top}",
                x2=f"{x:.1f}",
                y2=f"{top + plot_h}",
                stroke=line.color,
                stroke_width="2",
                stroke_dasharray="6 4" if line.dashed else None,
            )
        )
    parts.append(
        tag(
            "text",
            x_label,
            x=f"{label_width + plot_w / 2:.1f}",
            y=f"{height - 10}",
            text_anchor="middle",
        )
    )
    return parts, offset, scale, width, height


def _svg(parts: Sequence[Raw], width: int, height: int) -> Raw:
    return tag(
        "svg",
        join(parts),
        viewBox=f"0 0 {width} {height}",
        role="img",
        font_size="13",
        font_family="system-ui, sans-serif",
        fill="#1d232b",
    )


def interval_rows_svg(
    *,
    labels: Sequence[str],
    markers: Sequence[Marker],
    points: Sequence[Sequence[tuple[float, float | None, float | None] | None]],
    lines: Sequence[ChartLine] = (),
    x_label: str,
    title: str,
    width: int = 820,
) -> Raw:
    """One row per label; per marker a dot at its value with a whisker over [low, high].

    ``points[m][r]`` is marker m's (value, low, high) at row r, None when missing; a missing
    low or high draws the dot alone.
    """
    values = [
        v
        for series in points
        for point in series
        if point is not None
        for v in point
        if v is not None
    ]
    parts, offset, scale, width, height = _frame(
        labels=labels,
        values=values,
        lines=lines,
        x_label=x_label,
        title=title,
        width=width,
        include_zero=True,
    )
    top = 14
    spread = 8 if len(markers) > 1 else 0
    for m, (marker, series) in enumerate(zip(markers, points, strict=True)):
        dy = (m - (len(markers) - 1) / 2) * spread
        for r, point in enumerate(series):
            if point is None or not _finite(point[0]):
                continue
            value, low, high = point
            y = top + ROW_HEIGHT * r + ROW_HEIGHT / 2 + dy
            x = offset + value * scale
            interval = ""
            if _finite(low) and _finite(high):
                x_low, x_high = offset + low * scale, offset + high * scale  # type: ignore[operator]
                parts.append(
                    Raw(
                        f'<path d="M{x_low:.1f},{y - 4:.1f}v8M{x_low:.1f},{y:.1f}H{x_high:.1f}'
                        f'M{x_high:.1f},{y - 4:.1f}v8" stroke="{esc(marker.color)}" '
                        'stroke-width="2" fill="none"/>'
                    )
                )
                interval = f" [{low:+.2f}, {high:+.2f}]"
            parts.append(
                tag(
                    "circle",
                    tag("title", f"{marker.label}, {labels[r]}: {value:+.2f}{interval}"),
                    cx=f"{x:.1f}",
                    cy=f"{y:.1f}",
                    r="5",
                    fill=marker.color,
                    stroke="#fff",
                    stroke_width="1.5",
                )
            )
    return _svg(parts, width, height)


def bar_rows_svg(
    *,
    labels: Sequence[str],
    markers: Sequence[Marker],
    values: Sequence[Sequence[float | None]],
    x_label: str,
    title: str,
    lines: Sequence[ChartLine] = (),
    width: int = 820,
) -> Raw:
    """One row per label, one horizontal bar per marker from 0 to its value (``values[m][r]``),
    the value printed at the bar's end."""
    flat = [v for series in values for v in series if v is not None]
    parts, offset, scale, width, height = _frame(
        labels=labels,
        values=flat,
        lines=lines,
        x_label=x_label,
        title=title,
        width=width,
        include_zero=True,
    )
    top = 14
    bar_h = (ROW_HEIGHT - 10) / max(len(markers), 1)
    zero = offset
    for m, (marker, series) in enumerate(zip(markers, values, strict=True)):
        for r, value in enumerate(series):
            if not _finite(value):
                continue
            y = top + ROW_HEIGHT * r + 5 + m * bar_h
            x = offset + value * scale  # type: ignore[operator]
            parts.append(
                tag(
                    "rect",
                    tag("title", f"{marker.label}, {labels[r]}: {value:.2f}"),
                    x=f"{min(x, zero):.1f}",
                    y=f"{y:.1f}",
                    width=f"{max(abs(x - zero), 1.0):.1f}",
                    height=f"{bar_h - 2:.1f}",
                    fill=marker.color,
                )
            )
            positive = value >= 0  # type: ignore[operator]
            text_x = max(x, zero) + 4 if positive else min(x, zero) - 4
            parts.append(
                tag(
                    "text",
                    f"{value:.2f}",
                    x=f"{text_x:.1f}",
                    y=f"{y + bar_h / 2 + 3:.1f}",
                    text_anchor="start" if positive else "end",
                    font_size="11",
                )
            )
    parts.append(
        Raw(
            f'<line x1="{zero:.1f}" y1="{top}" x2="{zero:.1f}" '
            f'y2="{top + ROW_HEIGHT * max(len(labels), 1)}" stroke="#6b7480" stroke-width="1.5"/>'
        )
    )
    return _svg(parts, width, height)


def legend(markers: Sequence[Marker], lines: Sequence[ChartLine] = ()) -> Raw:
    """The legend under a chart: a swatch per marker, a dashed or solid mark per line."""
    items = [
        tag(
            "span",
            join([tag("span", "", class_="swatch", style=f"background:{m.color}"), m.label], ""),
        )
        for m in markers
    ]
    items += [
        tag(
            "span",
            join(
                [
                    tag(
                        "span",
                        "",
                        class_="swatch dashed" if line.dashed else "swatch",
                        style=(
                            f"border-top-color:{line.color}"
                            if line.dashed
                            else f"background:{line.color}"
                        ),
                    ),
                    line.label,
                ],
                "",
            ),
        )
        for line in lines
    ]
    return tag("div", join(items), class_="legend")
