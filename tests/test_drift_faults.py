"""Conductance drift, global drift compensation, stuck-at faults and device profiles.

Unit tests drive ``run_monte_carlo`` with a recording runner and check the perturbed weights
against the formulas of docs/methods.md (power-law drift, compensation, stuck values); the
end-to-end tests run ``ftaudit.audit`` and the CLI on the conftest models.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
from conftest import keyed_normals

import ftaudit
from ftaudit.effects_engine import EffectsEngine
from ftaudit.errors import UserError
from ftaudit.models.base import CrossbarLayer, ModelRunner
from ftaudit.montecarlo import Crossbar, run_monte_carlo
from ftaudit.noise import get_noise_model
from ftaudit.noise.device import load_device_file, shipped_profiles
from ftaudit.noise.drift import DriftModel
from ftaudit.noise.effects import DeviceEffects
from ftaudit.noise.stuck import StuckAt
from ftaudit.options import resolve_effects
from ftaudit.units import format_time, parse_stuck_at, parse_times

RunCli = Callable[..., tuple[int, str, str]]
SEED = 99
YEAR = 365 * 86400.0


class RecordingRunner(ModelRunner):
    """A fake runner that keeps a copy of every weight set it is given."""

    def __init__(self) -> None:
        self.calls: list[dict[str, np.ndarray]] = []

    def bind_data(self, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> None:
        raise NotImplementedError

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        self.calls.append({name: np.array(w, copy=True) for name, w in weights.items()})

    def logits(self) -> np.ndarray:
        raise NotImplementedError

    def count_correct(self) -> int:
        return 0


def make_layers() -> tuple[list[CrossbarLayer], dict[str, np.ndarray]]:
    """A conv layer and a transposed (in, out) MatMul layer with nonzero weights."""
    rng = np.random.default_rng(3)
    layers = [
        CrossbarLayer("conv", "Conv", 0, (6, 3, 3, 3), "float32"),
        CrossbarLayer("fc", "MatMul", 2, (40, 5), "float32", transposed=True),
    ]
    weights = {}
    for layer in layers:
        w = rng.normal(0, 1, layer.shape).astype(np.float32)
        weights[layer.name] = np.where(w == 0, np.float32(0.5), w)
    return layers, weights


def record(
    noise: str, effects: DeviceEffects | None, sigmas: list[float], samples: int = 2
) -> tuple[RecordingRunner, Crossbar]:
    layers, weights = make_layers()
    crossbar = Crossbar.prepare(layers, weights, get_noise_model(noise))
    runner = RecordingRunner()
    run_monte_carlo(
        runner, crossbar, sigmas, samples=samples, seed=SEED, n_data=1, k=1.0, effects=effects
    )
    return runner, crossbar


def lognormal_reference(crossbar: Crossbar, sample: int, sigma: float) -> dict[str, np.ndarray]:
    """w * exp(sigma z), z from the documented keying SeedSequence(seed, (sample, layer))."""
    result = {}
    for layer, state in zip(crossbar.layers, crossbar.states, strict=True):
        z = keyed_normals(SEED, (sample, layer.index), layer.canonical_shape)
        z = z.T if layer.transposed else z
        clean = state.unperturbed().astype(np.float64)
        result[layer.name] = clean * np.exp(sigma * z.astype(np.float64))
    return result


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "seconds"),
    [
        ("1s", (1.0,)),
        ("20s", (20.0,)),
        ("90", (90.0,)),
        ("1.5h", (5400.0,)),
        ("2min", (120.0,)),
        ("1s,1h,1d,1w,1y", (1.0, 3600.0, 86400.0, 604800.0, YEAR)),
        (" 1d , 2d ", (86400.0, 172800.0)),
        (3600, (3600.0,)),
        (["1h", 60], (3600.0, 60.0)),
        ("0", (0.0,)),
    ],
)
def test_parse_times(spec, seconds) -> None:
    assert parse_times(spec) == seconds


@pytest.mark.parametrize("spec", ["abc", "1x", "-1h", "", ",", "1 y s", "inf", "1e400s", True])
def test_parse_times_rejects(spec) -> None:
    with pytest.raises(UserError):
        parse_times(spec)


def test_format_time_round_trips() -> None:
    for label in ("1s", "20s", "2min", "1h", "1d", "1w", "1y", "2.5s"):
        assert format_time(parse_times(label)[0]) == label
    assert format_time(5400.0) == "90min"


def test_parse_stuck_at() -> None:
    assert parse_stuck_at("0.01,0.005") == (0.01, 0.005)
    assert parse_stuck_at([0, 1]) == (0.0, 1.0)
    for bad in ("0.1", "a,b", "0.1,0.2,0.3", [True, 0.1]):
        with pytest.raises(UserError):
            parse_stuck_at(bad)


@pytest.mark.parametrize(
    "options",
    [
        {"stuck_at": (1.5, 0.0)},
        {"stuck_at": (-0.1, 0.0)},
        {"stuck_at": (0.6, 0.5)},
        {"stuck_at": (math.nan, 0.0)},
        {"times": [-1.0]},
        {"times": [1.0], "drift_nu": -0.05},
        {"times": [1.0], "drift_nu_std": -1.0},
        {"times": [1.0], "drift_t0": 0.0},
        {"times": [1.0], "compensation": "local"},
        {"drift_nu": 0.05},
        {"compensation": "global"},
    ],
)
def test_resolve_effects_rejects(options) -> None:
    with pytest.raises(UserError):
        resolve_effects(**options)


def test_gdc_is_an_alias_of_global() -> None:
    gdc = resolve_effects(times=[1.0], compensation="gdc")
    assert gdc is not None and gdc.compensations == ("global",)
    assert gdc == resolve_effects(times=[1.0], compensation="global")


def test_resolve_effects_defaults_and_nothing() -> None:
    assert resolve_effects() is None
    assert resolve_effects(stuck_at=(0.0, 0.0)) is None  # P = 0: no effects at all
    effects = resolve_effects(times=[1.0, 3600.0])
    assert effects is not None
    assert effects.drift == DriftModel(20.0, 0.05, 0.01)
    assert effects.compensations == ("none", "global")
    assert [(c.sigma, c.time_s, c.compensation) for c in effects.conditions([0.1, 0.2])] == [
        (s, t, c) for s in (0.1, 0.2) for t in (1.0, 3600.0) for c in ("none", "global")
    ]
    profile = get_noise_model("pcm").profile
    tuned = resolve_effects(times=[1.0], drift_nu=0.1, compensation="none", profile=profile)
    assert tuned is not None and tuned.drift == DriftModel(20.0, 0.1, 0.01)
    assert tuned.compensations == ("none",)


# --- drift ------------------------------------------------------------------------------------


def test_drift_without_compensation_is_the_power_law() -> None:
    """nu spread 0: every weight at time t is the programmed weight times (t/t0)^-nu; t <= t0
    (and the programming draws) are exactly those of a run without drift."""
    nu, t0 = 0.06, 20.0
    times = [10.0, 3600.0, YEAR]
    effects = DeviceEffects(
        times=tuple(times), compensations=("none",), drift=DriftModel(t0, nu, 0.0)
    )
    runner, crossbar = record("lognormal", effects, [0.2])
    plain, _ = record("lognormal", None, [0.2])
    for sample in range(2):
        calls = runner.calls[sample * len(times) : (sample + 1) * len(times)]
        reference = lognormal_reference(crossbar, sample, 0.2)
        for t, weights in zip(times, calls, strict=True):
            factor = (max(t, t0) / t0) ** -nu
            for name, w in weights.items():
                np.testing.assert_allclose(w, reference[name] * factor, rtol=2e-6, atol=1e-7)
        for name, w in calls[0].items():  # t = 10 s < t0: no drift, bit for bit
            assert np.array_equal(w, plain.calls[sample][name])


def test_drift_acts_per_cell_on_device_models() -> None:
    """rram: each cell's conductance drifts; with one nu for all, so does the whole weight."""
    effects = DeviceEffects(times=(YEAR,), compensations=("none",), drift=DriftModel(20, 0.05, 0))
    runner, _ = record("rram", effects, [0.1])
    plain, _ = record("rram", None, [0.1])
    factor = (YEAR / 20) ** -0.05
    for drifted, programmed in zip(runner.calls, plain.calls, strict=True):
        for name in drifted:
            np.testing.assert_allclose(drifted[name], programmed[name] * factor, atol=1e-6)


