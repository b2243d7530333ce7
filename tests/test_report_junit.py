"""JUnit XML writer: one test case per gate, failures for failed gates, counts CI systems read."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ftaudit.report import REPORT_WRITERS, get_writer, junit_xml, report_junit, write_junit
from ftaudit.report.junit_report import NO_GATES_CASE, gate_case_name, xml_text
from ftaudit.results import AuditReport

FAST = ("--samples", "5", "--seed", "3")


def _suite(text: str) -> tuple[ET.Element, ET.Element]:
    root = ET.fromstring(text.encode("utf-8"))  # bytes: the XML declaration names the encoding
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    return root, suites[0]


def _cases(suite: ET.Element) -> dict[str, ET.Element]:
    cases = suite.findall("testcase")
    names = [case.get("name") for case in cases]
    assert len(set(names)) == len(names), f"test case names must be unique: {names}"
    return dict(zip(names, cases, strict=True))


def test_one_case_per_gate_and_failures_match_thresholds(gated_report: AuditReport) -> None:
    root, suite = _suite(report_junit(gated_report))
    # the expected verdicts, recomputed from the per-sigma numbers, not from GateResult.passed
    by_sigma = {r.sigma: r.summary for r in gated_report.results}
    expected = {}
    for gate in gated_report.gates:
        value = getattr(by_sigma[gate.sigma], gate.metric)
        expected[f"{gate.metric} >= {gate.threshold:g} at sigma {gate.sigma:g}"] = (
            value >= gate.threshold
        )
    assert expected == {
        "kpp >= 0.93 at sigma 0.1": True,
        "mean >= 0.95 at sigma 0.1": True,
        "kpp >= 0.93 at sigma 0.3": False,
        "mean >= 0.95 at sigma 0.3": False,
    }
    cases = _cases(suite)
    assert set(cases) == set(expected)
    for name, passed in expected.items():
        failures = cases[name].findall("failure")
        assert len(failures) == (0 if passed else 1), name
        assert cases[name].get("classname") == "ftaudit.eval"
    failed = cases["kpp >= 0.93 at sigma 0.3"].find("failure")
    assert failed is not None
    assert failed.get("type") == "GateFailure"
    assert failed.get("message") == "kpp at sigma=0.3 is 0.8105, below the threshold 0.9300"
    assert "81.05%" in (failed.text or "")  # the detail carries the sigma's statistics

    for element in (root, suite):
        assert element.get("tests") == "4"
        assert element.get("failures") == "2"
        assert element.get("errors") == "0"
        assert element.get("skipped") == "0"
        assert float(element.get("time", "nan")) == pytest.approx(42.5)


def test_properties_carry_provenance_and_strings_are_escaped(gated_report: AuditReport) -> None:
    text = report_junit(gated_report)
    _, suite = _suite(text)  # parses: metacharacters were escaped
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["model.path"] == 'models/<b>net</b> & "co".onnx'
    assert properties["model.sha256"] == "a" * 64
    assert properties["seed"] == "1234"
    assert properties["noise"] == "rram(levels=16)"
    assert properties["command"].startswith("ftaudit eval 'models/<b>net</b> & co.onnx'")
    # XML 1.0 cannot hold U+0001 even escaped: replaced, so the file still parses
    assert properties["data.path"] == "data/test\ufffdset.npz"
    assert "\x01" not in text
    assert suite.get("name") == 'ftaudit eval b> & "co".onnx'  # the file name: after the last /
    system_out = suite.findtext("system-out") or ""
    assert len(system_out.splitlines()) == len(gated_report.results)


def test_no_gates_is_one_passing_case(gated_report: AuditReport) -> None:
    gated_report.gates = []
    root, suite = _suite(report_junit(gated_report))
    cases = suite.findall("testcase")
    assert [case.get("name") for case in cases] == [NO_GATES_CASE]
    assert cases[0].find("failure") is None
    assert root.get("tests") == suite.get("tests") == "1"
    assert root.get("failures") == suite.get("failures") == "0"


def test_generic_junit_for_other_commands() -> None:
    """The core takes plain gate dicts, so later commands (compare, sensitivity) reuse it."""
    gates = [
        {"metric": "kpp_drop", "sigma": 0.25, "value": 0.12, "threshold": 0.1, "passed": False},
        {"metric": "mean", "sigma": 0.25, "value": None, "threshold": 0.9, "passed": False},
    ]
    text = junit_xml(suite_name="ftaudit compare a b", classname="ftaudit.compare", gates=gates)
    root, suite = _suite(text)
    assert root.get("failures") == "2"
    names = list(_cases(suite))
    assert (
        names
        == [gate_case_name(g) for g in gates]
        == [
            "kpp_drop >= 0.1 at sigma 0.25",
            "mean >= 0.9 at sigma 0.25",
        ]
    )
    messages = [f.get("message") for f in suite.iter("failure")]
    assert messages[1] == "mean at sigma=0.25 is n/a, below the threshold 0.9000"
    assert suite.find("properties") is None


def test_xml_text_keeps_valid_characters() -> None:
    assert xml_text("tab\tnewline\n σ ✓ 𝔸") == "tab\tnewline\n σ ✓ 𝔸"
    assert xml_text("a\x00b\x1bc\ufffe") == "a\ufffdb\ufffdc\ufffd"


def test_registered_and_atomic(gated_report: AuditReport, tmp_path: Path) -> None:
    assert get_writer("junit") is write_junit
    assert "junit" in REPORT_WRITERS
    path = tmp_path / "gates.xml"
    path.write_text("stale")
    write_junit(gated_report, path)
    _suite(path.read_text(encoding="utf-8"))
    assert [p.name for p in tmp_path.iterdir()] == ["gates.xml"]


# --- through the CLI ----------------------------------------------------------------------------


def test_cli_writes_junit_and_html_even_when_a_gate_fails(
    run_cli, tmp_path: Path, convnet_onnx, blobs_npz
) -> None:
    junit, html, report = tmp_path / "g.xml", tmp_path / "r.html", tmp_path / "r.json"
    code, out, err = run_cli(
        "eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0,3.0", *FAST,
        "--fail-under-kpp", "0.99", "--fail-under-mean", "0", "--quiet",
        "--junit", junit, "--html", html, "--json", report,
    )  # fmt: skip
    assert code == 1, err
    assert out == ""  # --quiet
    data = json.loads(report.read_text())
    root, suite = _suite(junit.read_text(encoding="utf-8"))
    failed = [g for g in data["gates"] if not g["passed"]]
    assert failed, "sigma 3.0 must fail a KPP gate of 0.99"
    assert root.get("tests") == str(len(data["gates"])) == "4"
    assert root.get("failures") == str(len(failed))
    cases = _cases(suite)
    for gate in data["gates"]:
        case = cases[f"{gate['metric']} >= {gate['threshold']:g} at sigma {gate['sigma']:g}"]
        assert (case.find("failure") is None) == gate["passed"]
    assert html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_cli_junit_without_gates(run_cli, tmp_path: Path, convnet_onnx, blobs_npz) -> None:
    junit = tmp_path / "g.xml"
    code, _, err = run_cli(
        "eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0.1", *FAST, "--quiet",
        "--junit", junit,
    )  # fmt: skip
    assert code == 0, err
    _, suite = _suite(junit.read_text(encoding="utf-8"))
    assert [c.get("name") for c in suite.findall("testcase")] == [NO_GATES_CASE]


@pytest.mark.parametrize("flag", ["--junit", "--html"])
@pytest.mark.parametrize("problem", ["missing folder", "folder", "input"])
def test_cli_bad_output_path_exits_2_before_the_run(
    run_cli, tmp_path: Path, convnet_onnx, blobs_npz, monkeypatch, flag, problem
) -> None:
    import ftaudit.evaluation

    def no_audit(*args, **kwargs):
        raise AssertionError("the audit ran although an output path was unusable")

    monkeypatch.setattr(ftaudit.evaluation, "audit", no_audit)
    data = tmp_path / "data.npz"
    data.write_bytes(blobs_npz.read_bytes())
    target = {
        "missing folder": tmp_path / "nowhere" / "out",
        "folder": tmp_path,
        "input": data,
    }[problem]
    other = tmp_path / "other.out"  # the other new output, valid: must not be written either
    other_flag = "--html" if flag == "--junit" else "--junit"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run_cli(
        "eval", convnet_onnx, "--data", data, "--sigma", "0.1", *FAST,
        other_flag, other, flag, target,
    )  # fmt: skip
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftaudit: error:"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert data.read_bytes() == blobs_npz.read_bytes()


def test_drift_rows_get_distinct_cases_naming_time_and_compensation() -> None:
    import xml.etree.ElementTree as ET

    from ftaudit.report.junit_report import junit_xml

    gates = [
        {"metric": "kpp", "sigma": 0.3, "value": v, "threshold": 0.8, "passed": v >= 0.8,
         "time_s": t, "compensation": c}
        for v, t, c in [(0.9, 3600.0, "none"), (0.7, 3.1536e7, "none"), (0.85, 3.1536e7, "global")]
    ]  # fmt: skip
    root = ET.fromstring(junit_xml(suite_name="s", classname="c", gates=gates).split("\n", 1)[1])
    names = [case.get("name") for case in root.iter("testcase")]
    assert len(set(names)) == 3
    assert "kpp >= 0.8 at sigma 0.3, t=1h, compensation=none" in names
    (failure,) = root.iter("failure")
    assert "t=1y, compensation=none" in failure.get("message")
