"""Report writers: JSON (against docs/report.schema.json), CSV, rich table, PNG plot, registry."""

from __future__ import annotations

import copy
import csv
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from rich.table import Table

from ftaudit.errors import UserError
from ftaudit.report import (
    CSV_COLUMNS,
    REPORT_WRITERS,
    audit_table,
    gates_table,
    get_writer,
    report_json,
    report_renderable,
    write_csv,
    write_json,
    write_plot,
)
from ftaudit.results import AuditReport, GateResult, Interval, LayerInfo, SigmaResult, Summary

jsonschema = pytest.importorskip("jsonschema")

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "report.schema.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLEAN = 0.9805
QUANTIZED = 0.9781  # the reference accuracy drops are measured from


def _sigma_result(
    sigma: float,
    *,
    n: int,
    mean: float,
    std: float,
    mean_ci: tuple[float, float],
    kpp: float,
    kpp_ci: tuple[float, float],
    lo: float,
    hi: float,
    stopped_early: bool = False,
) -> SigmaResult:
    accuracies = np.clip(np.random.default_rng(n).normal(mean, std, size=n), lo, hi)
    summary = Summary(
        n=n,
        mean=mean,
        std=std,
        mean_interval=Interval(mean_ci[0], mean_ci[1], 0.95, "t"),
        kpp=kpp,
        kpp_interval=Interval(kpp_ci[0], kpp_ci[1], 0.95, "order-statistics"),
        min=lo,
        max=hi,
    )
    return SigmaResult(sigma, summary, accuracies, QUANTIZED, stopped_early)


@pytest.fixture
def report() -> AuditReport:
    """A hand-built report: three sigmas (the middle one stopped early), one failed gate."""
    results = [
        _sigma_result(
            0.1, n=200, mean=0.9712, std=0.0041, mean_ci=(0.9706, 0.9718),
            kpp=0.9641, kpp_ci=(0.9625, 0.9652), lo=0.9580, hi=0.9790,
        ),
        _sigma_result(
            0.2, n=137, mean=0.9420, std=0.0123, mean_ci=(0.9399, 0.9441),
            kpp=0.9210, kpp_ci=(0.9170, 0.9245), lo=0.9010, hi=0.9650, stopped_early=True,
        ),
        _sigma_result(
            0.3, n=200, mean=0.8730, std=0.0350, mean_ci=(0.8681, 0.8779),
            kpp=0.8105, kpp_ci=(0.8010, 0.8190), lo=0.7400, hi=0.9200,
        ),
    ]  # fmt: skip
    return AuditReport(
        ftaudit_version="0.1.0",
        command=["ftaudit", "eval", "models/mnist_mlp.onnx", "data/mnist_test.npz"],
        model={
            "path": "models/mnist_mlp.onnx",
            "sha256": "a" * 64,
            "format": "onnx",
            "input": {"name": "input", "shape": [None, 1, 28, 28], "dtype": "float32"},
            "output": {"name": "logits"},
        },
        layers=[
            LayerInfo("fc1.weight", "Gemm", (128, 784), 100352, 0.71, True, 100352),
            LayerInfo("fc2.weight", "Gemm", (10, 128), 1280, 0.93, False, None),
        ],
        data={
            "path": "data/mnist_test.npz",
            "sha256": "0123456789abcdef" * 4,
            "kind": "npz",
            "n": 10000,
            "limit": None,
        },
        noise={"name": "rram", "levels": 16, "g_ratio": 10.0},
        seed=1234,
        samples=200,
        k=5.0,
        device="cpu",
        clean_accuracy=CLEAN,
        quantized_accuracy=QUANTIZED,
        results=results,
        elapsed_s=42.5,
        target_ci=0.01,
        gates=[
            GateResult("mean", 0.1, 0.9712, 0.95, True),
            GateResult("kpp", 0.2, 0.9210, 0.95, False),
        ],
    )


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _strict_loads(text: str) -> Any:
    """json.loads that refuses NaN/Infinity, as jq and JavaScript do."""

    def reject(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


def _render(renderable: Any) -> str:
    console = Console(record=True, width=160)
    console.print(renderable)
    return console.export_text()


# JSON and schema


def test_json_validates_against_schema(report: AuditReport, validator: Any) -> None:
    validator.validate(_strict_loads(report_json(report)))


def test_schema_documents_every_property() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                assert "description" in sub, f"{where}.{name} has no description"
            for key, sub in node.items():
                walk(sub, f"{where}.{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{where}[{i}]")

    walk(schema, "$")


def test_schema_requires_every_key_the_report_writes(report: AuditReport) -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    as_dict = report.to_dict()
    assert set(schema["required"]) == set(as_dict) == set(schema["properties"])
    result_schema = schema["$defs"]["sigma_result"]
    assert set(result_schema["required"]) == set(as_dict["results"][0])


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda d: d.pop("seed"), id="missing-top-level-key"),
        pytest.param(lambda d: d["results"][0].pop("kpp"), id="missing-result-key"),
        pytest.param(lambda d: d["results"][1].__setitem__("mean", 1.5), id="accuracy-1.5"),
        pytest.param(lambda d: d.__setitem__("clean_accuracy", -0.1), id="accuracy-negative"),
        pytest.param(lambda d: d.__setitem__("extra", 1), id="unknown-top-level-key"),
        pytest.param(lambda d: d["results"][0].__setitem__("extra", 1), id="unknown-result-key"),
        pytest.param(lambda d: d.__setitem__("k", 100), id="k-100"),
        pytest.param(lambda d: d.__setitem__("samples", 0), id="samples-0"),
        pytest.param(lambda d: d["results"][0].__setitem__("sigma", -0.1), id="negative-sigma"),
        pytest.param(lambda d: d["model"].__setitem__("sha256", "xyz"), id="bad-sha256"),
        pytest.param(lambda d: d["model"].__setitem__("format", "tflite"), id="bad-format"),
        pytest.param(lambda d: d.__setitem__("schema_version", "2.0"), id="schema-version"),
        pytest.param(lambda d: d["gates"][0].__setitem__("metric", "p99"), id="bad-gate-metric"),
    ],
)
def test_schema_rejects_a_broken_report(report: AuditReport, validator: Any, mutate: Any) -> None:
    broken = copy.deepcopy(_strict_loads(report_json(report)))
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def test_json_round_trip_equals_the_dataclasses(report: AuditReport) -> None:
    loaded = _strict_loads(report_json(report))
    assert loaded == report.to_dict()
    assert loaded["reference_accuracy"] == QUANTIZED
    assert loaded["seed"] == report.seed
    assert loaded["layers"][0]["shape"] == [128, 784]
    for entry, result in zip(loaded["results"], report.results, strict=True):
        s = result.summary
        assert entry["sigma"] == result.sigma
        assert entry["samples"] == s.n
        assert entry["stopped_early"] is result.stopped_early
        assert entry["mean"] == s.mean
        assert entry["kpp"] == s.kpp
        assert entry["kpp_interval"]["low"] == s.kpp_interval.low
        assert entry["mean_interval"]["high"] == s.mean_interval.high
        assert entry["drop_kpp"] == QUANTIZED - s.kpp
    assert [g["passed"] for g in loaded["gates"]] == [True, False]