def test_same_device_same_nu_at_every_sigma_and_time() -> None:
    """Common random numbers: nu recovered from w_t / w_programmed is the same at every sigma
    and time, and differs from device to device."""
    t0, times = 20.0, (3600.0, YEAR)
    effects = DeviceEffects(times=times, compensations=("none",), drift=DriftModel(t0, 0.05, 0.02))
    sigmas = [0.1, 0.3]
    runner, crossbar = record("lognormal", effects, sigmas, samples=1)
    recovered = []
    for j, sigma in enumerate(sigmas):
        programmed = lognormal_reference(crossbar, 0, sigma)
        for k, t in enumerate(times):
            weights = runner.calls[j * len(times) + k]
            ratio = weights["conv"].astype(np.float64) / programmed["conv"]
            recovered.append(-np.log(ratio) / math.log(t / t0))
    for nu in recovered[1:]:
        np.testing.assert_allclose(nu, recovered[0], atol=2e-4)
    assert recovered[0].std() > 0.01  # nu really varies across devices
    assert np.all(recovered[0] >= -1e-4)  # clipped at 0


@pytest.mark.parametrize("noise", ["lognormal", "rram"])
def test_drift_factors_made_beside_the_draws_or_per_row_are_the_same(
    noise: str, monkeypatch
) -> None:
    """Drift factors precomputed with a sample's draws (within DECAY_BUDGET) and computed per
    row (over it) give bit-identical weight sets, stuck cells and compensation included."""
    import ftaudit.effects_engine as effects_engine

    effects = DeviceEffects(
        times=(3600.0, YEAR),
        compensations=("none", "global"),
        drift=DriftModel(20, 0.05, 0.02),
        stuck_at=StuckAt(0.05, 0.05),
    )
    precomputed, _ = record(noise, effects, [0.1, 0.3])
    monkeypatch.setattr(effects_engine, "DECAY_BUDGET", 0)
    per_row, _ = record(noise, effects, [0.1, 0.3])
    assert len(precomputed.calls) == len(per_row.calls) == 2 * 2 * 2 * 2
    for a, b in zip(precomputed.calls, per_row.calls, strict=True):
        assert all(np.array_equal(a[name], b[name]) for name in a)


