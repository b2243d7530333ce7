"""HTML report: self-contained (no network reference), escaped, numbers right, and it renders.

The browser test renders the page in headless Chromium and checks the screenshot is a real page
(the chart's line colours are on it); it is skipped where Chromium is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from ftaudit.report import REPORT_WRITERS, get_writer, html_from_report_dict, report_html
from ftaudit.report.html_page import esc, nice_ticks, tag
from ftaudit.report.html_report import KPP_COLOR, MEAN_COLOR, write_html
from ftaudit.results import AuditReport
from ftaudit.stats import kpp_min_samples

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH, HEIGHT = 1200, 1600


class _Page(HTMLParser):
    """Collects tags, attributes, the text of every table cell (by table) and all text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, name: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((name, dict(attrs)))
        if name == "table":
            self.tables.append([])
        elif name == "tr":
            self.tables[-1].append([])
        elif name in ("td", "th"):
            self._cell = []

    def handle_endtag(self, name: str) -> None:
        if name in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


def _table_after(page: _Page, first_header: str) -> list[list[str]]:
    return next(t for t in page.tables if t and t[0] and t[0][0] == first_header)


def assert_no_network_references(page: str) -> None:
    """Nothing the browser could fetch: no URLs, no src/href, no @import, url() only data:."""
    lowered = page.lower()
    assert "http://" not in lowered
    assert "https://" not in lowered
    assert "@import" not in lowered
    assert not re.search(r"""url\(\s*['"]?(?!data:)""", lowered), "url() must be data: only"
    for attribute in ("src", "href", "xlink:href", "srcset", "action", "poster"):
        for match in re.finditer(rf"""\s{attribute}\s*=\s*['"]?([^'"\s>]*)""", lowered):
            assert match.group(1).startswith("data:"), f"{attribute}={match.group(1)}"
    assert not re.search(r"""=\s*['"]?//""", lowered), "protocol-relative reference"
    for element in ("<script", "<link", "<iframe", "<object", "<embed", "<base"):
        assert element not in lowered, element


def test_no_network_references_and_csp(gated_report: AuditReport) -> None:
    page = report_html(gated_report)
    assert_no_network_references(page)
    meta = dict(next(a for n, a in _parse(page).tags if n == "meta" and a.get("http-equiv")))
    assert meta["content"].startswith("default-src 'none'")


def test_the_checker_catches_references() -> None:
    for bad in (
        '<img src="https://x/y.png">',
        "<style>@import 'a.css'</style>",
        "<div style=\"background:url('b.png')\"></div>",
        '<a href="//cdn.example/x">',
        "<script>1</script>",
    ):
        with pytest.raises(AssertionError):
            assert_no_network_references(bad)
    assert_no_network_references('<img src="data:image/png;base64,AAAA">')


def test_user_strings_are_escaped(gated_report: AuditReport) -> None:
    page = report_html(gated_report)
    assert "<b>" not in page and "<script>" not in page
    assert "&lt;b&gt;net&lt;/b&gt; &amp; &quot;co&quot;.onnx" in page
    assert "fc1.weight&lt;script&gt;" in page
    parsed = _parse(page)
    assert all(name not in ("b", "script") for name, _ in parsed.tags)
    text = "".join(parsed.text)
    assert '<b>net</b> & "co".onnx' in text  # what the reader sees is the original string


