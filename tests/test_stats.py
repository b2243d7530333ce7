"""Tests for ftaudit.stats against hand calculations and scipy as an independent implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ftaudit import coverage, stats
from ftaudit.results import Interval, Summary

scipy_stats = pytest.importorskip("scipy.stats")


def _ranks_by_scipy(n: int, k: float, confidence: float) -> tuple[int | None, int | None]:
    """The equal-tailed order-statistic ranks by exhaustive search over scipy's binomial cdf."""
    half_alpha = (1.0 - confidence) / 2.0
    cdf = [scipy_stats.binom.cdf(j, n, k / 100.0) for j in range(n)]
    lo = max((j for j in range(n) if cdf[j] <= half_alpha), default=None)
    hi = min((j for j in range(n) if cdf[j] >= 1.0 - half_alpha), default=None)
    return lo, hi


# ----------------------------------------------------------------------------------------------
# kpp


def test_kpp_1000_samples_k1_is_the_11th_smallest() -> None:
    values = np.random.default_rng(0).permutation(1000).astype(float)
    assert stats.kpp(values, 1) == 10.0  # floor(1000 * 1 / 100) = 10, 0-based


@pytest.mark.parametrize(
    ("n", "k", "index"),
    [
        (10, 50, 5),
        (1000, 99.9, 999),
        (1000, 0.1, 1),
        (10, 1, 0),
        (10, 99, 9),
        (7, 50, 3),
        # n*k/100 in floating point lands just below the integer in these cases.
        (1000, 32.3, 323),
        (500, 64.6, 323),
        (5000, 1.14, 57),
    ],
)
def test_kpp_is_the_order_statistic_at_floor_nk_over_100(n: int, k: float, index: int) -> None:
    values = np.random.default_rng(n).permutation(n).astype(float) / n
    assert stats.kpp(values, k) == index / n
    assert stats.kpp_index(n, k) == index


def test_kpp_accepts_lists_and_ties() -> None:
    assert stats.kpp([0.9, 0.8, 0.8, 0.8, 0.95], 50) == 0.8


@pytest.mark.parametrize("k", [0, -1, 100, 101, math.nan, math.inf])
def test_kpp_rejects_k_outside_open_interval(k: float) -> None:
    with pytest.raises(ValueError, match="k must be"):
        stats.kpp([0.5, 0.6], k)


@pytest.mark.parametrize("bad", [[], [[0.5, 0.6]], [0.5, math.nan]])
def test_kpp_rejects_empty_2d_or_nan_samples(bad: list) -> None:
    with pytest.raises(ValueError, match="accuracies"):
        stats.kpp(bad, 5)


# ----------------------------------------------------------------------------------------------
# binomial_cdf