def test_compensation_with_nu_spread_zero_restores_the_programmed_weights() -> None:
    effects = DeviceEffects(
        times=(YEAR,), compensations=("none", "global"), drift=DriftModel(20, 0.05, 0)
    )
    for noise in ("lognormal", "rram", "gaussian"):
        runner, _ = record(noise, effects, [0.2])
        plain, _ = record(noise, None, [0.2])
        for sample in range(2):
            uncompensated, compensated = runner.calls[2 * sample : 2 * sample + 2]
            for name, w in compensated.items():
                np.testing.assert_allclose(w, plain.calls[sample][name], rtol=1e-5, atol=1e-6)
                assert not np.allclose(uncompensated[name], plain.calls[sample][name])


def test_compensation_factor_is_the_calibration_ratio() -> None:
    """With spread, alpha = sum|W_0 u| / sum|W_t u| on the layer's calibration batch."""
    effects = DeviceEffects(
        times=(YEAR,), compensations=("none", "global"), drift=DriftModel(20, 0.05, 0.03)
    )
    layers, weights = make_layers()
    crossbar = Crossbar.prepare(layers, weights, get_noise_model("lognormal"))
    runner = RecordingRunner()
    run_monte_carlo(runner, crossbar, [0.1], samples=1, seed=SEED, n_data=1, k=1.0, effects=effects)
    engine = EffectsEngine(layers, crossbar.states, effects, SEED)
    programmed = lognormal_reference(crossbar, 0, 0.1)
    uncompensated, compensated = runner.calls
    for index, layer in enumerate(layers):
        w_t = uncompensated[layer.name].astype(np.float64)
        w_0 = programmed[layer.name]
        batch = engine.compensation.calibration[index].astype(np.float64)
        if layer.transposed:  # stored (in, out): the crossbar computes u @ W
            alpha = np.abs(batch @ w_0).sum() / np.abs(batch @ w_t).sum()
        else:
            matrix = lambda w: w.reshape(w.shape[0], -1)  # noqa: E731
            alpha = np.abs(matrix(w_0) @ batch).sum() / np.abs(matrix(w_t) @ batch).sum()
        assert 1.2 < alpha < 2.5  # one year of drift at nu 0.05 is a factor of about 2
        np.testing.assert_allclose(compensated[layer.name], alpha * w_t, rtol=1e-5)


