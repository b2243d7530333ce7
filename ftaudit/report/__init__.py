"""Report writers: a rich table for the terminal, and JSON, CSV and PNG files.

File writers are registered by name in ``REPORT_WRITERS`` (``get_writer("json")``); each takes
``(report, path)`` and writes atomically. Writing to ``-`` (stdout) is the CLI's job.
"""

from __future__ import annotations

from ftaudit.report._registry import REPORT_WRITERS, ReportWriter, get_writer, register_writer
from ftaudit.report.csv_report import CSV_COLUMNS, report_csv, write_csv
from ftaudit.report.json_report import report_json, to_json_compatible, write_json
from ftaudit.report.plot import write_plot
from ftaudit.report.table import audit_table, gates_table, report_renderable

__all__ = [
    "CSV_COLUMNS",
    "REPORT_WRITERS",
    "ReportWriter",
    "audit_table",
    "gates_table",
    "get_writer",
    "register_writer",
    "report_csv",
    "report_json",
    "report_renderable",
    "to_json_compatible",
    "write_csv",
    "write_json",
    "write_plot",
]
