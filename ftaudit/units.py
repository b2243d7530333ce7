"""Durations and fault fractions as users write them (``--time 1s,1h,1d,1y``,
``--stuck-at 0.01,0.005``) and as reports print them: pure functions, no numpy, shared by the
config file, the CLI, the device effects and the report writers."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from ftaudit.errors import UserError

TIME_UNITS = {
    "s": 1.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
    "y": 365 * 86400.0,
}
_TIME_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-z]*)\s*$")
_TIME_HINT = "use e.g. --time 1s,1h,1d,1y (units s, min, h, d, w, y; a plain number is seconds)"


def parse_time(text: str) -> float:
    """Seconds from '20', '20s', '1.5h', '1d', '1w', '1y' (y = 365 days)."""
    match = _TIME_PATTERN.match(str(text).lower())
    if text.strip().startswith("-"):
        raise UserError(f"time '{text.strip()}' is negative", hint=_TIME_HINT)
    if match is None or match.group(2) not in ("", *TIME_UNITS):
        raise UserError(f"time '{str(text).strip()}' is not a duration", hint=_TIME_HINT)
    seconds = float(match.group(1)) * TIME_UNITS.get(match.group(2), 1.0)
    if not math.isfinite(seconds):
        raise UserError(f"time '{text.strip()}' is not finite", hint=_TIME_HINT)
    return seconds


def parse_times(spec: str | float | Sequence[Any]) -> tuple[float, ...]:
    """Times after programming from '1s,1h,1d,1y', a number of seconds, or a list of either."""
    if isinstance(spec, bool):
        raise UserError(f"time must be a duration, got {spec!r}", hint=_TIME_HINT)
    if isinstance(spec, (int, float)):
        return (parse_time(repr(float(spec))),)
    if isinstance(spec, (list, tuple)):
        return tuple(t for item in spec for t in parse_times(item))
    values = tuple(parse_time(part) for part in str(spec).split(",") if part.strip())
    if not values:
        raise UserError("--time is empty", hint=_TIME_HINT)
    return values


def format_time(seconds: float) -> str:
    """The shortest exact label of a time: 1y, 1d, 2h, 20s (seconds otherwise)."""
    for unit in ("y", "w", "d", "h", "min"):
        count = seconds / TIME_UNITS[unit]
        if count >= 1 and count == round(count):
            return f"{round(count)}{unit}"
    return f"{seconds:g}s"


def parse_stuck_at(spec: str | Sequence[Any]) -> tuple[float, float]:
    """(P_LOW, P_HIGH) from 'P_LOW,P_HIGH' or a two-number list."""
    items = spec if isinstance(spec, (list, tuple)) else str(spec).split(",")
    try:
        values = tuple(float(v) for v in items if not isinstance(v, bool))
    except (TypeError, ValueError):
        values = ()
    if len(values) != 2 or len(items) != 2:
        raise UserError(
            f"--stuck-at needs two fractions P_LOW,P_HIGH, got {spec!r}",
            hint="e.g. --stuck-at 0.01,0.005 (1% stuck at the lowest, 0.5% at the highest)",
        )
    return values[0], values[1]