@pytest.mark.parametrize(
    ("n", "p"),
    [(1, 0.3), (10, 0.5), (100, 0.01), (500, 0.99), (1000, 0.05), (10_000, 0.01), (10_000, 0.5)],
)
def test_binomial_cdf_matches_scipy(n: int, p: float) -> None:
    x = np.arange(-2, n + 3)
    assert np.allclose(
        stats.binomial_cdf(x, n, p), scipy_stats.binom.cdf(x, n, p), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize(("n", "p"), [(1_000_000, 0.01), (1_000_000, 0.5), (1_000_000, 0.999999)])
def test_binomial_cdf_is_stable_for_a_million_trials(n: int, p: float) -> None:
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    x = np.unique(np.clip(np.round(mean + sd * np.linspace(-8, 8, 41)), 0, n)).astype(np.int64)
    assert np.allclose(
        stats.binomial_cdf(x, n, p), scipy_stats.binom.cdf(x, n, p), rtol=0, atol=1e-12
    )


def test_binomial_cdf_small_case_by_hand() -> None:
    # P(B <= 3), B ~ Bin(10, 1/2) = (1 + 10 + 45 + 120) / 1024
    assert stats.binomial_cdf(3, 10, 0.5) == pytest.approx(176 / 1024, abs=1e-15)
    assert isinstance(stats.binomial_cdf(3, 10, 0.5), float)
    # A non-integer point takes the value at its floor.
    assert stats.binomial_cdf(np.array([3.7]), 10, 0.5)[0] == pytest.approx(176 / 1024, abs=1e-15)


def test_binomial_cdf_degenerate_p() -> None:
    x = np.array([-1, 0, 4, 5])
    assert stats.binomial_cdf(x, 5, 0.0).tolist() == [0.0, 1.0, 1.0, 1.0]
    assert stats.binomial_cdf(x, 5, 1.0).tolist() == [0.0, 0.0, 0.0, 1.0]


# ----------------------------------------------------------------------------------------------
# order-statistic interval for the KPP


@pytest.mark.parametrize("n", [1, 5, 20, 59, 100, 300, 1000])
@pytest.mark.parametrize("k", [1, 5, 50, 95, 99])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_kpp_interval_ranks_match_brute_force(n: int, k: float, confidence: float) -> None:
    assert stats.kpp_interval_ranks(n, k, confidence) == _ranks_by_scipy(n, k, confidence)


def test_kpp_interval_ranks_for_the_median_of_100_match_the_textbook_table() -> None:
    # Conover's table: the 95% interval for the median of n = 100 is X_(40) .. X_(61), 1-based.
    assert stats.kpp_interval_ranks(100, 50) == (39, 60)


@pytest.mark.parametrize("n", [400, 777, 2000])
@pytest.mark.parametrize("k", [1, 5, 50])
def test_kpp_interval_ranks_have_exact_coverage_at_least_nominal(n: int, k: float) -> None:
    lo, hi = stats.kpp_interval_ranks(n, k, 0.95)
    assert lo is not None and hi is not None
    q = k / 100
    # P(X_(lo+1) <= xi_q <= X_(hi+1)) = P(lo + 1 <= B <= hi), B ~ Bin(n, q), 1-based ranks.
    coverage = scipy_stats.binom.cdf(hi, n, q) - scipy_stats.binom.cdf(lo, n, q)
    assert coverage >= 0.95
    assert scipy_stats.binom.cdf(lo, n, q) <= 0.025
    assert scipy_stats.binom.sf(hi, n, q) <= 0.025


@pytest.mark.parametrize("k", [1, 5])
def test_kpp_interval_covers_the_true_percentile_of_a_normal(k: float) -> None:
    experiments, n = 2000, 500
    true_percentile = scipy_stats.norm.ppf(k / 100)
    rng = np.random.default_rng(20240 + k)
    samples = np.sort(rng.standard_normal((experiments, n)), axis=1)
    lo, hi = stats.kpp_interval_ranks(n, k)
    assert lo is not None and hi is not None
    covered = (samples[:, lo] <= true_percentile) & (samples[:, hi] >= true_percentile)
    assert 0.93 <= covered.mean() <= 0.995
    # The Interval built from one sample uses exactly those order statistics.
    interval = stats.kpp_interval(samples[0], k)
    assert (interval.low, interval.high) == (samples[0, lo], samples[0, hi])


def test_kpp_interval_small_n_leaves_the_lower_side_unavailable() -> None:
    values = [0.91, 0.88, 0.93, 0.90, 0.89]
    # n = 5, q = 0.01: P(B <= 0) = 0.99**5 = 0.951 > 0.025, so no order statistic is low enough;
    # P(B <= 1) = 0.951 + 5 * 0.01 * 0.99**4 = 0.9990 >= 0.975, so the upper end is X_(2).
    assert stats.kpp_interval_ranks(5, 1) == (None, 1)
    interval = stats.kpp_interval(values, 1)
    assert interval == Interval(None, 0.89, 0.95, "order-statistic (binomial), equal-tailed")
    assert not interval.two_sided() and interval.width() == math.inf
    assert interval.to_dict()["low"] is None  # null in JSON, not a bound at 0
    assert stats.kpp_interval_width(values, 1) == math.inf


def test_kpp_interval_small_n_leaves_the_upper_side_unavailable() -> None:
    values = [0.91, 0.88, 0.93, 0.90, 0.89]
    # n = 5, q = 0.99: P(B <= 4) = 1 - 0.99**5 = 0.049 < 0.975, so no upper order statistic;
    # P(B <= 3) = 1 - 0.99**5 - 5 * 0.99**4 * 0.01 = 0.00098 <= 0.025, so the lower end is X_(4).
    assert stats.kpp_interval_ranks(5, 99) == (3, None)
    interval = stats.kpp_interval(values, 99)
    assert (interval.low, interval.high) == (0.91, None)


@pytest.mark.parametrize(
    ("k", "confidence", "expected"),
    [(1, 0.95, 368), (5, 0.95, 72), (10, 0.95, 36), (99, 0.95, 368), (1, 0.99, 528)],
)
def test_kpp_min_samples_is_the_first_n_with_both_sides(k, confidence, expected) -> None:
    """k = 1: 0.99**367 = 0.02505 > 0.025 >= 0.99**368 = 0.02480 (the README said 367)."""
    assert stats.kpp_min_samples(k, confidence) == expected
    assert None not in stats.kpp_interval_ranks(expected, k, confidence)
    assert None in stats.kpp_interval_ranks(expected - 1, k, confidence)
    assert 0.99**367 > 0.025 >= 0.99**368


def test_kpp_interval_width_is_the_distance_between_the_order_statistics() -> None:
    values = np.random.default_rng(3).uniform(0.8, 0.9, size=1000)
    lo, hi = stats.kpp_interval_ranks(1000, 5, 0.9)
    ordered = np.sort(values)
    expected = ordered[hi] - ordered[lo]
    assert stats.kpp_interval_width(values, 5, confidence=0.9) == expected
    assert stats.kpp_interval(values, 5, confidence=0.9).width() == pytest.approx(expected)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, -0.1])
