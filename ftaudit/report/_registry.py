"""Registry of report file writers, looked up by name (``--report json=out.json`` and the like)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

from ftaudit.errors import UserError
from ftaudit.results import AuditReport

ReportWriter = Callable[[AuditReport, Path], None]

#: name -> writer; each writer module registers itself where it is defined.
REPORT_WRITERS: dict[str, ReportWriter] = {}


def register_writer(name: str) -> Callable[[ReportWriter], ReportWriter]:
    """Decorator that files ``writer(report, path)`` under ``name``; its docstring is its help."""

    def decorate(writer: ReportWriter) -> ReportWriter:
        if name in REPORT_WRITERS:
            raise ValueError(f"report writer {name!r} is registered twice")
        if not (writer.__doc__ or "").strip():
            raise ValueError(f"report writer {name!r} needs a docstring: it is the help text")
        REPORT_WRITERS[name] = writer
        return writer

    return decorate


def get_writer(name: str) -> ReportWriter:
    """The writer registered as ``name``, or a UserError listing the names (with a suggestion)."""
    try:
        return REPORT_WRITERS[name]
    except KeyError:
        known = sorted(REPORT_WRITERS)
        close = difflib.get_close_matches(name, known, n=1)
        suggestion = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(
            f"unknown report format {name!r}",
            hint=f"{suggestion}choose one of: {', '.join(known)}",
        ) from None
