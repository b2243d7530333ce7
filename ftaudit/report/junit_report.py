"""JUnit XML: one test case per gate (metric x sigma), so CI systems list gates as tests.

A failed gate is a ``<failure>``; a run without gates is one passing case, ``audit completed``,
so the file always holds at least one test and a CI test-report step never sees an empty suite.
Provenance goes into ``<properties>`` and the per-sigma table into ``<system-out>``.
"""

from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

from ftaudit.fileio import atomic_write_text
from ftaudit.report._registry import register_writer
from ftaudit.report.html_report import noise_label
from ftaudit.report.json_report import to_json_compatible
from ftaudit.results import AuditReport

#: Name of the single test case written when no gate was set.
NO_GATES_CASE = "audit completed"

# Characters XML 1.0 cannot carry even escaped (most C0 controls, lone surrogates, U+FFFE/F).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: Any) -> str:
    """``str(value)`` with characters XML 1.0 cannot represent replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", str(value))


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.10g}"


def _where(gate: Mapping[str, Any], sep: str = " ") -> str:
    """``sigma 0.3`` (``sep`` "=": ``sigma=0.3``), plus the time and compensation of a drift row."""
    where = f"sigma{sep}{_number(gate['sigma'])}"
    if gate.get("time_s") is not None:
        from ftaudit.units import format_time

        where += f", t={format_time(gate['time_s'])}, compensation={gate.get('compensation')}"
    return where


def gate_case_name(gate: Mapping[str, Any]) -> str:
    """``kpp >= 0.8 at sigma 0.3``: what the gate demands, unique per metric and row."""
    return f"{gate['metric']} >= {_number(gate['threshold'])} at {_where(gate)}"


def gate_failure_message(gate: Mapping[str, Any]) -> str:
    """One line, as the CLI prints it for a failed gate."""
    value = gate.get("value")
    shown = "n/a" if value is None else f"{value:.4f}"
    threshold = gate["threshold"]
    return (
        f"{gate['metric']} at {_where(gate, '=')} is {shown}, below the threshold {threshold:.4f}"
    )


def junit_xml(
    *,
    suite_name: str,
    classname: str,
    gates: Sequence[Mapping[str, Any]],
    properties: Mapping[str, Any] | None = None,
    elapsed_s: float | None = None,
    system_out: str | None = None,
) -> str:
    """JUnit XML text for gate dicts (``metric``, ``sigma``, ``value``, ``threshold``, ``passed``
    and an optional ``details`` text shown with a failure); no gates give one passing case."""
    failures = sum(1 for gate in gates if not gate.get("passed"))
    tests = max(len(gates), 1)
    time = f"{elapsed_s:.3f}" if elapsed_s is not None else "0"
    counts = {"tests": str(tests), "failures": str(failures), "errors": "0", "skipped": "0"}

    root = ET.Element("testsuites", {"name": "ftaudit", **counts, "time": time})
    suite = ET.SubElement(root, "testsuite", {"name": xml_text(suite_name), **counts, "time": time})
    if properties:
        props = ET.SubElement(suite, "properties")
        for key, value in properties.items():
            if value is not None:
                ET.SubElement(props, "property", {"name": xml_text(key), "value": xml_text(value)})
    if not gates:
        ET.SubElement(
            suite,
            "testcase",
            {"classname": xml_text(classname), "name": NO_GATES_CASE, "time": "0"},
        )
    for gate in gates:
        case = ET.SubElement(
            suite,
            "testcase",
            {"classname": xml_text(classname), "name": xml_text(gate_case_name(gate)), "time": "0"},
        )
        if not gate.get("passed"):
            failure = ET.SubElement(
                case,
                "failure",
                {"message": xml_text(gate_failure_message(gate)), "type": "GateFailure"},
            )
            failure.text = xml_text(gate.get("details") or gate_failure_message(gate))
    if system_out:
        ET.SubElement(suite, "system-out").text = xml_text(system_out)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _result_line(result: Mapping[str, Any], k: float) -> str:
    mean_ci = result.get("mean_interval") or {}
    kpp_ci = result.get("kpp_interval") or {}
    return (
        f"sigma {_number(result['sigma'])}: n={result.get('samples')}, "
        f"mean {_pct(result.get('mean'))} [{_pct(mean_ci.get('low'))}, "
        f"{_pct(mean_ci.get('high'))}], KPP k={k:g} {_pct(result.get('kpp'))} "
        f"[{_pct(kpp_ci.get('low'))}, {_pct(kpp_ci.get('high'))}]"
    )


def junit_from_report_dict(data: Mapping[str, Any], *, command_name: str = "eval") -> str:
    """JUnit XML for an audit report dict (``AuditReport.to_dict()`` or a loaded JSON report)."""
    k = data.get("k", 1.0)

    def row(item: Mapping[str, Any]) -> tuple[Any, ...]:
        return (item["sigma"], item.get("time_s"), item.get("compensation"))

    by_row = {row(result): result for result in data.get("results") or []}
    gates = []
    for gate in data.get("gates") or []:
        result = by_row.get(row(gate))
        details = gate_failure_message(gate)
        if result is not None:
            details += "\n" + _result_line(result, k)
        gates.append({**gate, "details": details})
    model = data.get("model") or {}
    dataset = data.get("data") or {}
    command = data.get("command") or []
    properties = {
        "ftaudit_version": data.get("ftaudit_version"),
        "command": shlex.join(str(part) for part in command) if command else None,
        "model.path": model.get("path"),
        "model.sha256": model.get("sha256"),
        "data.path": dataset.get("path"),
        "data.sha256": dataset.get("sha256"),
        "noise": noise_label(data.get("noise") or {}),
        "seed": data.get("seed"),
        "samples": data.get("samples"),
        "k": k,
        "device": data.get("device"),
        "clean_accuracy": data.get("clean_accuracy"),
        "reference_accuracy": data.get("reference_accuracy"),
    }
    summary = "\n".join(_result_line(result, k) for result in data.get("results") or [])
    model_name = PurePath(str(model.get("path", "?"))).name
    return junit_xml(
        suite_name=f"ftaudit {command_name} {model_name}",
        classname=f"ftaudit.{command_name}",
        gates=gates,
        properties=properties,
        elapsed_s=data.get("elapsed_s"),
        system_out=summary,
    )


def report_junit(report: AuditReport) -> str:
    """The report's gates as JUnit XML text."""
    return junit_from_report_dict(to_json_compatible(report.to_dict()))


@register_writer("junit")
def write_junit(report: AuditReport, path: Path) -> None:
    """JUnit XML with one test case per gate (metric x sigma); failed gates are failures."""
    atomic_write_text(Path(path), report_junit(report))