def test_tables_hold_the_report_numbers(gated_report: AuditReport) -> None:
    page = _parse(report_html(gated_report))
    results = _table_after(page, "σ")
    assert results[0][:4] == ["σ", "n", "mean [95%]", "KPP k=5 [95%]"]
    assert len(results) == 1 + len(gated_report.results)
    for row, result in zip(results[1:], gated_report.results, strict=True):
        s = result.summary
        assert row[0] == f"{result.sigma:g}"
        assert row[1] == f"{s.n}{'*' if result.stopped_early else ''}"
        low, high = s.mean_interval.low, s.mean_interval.high
        assert row[2] == f"{100 * s.mean:.2f} [{100 * low:.2f}, {100 * high:.2f}]"
        low, high = s.kpp_interval.low, s.kpp_interval.high
        low_text = "–" if low is None else f"{100 * low:.2f}"  # unavailable side: a dash
        assert row[3] == f"{100 * s.kpp:.2f} [{low_text}, {100 * high:.2f}]"
        assert row[4] == ("n/a" if np.isnan(s.std) else f"{100 * s.std:.2f}")
        assert row[7] == f"{100 * (0.9781 - s.mean):.2f}"  # drop from the quantised accuracy
    gates = _table_after(page, "metric")
    verdicts = [(row[0], row[1], row[4]) for row in gates[1:]]
    assert verdicts == [
        ("kpp", "0.1", "passed"),
        ("mean", "0.1", "passed"),
        ("kpp", "0.3", "FAILED"),
        ("mean", "0.3", "FAILED"),
    ]
    layers = _table_after(page, "weight")
    assert [row[-1] for row in layers[1:]] == ["yes", "no (exact)"]
    assert layers[1][3] == "100,352"
    text = "".join(page.text)
    assert "FAILED: 2 of 4 gates failed" in text
    assert "a" * 64 in text and "0123456789abcdef" * 4 in text  # both hashes
    assert "stopped early" in text
    # the KPP interval at 0.3 has no lower side: said once, with the samples it needs
    k = gated_report.k
    assert f"a two-sided 95% KPP interval at k={k:g} needs at least {kpp_min_samples(k)}" in text


def test_verdict_without_gates_and_all_passed(gated_report: AuditReport) -> None:
    passed = [g for g in gated_report.gates if g.passed]
    gated_report.gates = passed
    assert "PASSED: all 2 gates passed" in report_html(gated_report)
    gated_report.gates = []
    assert "No gates set" in report_html(gated_report)


def test_chart_is_inline_svg_with_one_marker_per_point(gated_report: AuditReport) -> None:
    page = _parse(report_html(gated_report))
    names = [name for name, _ in page.tags]
    assert names.count("svg") == 1
    circles = [a for name, a in page.tags if name == "circle"]
    assert len(circles) == 2 * len(gated_report.results)  # mean and KPP at each sigma
    assert {a["fill"] for a in circles} == {MEAN_COLOR, KPP_COLOR}
    assert names.count("polygon") == 2  # two interval bands


def test_chart_with_one_sigma_and_missing_values(gated_report: AuditReport) -> None:
    gated_report.results = gated_report.results[1:2]
    page = report_html(gated_report)
    assert "<polygon" not in page  # a single point gets error bars, not a band
    assert page.count("<path") == 2
    data = gated_report.to_dict()
    data["results"][0]["kpp"] = None  # a non-finite KPP is null in the JSON report
    page = html_from_report_dict(data)
    assert page.count("<circle") == 1


def test_nice_ticks() -> None:
    assert nice_ticks(0.7, 1.0) == [0.7, 0.8, 0.9, 1.0]
    assert nice_ticks(0.8, 1.0) == [0.8, 0.85, 0.9, 0.95, 1.0]
    assert nice_ticks(0.0, 0.4, target=7) == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0.3, 0.3) == [0.3]


def test_tag_escapes_attributes_and_content() -> None:
    assert tag("td", '<&">', class_='a"b') == '<td class="a&quot;b">&lt;&amp;&quot;&gt;</td>'
    assert esc(tag("b", "x")) == "<b>x</b>"  # built HTML is not escaped twice


def test_registered_and_atomic(gated_report: AuditReport, tmp_path: Path) -> None:
    assert get_writer("html") is write_html
    assert {"json", "csv", "plot", "html", "junit"} <= set(REPORT_WRITERS)
    path = tmp_path / "report.html"
    path.write_text("stale")
    write_html(gated_report, path)
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_renders_in_headless_chromium(gated_report: AuditReport, tmp_path: Path) -> None:
    from PIL import Image

    page = tmp_path / "report.html"
    write_html(gated_report, page)
    screenshot = tmp_path / "screenshot.png"
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={screenshot}",
        f"--window-size={WIDTH},{HEIGHT}",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert screenshot.is_file(), done.stderr[-2000:]
    with Image.open(screenshot) as image:
        assert image.size == (WIDTH, HEIGHT)
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    not_white = np.any(pixels < 235, axis=-1)
    assert 0.02 < not_white.mean() < 0.6, "the page should show text, tables and a chart"
    assert pixels.std() > 10

    def close_to(hex_color: str) -> int:
        rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
        return int((np.abs(pixels - rgb).sum(axis=-1) < 40).sum())

    # the SVG chart was drawn: both line colours cover a visible area
    assert close_to(MEAN_COLOR) > 300
    assert close_to(KPP_COLOR) > 300


