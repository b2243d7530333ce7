"""Noise models against their closed forms: moments, quantisation, registry and device files.

Every expected value here is computed independently from the definitions (TRICE IV-A for the
devices, BayesFT eq. 1 for log-normal drift), never from the code's own output. Moments are
checked over many draws with a tolerance of five standard errors; the seeds are fixed, so the
tests are deterministic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ftaudit.errors import UserError
from ftaudit.noise import NOISE_MODELS, NoiseModel, get_noise_model
from ftaudit.noise.device import DeviceNoise, load_device_file

#: standard errors allowed between an empirical moment and its closed form
TOLERANCE_SE = 5.0
#: independent draws per weight value in the moment tests
DRAWS = 20_000


def perturbed_copies(
    noise: NoiseModel, values: np.ndarray, sigma: float, *, copies: int, seed: int
) -> np.ndarray:
    """Perturb a layer holding ``copies`` copies of ``values``; returns (draws, len(values)).

    Tiling keeps the layer's max|W| (so the per-layer scale is that of ``values``) while each copy
    gets its own base draws: ``copies * rounds`` independent samples per value.
    """
    weight = np.tile(np.asarray(values, np.float32), copies)
    state = noise.prepare(weight)
    rng = np.random.default_rng(seed)
    rounds = DRAWS // copies
    out = np.empty((rounds, weight.size), np.float32)
    for r in range(rounds):
        draws = rng.standard_normal((noise.draws_per_weight, weight.size), dtype=np.float32)
        state.perturb(draws, sigma, out=out[r])
    return out.reshape(rounds * copies, len(values))


def assert_moments(
    sample: np.ndarray,
    mean: np.ndarray,
    variance: np.ndarray,
    *,
    fourth_central: np.ndarray | None = None,
) -> None:
    """Empirical mean/variance per column within TOLERANCE_SE standard errors of the closed forms.

    ``fourth_central`` defaults to the normal one (3 var^2), giving SE(var) = var * sqrt(2 / n).
    """
    n = sample.shape[0]
    sample = sample.astype(np.float64)
    mean = np.asarray(mean, np.float64)
    variance = np.asarray(variance, np.float64)
    mu4 = 3 * variance**2 if fourth_central is None else np.asarray(fourth_central, np.float64)
    se_mean = np.sqrt(variance / n)
    se_var = np.sqrt((mu4 - variance**2) / n)
    got_mean = sample.mean(axis=0)
    got_var = sample.var(axis=0, ddof=1)
    assert np.all(np.abs(got_mean - mean) <= TOLERANCE_SE * se_mean + 1e-12), (got_mean, mean)
    assert np.all(np.abs(got_var - variance) <= TOLERANCE_SE * se_var + 1e-12), (got_var, variance)


def quantise_reference(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent H-bit quantisation: integer levels q and the stored weights sign*max/L*q."""
    w = np.asarray(weight, np.float64)
    max_abs = np.abs(w).max()
    levels = 2**bits - 1
    q = np.rint(np.abs(w) / max_abs * levels).astype(np.int64)
    sign = np.where(w < 0, -1.0, 1.0)
    return q, (sign * (max_abs / levels) * q).astype(np.float32)


