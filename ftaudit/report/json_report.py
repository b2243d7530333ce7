"""JSON report: ``AuditReport.to_dict()`` as strict JSON (NaN/inf become null); schema in docs/."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ftaudit.fileio import atomic_write_text
from ftaudit.report._registry import register_writer
from ftaudit.results import AuditReport


def to_json_compatible(value: Any) -> Any:
    """Recursively turn numpy scalars/arrays and tuples into plain JSON types; non-finite -> None.

    NaN and Infinity are not JSON; strict parsers (jq, JavaScript) reject them, so they become null.
    """
    if isinstance(value, dict):
        return {str(key): to_json_compatible(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_compatible(item) for item in value]
    if isinstance(value, np.ndarray):
        return [to_json_compatible(item) for item in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report_json(report: AuditReport) -> str:
    """The report as indented JSON text (ends with a newline); non-finite floats become null."""
    payload = to_json_compatible(report.to_dict())
    # allow_nan=False turns any non-finite float the cleaning missed into an error, not bad JSON.
    return json.dumps(payload, indent=2, allow_nan=False) + "\n"


@register_writer("json")
def write_json(report: AuditReport, path: Path) -> None:
    """Full report as JSON (provenance, per-sigma statistics, gates); schema in docs/."""
    atomic_write_text(Path(path), report_json(report))
