"""Registry of report file writers, looked up by (report kind, format): ``("audit", "json")``,
``("compare", "csv")``, ``("sensitivity", "plot")``. Each writer module registers its writers
where they are defined; the CLI picks the writers of a command's outputs from here."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftaudit.errors import UserError

#: ``writer(report, path)``: writes one file atomically
ReportWriter = Callable[[Any, Path], None]

#: the report kinds, one per command that writes report files
REPORT_KINDS = ("audit", "compare", "sensitivity")

#: (kind, format) -> writer
WRITERS: dict[tuple[str, str], ReportWriter] = {}

#: format -> writer of the audit (``ftaudit eval``) report, the default kind
REPORT_WRITERS: dict[str, ReportWriter] = {}


def register_writer(name: str, kind: str = "audit") -> Callable[[ReportWriter], ReportWriter]:
    """Decorator that files ``writer(report, path)`` under (``kind``, ``name``); its docstring
    is its help."""
    if kind not in REPORT_KINDS:
        raise ValueError(f"unknown report kind {kind!r}; one of {REPORT_KINDS}")

    def decorate(writer: ReportWriter) -> ReportWriter:
        if (kind, name) in WRITERS:
            raise ValueError(f"{kind} report writer {name!r} is registered twice")
        if not (writer.__doc__ or "").strip():
            raise ValueError(f"report writer {name!r} needs a docstring: it is the help text")
        WRITERS[kind, name] = writer
        if kind == "audit":
            REPORT_WRITERS[name] = writer
        return writer

    return decorate


def get_writer(name: str, kind: str = "audit") -> ReportWriter:
    """The ``kind`` report's writer for format ``name``, or a UserError listing the formats
    (with a suggestion)."""
    try:
        return WRITERS[kind, name]
    except KeyError:
        known = sorted(fmt for k, fmt in WRITERS if k == kind)
        close = difflib.get_close_matches(name, known, n=1)
        suggestion = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(
            f"unknown report format {name!r}",
            hint=f"{suggestion}choose one of: {', '.join(known)}",
        ) from None