@pytest.mark.parametrize("rng", ["fast", "ziggurat"])
def test_compensation_readout_is_the_float64_matrix_product(rng: str) -> None:
    """readout(W) = sum |W u| over the 64 calibration vectors u of stream (0, layer, CAL),
    recomputed in float64 from the documented keying, for a Conv (rows are outputs, fan-in
    C*kh*kw) and a MatMul (stored (in, out))."""
    from ftaudit.noise.compensation import CALIBRATION_STREAM, CALIBRATION_VECTORS

    effects = DeviceEffects(times=(YEAR,), compensations=("global",), drift=DriftModel(20, 0.05))
    layers, weights = make_layers()
    crossbar = Crossbar.prepare(layers, weights, get_noise_model("lognormal"))
    engine = EffectsEngine(layers, crossbar.states, effects, SEED, rng)
    for index, layer in enumerate(layers):
        w = np.random.default_rng(index).normal(0, 1, layer.shape).astype(np.float32)
        fan_in = layer.shape[0] if layer.transposed else int(np.prod(layer.shape[1:]))
        key = (0, layer.index, CALIBRATION_STREAM)
        u = keyed_normals(SEED, key, (CALIBRATION_VECTORS, fan_in), rng).astype(np.float64)
        w64 = w.astype(np.float64)
        expected = (
            np.abs(u @ w64).sum()
            if layer.transposed
            else np.abs(w64.reshape(w.shape[0], -1) @ u.T).sum()
        )
        assert engine.compensation.readout(index, w) == pytest.approx(expected, rel=1e-5)


# --- stuck-at ---------------------------------------------------------------------------------


def test_stuck_fractions_match_their_rates() -> None:
    rng_layer = CrossbarLayer("big", "Gemm", 1, (200, 300), "float32")
    weight = np.random.default_rng(0).normal(0, 1, rng_layer.shape).astype(np.float32)
    state = get_noise_model("rram").prepare(weight)  # 2 cells per weight: 120,000 cells
    p_low, p_high = 0.03, 0.12
    engine = EffectsEngine([rng_layer], [state], DeviceEffects(stuck_at=StuckAt(p_low, p_high)), 5)
    draws = engine.draw(0)
    low, high = draws.stuck_low[0], draws.stuck_high[0]
    assert low is not None and high is not None
    n = low.size
    assert n == 2 * weight.size
    assert not np.any(low & high)
    for mask, p in ((low, p_low), (high, p_high)):
        assert abs(mask.mean() - p) < 5 * math.sqrt(p * (1 - p) / n)
    again = engine.draw(0)
    assert np.array_equal(again.stuck_low[0], low)  # keyed by (seed, sample, layer)
    assert not np.array_equal(engine.draw(1).stuck_low[0], low)