def test_kpp_interval_ranks_reject_bad_confidence(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        stats.kpp_interval_ranks(100, 5, confidence)


# ----------------------------------------------------------------------------------------------
# quantiles


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 10, 30, 100, 1000, 100_000])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.95, 0.975, 0.995, 0.999])
def test_t_quantile_matches_scipy(df: int, p: float) -> None:
    expected = scipy_stats.t.ppf(p, df)
    assert stats.t_quantile(p, df) == pytest.approx(expected, rel=1e-9)
    assert stats.t_quantile(1 - p, df) == pytest.approx(-expected, rel=1e-9)


def test_t_quantile_closed_forms_and_center() -> None:
    assert stats.t_quantile(0.975, 1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-14)
    # df = 2: t = (2p - 1) / sqrt(2 p (1 - p)); at p = 0.975 that is 4.302652729...
    assert stats.t_quantile(0.975, 2) == pytest.approx(0.95 / math.sqrt(0.04875), rel=1e-14)
    assert stats.t_quantile(0.5, 7) == 0.0


@pytest.mark.parametrize(("p", "df"), [(0.0, 3), (1.0, 3), (0.5, 0), (0.9, 2.5)])
def test_t_quantile_rejects_bad_arguments(p: float, df: int) -> None:
    with pytest.raises(ValueError):
        stats.t_quantile(p, df)


def test_normal_quantile_matches_scipy() -> None:
    grid = np.concatenate(
        [[1e-300, 1e-20, 1e-10, 1e-5, 0.001, 0.02425], np.linspace(0.01, 0.99, 99)]
    )
    grid = np.concatenate([grid, 1 - grid[2:6]])  # 1 - 1e-20 would round to 1.0
    for p in grid:
        assert stats.normal_quantile(float(p)) == pytest.approx(
            scipy_stats.norm.ppf(p), rel=1e-12, abs=1e-12
        )


def test_normal_quantile_known_values() -> None:
    assert stats.normal_quantile(0.5) == 0.0
    assert stats.normal_quantile(0.975) == pytest.approx(1.959963984540054, abs=1e-14)
    with pytest.raises(ValueError):
        stats.normal_quantile(1.0)


# ----------------------------------------------------------------------------------------------
# mean interval and summary


