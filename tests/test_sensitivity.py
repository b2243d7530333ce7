"""``ftaudit sensitivity``: per-layer runs against independent audits, ranking, keep-digital."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import ftaudit
from ftaudit.sensitivity import DEFAULT_SENSITIVITY_SAMPLES, sensitivity

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "docs" / "sensitivity.schema.json").read_text(encoding="utf-8"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RunCli = Callable[..., tuple[int, str, str]]
#: sigma where every live layer of the tiny MLP loses KPP, so the dead layer is clearly last
SIGMA = 1.2


@pytest.fixture(scope="module")
def dead_branch_onnx(trained_mlp, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained MLP plus a side branch ``flat @ zeros`` added to the hidden layer.

    The branch is a crossbar layer whose perturbation cannot change any output: multiplicative
    (lognormal) noise keeps zero weights zero. Layers in order: fc1_w, dead_w, fc2_w.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    linear1, linear2 = trained_mlp[1], trained_mlp[3]
    tensors = {
        "fc1_w": linear1.weight.detach().numpy().T.copy(),
        "fc1_b": linear1.bias.detach().numpy(),
        "dead_w": np.zeros((64, 16), np.float32),
        "fc2_w": linear2.weight.detach().numpy().T.copy(),
        "fc2_b": linear2.bias.detach().numpy(),
    }
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "fc1_w"], ["h0"]),
        helper.make_node("MatMul", ["flat", "dead_w"], ["side"]),
        helper.make_node("Add", ["h0", "side"], ["h1"]),
        helper.make_node("Add", ["h1", "fc1_b"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["h3"]),
        helper.make_node("MatMul", ["h3", "fc2_w"], ["h4"]),
        helper.make_node("Add", ["h4", "fc2_b"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dead_branch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(value, name) for name, value in tensors.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("sensitivity") / "dead_branch.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def ranked(dead_branch_onnx, blobs_npz):
    return sensitivity(dead_branch_onnx, blobs_npz, sigmas=[SIGMA], samples=30, seed=1)


def test_layer_order_of_the_fixture(dead_branch_onnx) -> None:
    from ftaudit.models import load_model

    assert [layer.name for layer in load_model(dead_branch_onnx).layers] == [
        "fc1_w",
        "dead_w",
        "fc2_w",
    ]


def test_untouched_layer_ranks_last_with_exactly_zero_effect(ranked) -> None:
    assert [layer.rank for layer in ranked.layers] == [1, 2, 3]
    last = ranked.layers[-1]
    assert last.name == "dead_w"
    assert last.kpp_drop == [0.0]  # perturbing only it leaves the clean accuracy, exactly
    assert last.only[0].kpp == ranked.clean_accuracy
    # keeping it exact recovers nothing: same draws for the other layers, same accuracies
    assert last.kpp_recovered == [0.0]
    assert all(layer.score > 0 for layer in ranked.layers[:2])


def test_runs_match_independent_audits(ranked, dead_branch_onnx, blobs_npz) -> None:
    def kpp_of(**selection) -> float:
        report = ftaudit.audit(
            dead_branch_onnx, blobs_npz, sigmas=[SIGMA], samples=30, seed=1, **selection
        )
        return report.results[0].summary.kpp

    assert ranked.all_layers[0].kpp == kpp_of()
    for layer in ranked.layers:
        assert layer.only[0].kpp == kpp_of(layers=[layer.name])
        assert layer.all_but[0].kpp == kpp_of(exclude=[layer.name])
        assert layer.kpp_drop[0] == ranked.clean_accuracy - layer.only[0].kpp
        assert layer.kpp_recovered[0] == layer.all_but[0].kpp - ranked.all_layers[0].kpp
    scores = [layer.score for layer in ranked.layers]
    assert scores == sorted(scores, reverse=True)


def test_target_kpp_known_answers(dead_branch_onnx, blobs_npz, ranked) -> None:
    def select(target: float):
        report = sensitivity(
            dead_branch_onnx, blobs_npz, sigmas=[SIGMA], samples=30, seed=1, target_kpp=target
        )
        return report.target

    trivial = select(0.0)
    assert trivial.status == "already_met" and trivial.digital == []
    # the clean accuracy is reached exactly when both live layers are digital; the dead layer
    # may stay analog because its noise changes nothing
    clean = select(ranked.clean_accuracy)
    assert clean.status == "met"
    assert sorted(clean.digital) == ["fc1_w", "fc2_w"]
    assert clean.steps[-1].points[0].kpp == ranked.clean_accuracy
    assert [step.meets for step in clean.steps] == [False, False, True]
    assert len(clean.steps[1].digital) == 1  # one digital layer: its all-but run, reused
    assert clean.steps[1].points == ranked.layers[0].all_but


def test_target_reached_only_with_every_layer_digital_says_so(dead_branch_onnx, blobs_npz) -> None:
    # the dead layer stays exact (not ranked), so both analog layers must go digital
    ranked_live = sensitivity(
        dead_branch_onnx, blobs_npz, sigmas=[SIGMA], samples=30, seed=1,
        exclude=["dead_w"], target_kpp=1.0,
    )  # fmt: skip
    assert ranked_live.clean_accuracy == 1.0
    target = ranked_live.target
    assert target.status == "all_digital"
    assert sorted(target.digital) == ["fc1_w", "fc2_w"]
    assert "out of reach with any layer analog" in target.message()
    assert target.to_dict()["status"] == "all_digital"
    assert ranked_live.warnings == [target.message()]  # the CLI prints it on stderr


def test_target_unreachable_above_the_clean_accuracy(dead_branch_onnx, blobs, tmp_path) -> None:
    x, y = blobs
    y = y.copy()
    y[:40] = (y[:40] + 1) % 4  # 10% wrong labels: the clean accuracy is at most 90%
    data = tmp_path / "noisy_labels.npz"
    np.savez(data, x=x, y=y)
    report = sensitivity(dead_branch_onnx, data, sigmas=[SIGMA], samples=10, target_kpp=0.95)
    assert report.clean_accuracy <= 0.9
    assert report.target.status == "unreachable"
    assert report.target.digital == []
    assert "out of reach" in report.target.message()
    assert report.warnings == [report.target.message()]


def test_one_analog_layer_needs_one_run(dead_branch_onnx, blobs_npz) -> None:
    report = sensitivity(
        dead_branch_onnx, blobs_npz, sigmas=[SIGMA], samples=10, layers=["fc1_w"], target_kpp=1.0
    )
    (layer,) = report.layers
    assert layer.only == report.all_layers
    assert layer.all_but[0].kpp == report.clean_accuracy and layer.all_but[0].samples == 0
    assert report.always_digital == ["dead_w", "fc2_w"]


# --- drift and stuck-at faults ----------------------------------------------------------------

YEAR = 365 * 86400.0
#: sigma 0 is random with faults/drift, so it is a real row here, not a copy of the clean model
DRIFT_SIGMAS = [0.0, SIGMA]
DRIFT_OPTIONS = {"times": [YEAR], "stuck_at": (0.01, 0.0)}


@pytest.fixture(scope="module")
def drifted(dead_branch_onnx, blobs_npz):
    return sensitivity(
        dead_branch_onnx, blobs_npz, sigmas=DRIFT_SIGMAS, samples=12, seed=3, **DRIFT_OPTIONS
    )


def _keys(points) -> list[tuple]:
    return [(p.sigma, p.time_s, p.compensation) for p in points]


def test_drift_rows_are_sigma_time_compensation(drifted) -> None:
    expected = [(s, YEAR, c) for s in DRIFT_SIGMAS for c in ("none", "global")]
    assert _keys(drifted.all_layers) == expected
    assert drifted.rows == drifted.all_layers
    for layer in drifted.layers:
        assert _keys(layer.only) == expected and _keys(layer.all_but) == expected
        assert len(layer.kpp_drop) == len(layer.kpp_recovered) == 4
        assert layer.score == pytest.approx(np.mean(layer.kpp_drop))
    assert drifted.all_layers[1].label == "sigma=0, t=1y, compensation=global"
    # faults make sigma 0 random: sampled, with a real interval, not the clean model's "exact"
    assert drifted.all_layers[0].samples == 12
    assert drifted.all_layers[0].kpp_interval.method != "exact"
    assert drifted.device_effects["times_s"] == [YEAR]
    assert drifted.device_effects["stuck_at"] == {"p_low": 0.01, "p_high": 0.0}


def test_dead_layer_still_last_and_exactly_zero_under_drift_and_faults(drifted) -> None:
    last = drifted.layers[-1]
    assert last.name == "dead_w" and last.rank == 3
    assert last.kpp_drop == [0.0] * 4  # its zero weights stay zero: stuck, drifted, compensated
    assert last.kpp_recovered == [0.0] * 4  # the other layers keep their draws, masks and nu
    assert all(p.kpp == drifted.clean_accuracy for p in last.only)
    assert all(layer.score > 0 for layer in drifted.layers[:2])


def test_drift_points_match_independent_audits(drifted, dead_branch_onnx, blobs_npz) -> None:
    def points(**selection) -> list[tuple]:
        report = ftaudit.audit(
            dead_branch_onnx, blobs_npz, sigmas=DRIFT_SIGMAS, samples=12, seed=3,
            **DRIFT_OPTIONS, **selection,
        )  # fmt: skip
        return [
            (r.sigma, r.time_s, r.compensation, r.summary.kpp, r.summary.mean)
            for r in report.results
        ]

    def mine(sensitivity_points) -> list[tuple]:
        return [(p.sigma, p.time_s, p.compensation, p.kpp, p.mean) for p in sensitivity_points]

    assert mine(drifted.all_layers) == points()
    for layer in drifted.layers:
        assert mine(layer.only) == points(layers=[layer.name])
        assert mine(layer.all_but) == points(exclude=[layer.name])
        assert layer.kpp_drop == [drifted.clean_accuracy - p.kpp for p in layer.only]


def test_unselected_layers_keep_exactly_their_clean_weights(
    convnet_ts, blobs_npz, monkeypatch
) -> None:
    """Digital layers get no noise, drift or faults: every forward pass sees their clean
    weights, while the one analog layer is changed."""
    from ftaudit.models import load_model
    from ftaudit.models.torchscript import TorchScriptRunner

    model = load_model(convnet_ts)
    clean = model.clean_weights()
    analog = model.layers[1].name
    seen: list[dict[str, np.ndarray]] = []
    original = TorchScriptRunner.logits

    def spy(self: TorchScriptRunner) -> np.ndarray:
        params = dict(self.module.named_parameters())
        seen.append({name: params[name].detach().numpy().copy() for name in clean})
        return original(self)

    monkeypatch.setattr(TorchScriptRunner, "logits", spy)
    report = sensitivity(
        model, blobs_npz, sigmas=[0.2], samples=4, layers=[analog], times=[YEAR],
        stuck_at=(0.05, 0.05), limit=40,
    )  # fmt: skip
    assert [layer.name for layer in report.layers] == [analog]
    assert len(seen) > 4
    for weights in seen:
        for name, value in weights.items():
            if name != analog:
                assert np.array_equal(value, clean[name]), name
    assert any(not np.array_equal(w[analog], clean[analog]) for w in seen)


def test_target_kpp_must_hold_at_every_row(dead_branch_onnx, blobs_npz, drifted) -> None:
    report = sensitivity(
        dead_branch_onnx, blobs_npz, sigmas=DRIFT_SIGMAS, samples=12, seed=3,
        target_kpp=drifted.clean_accuracy, **DRIFT_OPTIONS,
    )  # fmt: skip
    target = report.target
    assert target.status == "met" and sorted(target.digital) == ["fc1_w", "fc2_w"]
    for step in target.steps:
        assert step.meets == all(p.kpp >= target.target_kpp for p in step.points)
        assert len(step.points) == 4
    assert [step.meets for step in target.steps] == [False, False, True]
    last = target.steps[-1].points  # only the dead layer analog: the clean model at every row
    assert all(p.kpp == drifted.clean_accuracy for p in last)
    trivial = sensitivity(
        dead_branch_onnx, blobs_npz, sigmas=DRIFT_SIGMAS, samples=12, seed=3, target_kpp=0.0,
        **DRIFT_OPTIONS,
    ).target  # fmt: skip
    assert "every sigma, time and compensation" in trivial.message()


# --- command line --------------------------------------------------------------------------------


def test_cli_table_json_csv_plot(run_cli: RunCli, dead_branch_onnx, blobs_npz, tmp_path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("matplotlib")
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    paths = {name: tmp_path / f"s.{name}" for name in ("json", "csv", "png")}
    code, out, err = run_cli(
        "sensitivity", dead_branch_onnx, "--data", blobs_npz, "--sigma", f"0.4,{SIGMA}",
        "--samples", "20", "--target-kpp", "0", "--json", paths["json"], "--csv", paths["csv"],
        "--plot", paths["png"],
    )  # fmt: skip
    assert code == 0, err
    assert "layer sensitivity" in out and "dead_w" in out
    assert "none need be digital" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    payload = json.loads(paths["json"].read_text())
    jsonschema.validate(payload, SCHEMA)
    assert set(SCHEMA["required"]) <= set(payload) <= set(SCHEMA["properties"])
    assert payload["device_effects"] is None
    assert "time_s" not in payload["all_layers"][0]
    assert payload["layers"][-1]["name"] == "dead_w"
    assert payload["target"]["status"] == "already_met"
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert len(rows) == 3 * 2
    assert rows[-1]["layer"] == "dead_w" and float(rows[-1]["kpp_drop"]) == 0.0
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC


def test_cli_default_samples_and_config(
    run_cli: RunCli, dead_branch_onnx, blobs_npz, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(
        "sensitivity", dead_branch_onnx, "--data", blobs_npz, "--sigma", "0.5", "--limit", "20",
        "--layers", "fc*", "--json", "-",
    )  # fmt: skip
    assert code == 0, err
    payload = json.loads(out)
    assert payload["samples"] == DEFAULT_SENSITIVITY_SAMPLES
    assert payload["always_digital"] == ["dead_w"]
    (tmp_path / "ftaudit.toml").write_text(f'data = "{blobs_npz}"\nsigma = 0.5\nsamples = 7\n')
    code, out, err = run_cli("sensitivity", dead_branch_onnx, "--json", "-", "--limit", "20")
    assert code == 0, err
    assert json.loads(out)["samples"] == 7


def test_cli_drift_table_json_csv(run_cli: RunCli, dead_branch_onnx, blobs_npz, tmp_path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    paths = {name: tmp_path / f"s.{name}" for name in ("json", "csv")}
    code, out, err = run_cli(
        "sensitivity", dead_branch_onnx, "--data", blobs_npz, "--sigma", f"0,{SIGMA}",
        "--samples", "6", "--time", "1h,1y", "--stuck-at", "0.01,0", "--json", paths["json"],
        "--csv", paths["csv"], "--target-kpp", "0",
    )  # fmt: skip
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "t 1h, 1y" in out and "per row" in out and " global " in out and "gdc" not in out
    assert "stuck-at: 1% of cells low" in out
    assert "every sigma, time and compensation" in out
    payload = json.loads(paths["json"].read_text())
    jsonschema.validate(payload, SCHEMA)
    expected = [(s, t, c) for s in (0.0, SIGMA) for t in (3600.0, YEAR) for c in ("none", "global")]
    assert [(p["sigma"], p["time_s"], p["compensation"]) for p in payload["all_layers"]] == expected
    assert payload["device_effects"]["times_s"] == [3600.0, YEAR]
    assert payload["layers"][-1]["name"] == "dead_w"
    assert len(payload["target"]["steps"][0]["kpp"]) == 8
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert len(rows) == 3 * 8
    labels = [(float(r["sigma"]), float(r["time_s"]), r["compensation"]) for r in rows]
    assert labels[:8] == expected
    assert all(float(r["kpp_drop"]) == 0.0 for r in rows if r["layer"] == "dead_w")


def test_cli_config_time_is_honoured(
    run_cli: RunCli, dead_branch_onnx, blobs_npz, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ftaudit.toml").write_text(
        f'data = "{blobs_npz}"\nsigma = 0.5\nsamples = 4\ntime = "1d"\ncompensation = "global"\n'
        "stuck_at = [0.02, 0.0]\n"
    )
    code, out, err = run_cli("sensitivity", dead_branch_onnx, "--json", "-", "--limit", "40")
    assert code == 0, err
    payload = json.loads(out)
    rows = [(p["sigma"], p["time_s"], p["compensation"]) for p in payload["all_layers"]]
    assert rows == [(0.5, 86400.0, "global")]
    assert payload["device_effects"]["stuck_at"] == {"p_low": 0.02, "p_high": 0.0}
    # the flag wins over the file
    code, out, err = run_cli(
        "sensitivity", dead_branch_onnx, "--json", "-", "--limit", "40", "--time", "1h",
        "--compensation", "none",
    )  # fmt: skip
    assert code == 0, err
    rows = [(p["sigma"], p["time_s"], p["compensation"]) for p in json.loads(out)["all_layers"]]
    assert rows == [(0.5, 3600.0, "none")]


def test_cli_noise_profile_gives_sigma_and_drift(
    run_cli: RunCli, dead_branch_onnx, blobs_npz
) -> None:
    from ftaudit.noise import get_noise_model

    profile = get_noise_model("pcm").profile
    code, out, err = run_cli(
        "sensitivity", dead_branch_onnx, "--data", blobs_npz, "--noise", "pcm", "--samples", "2",
        "--limit", "20", "--time", "1d", "--compensation", "none", "--json", "-",
    )  # fmt: skip
    assert code == 0, err
    payload = json.loads(out)
    assert payload["sigmas"] == list(profile.sigma)
    assert payload["device_effects"]["drift"]["nu_mean"] == profile.drift.nu_mean


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (("--time", "1 fortnight"), "is not a duration"),
        (("--time", "-1h"), "is negative"),
        (("--stuck-at", "0.5"), "--stuck-at needs two fractions"),
        (("--stuck-at", "0.7,0.6"), "add up to"),
        (("--drift-nu", "0.05"), "given without --time"),
        (("--time", "1y", "--compensation", "local"), "unknown compensation"),
        (("--time", "1y", "--drift-nu", "-1"), "nu"),
        (("--time", "1y", "--drift-t0", "0"), "t0"),
        (("--target-kpp", "1.5"), "--target-kpp is a fraction in [0, 1]"),
        (("--samples", "0"), "--samples must be at least 1"),
        (("--sigma", "-1"), "sigma must be a finite number >= 0"),
        (("--exclude", "*"), "no crossbar layer is selected"),
        (("--noise", "lognormall"), "lognormal"),
    ],
)
def test_cli_bad_options_exit_2_and_write_nothing(
    run_cli: RunCli, dead_branch_onnx, blobs_npz, tmp_path: Path, extra, expect
) -> None:
    args = ["sensitivity", dead_branch_onnx, "--data", blobs_npz, "--sigma", "0.3"]
    args += ["--samples", "5", "--json", tmp_path / "s.json", "--plot", tmp_path / "s.png"]
    code, out, err = run_cli(*args, *extra)
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftaudit: error:"), err
    assert expect in err
    assert list(tmp_path.iterdir()) == []


def test_cli_output_in_missing_folder_exits_2(run_cli: RunCli, dead_branch_onnx, blobs_npz) -> None:
    code, out, err = run_cli(
        "sensitivity", dead_branch_onnx, "--data", blobs_npz, "--sigma", "0.3",
        "--csv", "/nonexistent-folder/s.csv",
    )  # fmt: skip
    assert code == 2
    assert out == ""
    assert "folder /nonexistent-folder does not exist" in err


def test_import_stays_light() -> None:
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys
        import ftaudit, ftaudit.cli
        assert callable(ftaudit.compare) and callable(ftaudit.sensitivity)
        for command in (["compare", "--help"], ["sensitivity", "--help"]):
            assert ftaudit.cli.run(command) == 0
        heavy = [m for m in ("torch", "onnxruntime", "matplotlib") if m in sys.modules]
        assert not heavy, heavy
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_workers_give_the_same_points_under_drift(dead_branch_onnx, blobs_npz) -> None:
    """Workers get the drift and fault options too (one analog layer: one audit per run)."""
    options = {"sigmas": [SIGMA], "samples": 6, "seed": 3, "layers": ["fc1_w"], **DRIFT_OPTIONS}
    runs = [
        sensitivity(dead_branch_onnx, blobs_npz, workers=workers, **options) for workers in (1, 2)
    ]
    assert len(runs[0].all_layers) == 2
    assert runs[1].all_layers == runs[0].all_layers
    assert runs[1].layers[0].to_dict() == runs[0].layers[0].to_dict()
