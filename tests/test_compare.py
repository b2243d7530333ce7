"""``ftaudit compare``: paired differences on the same draws, the gate, layer matching, reports."""

from __future__ import annotations

import copy
import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import export_onnx

import ftaudit
from ftaudit.compare import (
    check_matching_layers,
    compare,
    exact_name_glob,
)
from ftaudit.errors import UserError
from ftaudit.models import load_model
from ftaudit.stats import kpp, kpp_index, paired_kpp_difference_interval

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "docs" / "compare.schema.json").read_text(encoding="utf-8"))
RunCli = Callable[..., tuple[int, str, str]]
FAST = ("--samples", "30", "--seed", "3")
YEAR = 365 * 86400.0


@pytest.fixture(scope="module")
def damaged_onnx(trained_convnet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained convnet with every crossbar weight noised: as good clean, worse under noise."""
    torch = pytest.importorskip("torch")
    damaged = copy.deepcopy(trained_convnet)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in damaged.parameters():
            if p.dim() > 1:
                p.add_(0.5 * p.std() * torch.randn(p.shape, generator=generator))
    return export_onnx(damaged, tmp_path_factory.mktemp("compare") / "damaged.onnx")


@pytest.fixture(scope="module")
def deeper_mlp_onnx(trained_mlp, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained MLP with one more Linear layer at the end: 3 crossbar layers instead of 2."""
    torch = pytest.importorskip("torch")
    deeper = torch.nn.Sequential(*copy.deepcopy(trained_mlp), torch.nn.Linear(4, 4))
    return export_onnx(deeper, tmp_path_factory.mktemp("compare") / "deeper.onnx")


def t_interval(values: np.ndarray) -> tuple[float, float]:
    """Student t 95% interval of the mean, from scipy (an independent implementation)."""
    stats = pytest.importorskip("scipy.stats")
    half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
    return values.mean() - half, values.mean() + half


# --- library ------------------------------------------------------------------------------------


def test_identical_models_differ_by_exactly_zero_and_pass(convnet_onnx, blobs_npz) -> None:
    report = compare(
        convnet_onnx,
        convnet_onnx,
        blobs_npz,
        sigmas=[0, 0.5, 1.0],
        samples=40,
        k=25,
        fail_if_worse=0.0,
    )
    for result in report.results:
        assert result.mean_difference == 0.0
        assert result.kpp_difference == 0.0
        interval = result.mean_difference_interval
        assert (interval.low, interval.high) == (0.0, 0.0)
        bootstrap = result.kpp_difference_interval
        assert bootstrap is not None  # 40 * 25 / 100 = 10 samples below the KPP rank
        assert (bootstrap.low, bootstrap.high) == (0.0, 0.0)
        assert np.array_equal(result.differences, np.zeros(40))
    assert [g.passed for g in report.gates] == [True, True, True]
    assert report.failed_gates() == []


def test_difference_matches_two_independent_audits(convnet_onnx, damaged_onnx, blobs_npz) -> None:
    sigmas = [0.3, 0.6]
    report = compare(convnet_onnx, damaged_onnx, blobs_npz, sigmas=sigmas, samples=30, seed=3)
    base = ftaudit.audit(convnet_onnx, blobs_npz, sigmas=sigmas, samples=30, seed=3)
    cand = ftaudit.audit(damaged_onnx, blobs_npz, sigmas=sigmas, samples=30, seed=3)
    for result, b, c in zip(report.results, base.results, cand.results, strict=True):
        assert np.array_equal(result.baseline.accuracies, b.accuracies)
        assert np.array_equal(result.candidate.accuracies, c.accuracies)
        by_hand = np.array([c.accuracies[i] - b.accuracies[i] for i in range(30)])
        assert result.mean_difference == pytest.approx(by_hand.mean(), abs=1e-15)
        low, high = t_interval(by_hand)
        assert result.mean_difference_interval.low == pytest.approx(low, abs=1e-9)
        assert result.mean_difference_interval.high == pytest.approx(high, abs=1e-9)
        assert result.kpp_difference == kpp(c.accuracies, 1) - kpp(b.accuracies, 1)
        assert result.kpp_difference_interval is None  # 30 samples: nothing below the 1st pct
        assert result.mean_difference < 0  # the damaged copy is worse under noise


def test_gate_fails_only_where_the_interval_lies_below_minus_tol(
    convnet_onnx, damaged_onnx, blobs_npz
) -> None:
    report = compare(
        convnet_onnx, damaged_onnx, blobs_npz, sigmas=[0, 0.3], samples=30, fail_if_worse=0.01
    )
    clean, noisy = report.gates
    assert clean.passed  # sigma 0: both models are exact and equally accurate
    assert not noisy.passed and noisy.interval.high < -0.01
    lenient = compare(
        convnet_onnx, damaged_onnx, blobs_npz, sigmas=[0.3], samples=30, fail_if_worse=0.5
    )
    assert lenient.failed_gates() == []


def test_layer_globs_select_the_same_positions_in_both(convnet_onnx, convnet_ts, blobs_npz) -> None:
    # the two formats name the weights differently; the globs follow the baseline's names
    report = compare(convnet_onnx, convnet_ts, blobs_npz, sigmas=[0.5], samples=10, layers=["0.*"])
    assert [layer["selected"] for layer in report.layers] == [True, False, False]
    alone = ftaudit.audit(convnet_onnx, blobs_npz, sigmas=[0.5], samples=10, layers=["0.*"])
    assert np.array_equal(report.results[0].baseline.accuracies, alone.results[0].accuracies)


def test_transposed_storage_is_paired_by_canonical_shape(
    mlp_onnx, mlp_matmul_onnx, blobs_npz
) -> None:
    """Gemm (out, in) and MatMul (in, out) storage of one MLP: same draws, same accuracies."""
    report = compare(mlp_onnx, mlp_matmul_onnx, blobs_npz, sigmas=[0.5], samples=20)
    assert np.abs(report.results[0].differences).max() <= 1 / 400  # at most one flipped image


def test_mismatched_layers_are_refused_naming_the_first(
    convnet_onnx, mlp_onnx, deeper_mlp_onnx
) -> None:
    with pytest.raises(UserError, match=r"crossbar layer 0 differs: baseline '0.weight'"):
        check_matching_layers(load_model(convnet_onnx), load_model(mlp_onnx))
    with pytest.raises(UserError, match="baseline has 2 crossbar layers and the candidate 3"):
        check_matching_layers(load_model(mlp_onnx), load_model(deeper_mlp_onnx))


def test_exact_name_glob_escapes_metacharacters() -> None:
    import fnmatch

    for name in ("a*b", "w?[0]", "plain.weight", "[x]"):
        glob = exact_name_glob(name)
        assert fnmatch.fnmatchcase(name, glob)
        assert not fnmatch.fnmatchcase(name + "x", glob)
    assert not fnmatch.fnmatchcase("aXb", exact_name_glob("a*b"))


def test_paired_bootstrap_matches_a_direct_loop() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(60, 100, 50) / 100
    cand = np.clip(base - rng.integers(0, 5, 50) / 100, 0, 1)
    interval = paired_kpp_difference_interval(
        base, cand, 20, rng=np.random.default_rng(7), resamples=300
    )
    picks = np.random.default_rng(7).integers(0, 50, size=(300, 50))
    index = kpp_index(50, 20)
    direct = [np.sort(cand[p])[index] - np.sort(base[p])[index] for p in picks]
    assert interval is not None
    assert interval.low == np.quantile(direct, 0.025, method="inverted_cdf")
    assert interval.high == np.quantile(direct, 0.975, method="inverted_cdf")
    shifted = paired_kpp_difference_interval(base, base + 0.1, 20, rng=np.random.default_rng(1))
    assert shifted is not None
    assert shifted.low == pytest.approx(0.1) and shifted.high == pytest.approx(0.1)
    assert paired_kpp_difference_interval(base, cand, 1, rng=np.random.default_rng(1)) is None


# --- command line --------------------------------------------------------------------------------


def test_cli_identical_models_pass_the_gate(run_cli: RunCli, convnet_onnx, blobs_npz) -> None:
    code, out, err = run_cli(
        "compare", convnet_onnx, convnet_onnx, "--data", blobs_npz, "--sigma", "0.5",
        *FAST, "--fail-if-worse", "0",
    )  # fmt: skip
    assert code == 0, err
    assert "+0.00 [+0.00, +0.00]" in out
    assert "ok" in out


def test_cli_worse_candidate_exits_1_with_one_line_per_failed_sigma(
    run_cli: RunCli, convnet_onnx, damaged_onnx, blobs_npz, tmp_path: Path
) -> None:
    report = tmp_path / "compare.json"
    code, out, err = run_cli(
        "compare", convnet_onnx, damaged_onnx, "--data", blobs_npz, "--sigma", "0,0.3,0.6",
        *FAST, "--fail-if-worse", "0.01", "--json", report, "-q",
        "--junit", tmp_path / "gates.xml",
    )  # fmt: skip
    assert code == 1
    assert out == ""
    import xml.etree.ElementTree as ET

    suite = ET.parse(tmp_path / "gates.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("3", "2")
    cases = suite.findall("testcase")
    assert [case.find("failure") is None for case in cases] == [True, False, False]
    assert cases[1].get("name") == ("upper 95% bound of the mean difference >= -0.01 at sigma 0.3")
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(
        "ftaudit: gate FAILED: candidate - baseline mean accuracy at sigma=0.3 is -"
    )
    assert lines[1].startswith(
        "ftaudit: gate FAILED: candidate - baseline mean accuracy at sigma=0.6"
    )
    assert "(--fail-if-worse 0.01, Holm-corrected over the rows)" in lines[0]
    written = json.loads(report.read_text())  # the report is written before the gate exits
    assert [g["passed"] for g in written["gates"]] == [True, False, False]
    assert written["gate_correction"] == "holm" and "Holm" in written["gate_rule"]


def test_cli_json_validates_and_csv_has_one_row_per_sigma(
    run_cli: RunCli, convnet_onnx, damaged_onnx, blobs_npz, tmp_path: Path
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    table = tmp_path / "compare.csv"
    code, out, err = run_cli(
        "compare", convnet_onnx, damaged_onnx, "--data", blobs_npz, "--sigma", "0,0.5",
        "--samples", "40", "--k", "25", "--json", "-", "--csv", table,
    )  # fmt: skip
    assert code == 0, err
    payload = json.loads(out)
    jsonschema.validate(payload, SCHEMA)
    assert set(payload) == {*SCHEMA["required"], "device_effects"}
    assert payload["device_effects"] is None
    assert "time_s" not in payload["results"][0]
    assert payload["command"][:2] == ["ftaudit", "compare"]
    assert payload["baseline"]["sha256"] != payload["candidate"]["sha256"]
    assert payload["results"][1]["kpp_difference_interval"]["method"] == (
        "paired percentile bootstrap"
    )
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert [float(r["sigma"]) for r in rows] == [0.0, 0.5]
    assert float(rows[1]["mean_difference"]) == payload["results"][1]["mean_difference"]


def test_cli_reads_fail_if_worse_from_the_config(
    run_cli: RunCli, convnet_onnx, damaged_onnx, blobs_npz, tmp_path: Path
) -> None:
    config = tmp_path / "ftaudit.toml"
    config.write_text(f'data = "{blobs_npz}"\nsigma = 0.5\nsamples = 30\nfail_if_worse = 0.01\n')
    code, _, err = run_cli("compare", convnet_onnx, damaged_onnx, "--config", config, "-q")
    assert code == 1
    assert "sigma=0.5" in err


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (("--fail-if-worse", "1.5"), "--fail-if-worse is a fraction in [0, 1]"),
        (("--fail-if-worse", "-0.1"), "--fail-if-worse is a fraction in [0, 1]"),
        (("--gate-correction", "bonf"), "--gate-correction must be one of holm, per-row"),
        (("--samples", "0"), "--samples must be at least 1"),
        (("--layers", "nope*"), "no crossbar layer is selected"),
        (("--target-ci", "0.1"), "No such option"),
        (("--time", "soon"), "is not a duration"),
        (("--time", "-1h"), "negative"),
        (("--stuck-at", "1.5,0"), "[0, 1]"),
        (("--stuck-at", "0.6,0.6"), "> 1"),
        (("--stuck-at", "0.1"), "two fractions"),
        (("--time", "1d", "--compensation", "maybe"), "unknown compensation"),
        (("--time", "1d", "--drift-t0", "0"), "t0"),
        (("--drift-nu", "0.05"), "without --time"),
    ],
)
def test_cli_bad_options_exit_2_and_write_nothing(
    run_cli: RunCli, convnet_onnx, blobs_npz, tmp_path: Path, extra, expect
) -> None:
    report = tmp_path / "out.json"
    code, out, err = run_cli(
        "compare", convnet_onnx, convnet_onnx, "--data", blobs_npz, "--sigma", "0.3",
        "--samples", "5", "--json", report, *extra,
    )  # fmt: skip
    assert code == 2, err
    assert out == ""
    assert expect in err
    assert "Traceback" not in err
    assert not report.exists()
    assert list(tmp_path.iterdir()) == []


def test_cli_mismatched_models_exit_2(
    run_cli: RunCli, convnet_onnx, mlp_onnx, blobs_npz, tmp_path: Path
) -> None:
    report = tmp_path / "out.json"
    code, out, err = run_cli(
        "compare", convnet_onnx, mlp_onnx, "--data", blobs_npz, "--sigma", "0.3", "--json", report
    )
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ftaudit: error: crossbar layer 0 differs")
    assert not report.exists()


def test_cli_missing_inputs_exit_2(run_cli: RunCli, convnet_onnx, blobs_npz, tmp_path) -> None:
    for args in (
        ("compare", convnet_onnx, tmp_path / "missing.onnx", "--data", blobs_npz, "--sigma", "1"),
        ("compare", convnet_onnx, convnet_onnx, "--sigma", "0.3"),
        ("compare", convnet_onnx, convnet_onnx, "--data", blobs_npz),
        ("compare", convnet_onnx, convnet_onnx, "--data", blobs_npz, "--sigma", "0.3",
         "--json", tmp_path / "no" / "such" / "folder.json"),
    ):  # fmt: skip
        code, out, err = run_cli(*args)
        assert code == 2, (args, err)
        assert out == ""
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("ftaudit: error:")


@pytest.mark.parametrize("name", ["compare", "sensitivity"])
def test_schemas_are_valid_and_document_every_property(name: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((REPO / "docs" / f"{name}.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for key, sub in node.get("properties", {}).items():
                assert "description" in sub, f"{where}.{key} has no description"
            for key, sub in node.items():
                walk(sub, f"{where}.{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{where}[{i}]")

    walk(schema, "$")


def test_config_gate_of_the_wrong_type_exits_2(
    run_cli: RunCli, convnet_onnx, blobs_npz, tmp_path: Path
) -> None:
    config = tmp_path / "ftaudit.toml"
    config.write_text(f'data = "{blobs_npz}"\nsigma = 0.5\nfail_if_worse = "a lot"\n')
    code, out, err = run_cli("compare", convnet_onnx, convnet_onnx, "--config", config)
    assert code == 2
    assert out == ""
    assert "'fail_if_worse' has the wrong type" in err


# --- drift and stuck-at faults ----------------------------------------------------------------


def row_labels(results) -> list[tuple[float, float | None, str | None]]:
    return [(r.sigma, r.time_s, r.compensation) for r in results]


def test_identical_models_with_drift_and_faults_differ_by_exactly_zero(
    convnet_onnx, blobs_npz
) -> None:
    """Drift exponents and stuck masks are keyed by (sample, layer): the same for both models."""
    report = compare(
        convnet_onnx, convnet_onnx, blobs_npz, sigmas=[0, 0.4], samples=12, seed=1,
        times=[1.0, YEAR], stuck_at=(0.02, 0.01), fail_if_worse=0.0,
    )  # fmt: skip
    expected = [(s, t, c) for s in (0.0, 0.4) for t in (1.0, YEAR) for c in ("none", "global")]
    assert row_labels(report.results) == expected
    assert row_labels(report.gates) == expected
    for result in report.results:
        assert np.array_equal(result.differences, np.zeros(12))
        assert result.mean_difference == 0.0 and result.kpp_difference == 0.0
        interval = result.mean_difference_interval
        assert (interval.low, interval.high) == (0.0, 0.0)
        assert interval.method != "exact"  # stuck cells are random even at sigma 0
    assert report.failed_gates() == []
    rows = {(r.sigma, r.time_s, r.compensation): r for r in report.results}
    # the effects were applied: faults cost accuracy at sigma 0, a year of drift costs more
    assert rows[0.0, 1.0, "none"].baseline.summary.mean < report.baseline.clean_accuracy
    assert (
        rows[0.4, YEAR, "none"].baseline.summary.mean < rows[0.4, 1.0, "none"].baseline.summary.mean
    )
    assert report.to_dict()["device_effects"] == {
        "times_s": [1.0, YEAR],
        "compensation": ["none", "global"],
        "drift": {"t0_s": 20.0, "nu_mean": 0.05, "nu_std": 0.01},
        "stuck_at": {"p_low": 0.02, "p_high": 0.01},
    }


def test_drift_difference_matches_two_independent_audits(
    convnet_onnx, damaged_onnx, blobs_npz
) -> None:
    options = {
        "sigmas": [0.0, 0.3],
        "samples": 20,
        "seed": 3,
        "times": [3600.0, YEAR],
        "compensation": "global",
        "drift_nu": 0.08,
        "stuck_at": (0.01, 0.0),
    }
    report = compare(convnet_onnx, damaged_onnx, blobs_npz, **options)
    base = ftaudit.audit(convnet_onnx, blobs_npz, **options)
    cand = ftaudit.audit(damaged_onnx, blobs_npz, **options)
    assert row_labels(report.results) == [
        (0.0, 3600.0, "global"), (0.0, YEAR, "global"),
        (0.3, 3600.0, "global"), (0.3, YEAR, "global"),
    ]  # fmt: skip
    for result, b, c in zip(report.results, base.results, cand.results, strict=True):
        assert (b.sigma, b.time_s, b.compensation) == (c.sigma, c.time_s, c.compensation)
        assert (result.sigma, result.time_s, result.compensation) == (
            b.sigma, b.time_s, b.compensation,
        )  # fmt: skip
        by_hand = np.array([c.accuracies[i] - b.accuracies[i] for i in range(20)])
        assert result.mean_difference == pytest.approx(by_hand.mean(), abs=1e-15)
        low, high = t_interval(by_hand)
        assert result.mean_difference_interval.low == pytest.approx(low, abs=1e-9)
        assert result.mean_difference_interval.high == pytest.approx(high, abs=1e-9)
        assert result.kpp_difference == kpp(c.accuracies, 1) - kpp(b.accuracies, 1)
    assert report.results[-1].mean_difference < 0  # the damaged copy is worse under noise
    assert report.to_dict()["device_effects"] == base.device_effects


def test_cli_drift_rows_labels_schema_csv_and_width(
    run_cli: RunCli, convnet_onnx, blobs_npz, tmp_path: Path
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    code, out, err = run_cli(
        "compare", convnet_onnx, convnet_onnx, "--data", blobs_npz, "--sigma", "0.2,0.4",
        "--samples", "6", "--time", "1s,1y", "--stuck-at", "0.01,0.01", "--fail-if-worse", "0",
        "--json", tmp_path / "c.json", "--csv", tmp_path / "c.csv",
    )  # fmt: skip
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    assert " global " in out and "gdc" not in out and "1y" in out
    assert "stuck-at: 1% of cells low, 1% high" in out
    payload = json.loads((tmp_path / "c.json").read_text())
    jsonschema.validate(payload, SCHEMA)
    expected = [[s, t, c] for s in (0.2, 0.4) for t in (1.0, YEAR) for c in ("none", "global")]
    assert [[r["sigma"], r["time_s"], r["compensation"]] for r in payload["results"]] == expected
    assert [[g["sigma"], g["time_s"], g["compensation"]] for g in payload["gates"]] == expected
    assert all(r["mean_difference"] == 0 for r in payload["results"])
    rows = list(csv.DictReader(io.StringIO((tmp_path / "c.csv").read_text())))
    assert [[float(r["sigma"]), float(r["time_s"]), r["compensation"]] for r in rows] == expected
    assert {r["gate"] for r in rows} == {"passed"}


def test_cli_drift_gate_fails_per_row_naming_time_and_compensation(
    run_cli: RunCli, convnet_onnx, damaged_onnx, blobs_npz
) -> None:
    code, out, err = run_cli(
        "compare", convnet_onnx, damaged_onnx, "--data", blobs_npz, "--sigma", "0,0.3", *FAST,
        "--time", "1h,1y", "--drift-nu-std", "0", "--compensation", "global",
        "--fail-if-worse", "0.01", "-q",
    )  # fmt: skip
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert lines == [line for line in lines if line.startswith("ftaudit: gate FAILED: ")]
    # sigma 0: one nu for all cells, compensated exactly, so both keep their clean accuracy
    assert len(lines) == 2, err
    assert "at sigma=0.3, t=1h, compensation=global is -" in lines[0]
    assert "at sigma=0.3, t=1y, compensation=global is -" in lines[1]


def test_cli_sigma_defaults_to_the_profile(run_cli: RunCli, convnet_onnx, blobs_npz) -> None:
    code, out, err = run_cli(
        "compare", convnet_onnx, convnet_onnx, "--data", blobs_npz, "--noise", "pcm",
        "--samples", "4", "--time", "1d", "--compensation", "global", "--json", "-",
    )  # fmt: skip
    assert code == 0, err
    payload = json.loads(out)
    assert [(r["sigma"], r["time_s"], r["compensation"]) for r in payload["results"]] == [
        (0.63, 86400.0, "global")
    ]
    assert payload["device_effects"]["drift"] == {"t0_s": 20.0, "nu_mean": 0.05, "nu_std": 0.01}


def test_table_fits_80_columns_with_wide_values(convnet_onnx, blobs_npz) -> None:
    """Worst realistic cells (two-digit negative differences, a ΔKPP interval) in both layouts."""
    from dataclasses import replace

    from rich.console import Console

    from ftaudit.report.compare_report import compare_table
    from ftaudit.results import Interval

    wide = {
        "mean_difference": -0.1234,
        "mean_difference_interval": Interval(-0.1412, -0.1050, 0.95, "t"),
        "kpp_difference": -0.2,
        "kpp_difference_interval": Interval(-0.25, -0.15, 0.95, "paired percentile bootstrap"),
    }
    for drift in ({}, {"times": [60.0, YEAR], "stuck_at": (0.01, 0.01)}):
        report = compare(
            convnet_onnx, convnet_onnx, blobs_npz, sigmas=[0.05, 0.63], samples=2,
            fail_if_worse=0.01, **drift,
        )  # fmt: skip
        report.results[:] = [replace(r, **wide) for r in report.results]
        console = Console(width=80, record=True)
        console.print(compare_table(report))
        text = console.export_text()
        assert "…" not in text
        assert "-12.34 [-14.12, -10.50]" in text
        assert max(len(line.rstrip()) for line in text.splitlines()) <= 80


def _paired_rows(differences_by_sigma: dict[float, np.ndarray]) -> list:
    """Paired rows whose candidate - baseline differences are exactly the given arrays."""
    from ftaudit.compare import paired_result
    from ftaudit.results import SigmaResult
    from ftaudit.stats import summarize

    rows = []
    for sigma, differences in differences_by_sigma.items():
        base = np.full(differences.size, 0.8)
        cand = base + differences
        results = [SigmaResult(sigma, summarize(a, k=1), a, 0.9) for a in (base, cand)]
        rows.append(paired_result(*results, k=1, rng=np.random.default_rng(0)))
    return rows


def test_holm_step_down_by_hand() -> None:
    from ftaudit.stats import holm_rejections

    # sorted: 0.001 <= 0.025/4 (reject); 0.012 > 0.025/3 (stop: nothing else rejected)
    assert holm_rejections([0.001, 0.02, 0.012, 0.5], 0.025) == [True, False, False, False]
    # sorted: 0.001 <= 0.025/3, 0.01 <= 0.025/2, 0.02 <= 0.025/1: all rejected
    assert holm_rejections([0.02, 0.001, 0.01], 0.025) == [True, True, True]


def test_gate_is_holm_corrected_over_the_rows_by_default() -> None:
    """Three rows: one clearly worse (p ~ 1e-6), one marginally (p ~ 0.015), one not. Per row
    at 2.5% both worse rows fail; Holm fails the clear one (1e-6 <= 0.025/3) and then passes
    the marginal one (0.015 > 0.025/2). p-values checked against scipy's t distribution."""
    from scipy import stats as scipy_stats

    from ftaudit.compare import evaluate_worse_gates

    rng = np.random.default_rng(4)
    noise = rng.standard_normal(200)
    noise = (noise - noise.mean()) / noise.std(ddof=1)  # exact mean 0, sd 1
    tolerance, se = 0.01, 0.02 / math.sqrt(200)
    t_marginal = scipy_stats.t.ppf(0.015, 199)
    rows = _paired_rows(
        {
            0.3: -0.05 + 0.02 * noise,
            0.6: -tolerance + t_marginal * se + 0.02 * noise,
            0.9: 0.0 + 0.02 * noise,
        }
    )
    holm = evaluate_worse_gates(rows, tolerance)
    per_row = evaluate_worse_gates(rows, tolerance, "per-row")
    for gate, row in zip(holm, rows, strict=True):
        d = row.candidate.accuracies - row.baseline.accuracies
        t = (d.mean() + tolerance) / (d.std(ddof=1) / math.sqrt(d.size))
        assert gate.p_value == pytest.approx(scipy_stats.t.cdf(t, d.size - 1), rel=1e-6)
    assert holm[1].p_value == pytest.approx(0.015, rel=1e-6)
    assert [g.passed for g in per_row] == [False, False, True]
    assert [g.passed for g in holm] == [False, True, True]
    assert "Holm-corrected" in holm[0].message() and "per row" in per_row[0].message()