@pytest.mark.parametrize(("n", "confidence"), [(2, 0.95), (5, 0.95), (40, 0.9), (1000, 0.99)])
def test_mean_interval_matches_scipy(n: int, confidence: float) -> None:
    values = np.random.default_rng(n).beta(40, 5, size=n)
    low, high = scipy_stats.t.interval(
        confidence, n - 1, loc=values.mean(), scale=scipy_stats.sem(values)
    )
    interval = stats.mean_interval(values, confidence=confidence)
    assert interval.low == pytest.approx(max(low, 0.0), abs=1e-12)
    assert interval.high == pytest.approx(min(high, 1.0), abs=1e-12)
    assert (interval.confidence, interval.method) == (confidence, "Student t")


def test_mean_interval_is_clipped_to_the_accuracy_range() -> None:
    values = [0.99, 1.0, 0.2]
    half = scipy_stats.t.ppf(0.975, 2) * scipy_stats.sem(values)
    assert np.mean(values) + half > 1.0 and np.mean(values) - half < 0.0  # raw interval overflows
    interval = stats.mean_interval(values)
    assert (interval.low, interval.high) == (0.0, 1.0)
    wide = stats.mean_interval(values, bounds=(-np.inf, np.inf))
    assert wide.high == pytest.approx(np.mean(values) + half)


def test_mean_interval_collapses_for_one_or_identical_samples() -> None:
    assert stats.mean_interval([0.7]) == Interval(0.7, 0.7, 0.95, "Student t")
    identical = stats.mean_interval([0.9] * 7)
    assert (identical.low, identical.high) == (0.9, 0.9)
    summary = stats.summarize([0.9] * 7, k=5)
    assert (summary.mean, summary.std) == (0.9, 0.0)


def test_summarize_by_hand() -> None:
    values = [0.5, 0.7, 0.6, 0.9, 0.8]
    summary = stats.summarize(values, k=20)
    # mean 3.5 / 5 = 0.7; squared deviations 0.04 + 0 + 0.01 + 0.04 + 0.01 = 0.1; s^2 = 0.1 / 4.
    std = math.sqrt(0.025)
    half_width = 2.7764451051977987 * std / math.sqrt(5)  # t(0.975, 4) from tables
    # KPP: floor(5 * 20 / 100) = 1 -> 0.6. Interval, B ~ Bin(5, 0.2): P(B <= 0) = 0.32768 >
    # 0.025 (lower side unreachable -> 0.0); P(B <= 2) = 0.94208, P(B <= 3) = 0.99328 -> X_(4).
    assert summary == Summary(
        n=5,
        mean=pytest.approx(0.7),
        std=pytest.approx(std),
        mean_interval=Interval(
            pytest.approx(0.7 - half_width), pytest.approx(0.7 + half_width), 0.95, "Student t"
        ),
        kpp=0.6,
        kpp_interval=Interval(None, 0.8, 0.95, "order-statistic (binomial), equal-tailed"),
        min=0.5,
        max=0.9,
    )
    assert all(
        type(value) is float
        for value in (summary.mean, summary.std, summary.kpp, summary.min, summary.max)
    )
    assert type(summary.n) is int


def test_summarize_single_sample() -> None:
    summary = stats.summarize(np.array([0.42]), k=50, confidence=0.9)
    assert (summary.n, summary.mean, summary.std, summary.kpp) == (1, 0.42, 0.0, 0.42)
    assert (summary.mean_interval.low, summary.mean_interval.high) == (0.42, 0.42)
    # B ~ Bin(1, 0.5): P(B <= 0) = 0.5 is neither <= 0.05 nor >= 0.95: both sides unavailable.
    assert (summary.kpp_interval.low, summary.kpp_interval.high) == (None, None)
    assert summary.kpp_interval.confidence == 0.9


def test_sequential_looks_double_from_50_and_end_at_the_sample_count() -> None:
    assert coverage.sequential_looks(1000) == [50, 100, 200, 400, 800, 1000]
    assert coverage.sequential_looks(400) == [50, 100, 200, 400]
    assert coverage.sequential_looks(30) == [30]
    assert coverage.look_confidence(0.95, 5) == pytest.approx(0.99)