def test_write_json_writes_report_json(report: AuditReport, tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_json(report, path)
    assert path.read_text(encoding="utf-8") == report_json(report)


def test_non_finite_floats_become_null(report: AuditReport, validator: Any, tmp_path: Path) -> None:
    first = report.results[0]
    summary = replace(
        first.summary,
        std=math.nan,
        kpp_interval=replace(first.summary.kpp_interval, low=-math.inf, high=math.inf),
    )
    report.results[0] = replace(first, summary=summary)
    report.elapsed_s = math.nan

    text = report_json(report)
    assert "NaN" not in text and "Infinity" not in text
    loaded = _strict_loads(text)
    assert loaded["elapsed_s"] is None
    assert loaded["results"][0]["std"] is None
    assert loaded["results"][0]["kpp_interval"]["low"] is None
    assert loaded["results"][0]["kpp_interval"]["high"] is None
    # Undefined statistics are allowed as null; a null elapsed time is not.
    loaded["elapsed_s"] = 1.0
    validator.validate(loaded)

    path = tmp_path / "report.csv"
    write_csv(report, path)
    row = next(csv.DictReader(path.open(newline="", encoding="utf-8")))
    assert row["std"] == "" and row["kpp_low"] == "" and row["kpp_high"] == ""


def test_numpy_scalars_serialise(report: AuditReport, validator: Any) -> None:
    first = report.results[0]
    summary = replace(first.summary, n=np.int64(200), mean=np.float32(0.9712))
    report.results[0] = replace(first, summary=summary, sigma=np.float64(0.1))
    report.seed = np.int64(1234)
    loaded = _strict_loads(report_json(report))
    validator.validate(loaded)
    assert loaded["results"][0]["samples"] == 200
    assert loaded["results"][0]["mean"] == pytest.approx(0.9712, abs=1e-7)


# CSV


def test_csv_rows_parse_back_to_the_same_numbers(report: AuditReport, tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    write_csv(report, path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    assert CSV_COLUMNS[:3] == ("noise", "k", "sigma")
    assert len(rows) == len(report.results)
    for row, result in zip(rows, report.results, strict=True):
        s = result.summary
        assert row["noise"] == "rram"
        assert float(row["k"]) == 5.0
        assert float(row["sigma"]) == result.sigma
        assert int(row["samples"]) == s.n
        assert row["stopped_early"] == ("true" if result.stopped_early else "false")
        expected = {
            "mean": s.mean,
            "std": s.std,
            "mean_low": s.mean_interval.low,
            "mean_high": s.mean_interval.high,
            "kpp": s.kpp,
            "kpp_low": s.kpp_interval.low,
            "kpp_high": s.kpp_interval.high,
            "min": s.min,
            "max": s.max,
            "drop_mean": QUANTIZED - s.mean,
            "drop_kpp": QUANTIZED - s.kpp,
        }
        for column, value in expected.items():
            assert float(row[column]) == value, column


# Table


def test_table_shows_percentages(report: AuditReport) -> None:
    table = audit_table(report)
    assert isinstance(table, Table)
    text = _render(table)
    # Title: model file name (not its folder), noise with parameters, samples, k, seed.
    assert "mnist_mlp.onnx" in text and "models/" not in text
    assert "rram(levels=16, g_ratio=10.0)" in text
    assert "200 samples" in text and "k=5" in text and "seed 1234" in text
    # Caption: clean and quantised accuracy.
    assert "clean accuracy 98.05%" in text
    assert "quantised clean accuracy 97.81%" in text
    # Rows, worked out by hand: mean ± half the 95% interval width; KPP [low, high]; drops from
    # the quantised accuracy 97.81%.
    assert "97.12 ± 0.06" in text
    assert "96.41 [96.25, 96.52]" in text
    assert "94.20 ± 0.21" in text
    assert "92.10 [91.70, 92.45]" in text
    assert "87.30 ± 0.49" in text
    assert "81.05 [80.10, 81.90]" in text
    sigma_03 = next(line for line in text.splitlines() if "87.30" in line)
    for expected in ("0.3", "200", "74.00", "92.00", "10.51", "16.76"):
        assert expected in sigma_03
    sigma_02 = next(line for line in text.splitlines() if "94.20" in line)
    assert "137*" in sigma_02  # stopped early
    assert "3.61" in sigma_02 and "5.71" in sigma_02
    assert "stopped early" in text


def test_table_without_quantisation_or_gates(report: AuditReport) -> None:
    report.quantized_accuracy = None
    report.gates = []
    report.results = [replace(r, reference_accuracy=CLEAN) for r in report.results[:1]]
    renderable = report_renderable(report)
    assert isinstance(renderable, Table)
    text = _render(renderable)
    assert "clean accuracy 98.05%" in text
    assert "quantised" not in text
    assert "stopped early" not in text
    assert "0.93" in text  # drop of the mean from the clean accuracy: 98.05 - 97.12


def test_gate_verdicts_rendered(report: AuditReport) -> None:
    text = _render(gates_table(report))
    failed = next(line for line in text.splitlines() if "FAILED" in line)
    assert "kpp" in failed and "92.10" in failed and "95.00" in failed
    assert "passed" in next(line for line in text.splitlines() if "mean" in line)
    combined = _render(report_renderable(report))
    assert "FAILED" in combined and "97.12 ± 0.06" in combined


def test_piped_table_is_never_cut(report: AuditReport, capsys, monkeypatch) -> None:
    """Widest-case rows (100% intervals, a drop of almost 100 points) wider than rich's
    default 80 columns print whole when stdout is a pipe (a CI log), not cut to an ellipsis."""
    from ftaudit.cli.common import print_table

    monkeypatch.delenv("COLUMNS", raising=False)
    report.results += [
        _sigma_result(
            0.0, n=368, mean=1.0, std=0.0, mean_ci=(1.0, 1.0),
            kpp=1.0, kpp_ci=(1.0, 1.0), lo=1.0, hi=1.0,
        ),
        _sigma_result(
            0.35, n=368, mean=0.8125, std=0.3, mean_ci=(0.5082, 1.0),
            kpp=0.0, kpp_ci=(0.0, 1.0), lo=0.0, hi=1.0,
        ),
    ]  # fmt: skip
    print_table(audit_table(report))
    out = capsys.readouterr().out
    assert "…" not in out and max(len(line) for line in out.splitlines()) > 80
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert rows["0"][-2:] == ["-2.19", "-2.19"]  # the drops from 97.81%
    assert rows["0.35"][-5:] == ["100.00]", "0.00", "100.00", "16.56", "97.81"]


def test_table_escapes_user_strings(report: AuditReport) -> None:
    report.model["path"] = "models/[bold]net.onnx"
    report.noise = {"name": "[red]custom", "scale": "[x]"}
    text = _render(audit_table(report))
    assert "[bold]net.onnx" in text
    assert "[red]custom(scale=[x])" in text


# Plot


def test_plot_writes_png_and_closes_figures(report: AuditReport, tmp_path: Path) -> None:
    plt = pytest.importorskip("matplotlib.pyplot")
    before = set(plt.get_fignums())
    path = tmp_path / "accuracy.png"
    write_plot(report, path)
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert set(plt.get_fignums()) == before


def test_plot_single_sigma(report: AuditReport, tmp_path: Path) -> None:
    plt = pytest.importorskip("matplotlib.pyplot")
    report.results = report.results[1:2]
    report.model["path"] = "models/cost_$5_$net.onnx"  # '$' must not start mathtext
    path = tmp_path / "one.png"
    write_plot(report, path)
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert plt.get_fignums() == []


# Atomic writes and the registry


@pytest.mark.parametrize("name", ["json", "csv", "plot"])
def test_writers_replace_existing_file_atomically(
    report: AuditReport, tmp_path: Path, name: str
) -> None:
    if name == "plot":
        pytest.importorskip("matplotlib")
    path = tmp_path / f"out.{name}"
    path.write_text("stale content from an earlier run\n", encoding="utf-8")
    get_writer(name)(report, path)
    assert b"stale content" not in path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left behind


def test_failed_write_keeps_old_file_and_leaves_no_temp(
    report: AuditReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figure = pytest.importorskip("matplotlib.figure")

    def broken_savefig(self: Any, fname: Any, **kwargs: Any) -> None:
        Path(fname).write_bytes(b"half a PNG")
        raise OSError("disk full")

    monkeypatch.setattr(figure.Figure, "savefig", broken_savefig)
    path = tmp_path / "accuracy.png"
    path.write_bytes(b"old")
    with pytest.raises(UserError, match=r"cannot write .*accuracy\.png: disk full"):
        write_plot(report, path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_registry() -> None:
    assert set(REPORT_WRITERS) == {"json", "csv", "plot", "html", "junit"}
    for name, writer in REPORT_WRITERS.items():
        assert (writer.__doc__ or "").strip(), f"writer {name} has no docstring"
    assert get_writer("csv") is write_csv
    with pytest.raises(UserError, match="did you mean 'json'"):
        get_writer("jsno")


def test_table_shows_an_unavailable_kpp_side_as_a_dash_with_the_samples_it_needs(
    gated_report: AuditReport,
) -> None:
    """sigma 0.3's KPP interval has no lower side: a dash, not 0.00, and one footer line."""
    from ftaudit.stats import kpp_min_samples

    text = _render(audit_table(gated_report))
    assert "81.05 [–, 81.90]" in text and "[0.00," not in text
    words = " ".join(text.split())
    assert f"needs at least {kpp_min_samples(gated_report.k)} samples" in words
    data = gated_report.to_dict()
    assert data["results"][2]["kpp_interval"]["low"] is None  # null in the JSON report


def test_every_output_says_what_the_intervals_cover(gated_report: AuditReport) -> None:
    from ftaudit.report import report_html

    scope = gated_report.to_dict()["interval_scope"]
    assert scope["covers"] == "monte-carlo" and "Monte Carlo error only" in scope["statement"]
    n = gated_report.data["n"]
    assert scope["test_images"] == n
    assert "Monte Carlo error only" in " ".join(_render(audit_table(gated_report)).split())
    assert "Monte Carlo error only" in report_html(gated_report)
    gated_report.test_set_error = True
    assert "sampling of the" in gated_report.to_dict()["interval_scope"]["statement"]