def test_stuck_values_per_noise_model() -> None:
    _, weights = make_layers()
    for noise in ("lognormal", "gaussian", "rram", "fefet1"):
        everything_high = DeviceEffects(stuck_at=StuckAt(0.0, 1.0))
        runner, _ = record(noise, everything_high, [0.3], samples=1)
        for name, w in runner.calls[0].items():
            clean = weights[name]
            expected = np.where(clean < 0, -1.0, 1.0) * np.abs(clean).max()
            np.testing.assert_allclose(w, expected, rtol=1e-6)  # all cells at the top level
        runner, _ = record(noise, DeviceEffects(stuck_at=StuckAt(1.0, 0.0)), [0.3], samples=1)
        for w in runner.calls[0].values():
            assert np.all(w == 0)


def test_stuck_weights_are_exact_and_the_rest_untouched() -> None:
    effects = DeviceEffects(stuck_at=StuckAt(0.1, 0.2))
    runner, crossbar = record("lognormal", effects, [0.2], samples=1)
    reference = lognormal_reference(crossbar, 0, 0.2)
    _, weights = make_layers()
    for name, w in runner.calls[0].items():
        top = np.abs(weights[name]).max()
        low = w == 0
        high = np.abs(w) == top
        free = ~(low | high)
        np.testing.assert_allclose(w[free], reference[name][free], rtol=2e-6)
        assert np.all(np.sign(w[high]) == np.sign(weights[name][high]))
        assert 0 < low.mean() < 0.3 and 0.05 < high.mean() < 0.4


def test_stuck_cells_do_not_drift() -> None:
    effects = DeviceEffects(
        times=(YEAR,), compensations=("none",), drift=DriftModel(20, 0.05, 0.01),
        stuck_at=StuckAt(0.0, 1.0),
    )  # fmt: skip
    runner, _ = record("rram", effects, [0.1], samples=1)
    _, weights = make_layers()
    for name, w in runner.calls[0].items():
        clean = weights[name]
        np.testing.assert_allclose(w, np.where(clean < 0, -1, 1) * np.abs(clean).max(), rtol=1e-6)


# --- end to end -------------------------------------------------------------------------------


def torch_accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        logits = model(torch.from_numpy(x.astype(np.float32) / 255))
    return float((logits.argmax(1).numpy() == y).mean())


def test_compensated_drift_gives_back_the_accuracy(convnet_onnx, blobs_npz, trained_convnet, blobs):
    """nu spread 0 + global compensation: every sample's accuracy at one year is the accuracy
    without drift; at sigma 0 that is the clean accuracy torch computes independently."""
    kwargs = {"sigmas": [0.0, 0.3], "samples": 12, "seed": 4}
    plain = ftaudit.audit(convnet_onnx, blobs_npz, **kwargs)
    drifted = ftaudit.audit(convnet_onnx, blobs_npz, times=[YEAR], drift_nu_std=0.0, **kwargs)
    clean = torch_accuracy(trained_convnet, *blobs)
    rows = {(r.sigma, r.compensation): r for r in drifted.results}
    assert len(rows) == 4
    assert np.all(rows[0.0, "global"].accuracies == clean)
    assert clean == plain.clean_accuracy
    np.testing.assert_allclose(
        rows[0.3, "global"].accuracies, plain.results[1].accuracies, atol=1 / 400 + 1e-12
    )
    assert rows[0.3, "none"].summary.mean < rows[0.3, "global"].summary.mean
    assert drifted.to_dict()["device_effects"]["drift"] == {
        "t0_s": 20.0,
        "nu_mean": 0.05,
        "nu_std": 0.0,
    }


