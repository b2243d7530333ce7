"""Report writers: a rich table for the terminal, and JSON, CSV, PNG, HTML and JUnit XML files.

File writers are registered by (report kind, format) in ``WRITERS`` (``get_writer("json")`` for
the audit report, ``get_writer("csv", "compare")``); each takes ``(report, path)`` and writes
atomically. Importing this package registers them all. Writing to ``-`` (stdout) is the CLI's
job.
"""

from __future__ import annotations

from ftaudit.report import compare_html, compare_report, sensitivity_html, sensitivity_report
from ftaudit.report._registry import (
    REPORT_KINDS,
    REPORT_WRITERS,
    WRITERS,
    ReportWriter,
    get_writer,
    register_writer,
)
from ftaudit.report.csv_report import CSV_COLUMNS, report_csv, write_csv
from ftaudit.report.html_report import html_from_report_dict, report_html, write_html
from ftaudit.report.json_report import report_json, to_json_compatible, write_json
from ftaudit.report.junit_report import junit_from_report_dict, junit_xml, report_junit, write_junit
from ftaudit.report.plot import write_plot
from ftaudit.report.table import audit_table, gates_table, report_renderable

__all__ = [
    "CSV_COLUMNS",
    "REPORT_KINDS",
    "REPORT_WRITERS",
    "WRITERS",
    "ReportWriter",
    "audit_table",
    "compare_html",
    "compare_report",
    "gates_table",
    "get_writer",
    "html_from_report_dict",
    "junit_from_report_dict",
    "junit_xml",
    "register_writer",
    "report_csv",
    "report_html",
    "report_json",
    "report_junit",
    "report_renderable",
    "sensitivity_html",
    "sensitivity_report",
    "to_json_compatible",
    "write_csv",
    "write_html",
    "write_json",
    "write_junit",
    "write_plot",
]