def _stopped_coverage(runs: int, *, sequential: bool) -> float:
    """Coverage of the KPP interval of runs stopped by --target-ci: draws from N(0.8, 0.02^2),
    k = 10, up to 1,000 samples, target width 0.006 (about a quarter of the sequential runs
    stop early). ``sequential=False`` is the old rule: a look every 50 samples at 95%."""
    samples, k, target = 1000, 10.0, 0.006
    true_kpp = 0.8 + 0.02 * stats.normal_quantile(k / 100)
    looks = coverage.sequential_looks(samples) if sequential else list(range(50, samples + 1, 50))
    level = coverage.look_confidence(0.95, len(looks)) if sequential else 0.95
    rng = np.random.default_rng(7)
    covered = stopped = 0
    for _ in range(runs):
        x = rng.normal(0.8, 0.02, samples)
        for n in looks:
            if n == samples or stats.kpp_interval_width(x[:n], k, confidence=level) < target:
                break
        stopped += n < samples
        if sequential:
            interval = coverage.sequential_summary(x[:n], k=k, samples=samples).kpp_interval
            assert interval.confidence == 0.95 and "Bonferroni" in interval.method
        else:
            interval = stats.kpp_interval(x[:n], k)
        covered += interval.low <= true_kpp <= interval.high
    assert stopped > runs // 5  # the stopping rule is exercised
    return covered / runs


def test_target_ci_stopped_intervals_keep_their_95_percent_coverage() -> None:
    """2,000 simulated stopped runs: the alpha-split schedule covers the true 10th percentile
    in >= 95% of them (measured 0.993); the old rule (every 50 samples at 95%) does not
    (0.9445 with these draws), which is what this test guards against."""
    assert _stopped_coverage(2000, sequential=True) >= 0.95
    assert _stopped_coverage(2000, sequential=False) < 0.95


def test_test_set_error_widens_the_mean_interval_in_quadrature_by_hand() -> None:
    rng = np.random.default_rng(1)
    accuracies = rng.normal(0.8, 0.02, 400)
    base = stats.summarize(accuracies, k=1)
    wide = coverage.with_test_set_error(base, 2000)
    mc = (base.mean_interval.high - base.mean_interval.low) / 2
    test_set = 1.959963984540054 * math.sqrt(base.mean * (1 - base.mean) / 2000)
    assert test_set == pytest.approx(0.0175, abs=1e-4)  # about ±1.75 points near 80%
    half = math.hypot(mc, test_set)
    assert wide.mean_interval.low == pytest.approx(base.mean - half)
    assert wide.mean_interval.high == pytest.approx(base.mean + half)
    low, high = base.kpp_interval.low, base.kpp_interval.high
    z = 1.959963984540054
    assert wide.kpp_interval.low == pytest.approx(low - z * math.sqrt(low * (1 - low) / 2000))
    assert wide.kpp_interval.high == pytest.approx(high + z * math.sqrt(high * (1 - high) / 2000))
    assert "test-set sampling" in wide.mean_interval.method


def test_test_set_error_intervals_cover_the_population_mean() -> None:
    """500 simulated audits: 2,000 test images drawn from a population whose per-image
    difficulty s ~ U(0, 1), a draw with threshold theta ~ N(0.8, 0.02^2) gets image j right
    iff s_j < theta, 200 draws per audit. The population mean accuracy is 0.8. Monte Carlo
    intervals alone cover it rarely (they measure this test set, about ±0.2 points, against a
    test-set error of ±1.75); with --test-set-error they cover it at least 95% of the time."""
    rng = np.random.default_rng(11)
    covered_mc = covered_wide = 0
    runs = 500
    for _ in range(runs):
        scores = np.sort(rng.uniform(size=2000))
        thresholds = rng.normal(0.8, 0.02, 200)
        accuracies = np.searchsorted(scores, thresholds) / 2000
        base = stats.summarize(accuracies, k=1)
        wide = coverage.with_test_set_error(base, 2000)
        covered_mc += base.mean_interval.low <= 0.8 <= base.mean_interval.high
        covered_wide += wide.mean_interval.low <= 0.8 <= wide.mean_interval.high
    assert covered_mc / runs < 0.5
    assert covered_wide / runs >= 0.95