def test_compensated_drift_on_a_device_restores_the_quantised_accuracy(convnet_onnx, blobs_npz):
    report = ftaudit.audit(
        convnet_onnx, blobs_npz, sigmas=[0.0], noise="rram", samples=3,
        times=[3600.0, YEAR], drift_nu_std=0.0, compensation="global",
    )  # fmt: skip
    assert report.quantized_accuracy is not None
    for result in report.results:
        assert np.all(result.accuracies == report.quantized_accuracy)


def test_zero_rates_and_early_times_leave_results_exact(convnet_onnx, blobs_npz) -> None:
    kwargs = {"sigmas": [0.0, 0.2], "samples": 10, "seed": 2}
    plain = ftaudit.audit(convnet_onnx, blobs_npz, **kwargs)
    zero = ftaudit.audit(convnet_onnx, blobs_npz, stuck_at=(0.0, 0.0), **kwargs)
    assert zero.device_effects is None
    early = ftaudit.audit(convnet_onnx, blobs_npz, times=[1.0, 20.0], stuck_at=(0, 0), **kwargs)
    for result in plain.results:
        same = [r for r in [*zero.results, *early.results] if r.sigma == result.sigma]
        assert len(same) == 5
        for other in same:
            assert np.array_equal(other.accuracies, result.accuracies)


# --- profiles ---------------------------------------------------------------------------------


def test_shipped_profiles_load_and_are_listed(run_cli: RunCli) -> None:
    profiles = shipped_profiles()
    assert set(profiles) == {"pcm", "pcm-aihwkit", "rram-trice", "fefet1-trice", "fefet2-trice"}
    for name, path in profiles.items():
        model = get_noise_model(name)
        assert model.parameters()["profile"] == name
        assert model.profile.description
        assert model.profile == load_device_file(path, shipped=True).profile
    code, out, _ = run_cli("noise-models")
    assert code == 0
    assert set(profiles) <= {line.split()[0] for line in out.splitlines()}


def test_profile_values_follow_their_sources() -> None:
    pcm = get_noise_model("pcm")
    levels = np.arange(16) / 15
    sigma_prog = 0.26348 + 1.9650 * levels - 1.1731 * levels**2  # aihwkit PCMLikeNoiseModel
    np.testing.assert_allclose(pcm.multipliers, sigma_prog / sigma_prog[-1], atol=1e-4)
    assert pcm.profile.sigma == (round(sigma_prog[-1] / 25 * 15, 2),)
    assert pcm.profile.drift == DriftModel(20.0, 0.05, 0.01)
    fefet1 = get_noise_model("fefet1-trice")
    assert list(fefet1.multipliers) == [1, 4, 4, 1]
    assert fefet1.profile.sigma == tuple(round(0.05 * i, 2) for i in range(9))


def test_profile_defaults_reach_the_report(run_cli: RunCli, convnet_onnx, blobs_npz, tmp_path):
    device = tmp_path / "dev.toml"
    device.write_text(
        "sigma_multipliers = [1, 1, 1, 1]\nsigma = [0.05, 0.1]\n"
        "[drift]\nnu_mean = 0.07\n[stuck_at]\np_low = 0.01\np_high = 0.02\n"
    )
    out_json = tmp_path / "r.json"
    code, _, err = run_cli(
        "eval", convnet_onnx, "--data", blobs_npz, "--noise", device, "--samples", "3",
        "--time", "1h", "--compensation", "none", "--json", out_json, "-q",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out_json.read_text())
    assert [(r["sigma"], r["time_s"], r["compensation"]) for r in report["results"]] == [
        (0.05, 3600.0, "none"),
        (0.1, 3600.0, "none"),
    ]
    assert report["device_effects"] == {
        "times_s": [3600.0],
        "compensation": ["none"],
        "drift": {"t0_s": 20.0, "nu_mean": 0.07, "nu_std": 0.01},
        "stuck_at": {"p_low": 0.01, "p_high": 0.02},
    }