def test_drift_rows_get_time_columns_and_a_time_chart(convnet_onnx, blobs_npz, tmp_path) -> None:
    import ftaudit
    from ftaudit.report.html_report import html_from_report_dict

    report = ftaudit.audit(
        convnet_onnx,
        blobs_npz,
        sigmas=[0.1, 0.3],
        samples=5,
        noise="pcm",
        times=[3600.0, 86400.0, 3.1536e7],
        fail_under_kpp=0.1,
    )
    page_text = html_from_report_dict(report.to_dict())
    page = _parse(page_text)
    results = _table_after(page, "σ")
    assert results[0][:4] == ["σ", "t", "comp", "n"]  # the results table's leading columns
    assert [row[1:3] for row in results[1:4]] == [["1h", "none"], ["1h", "global"], ["1d", "none"]]
    no_drift = ftaudit.audit(convnet_onnx, blobs_npz, sigmas=[0.3], samples=5)
    plain = _table_after(_parse(html_from_report_dict(no_drift.to_dict())), "σ")
    assert plain[0][:2] == ["σ", "n"] and "comp" not in plain[0]
    # mean and KPP side by side; one colour per sigma; compensation by line style
    svgs = [attrs for name, attrs in page.tags if name == "svg"]
    assert len(svgs) == 2
    lines = [attrs for name, attrs in page.tags if name == "polyline"]
    assert len(lines) == 2 * 2 * 2  # (mean, KPP) x 2 sigmas x (none, global)
    assert len({line["stroke"] for line in lines}) == 2
    dashed = [line for line in lines if line.get("stroke-dasharray")]
    assert len(dashed) == 4  # the uncompensated lines
    text = " ".join(page.text)
    assert "mean accuracy against time after programming" in text
    assert "KPP, k=1, σ=0.3, compensation global" in text
    # the time axis is labelled in units, not log10 seconds
    for label in ("1 h", "1 d", "1 w", "1 y"):
        assert f">{label}</text>" in page_text
    assert "log10" not in page_text
    # a readable device summary, not the parameter dump in the subtitle
    device = next(t for t in page.tables if t and t[0] and t[0][0] == "noise model")
    summary = dict((row[0], row[1]) for row in device)
    assert summary["noise model"] == "pcm"
    assert summary["weights"] == "4 bits in 1 cell(s) of 4 bits"
    assert summary["σ per cell level"] == "0.25 to 1.03 × σ over 16 levels"
    assert summary["read at"] == "1h, 1d, 1y"
    assert summary["drift compensation"] == "none, global"
    assert "sigma_multipliers" not in page_text.split("<h2>")[0]


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_drift_page_renders_both_panels_in_headless_chromium(convnet_onnx, blobs_npz, tmp_path):
    from PIL import Image

    import ftaudit
    from ftaudit.report.html_report import DRIFT_PALETTE

    report = ftaudit.audit(
        convnet_onnx, blobs_npz, sigmas=[0.1, 0.3], samples=5, times=[1.0, 3600.0, 3.1536e7]
    )
    page = tmp_path / "drift.html"
    write_html(report, page)
    screenshot = tmp_path / "drift.png"
    done = subprocess.run(
        [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={screenshot}", f"--window-size={WIDTH},{HEIGHT}", page.as_uri(),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and screenshot.is_file(), done.stderr[-2000:]
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    width = pixels.shape[1]

    def close_to(hex_color: str, columns: slice) -> int:
        rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
        return int((np.abs(pixels[:, columns] - rgb).sum(axis=-1) < 40).sum())

    # both sigma colours are drawn in the left (mean) and the right (KPP) half of the page
    for half in (slice(0, width // 2), slice(width // 2, width)):
        assert close_to(DRIFT_PALETTE[0], half) > 150
        assert close_to(DRIFT_PALETTE[1], half) > 150