def cell_levels(q: np.ndarray, bits: int, cell_bits: int) -> list[np.ndarray]:
    """The B-bit cell values g_i = (q >> iB) & (2^B - 1), least significant cell first."""
    mask = 2**cell_bits - 1
    return [(q >> (i * cell_bits)) & mask for i in range(bits // cell_bits)]


def device_variance(
    weight: np.ndarray, bits: int, cell_bits: int, sigma: float, multipliers: np.ndarray
) -> np.ndarray:
    """(max|W| / (2^H - 1))^2 * sigma^2 * sum_i 4^(iB) * m[g_i]^2, from the definition."""
    q, _ = quantise_reference(weight, bits)
    step = np.abs(np.asarray(weight, np.float64)).max() / (2**bits - 1)
    total = np.zeros(q.shape)
    for i, g in enumerate(cell_levels(q, bits, cell_bits)):
        total += 4.0 ** (i * cell_bits) * np.asarray(multipliers, np.float64)[g] ** 2
    return step**2 * sigma**2 * total


# --- moments against closed forms --------------------------------------------------------------


def test_lognormal_mean_and_variance() -> None:
    sigma = 0.4
    values = np.array([1.0, -0.5, 0.25, 2.0, -1.5], np.float32)
    sample = perturbed_copies(get_noise_model("lognormal"), values, sigma, copies=50, seed=1)
    w = values.astype(np.float64)
    s2 = sigma**2
    # raw moments of w * exp(lambda): E[X^k] = w^k exp(k^2 sigma^2 / 2)
    m1, m2, m3, m4 = (w**k * np.exp(k * k * s2 / 2) for k in (1, 2, 3, 4))
    variance = w**2 * (np.exp(s2) - 1) * np.exp(s2)
    assert np.allclose(variance, m2 - m1**2)
    fourth = m4 - 4 * m3 * m1 + 6 * m2 * m1**2 - 3 * m1**4
    assert_moments(sample, w * np.exp(s2 / 2), variance, fourth_central=fourth)


def test_lognormal_keeps_sign_and_zero() -> None:
    values = np.array([0.0, -1.0, 3.0], np.float32)
    sample = perturbed_copies(get_noise_model("lognormal"), values, 1.5, copies=10, seed=2)
    assert np.all(sample[:, 0] == 0)
    assert np.all(sample[:, 1] < 0) and np.all(sample[:, 2] > 0)


def test_gaussian_mean_and_variance_use_layer_max() -> None:
    sigma = 0.3
    values = np.array([0.0, -0.2, 0.5, -2.0, 1.0], np.float32)
    sample = perturbed_copies(get_noise_model("gaussian"), values, sigma, copies=50, seed=3)
    scale = np.abs(values).max()  # per layer, the same for every weight
    variance = np.full(values.shape, (sigma * scale) ** 2)
    assert_moments(sample, values, variance)


@pytest.mark.parametrize(("bits", "cell_bits"), [(4, 2), (6, 2), (4, 1), (8, 4)])
def test_rram_mean_and_variance(bits: int, cell_bits: int) -> None:
    sigma = 0.2
    rng = np.random.default_rng(bits * 10 + cell_bits)
    values = rng.normal(0, 1, 12).astype(np.float32)
    values[0] = 0.0  # a zero weight: its cells sit at level 0 and are perturbed too
    noise = get_noise_model("rram", bits=bits, cell_bits=cell_bits, clamp=False)  # Gaussian dg
    assert noise.draws_per_weight == bits // cell_bits
    sample = perturbed_copies(noise, values, sigma, copies=40, seed=bits + cell_bits)
    _, quantised = quantise_reference(values, bits)
    step = np.abs(values.astype(np.float64)).max() / (2**bits - 1)
    closed_form = step**2 * sigma**2 * sum(4.0 ** (i * cell_bits) for i in range(bits // cell_bits))
    variance = np.full(values.shape, closed_form)
    assert np.allclose(
        device_variance(values, bits, cell_bits, sigma, np.ones(2**cell_bits)), variance
    )
    assert_moments(sample, quantised, variance)


@pytest.mark.parametrize(
    ("name", "multipliers"), [("fefet1", [1, 4, 4, 1]), ("fefet2", [1, 2, 2, 1])]
)
def test_fefet_variance_per_cell_level(name: str, multipliers: list[float]) -> None:
    """4-bit weights over 2-bit cells: weight q (max 15) puts cell 0 at q & 3, cell 1 at q >> 2."""
    sigma = 0.05
    q = np.arange(16)
    values = np.concatenate([q, -q[1:]]).astype(np.float32)  # max|W| = 15: step 1, levels exact
    noise = get_noise_model(name, clamp=False)  # the unclamped Gaussian closed form
    sample = perturbed_copies(noise, values, sigma, copies=10, seed=len(name))
    m = np.asarray(multipliers, np.float64)
    q_all = np.abs(values).astype(np.int64)
    variance = sigma**2 * (m[q_all & 3] ** 2 + 16 * m[q_all >> 2] ** 2)
    assert np.allclose(variance, device_variance(values, 4, 2, sigma, m))
    assert_moments(sample, values, variance)
    # the levels really differ: level 1 of the low cell is 16x (fefet1) / 4x (fefet2) level 0's
    assert variance[1] - variance[0] == pytest.approx(sigma**2 * (m[1] ** 2 - m[0] ** 2))


def test_device_keeps_sign_and_perturbs_zero_weights() -> None:
    values = np.array([0.0, -3.0, 3.0, -1.0, 1.0], np.float32)
    sample = perturbed_copies(get_noise_model("rram"), values, 0.05, copies=20, seed=5)
    assert sample[:, 0].std() > 0  # zero weights sit on cells at level 0, which still vary
    # sign(W) multiplies the whole sum: a negative weight's deviations mirror a positive one's
    assert np.mean(sample[:, 1]) < 0 < np.mean(sample[:, 2])
    assert np.allclose(sample[:, 1].mean(), -3.0, atol=0.05)


def test_device_sign_mirrors_the_cell_noise() -> None:
    """W and -W with the same base draws give exactly opposite perturbed weights."""
    noise = get_noise_model("fefet1")
    values = np.array([2.0, 0.7, -0.3, 1.1], np.float32)
    positive, negative = noise.prepare(values), noise.prepare(-values)
    draws = np.random.default_rng(6).standard_normal((2, 4), dtype=np.float32)
    a = positive.perturb(draws, 0.3, out=np.empty(4, np.float32))
    b = negative.perturb(draws, 0.3, out=np.empty(4, np.float32))
    assert np.array_equal(a, -b)


# --- quantisation and sigma = 0 ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["rram", "fefet1", "fefet2"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_device_quantisation_matches_numpy(name: str, bits: int) -> None:
    weight = np.random.default_rng(bits).normal(0, 0.1, (6, 5, 3)).astype(np.float32)
    state = get_noise_model(name, bits=bits, cell_bits=2).prepare(weight)
    _, expected = quantise_reference(weight, bits)
    assert np.array_equal(state.unperturbed(), expected)
    assert state.unperturbed().dtype == np.float32


def test_quantisation_keeps_extremes_and_grid() -> None:
    weight = np.array([[-0.8, 0.8], [0.4, 0.0]], np.float32)
    state = get_noise_model("rram", bits=4, cell_bits=2).prepare(weight)
    stored = state.unperturbed()
    assert stored[0, 0] == np.float32(-0.8) and stored[0, 1] == np.float32(0.8)
    levels = np.abs(stored.astype(np.float64)) / (0.8 / 15)
    assert np.allclose(levels, np.rint(levels), atol=1e-5)
    assert stored[1, 1] == 0


@pytest.mark.parametrize("name", ["lognormal", "gaussian", "rram", "fefet1", "fefet2"])
def test_sigma_zero_gives_unperturbed_weights_bitwise(name: str) -> None:
    weight = np.random.default_rng(7).normal(0, 0.5, (4, 9)).astype(np.float32)
    weight[0, :3] = [0.0, -1e-6, 1e-6]  # zero and tiny weights (device: quantised to zero)
    noise = get_noise_model(name)
    state = noise.prepare(weight)
    draws = np.random.default_rng(8).standard_normal(
        (noise.draws_per_weight, *weight.shape), dtype=np.float32
    )
    out = state.perturb(draws, 0.0, out=np.empty_like(weight))
    assert out.tobytes() == state.unperturbed().tobytes()
    if not noise.quantizes:
        assert out.tobytes() == weight.tobytes()


def test_perturb_is_deterministic_in_draws_and_linear_in_sigma_for_devices() -> None:
    """Same draws, same weights; device noise scales linearly with sigma (common random numbers)."""
    noise = get_noise_model("rram", bits=6, cell_bits=2)
    weight = np.random.default_rng(9).normal(0, 1, 30).astype(np.float32)
    state = noise.prepare(weight)
    draws = np.random.default_rng(10).standard_normal((3, 30), dtype=np.float32)
    a = state.perturb(draws, 0.1, out=np.empty(30, np.float32)).copy()
    b = state.perturb(draws, 0.1, out=np.empty(30, np.float32))
    assert np.array_equal(a, b)
    c = state.perturb(draws, 0.2, out=np.empty(30, np.float32))
    base = state.unperturbed().astype(np.float64)
    assert np.allclose(c - base, 2 * (a - base), rtol=1e-4, atol=1e-6)


# --- registry -------------------------------------------------------------------------------


def test_registry_names_and_docstrings() -> None:
    assert {"lognormal", "gaussian", "rram", "fefet1", "fefet2"} <= set(NOISE_MODELS)
    assert len({name.lower() for name in NOISE_MODELS}) == len(NOISE_MODELS)
    for name, cls in NOISE_MODELS.items():
        assert cls.name == name
        assert cls.describe().strip(), f"{name} has no docstring"
        assert get_noise_model(name).parameters()["name"] == name


def test_unknown_noise_model_suggests_the_closest_name() -> None:
    with pytest.raises(UserError) as info:
        get_noise_model("lognormel")
    assert "unknown noise model 'lognormel'" in info.value.message
    assert "did you mean 'lognormal'" in (info.value.hint or "")


def test_unknown_noise_model_without_a_close_name_lists_choices() -> None:
    with pytest.raises(UserError) as info:
        get_noise_model("zzzzzz")
    assert "did you mean" not in str(info.value)
    assert "rram" in (info.value.hint or "")


@pytest.mark.parametrize("name", ["lognormal", "gaussian"])
def test_bits_on_a_float_noise_model_is_a_user_error(name: str) -> None:
    with pytest.raises(UserError, match="--bits/--cell-bits apply to device noise models"):
        get_noise_model(name, bits=4)
    with pytest.raises(UserError, match="--bits/--cell-bits"):
        get_noise_model(name, cell_bits=2)


def test_bits_not_a_multiple_of_cell_bits() -> None:
    with pytest.raises(UserError, match="--bits 5 is not a multiple of --cell-bits 2"):
        get_noise_model("rram", bits=5, cell_bits=2)


@pytest.mark.parametrize("name", ["fefet1", "fefet2"])
def test_fefet_with_one_bit_cells_is_a_user_error(name: str) -> None:
    with pytest.raises(UserError, match="4 per-level sigma multipliers but 1-bit cells have 2"):
        get_noise_model(name, bits=4, cell_bits=1)


def test_bad_bit_counts() -> None:
    with pytest.raises(UserError, match=r"--bits must be in 1\.\.16"):
        get_noise_model("rram", bits=0)
    with pytest.raises(UserError, match=r"--bits must be in 1\.\.16"):
        get_noise_model("rram", bits=18, cell_bits=2)


# --- user device files ------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


VALID_DEVICE = """
name = "mydev"
description = "three-level-ish cell"
bits = 6
cell_bits = 2
sigma_multipliers = [1.0, 3.0, 2, 0.5]
"""


def test_device_file_defines_a_device(tmp_path: Path) -> None:
    path = write(tmp_path / "mydev.toml", VALID_DEVICE)
    noise = get_noise_model(str(path), clamp=False)
    assert isinstance(noise, DeviceNoise)
    assert noise.draws_per_weight == 3
    params = noise.parameters()
    assert params["name"] == "mydev" and params["bits"] == 6 and params["cell_bits"] == 2
    assert params["sigma_multipliers"] == [1.0, 3.0, 2.0, 0.5]
    assert params["device_file"] == str(path)
    # moments follow the file's per-level multipliers
    values = np.random.default_rng(11).normal(0, 1, 10).astype(np.float32)
    sample = perturbed_copies(noise, values, 0.1, copies=40, seed=12)
    _, quantised = quantise_reference(values, 6)
    assert_moments(sample, quantised, device_variance(values, 6, 2, 0.1, [1.0, 3.0, 2.0, 0.5]))


def test_device_file_bits_from_the_command_line_win(tmp_path: Path) -> None:
    path = write(tmp_path / "d.toml", "sigma_multipliers = [1, 2]\nbits = 4\ncell_bits = 1\n")
    noise = load_device_file(path, bits=6)
    assert (noise.bits, noise.cell_bits, noise.parameters()["name"]) == (6, 1, "d")


def test_device_file_unknown_key(tmp_path: Path) -> None:
    # sigma became a device-file key (a profile default); a misspelling of it is still refused
    path = write(tmp_path / "d.toml", VALID_DEVICE + "sigmas = 0.3\n")
    with pytest.raises(UserError) as info:
        get_noise_model(str(path))
    assert "unknown key(s): sigmas" in info.value.message
    assert "sigma_multipliers" in (info.value.hint or "")


def test_device_file_missing_multipliers(tmp_path: Path) -> None:
    path = write(tmp_path / "d.toml", 'name = "x"\nbits = 4\ncell_bits = 2\n')
    with pytest.raises(UserError, match="needs sigma_multipliers, a list of numbers"):
        get_noise_model(str(path))


def test_device_file_multipliers_not_numbers(tmp_path: Path) -> None:
    path = write(tmp_path / "d.toml", 'sigma_multipliers = ["1", "2", "3", "4"]\n')
    with pytest.raises(UserError, match="needs sigma_multipliers"):
        get_noise_model(str(path))


def test_device_file_wrong_multiplier_count(tmp_path: Path) -> None:
    path = write(tmp_path / "d.toml", "bits = 4\ncell_bits = 2\nsigma_multipliers = [1, 2, 3]\n")
    with pytest.raises(UserError) as info:
        get_noise_model(str(path))
    assert (
        "defines 3 per-level sigma multipliers but 2-bit cells have 4 levels" in info.value.message
    )


def test_device_file_negative_multiplier(tmp_path: Path) -> None:
    path = write(tmp_path / "d.toml", "sigma_multipliers = [1, -2, 3, 1]\n")
    with pytest.raises(UserError, match="negative or non-finite multiplier"):
        get_noise_model(str(path))


def test_device_file_bits_must_be_whole_numbers(tmp_path: Path) -> None:
    path = write(tmp_path / "d.toml", 'bits = "4"\nsigma_multipliers = [1, 1, 1, 1]\n')
    with pytest.raises(UserError, match="bits must be a whole number"):
        get_noise_model(str(path))


def test_device_file_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path / "d.toml", "bits = [1,\n")
    with pytest.raises(UserError, match="is not valid TOML"):
        get_noise_model(str(path))


def test_device_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(UserError, match=r"nowhere\.toml does not exist"):
        get_noise_model(str(path))


def test_device_clamp_keeps_every_cell_conductance_at_or_above_zero() -> None:
    """Default clamp: W_p = sign * step * sum_i 2^(iB) * max(g_i + sigma m z_i, 0), recomputed
    by hand; at sigma 1 unclamped level-0 cells would go negative and flip small weights."""
    values = np.array([0.02, -0.02, 0.5, -1.0, 0.0], np.float32)
    sigma, rng = 1.0, np.random.default_rng(3)
    draws = rng.standard_normal((2, values.size), dtype=np.float32)
    clamped = get_noise_model("rram").prepare(values)
    got = clamped.perturb(draws, sigma, np.empty(values.size, np.float32))
    q, _ = quantise_reference(values, 4)
    step = 1.0 / 15
    cells = np.stack([q & 3, (q >> 2) & 3]).astype(np.float64)
    conductance = np.maximum(cells + sigma * draws, 0.0)
    sign = np.where(values < 0, -1.0, 1.0)
    expected = sign * step * (conductance[0] + 4 * conductance[1])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.all(got[values >= 0] >= 0) and np.all(got[values < 0] <= 0)
    unclamped = get_noise_model("rram", clamp=False).prepare(values)
    raw = unclamped.perturb(draws, sigma, np.empty(values.size, np.float32))
    assert np.any(np.sign(raw[values != 0]) != np.sign(values[values != 0]))  # flips without
    # sigma 0 still gives the quantised weights bit for bit
    zero = clamped.perturb(draws, 0.0, np.empty(values.size, np.float32))
    assert np.array_equal(zero, clamped.unperturbed())


@pytest.mark.parametrize(("cell_noise", "factor"), [("independent", 17), ("shared", 25)])
def test_cell_noise_variance_factor_for_4_bit_weights_over_2_bit_cells(cell_noise, factor) -> None:
    """Var(W_p) = (sigma * step)^2 * sum_i 4^i = 17 independent, (sum_i 2^i)^2 = 25 shared."""
    noise = get_noise_model("rram", clamp=False, cell_noise=cell_noise)
    values = [1.0, 0.6, -0.4]
    sigma = 0.1
    sample = perturbed_copies(noise, values, sigma, copies=10, seed=factor)
    _, stored = quantise_reference(np.array(values, np.float32), 4)
    variance = np.full(len(values), factor * (sigma / 15) ** 2)
    assert_moments(sample, stored, variance)
    assert noise.parameters()["cell_noise"] == cell_noise and noise.parameters()["clamp"] is False


def test_unknown_cell_noise_is_a_user_error() -> None:
    with pytest.raises(UserError, match="--cell-noise must be one of independent, shared"):
        get_noise_model("rram", cell_noise="sometimes")
