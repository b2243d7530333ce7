"""CSV report: one row per sigma, with the noise name and k first so files from runs concatenate."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ftaudit.fileio import atomic_write_text
from ftaudit.report._registry import register_writer
from ftaudit.results import AuditReport

CSV_COLUMNS = (
    "noise",
    "k",
    "sigma",
    "samples",
    "stopped_early",
    "mean",
    "std",
    "mean_low",
    "mean_high",
    "kpp",
    "kpp_low",
    "kpp_high",
    "min",
    "max",
    "drop_mean",
    "drop_kpp",
    "time_s",
    "compensation",
)


def _cell(value: float | None) -> float | str:
    """Floats keep full precision (repr round-trips); a non-finite or unavailable (None) value
    is an empty cell."""
    if value is None:
        return ""
    value = float(value)
    return value if math.isfinite(value) else ""


#: first characters that make a spreadsheet read a cell as a formula (OWASP, CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def text_cell(value: str) -> str:
    """A string cell safe to open in a spreadsheet: NUL dropped, CR/LF made spaces, and a
    leading formula character neutralised by a single quote, as OWASP advises."""
    value = value.replace("\0", "").replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    return "'" + value if value.lstrip(" ").startswith(_FORMULA_START) else value


class SafeCsvWriter:
    """``csv.writer`` whose string cells pass through ``text_cell`` (numbers are kept)."""

    def __init__(self, buffer: io.StringIO) -> None:
        self._writer = csv.writer(buffer, lineterminator="\n")

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.writerow([text_cell(c) if isinstance(c, str) else c for c in row])


def report_csv(report: AuditReport) -> str:
    """The per-sigma table as CSV text with a header row."""
    buffer = io.StringIO()
    writer = SafeCsvWriter(buffer)
    writer.writerow(CSV_COLUMNS)
    noise_name = str(report.noise.get("name", ""))
    for result in report.results:
        s = result.summary
        writer.writerow(
            [
                noise_name,
                _cell(report.k),
                _cell(result.sigma),
                int(s.n),
                "true" if result.stopped_early else "false",
                _cell(s.mean),
                _cell(s.std),
                _cell(s.mean_interval.low),
                _cell(s.mean_interval.high),
                _cell(s.kpp),
                _cell(s.kpp_interval.low),
                _cell(s.kpp_interval.high),
                _cell(s.min),
                _cell(s.max),
                _cell(result.reference_accuracy - s.mean),
                _cell(result.reference_accuracy - s.kpp),
                "" if result.time_s is None else _cell(result.time_s),
                result.compensation or "",
            ]
        )
    return buffer.getvalue()


@register_writer("csv")
def write_csv(report: AuditReport, path: Path) -> None:
    """Per-row statistics as CSV (noise, k, sigma, mean, KPP, intervals, drops, time)."""
    atomic_write_text(Path(path), report_csv(report))
