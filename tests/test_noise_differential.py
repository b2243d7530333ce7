"""Differential pairs (``differential``): each weight is G+ - G-, both devices programmed and noisy.

Checked against independent formulas: the variance of a weight is var(G+) + var(G-), each
device a (clamped) Gaussian; multiplicative log-normal noise leaves the zero device at zero,
so its weights equal the single device's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ftaudit.errors import UserError
from ftaudit.noise import NOISE_MODELS, get_noise_model
from ftaudit.noise.device import DeviceNoise, load_device_file

N = 200_000


def _rectified_var(mu: float, sd: float, clamp: bool) -> float:
    """var(max(mu + sd Z, 0)) (clamp) or sd^2, from the normal pdf and cdf."""
    if not clamp:
        return sd**2
    a = mu / sd
    cdf = 0.5 * (1 + math.erf(a / math.sqrt(2)))
    pdf = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    mean = mu * cdf + sd * pdf
    second = (mu**2 + sd**2) * cdf + mu * sd * pdf
    return second - mean**2


def _copies(value: float, peak: float = 1.0) -> np.ndarray:
    """A layer of N copies of one weight plus one weight of magnitude ``peak`` (sets max|W|)."""
    weight = np.full(N + 1, value, np.float32)
    weight[0] = peak
    return weight


def _perturb(model, weight: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    draws = np.random.default_rng(seed).standard_normal(
        (model.draws_per_weight, *weight.shape), dtype=np.float32
    )
    return model.prepare(weight).perturb(draws, sigma, np.empty_like(weight))[1:]


def _check_variance(got: np.ndarray, want: float) -> None:
    # the sample variance of N draws has relative standard error about sqrt(2 / N) (0.3%)
    assert got.var(dtype=np.float64) == pytest.approx(want, rel=0.02)


def test_lognormal_pair_equals_the_single_device() -> None:
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((7, 9)).astype(np.float32)
    weight[0, :3] = 0
    single = get_noise_model("lognormal")
    pair = get_noise_model("lognormal", differential=True)
    assert pair.draws_per_weight == single.draws_per_weight == 1
    draws = rng.standard_normal((1, 7, 9), dtype=np.float32)
    for sigma in (0.0, 0.4):
        a = single.prepare(weight).perturb(draws, sigma, np.empty_like(weight))
        b = pair.prepare(weight).perturb(draws, sigma, np.empty_like(weight))
        np.testing.assert_array_equal(a, b)
    # the pair's cells: the zero device programs to exactly 0 and assembles the same weights
    cells = pair.prepare(weight).cells()
    programmed = cells.program(draws, 0.4, np.empty((2, 7, 9), np.float32))
    assert cells.count == 2 and np.all(programmed[1] == 0)
    assembled = cells.assemble(programmed, np.empty_like(weight))
    np.testing.assert_allclose(assembled, b, rtol=1e-6)
    assert pair.parameters()["differential"] is True
    assert "differential" not in single.parameters()


@pytest.mark.parametrize("clamp", [True, False])
@pytest.mark.parametrize("value", [0.6, -0.3, 0.0])
def test_gaussian_pair_variance_is_var_g_plus_plus_var_g_minus(clamp: bool, value: float) -> None:
    model = get_noise_model("gaussian", differential=True, clamp=clamp)
    assert model.draws_per_weight == 2
    sigma, peak = 0.25, 1.0
    got = _perturb(model, _copies(value, peak), sigma)
    sd = sigma * peak
    want = _rectified_var(abs(value), sd, clamp) + _rectified_var(0.0, sd, clamp)
    _check_variance(got, want)
    if not clamp:  # unclamped: exactly the mean stays the weight
        assert abs(got.mean() - value) < 5 * math.sqrt(want / N)


@pytest.mark.parametrize("cell_noise", ["independent", "shared"])
@pytest.mark.parametrize("clamp", [True, False])
def test_rram_pair_variance_adds_the_zero_devices_cells(cell_noise: str, clamp: bool) -> None:
    """4-bit weights over 2-bit cells: level 9 = cells (1, 2); the other device's two cells
    sit at level 0, each with dg ~ N(0, sigma^2) clamped at 0."""
    bits, cell_bits, sigma = 4, 2, 0.6
    model = get_noise_model(
        "rram",
        bits=bits,
        cell_bits=cell_bits,
        clamp=clamp,
        cell_noise=cell_noise,
        differential=True,
    )
    assert model.draws_per_weight == 4
    step = 1.0 / 15
    got = _perturb(model, _copies(-9 * step), sigma)
    places = [1.0, 4.0]  # 2^(iB)
    if cell_noise == "independent":
        weight_side = sum(
            p**2 * _rectified_var(g, sigma, clamp) for p, g in zip(places, (1, 2), strict=True)
        )
        zero_side = sum(p**2 * _rectified_var(0, sigma, clamp) for p in places)
    else:  # one dg per device, the same on each of its cells: sum_i 2^(iB) clamped
        z = np.random.default_rng(5).standard_normal((2, N))
        dg = np.stack([np.maximum(sigma * z, -g) if clamp else sigma * z for g in (1, 2)])
        weight_side = float((places[0] * dg[0] + places[1] * dg[1]).var())
        zero = np.maximum(sigma * z[1], 0) if clamp else sigma * z[1]
        zero_side = float((sum(places) * zero).var())
    _check_variance(got, step**2 * (weight_side + zero_side))


def test_pcm_pair_zero_device_uses_the_level_0_multiplier() -> None:
    model = get_noise_model("pcm", differential=True)
    m = model.multipliers
    sigma = 0.63
    step = 1.0 / 15
    got = _perturb(model, _copies(12 * step), sigma)
    want = step**2 * (
        _rectified_var(12, sigma * m[12], True) + _rectified_var(0, sigma * m[0], True)
    )
    _check_variance(got, want)


def test_device_pair_weight_side_draws_are_the_single_devices() -> None:
    """The weight's own cells take the first H/B draws, as without the pair: with the other
    device's draws at 0 (clamped to 0) the two models give the same weights bit for bit."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((5, 11)).astype(np.float32)
    single = get_noise_model("fefet1")
    pair = get_noise_model("fefet1", differential=True)
    draws = rng.standard_normal((4, 5, 11), dtype=np.float32)
    draws[2:] = -1.0  # the zero device's draws: negative, so clamped to conductance 0
    a = single.prepare(weight).perturb(draws[:2], 0.3, np.empty_like(weight))
    b = pair.prepare(weight).perturb(draws, 0.3, np.empty_like(weight))
    np.testing.assert_array_equal(a, b)
    # the cells route assembles the same weights as perturb (stuck-at and drift use it)
    state = pair.prepare(weight)
    cells = state.cells()
    assert cells.count == 4
    draws = rng.standard_normal((4, 5, 11), dtype=np.float32)
    programmed = cells.program(draws, 0.3, np.empty((4, 5, 11), np.float32))
    np.testing.assert_allclose(
        cells.assemble(programmed, np.empty_like(weight)),
        state.perturb(draws, 0.3, np.empty_like(weight)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_gaussian_pair_cells_assemble_perturb() -> None:
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((3, 8)).astype(np.float32)
    state = get_noise_model("gaussian", differential=True).prepare(weight)
    draws = rng.standard_normal((2, 3, 8), dtype=np.float32)
    cells = state.cells()
    low, high = cells.stuck_values()
    assert float(low) == 0 and float(high) == pytest.approx(np.abs(weight).max())
    programmed = cells.program(draws, 0.2, np.empty((2, 3, 8), np.float32))
    assert np.all(programmed >= 0)
    np.testing.assert_array_equal(
        cells.assemble(programmed, np.empty_like(weight)),
        state.perturb(draws, 0.2, np.empty_like(weight)),
    )
    np.testing.assert_array_equal(state.perturb(draws, 0.0, np.empty_like(weight)), weight)


def test_device_files_and_profiles_choose_differential(tmp_path: Path) -> None:
    path = tmp_path / "dev.toml"
    path.write_text("sigma_multipliers = [1.0, 1.0, 1.0, 1.0]\ndifferential = true\n")
    assert load_device_file(path).differential is True
    assert get_noise_model(str(path)).draws_per_weight == 4
    assert get_noise_model(str(path), differential=False).differential is False
    assert get_noise_model("pcm-aihwkit").differential is True  # as aihwkit's G+/G- pairs
    assert get_noise_model("pcm").differential is False
    assert get_noise_model("pcm-aihwkit").parameters()["differential"] is True
    path.write_text('sigma_multipliers = [1.0, 1.0]\ncell_bits = 1\ndifferential = "yes"\n')
    with pytest.raises(UserError, match="differential must be true or false"):
        load_device_file(path)


def test_a_model_without_a_differential_rule_refuses_it(monkeypatch) -> None:
    class Plain(NOISE_MODELS["lognormal"]):
        """A model that does not say what a pair means."""

        name = "plain"
        differential_rule = None

    monkeypatch.setitem(NOISE_MODELS, "plain", Plain)
    with pytest.raises(UserError, match="cannot model differential pairs"):
        get_noise_model("plain", differential=True)
    assert get_noise_model("plain").differential is False


def test_every_registered_model_says_what_a_pair_means() -> None:
    for cls in NOISE_MODELS.values():
        assert cls.differential_rule, cls.name
    assert issubclass(NOISE_MODELS["rram"], DeviceNoise)


def _audit(**kwargs):
    from conftest import SAMPLES

    from ftaudit.data import Dataset
    from ftaudit.evaluation import audit

    with np.load(SAMPLES / "fmnist_test_2000.npz") as data:
        x, y = data["x"][:300].astype(np.float32) / 255, data["y"][:300]
    source = {"path": "fmnist", "sha256": "0" * 64, "kind": "npz", "n": len(y), "limit": None}
    dataset = Dataset(x=x, y=y, source=source)
    options = {"sigmas": [0.0, 0.3], "samples": 4, "seed": 2, "batch_size": 150, **kwargs}
    return audit(SAMPLES / "mlp.onnx", dataset, **options)


def test_audit_with_pairs_lognormal_unchanged_device_noisier() -> None:
    pytest.importorskip("onnxruntime")
    single, pair = _audit(), _audit(differential=True)
    for a, b in zip(single.results, pair.results, strict=True):
        np.testing.assert_array_equal(a.accuracies, b.accuracies)
    assert pair.to_dict()["noise"]["differential"] is True
    rram = _audit(noise="rram", sigmas=[0.3], samples=8)
    rram_pair = _audit(noise="rram", sigmas=[0.3], samples=8, differential=True)
    assert rram_pair.to_dict()["noise"]["differential"] is True
    jsonschema = pytest.importorskip("jsonschema")
    from conftest import REPO

    schema = json.loads((REPO / "docs" / "report.schema.json").read_text())
    for report in (pair, rram_pair):
        jsonschema.validate(json.loads(json.dumps(report.to_dict())), schema)
    assert rram_pair.clean_accuracy == rram.clean_accuracy  # sigma 0: the same stored weights
    # the zero devices add noise: the mean accuracy drops
    assert rram_pair.results[0].summary.mean < rram.results[0].summary.mean
