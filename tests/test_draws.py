"""Keyed draws (ftaudit.draws): the fast Box-Muller generator against an independent float64
implementation and against N(0, 1) itself, keying, determinism and chunk independence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import keyed_normals

from ftaudit.draws import RNGS, box_muller, check_rng, keyed_generator, normals, standard_normal
from ftaudit.errors import UserError


def box_muller_float64(seed: int, key: tuple[int, ...], n: int) -> np.ndarray:
    """The documented construction in float64, straight from the stream's raw 64-bit words:
    word j -> u = (high 32 bits + 1) / 2**32, theta = 2 pi (low 32 bits) / 2**32,
    normals 2j, 2j+1 = sqrt(-2 ln u) (cos theta, sin theta)."""
    sequence = np.random.SeedSequence(seed, spawn_key=key)
    words = np.random.SFC64(sequence).random_raw((n + 1) // 2)
    high = (words >> np.uint64(32)).astype(np.float64)
    low = (words & np.uint64(0xFFFFFFFF)).astype(np.float64)
    radius = np.sqrt(-2 * np.log((high + 1) / 2.0**32))
    theta = 2 * np.pi * low / 2.0**32
    pairs = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1).reshape(-1)
    return pairs[:n]


def test_fast_matches_an_independent_float64_box_muller() -> None:
    n = 200_001  # odd: the last word gives one normal
    got = normals(5, (3, 1), (n,))
    want = box_muller_float64(5, (3, 1), n)
    # float32 rounding of u, theta and the trig functions: a few float32 ulps of |z| <= 6.7
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
    assert got.dtype == np.float32


def test_ziggurat_is_numpys_generator_bit_for_bit() -> None:
    sequence = np.random.SeedSequence(9, spawn_key=(4, 2))
    want = np.random.Generator(np.random.SFC64(sequence)).standard_normal(1000, dtype=np.float32)
    assert np.array_equal(normals(9, (4, 2), (1000,), "ziggurat"), want)


def test_fast_normals_follow_n01() -> None:
    """KS against the normal CDF, mean and variance on 10**6 draws (fixed key: deterministic)."""
    from scipy import stats

    z = normals(0, (11,), (1_000_000,)).astype(np.float64)
    assert stats.kstest(z, "norm").pvalue > 0.01
    # 5 standard errors: mean se 1e-3, variance se sqrt(2 / n) = 1.4e-3
    assert abs(z.mean()) < 5e-3
    assert abs(z.var() - 1) < 7.1e-3
    assert abs(np.mean(z**4) - 3) < 5 * math.sqrt(96 / len(z))  # kurtosis of a normal


@pytest.mark.parametrize("threshold", [3.0, 4.0, 5.0])
def test_fast_tail_frequencies_match_the_normal_cdf(threshold: float) -> None:
    """P(|z| > t) = erfc(t / sqrt 2) on 4e7 draws, within 5 binomial standard errors (at 5
    sigma 23 expected exceedances; an untruncated tail is what the radius' 32 bits buy)."""
    n, chunk = 40_000_000, 4_000_000
    exceed = sum(
        int(np.count_nonzero(np.abs(normals(1, (key,), (chunk,))) > threshold))
        for key in range(n // chunk)
    )
    p = math.erfc(threshold / math.sqrt(2))
    assert abs(exceed - n * p) < 5 * math.sqrt(n * p * (1 - p)) + 1


def test_fast_draws_of_different_keys_are_uncorrelated() -> None:
    n = 500_000
    streams = [normals(2, key, (n,)).astype(np.float64) for key in [(0, 0), (0, 1), (1, 0)]]
    for i in range(3):
        for j in range(i + 1, 3):
            assert abs(np.corrcoef(streams[i], streams[j])[0, 1]) < 5 / math.sqrt(n)
    # and neighbours within one stream (the cos and sin of one word are independent too)
    z = streams[0]
    assert abs(np.corrcoef(z[0::2], z[1::2])[0, 1]) < 5 / math.sqrt(n / 2)
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 5 / math.sqrt(n)


@pytest.mark.parametrize("rng", sorted(RNGS))
def test_a_shorter_buffer_gets_a_prefix_of_a_longer_one(rng: str) -> None:
    whole = normals(3, (1, 2), (100_001,), rng)
    for n in (1, 2, 7, 32_768, 32_769, 100_000):
        assert np.array_equal(normals(3, (1, 2), (n,), rng), whole[:n])
    again = standard_normal(3, (1, 2), np.empty((7, 100_001 // 7 + 1), np.float32), rng)
    assert np.array_equal(again.reshape(-1)[:100_001], whole)


@pytest.mark.parametrize("chunk_words", [1, 3, 1000, 16_384, 100_000])
def test_fast_numbers_do_not_depend_on_the_working_chunk(chunk_words: int) -> None:
    n = 50_001
    want = normals(8, (5,), (n,))
    got = box_muller(keyed_generator(8, (5,)).bit_generator, np.empty(n, np.float32), chunk_words)
    assert np.array_equal(got, want)


def test_keys_seeds_and_generators_give_different_streams() -> None:
    base = normals(0, (1, 2), (64,))
    for other in (
        normals(1, (1, 2), (64,)),
        normals(0, (2, 1), (64,)),
        normals(0, (1, 2, 0), (64,)),
    ):
        assert not np.array_equal(base, other)
    assert not np.array_equal(base, normals(0, (1, 2), (64,), "ziggurat"))
    assert np.array_equal(base, keyed_normals(0, (1, 2), (64,)))  # deterministic


def test_unknown_generator_is_a_user_error() -> None:
    with pytest.raises(UserError, match="did you mean 'fast'"):
        check_rng("fats")
    with pytest.raises(UserError, match="--rng"):
        normals(0, (0,), (4,), "mersenne")


@pytest.mark.parametrize("rng", sorted(RNGS))
def test_a_buffer_that_cannot_be_filled_in_place_is_refused(rng: str) -> None:
    """A strided or float64 buffer would be filled through a copy and keep its old values
    (a weight left unperturbed): refused, under both generators."""
    strided = np.zeros((8, 6), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous float32"):
        standard_normal(0, (1, 2), strided, rng)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        standard_normal(0, (1, 2), np.zeros(8), rng)
    assert not strided.any()
