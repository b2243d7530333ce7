"""RC-Gaussian (TRICE eq. 10) against independent computations.

The closed forms are checked two ways: against Monte Carlo moments of sigma_t * min(z, th) over
10^6 seeded draws (tolerance five standard errors), and against scipy (numerical integration of
min(x, th)^k against the normal density, and the truncated normal's moments), never against the
module's own output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ftaudit.harden.rc_gaussian import (
    censor_draws,
    censored_fraction,
    rc_gaussian_mean,
    rc_gaussian_second_moment,
)

scipy_stats = pytest.importorskip("scipy.stats")
scipy_integrate = pytest.importorskip("scipy.integrate")

#: standard errors allowed between an empirical moment and its closed form
TOLERANCE_SE = 5.0
DRAWS = 1_000_000
THRESHOLDS = [-1.5, -0.3, 0.0, 0.5, 1.0, 2.0, 3.0]


def test_censor_draws_caps_at_threshold_and_keeps_values_below() -> None:
    z = np.random.default_rng(0).standard_normal((2, 50, 40), dtype=np.float32)
    censored = censor_draws(z, 0.7)
    assert censored.shape == z.shape and censored.dtype == np.float32
    assert censored.max() <= np.float32(0.7)
    below = z < np.float32(0.7)
    assert below.any() and (~below).any()
    np.testing.assert_array_equal(censored[below], z[below])
    np.testing.assert_array_equal(censored[~below], np.float32(0.7))


def test_censor_draws_writes_into_out_and_in_place() -> None:
    z = np.random.default_rng(1).standard_normal(1000)
    expected = np.minimum(z, 1.0)
    out = np.empty_like(z)
    assert censor_draws(z, 1.0, out=out) is out
    np.testing.assert_array_equal(out, expected)
    assert censor_draws(z, 1.0, out=z) is z
    np.testing.assert_array_equal(z, expected)


def test_infinite_threshold_is_plain_gaussian() -> None:
    z = np.random.default_rng(2).standard_normal(1000)
    np.testing.assert_array_equal(censor_draws(z, math.inf), z)
    assert rc_gaussian_mean(math.inf, 0.3) == 0.0
    assert rc_gaussian_second_moment(math.inf, 0.3) == pytest.approx(0.09)
    assert censored_fraction(math.inf) == 0.0


@pytest.mark.parametrize("bad", [math.nan, -math.inf])
def test_threshold_must_be_a_number_or_plus_inf(bad: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        censor_draws(np.zeros(3), bad)
    with pytest.raises(ValueError, match="threshold"):
        rc_gaussian_mean(bad, 1.0)


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_sigma_t_must_be_finite_and_non_negative(bad: float) -> None:
    with pytest.raises(ValueError, match="sigma_t"):
        rc_gaussian_second_moment(2.0, bad)


@pytest.mark.parametrize(("threshold", "sigma_t"), [(2.0, 0.4), (0.5, 1.0), (-0.5, 0.25)])
def test_closed_forms_match_monte_carlo(threshold: float, sigma_t: float) -> None:
    z = np.random.default_rng(20240601).standard_normal(DRAWS)
    noise = sigma_t * censor_draws(z, threshold)

    mean = noise.mean()
    mean_se = noise.std() / math.sqrt(DRAWS)
    assert abs(mean - rc_gaussian_mean(threshold, sigma_t)) < TOLERANCE_SE * mean_se

    squares = noise * noise
    second_se = squares.std() / math.sqrt(DRAWS)
    expected_second = rc_gaussian_second_moment(threshold, sigma_t)
    assert abs(squares.mean() - expected_second) < TOLERANCE_SE * second_se

    p = censored_fraction(threshold)
    fraction = np.mean(z >= threshold)
    assert abs(fraction - p) < TOLERANCE_SE * math.sqrt(p * (1 - p) / DRAWS)


def _integrated_moment(threshold: float, sigma_t: float, power: int) -> float:
    """E[(sigma_t * min(Z, th))^power] by quadrature: the Gaussian part plus the atom at th."""
    below, _ = scipy_integrate.quad(
        lambda x: (sigma_t * x) ** power * scipy_stats.norm.pdf(x), -np.inf, threshold
    )
    return below + (sigma_t * threshold) ** power * scipy_stats.norm.sf(threshold)


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_closed_forms_match_scipy(threshold: float) -> None:
    sigma_t = 0.35
    assert censored_fraction(threshold) == pytest.approx(scipy_stats.norm.sf(threshold), rel=1e-12)
    assert rc_gaussian_mean(threshold, sigma_t) == pytest.approx(
        _integrated_moment(threshold, sigma_t, 1), rel=1e-8, abs=1e-12
    )
    assert rc_gaussian_second_moment(threshold, sigma_t) == pytest.approx(
        _integrated_moment(threshold, sigma_t, 2), rel=1e-8, abs=1e-12
    )

    # second, independent route: the normal truncated to (-inf, th) carries mass Phi(th)
    truncated = scipy_stats.truncnorm(-np.inf, threshold, scale=sigma_t)
    mass_below = scipy_stats.norm.cdf(threshold)
    atom = sigma_t * threshold
    mean = mass_below * truncated.mean() + (1 - mass_below) * atom
    second = mass_below * truncated.moment(2) + (1 - mass_below) * atom**2
    assert rc_gaussian_mean(threshold, sigma_t) == pytest.approx(mean, rel=1e-8)
    assert rc_gaussian_second_moment(threshold, sigma_t) == pytest.approx(second, rel=1e-8)


def test_mean_is_negative_and_vanishes_as_threshold_grows() -> None:
    thresholds = [-3.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0]
    means = [rc_gaussian_mean(th, 1.0) for th in thresholds]
    assert all(m < 0.0 for m in means)
    assert means == sorted(means)  # censoring less pulls the mean up towards 0
    assert abs(rc_gaussian_mean(8.0, 1.0)) < 1e-15
    assert rc_gaussian_mean(2.0, 1.0) == pytest.approx(-0.008490702616, rel=1e-9)
    # far below zero nearly every draw is censored: the noise is the constant sigma_t * th
    assert rc_gaussian_mean(-8.0, 0.5) == pytest.approx(-4.0, rel=1e-12)


def test_scale_enters_as_sigma_and_sigma_squared() -> None:
    assert rc_gaussian_mean(1.0, 0.3) == pytest.approx(0.3 * rc_gaussian_mean(1.0, 1.0))
    assert rc_gaussian_second_moment(1.0, 0.3) == pytest.approx(
        0.09 * rc_gaussian_second_moment(1.0, 1.0)
    )
    assert rc_gaussian_mean(1.0, 0.0) == 0.0


@pytest.mark.parametrize("mode", ["magnitude", "value"])
def test_rc_negative_says_which_way_a_negative_weight_is_censored(mode: str) -> None:
    """lognormal training noise at th = 0.5: 'magnitude' caps every weight's |w| growth,
    w * exp(sigma * min(z, th)); 'value' caps a negative weight's rise instead,
    w * exp(sigma * max(z, -th)). Recomputed from the step's keyed draws."""
    from ftaudit.harden.training import TrainingNoise, noise_generator, perturbed_arrays
    from ftaudit.models.base import CrossbarLayer
    from ftaudit.noise import get_noise_model

    weight = np.array([[0.5, -0.5, 1.0, -1.0, 0.2, -0.2] * 50], np.float32)
    layer = CrossbarLayer(name="w", op="MatMul", index=0, shape=weight.shape, dtype="float32")
    noise = TrainingNoise(get_noise_model("lognormal"), 0.8, threshold=0.5, negative=mode)
    got = perturbed_arrays({"w": weight}, [layer], noise, seed=1, epoch=2, step=3)["w"]
    z = noise_generator(1, 2, 3, 0).standard_normal((1, *weight.shape), dtype=np.float32)[0]
    censored = np.minimum(z, 0.5)
    if mode == "value":
        censored = np.where(weight < 0, np.maximum(z, -0.5), censored)
    np.testing.assert_allclose(got, weight * np.exp(0.8 * censored), rtol=1e-6)
    ratio = got / weight
    assert ratio[weight > 0].max() <= math.exp(0.8 * 0.5) + 1e-6
    if mode == "value":  # negative weights: their value rises at most to w * exp(-sigma th)
        assert ratio[weight < 0].min() >= math.exp(-0.8 * 0.5) - 1e-6
        assert ratio[weight < 0].max() > math.exp(0.8 * 0.5)
    else:
        assert ratio[weight < 0].max() <= math.exp(0.8 * 0.5) + 1e-6
