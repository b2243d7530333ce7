"""compare and sensitivity --html and --junit: self-contained pages whose numbers are the JSON
report's, JUnit cases per row, and (with Chromium) a screenshot that shows the charts."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_report_html import CHROMIUM, _parse, assert_no_network_references

from ftaudit.report.compare_html import KPP_COLOR, MEAN_COLOR
from ftaudit.report.sensitivity_html import DROP_COLOR, GAIN_COLOR


@pytest.fixture(scope="module")
def worse_onnx(convnet_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The convnet with its crossbar weights noised once: a worse candidate for compare."""
    model = onnx.load(str(convnet_onnx))
    rng = np.random.default_rng(3)
    for tensor in model.graph.initializer:
        weights = numpy_helper.to_array(tensor)
        if weights.ndim > 1:
            noisy = weights * np.exp(rng.normal(0.0, 0.6, weights.shape)).astype(weights.dtype)
            tensor.CopyFrom(numpy_helper.from_array(noisy, tensor.name))
    path = tmp_path_factory.mktemp("worse") / "worse.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def compare_outputs(convnet_onnx, worse_onnx, blobs_npz, tmp_path_factory) -> dict[str, Path]:
    from ftaudit.cli import run

    folder = tmp_path_factory.mktemp("compare_html")
    paths = {name: folder / f"c.{name}" for name in ("json", "html", "xml")}
    code = run(
        [
            "compare",
            str(convnet_onnx),
            str(worse_onnx),
            "--data",
            str(blobs_npz),
            "--sigma",
            "0.1,0.3",
            "--samples",
            "30",
            "--fail-if-worse",
            "0.01",
            "-q",
            "--json",
            str(paths["json"]),
            "--html",
            str(paths["html"]),
            "--junit",
            str(paths["xml"]),
        ]
    )
    assert code == 1  # the worse candidate fails the gate; every output is still written
    return paths


def test_compare_html_holds_the_json_numbers(compare_outputs) -> None:
    data = json.loads(compare_outputs["json"].read_text())
    page_text = compare_outputs["html"].read_text(encoding="utf-8")
    assert_no_network_references(page_text)
    page = _parse(page_text)
    table = next(t for t in page.tables if t and t[0] and t[0][0] == "row")
    assert [row[0] for row in table[1:]] == ["σ 0.1", "σ 0.3"]
    for row, result in zip(table[1:], data["results"], strict=True):
        base, cand = result["baseline"]["mean"], result["candidate"]["mean"]
        assert row[2] == f"{100 * base:.2f}" and row[3] == f"{100 * cand:.2f}"
        interval, difference = result["mean_difference_interval"], result["mean_difference"]
        assert difference == pytest.approx(cand - base, abs=1e-12)  # paired: same draws
        assert row[4] == (
            f"{100 * difference:+.2f} [{100 * interval['low']:+.2f}, {100 * interval['high']:+.2f}]"
        )
    # the chart: one dot per (difference, row), the gate's line at -1 point
    circles = [attrs for name, attrs in page.tags if name == "circle"]
    assert len(circles) == 2 * len(data["results"])
    assert "FAILED: the candidate is worse at 2 of 2 rows" in "".join(page.text)
    assert any(name == "line" and attrs.get("stroke-dasharray") for name, attrs in page.tags)
    # the gate table gives each row's p-value and the page states the (Holm) rule
    gates = next(t for t in page.tables if t and t[0] and "one-sided p" in t[0])
    assert [row[4] for row in gates[1:]] == [f"{g['p_value']:.3g}" for g in data["gates"]]
    assert f"Gate rule: {data['gate_rule']}." in "".join(page.text)


def test_compare_junit_has_a_failed_case_per_row(compare_outputs) -> None:
    suite = ET.parse(compare_outputs["xml"]).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == 2 and all(case.find("failure") is not None for case in cases)


