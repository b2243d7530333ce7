"""The report writer registry: one writer per (report kind, format), each with a docstring (its
help text), chosen by the CLI, with a 'did you mean' for an unknown format."""

from __future__ import annotations

import pytest

from ftaudit.errors import UserError
from ftaudit.report import REPORT_KINDS, REPORT_WRITERS, WRITERS, get_writer, register_writer
from ftaudit.report.compare_html import write_compare_html
from ftaudit.report.sensitivity_html import write_sensitivity_junit
from ftaudit.report.sensitivity_report import write_sensitivity_plot


def test_every_kind_has_its_formats():
    formats = {kind: {fmt for k, fmt in WRITERS if k == kind} for kind in REPORT_KINDS}
    assert formats == {
        "audit": {"json", "csv", "plot", "html", "junit"},
        "compare": {"json", "csv", "html", "junit"},
        "sensitivity": {"json", "csv", "plot", "html", "junit"},
    }


def test_every_writer_has_a_docstring():
    for key, writer in WRITERS.items():
        assert (writer.__doc__ or "").strip(), key


def test_lookup_by_kind_and_format():
    assert get_writer("html", "compare") is write_compare_html
    assert get_writer("plot", "sensitivity") is write_sensitivity_plot
    assert get_writer("junit", "sensitivity") is write_sensitivity_junit
    assert {fmt: w for (kind, fmt), w in WRITERS.items() if kind == "audit"} == REPORT_WRITERS


def test_unknown_format_suggests_the_kinds_own():
    with pytest.raises(UserError, match="did you mean 'html'") as info:
        get_writer("htm", "compare")
    assert "plot" not in info.value.hint  # compare writes no plot


def test_registering_twice_or_without_docstring_is_refused():
    def undocumented(report, path):
        pass

    with pytest.raises(ValueError, match="registered twice"):
        register_writer("json", kind="compare")(lambda report, path: None)
    with pytest.raises(ValueError, match="docstring"):
        register_writer("yaml", kind="compare")(undocumented)
    with pytest.raises(ValueError, match="unknown report kind"):
        register_writer("json", kind="harden")
    assert ("compare", "yaml") not in WRITERS