def test_cli_report_rows_schema_csv_and_gates(run_cli: RunCli, convnet_onnx, blobs_npz, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    folder = tmp_path
    code, out, err = run_cli(
        "eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0,0.2", "--samples", "4",
        "--time", "1s,1y", "--stuck-at", "0.01,0.01", "--fail-under-mean", "0.999",
        "--json", folder / "r.json", "--csv", folder / "r.csv",
    )  # fmt: skip
    assert code == 1  # the uncompensated year fails the gate
    assert "compensation=none" in err and "t=1y" in err
    assert " global " in out and "gdc" not in out and "1y" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    report = json.loads((folder / "r.json").read_text())
    schema = json.loads(
        (Path(__file__).resolve().parents[1] / "docs" / "report.schema.json").read_text()
    )
    jsonschema.Draft202012Validator(schema).validate(report)
    assert len(report["results"]) == 2 * 2 * 2
    assert len(report["gates"]) == 8 and all("time_s" in g for g in report["gates"])
    with open(folder / "r.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["sigma"], r["time_s"], r["compensation"]) for r in rows[:2]] == [
        ("0.0", "1.0", "none"),
        ("0.0", "1.0", "global"),
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--time", "soon"], "is not a duration"),
        (["--time", "-1h"], "negative"),
        (["--stuck-at", "1.5,0"], "[0, 1]"),
        (["--stuck-at", "0.6,0.6"], "> 1"),
        (["--stuck-at", "0.1"], "two fractions"),
        (["--time", "1d", "--compensation", "maybe"], "unknown compensation"),
        (["--time", "1d", "--drift-nu", "-0.1"], ">= 0"),
        (["--time", "1d", "--drift-t0", "0"], "t0"),
        (["--drift-nu", "0.05"], "without --time"),
    ],
)
def test_bad_inputs_exit_2(run_cli: RunCli, convnet_onnx, blobs_npz, tmp_path, extra, message):
    out_json = tmp_path / "r.json"
    code, out, err = run_cli(
        "eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0.1", "--samples", "2",
        "--json", out_json, *extra,
    )  # fmt: skip
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert out == "" and not out_json.exists()


@pytest.mark.parametrize(
    "body",
    [
        "[drift]\nnu_mean = 'fast'\n",
        "[drift]\nnu = 0.05\n",
        "[drift]\nnu_std = -0.01\n",
        "[drift]\nt0_s = 0\n",
        "drift = 3\n",
        "[stuck_at]\np_low = 2\n",
        "[stuck_at]\np_low = 0.7\np_high = 0.7\n",
        "sigma = 'lots'\n",
        "sigma = -0.1\n",
        "description = 3\n",
    ],
)
def test_malformed_profile_fields_exit_2(run_cli: RunCli, convnet_onnx, blobs_npz, tmp_path, body):
    device = tmp_path / "dev.toml"
    device.write_text("sigma_multipliers = [1, 1, 1, 1]\n" + body)
    code, out, err = run_cli(
        "eval", convnet_onnx, "--data", blobs_npz, "--noise", device, "--sigma", "0.1",
        "--samples", "2",
    )  # fmt: skip
    assert code == 2, err
    assert str(device) in err and len(err.strip().splitlines()) == 1
    assert out == ""


def test_config_file_settings(tmp_path: Path) -> None:
    from ftaudit.config import settings_from_config

    path = tmp_path / "ftaudit.toml"
    settings = settings_from_config(
        {"time": "1h,1y", "stuck-at": [0.01, 0.02], "drift_nu": 0.06, "compensation": "global"},
        path,
    )
    assert settings.time == (3600.0, YEAR)
    assert settings.stuck_at == (0.01, 0.02)
    assert (settings.drift_nu, settings.compensation) == (0.06, "global")
    for bad in ({"time": "soon"}, {"stuck_at": "0.1"}, {"drift_nu": "x"}, {"compensation": 1}):
        with pytest.raises(UserError):
            settings_from_config(bad, path)