@pytest.fixture(scope="module")
def sensitivity_outputs(convnet_onnx, blobs_npz, tmp_path_factory) -> dict[str, Path]:
    from ftaudit.cli import run

    folder = tmp_path_factory.mktemp("sensitivity_html")
    paths = {name: folder / f"s.{name}" for name in ("json", "html", "xml")}
    code = run(
        [
            "sensitivity",
            str(convnet_onnx),
            "--data",
            str(blobs_npz),
            "--sigma",
            "0.5",
            "--samples",
            "20",
            "--target-kpp",
            "0.5",
            "-q",
            "--json",
            str(paths["json"]),
            "--html",
            str(paths["html"]),
            "--junit",
            str(paths["xml"]),
        ]
    )
    assert code == 0
    return paths


def test_sensitivity_html_has_the_answer_bars_and_layers(sensitivity_outputs) -> None:
    data = json.loads(sensitivity_outputs["json"].read_text())
    page_text = sensitivity_outputs["html"].read_text(encoding="utf-8")
    assert_no_network_references(page_text)
    page = _parse(page_text)
    text = " ".join(page.text)
    assert data["target"]["message"] in text
    layers = next(t for t in page.tables if t and t[0] and t[0][0] == "#")
    assert [row[1] for row in layers[1:]] == [layer["name"] for layer in data["layers"]]
    for row, layer in zip(layers[1:], data["layers"], strict=True):
        assert row[5] == f"{100 * layer['score']:.2f}"
        assert row[7] == f"{100 * layer['recovered_score']:.2f}"
        assert (row[8] == "keep digital") == (layer["name"] in data["target"]["digital"])
    bars = [attrs for name, attrs in page.tags if name == "rect" and attrs.get("fill") in (
        DROP_COLOR, GAIN_COLOR)]  # fmt: skip
    assert len(bars) == 2 * len(data["layers"])


def test_sensitivity_junit_one_case_per_row(sensitivity_outputs) -> None:
    data = json.loads(sensitivity_outputs["json"].read_text())
    suite = ET.parse(sensitivity_outputs["xml"]).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(data["all_layers"]) == 1
    reached = data["target"]["status"] in ("met", "already_met")
    assert (cases[0].find("failure") is None) == reached
    assert ">= 0.5 at sigma 0.5" in cases[0].get("name")


def test_sensitivity_bad_target_writes_no_html_or_junit(convnet_onnx, blobs_npz, tmp_path) -> None:
    from ftaudit.cli import run

    xml = tmp_path / "s.xml"
    code = run(
        [
            "sensitivity",
            str(convnet_onnx),
            "--data",
            str(blobs_npz),
            "--sigma",
            "0.5",
            "--samples",
            "10",
            "--target-kpp",
            "1.01",
            "-q",
            "--junit",
            str(xml),
            "--html",
            str(tmp_path / "s.html"),
        ]
    )
    assert code == 2  # a target above 1 is bad input, nothing written
    assert list(tmp_path.iterdir()) == []


def _screenshot(page: Path, tmp_path: Path, height: int = 900) -> np.ndarray:
    from PIL import Image

    shot = tmp_path / f"{page.stem}.png"
    done = subprocess.run(
        [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}", f"--window-size=1200,{height}", page.as_uri(),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def _pixels_near(pixels: np.ndarray, hex_color: str) -> int:
    rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    return int((np.abs(pixels - rgb).sum(axis=-1) < 40).sum())


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_compare_and_sensitivity_pages_render(
    compare_outputs, sensitivity_outputs, tmp_path
) -> None:
    compare = _screenshot(compare_outputs["html"], tmp_path)
    assert _pixels_near(compare, MEAN_COLOR) > 150 and _pixels_near(compare, KPP_COLOR) > 100
    sensitivity = _screenshot(sensitivity_outputs["html"], tmp_path)
    assert _pixels_near(sensitivity, DROP_COLOR) > 300
    assert _pixels_near(sensitivity, GAIN_COLOR) > 100
