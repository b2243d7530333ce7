"""Statistics of Monte Carlo accuracy samples: mean, KPP and their confidence intervals.

Pure numpy and the standard library (no scipy at runtime), no I/O. The KPP interval is
distribution-free: it is built from order statistics and the binomial distribution, so it is
valid whatever the shape of the accuracy distribution (for the discrete accuracies of a finite
test set it is conservative).
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import overload

import numpy as np

from ftaudit.results import Interval, Summary

KPP_INTERVAL_METHOD = "order-statistic (binomial), equal-tailed"
MEAN_INTERVAL_METHOD = "Student t"

_LOG_2PI = math.log(2.0 * math.pi)
# Above this many degrees of freedom the Cornish-Fisher expansion of the t quantile is already
# accurate to ~1e-12 (its error falls like df**-5); below it we refine by Newton.
_T_EXPANSION_ONLY_DF = 10_000


# --------------------------------------------------------------------------------------------
# Input checks (these are programming errors, not user errors: the CLI validates earlier)


def _as_sample(accuracies: np.ndarray | list[float]) -> np.ndarray:
    """The accuracies as a 1-D float64 array, rejecting empty or non-finite input."""
    sample = np.asarray(accuracies, dtype=np.float64)
    if sample.ndim != 1:
        raise ValueError(f"accuracies must be 1-D, got shape {sample.shape}")
    if sample.size == 0:
        raise ValueError("accuracies is empty")
    if not np.all(np.isfinite(sample)):
        raise ValueError("accuracies contains NaN or infinite values")
    return sample


def _check_k(k: float) -> None:
    if not (math.isfinite(k) and 0.0 < k < 100.0):
        raise ValueError(f"k must be a percentile strictly between 0 and 100, got {k!r}")


def _check_confidence(confidence: float) -> None:
    if not (math.isfinite(confidence) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}")


def _check_probability(p: float) -> None:
    if not (0.0 < p < 1.0):
        raise ValueError(f"p must be strictly between 0 and 1, got {p!r}")


# --------------------------------------------------------------------------------------------
# K-th percentile performance


def kpp_index(n: int, k: float) -> int:
    """0-based index floor(n*k/100) of the KPP in the sorted sample, computed exactly.

    k is read as the decimal it prints as, so 1000 samples at k=1 give index 10 even where the
    float product n*k/100 would round just below an integer.
    """
    _check_k(k)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return math.floor(n * Fraction(repr(float(k))) / 100)


def kpp(accuracies: np.ndarray | list[float], k: float) -> float:
    """K-th percentile performance as in TRICE Algorithm 2: the sorted sample at floor(N*k/100)."""
    sample = _as_sample(accuracies)
    index = kpp_index(sample.size, k)
    # partition is O(N) and leaves the element at `index` exactly where a full sort would.
    return float(np.partition(sample, index)[index])


# --------------------------------------------------------------------------------------------
# Binomial distribution (Loader's saddle-point pmf, stable for large n)


def _stirlerr_table() -> np.ndarray:
    # stirlerr(m) = log(m!) - log(sqrt(2*pi*m) * (m/e)**m); for m <= 15 the terms are small
    # enough that the direct formula loses only ~1e-14.
    table = np.zeros(16)
    for m in range(1, 16):
        table[m] = math.lgamma(m + 1) - (m + 0.5) * math.log(m) + m - 0.5 * _LOG_2PI
    return table


_STIRLERR_SMALL = _stirlerr_table()


def _stirlerr(m: np.ndarray) -> np.ndarray:
    """Error of Stirling's formula for log(m!), vectorised over integer m >= 0."""
    m = np.asarray(m, dtype=np.float64)
    out = np.empty_like(m)
    small = m <= 15
    out[small] = _STIRLERR_SMALL[m[small].astype(np.int64)]
    big = m[~small]
    inv2 = 1.0 / (big * big)
    s0, s1, s2, s3, s4 = 1 / 12, 1 / 360, 1 / 1260, 1 / 1680, 1 / 1188
    out[~small] = (s0 - (s1 - (s2 - (s3 - s4 * inv2) * inv2) * inv2) * inv2) / big
    return out


def _bd0(x: np.ndarray, mean: float) -> np.ndarray:
    """Deviance term x*log(x/mean) + mean - x without cancellation when x is near mean."""
    out = x * np.log(x / mean) + mean - x
    near = np.abs(x - mean) < 0.1 * (x + mean)
    if np.any(near):
        xn = x[near]
        v = (xn - mean) / (xn + mean)
        total = (xn - mean) * v
        term = 2.0 * xn * v
        v2 = v * v
        for j in range(1, 1000):
            term = term * v2
            updated = total + term / (2 * j + 1)
            if np.array_equal(updated, total):
                break
            total = updated
        out[near] = total
    return out


def _binomial_pmf(j: np.ndarray, n: int, p: float) -> np.ndarray:
    """P(B = j) for integer 0 <= j <= n (float array), B ~ Binomial(n, p), 0 < p < 1."""
    q = 1.0 - p
    pmf = np.empty_like(j)
    pmf[j == 0] = math.exp(n * math.log1p(-p))
    pmf[j == n] = math.exp(n * math.log(p))
    inner_mask = (j > 0) & (j < n)
    inner = j[inner_mask]
    log_c = (
        _stirlerr(np.array([float(n)]))[0]
        - _stirlerr(inner)
        - _stirlerr(n - inner)
        - _bd0(inner, n * p)
        - _bd0(n - inner, n * q)
    )
    # log(2*pi*j*(n-j)/n) from exact integers: log1p(-j/n) would amplify rounding near j = n.
    log_f = _LOG_2PI + np.log(inner) + np.log(n - inner) - math.log(n)
    pmf[inner_mask] = np.exp(log_c - 0.5 * log_f)
    return pmf


def _negligible_tail_margin(n: int, p: float) -> float:
    """Distance a from n*p beyond which each binomial tail holds less than exp(-800).

    Chernoff: P(B >= mu + a) <= exp(-a^2 / (2 mu + a)) and P(B <= mu - a) <= exp(-a^2 / (2 mu)),
    applied to successes (mu = n p) or failures (mu = n q), whichever is smaller. exp(-800)
    underflows to 0, so skipping those terms changes no double-precision result.
    """
    mu = n * min(p, 1.0 - p)
    return 400.0 + math.sqrt(160_000.0 + 1600.0 * mu)


@overload
def binomial_cdf(x: int, n: int, p: float) -> float: ...
@overload
def binomial_cdf(x: np.ndarray, n: int, p: float) -> np.ndarray: ...
def binomial_cdf(x: int | np.ndarray, n: int, p: float) -> float | np.ndarray:
    """P(B <= x) for B ~ Binomial(n, p), vectorised over x; accurate to ~1e-13 up to n = 1e6."""
    if n < 0 or int(n) != n:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not (0.0 <= p <= 1.0):
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    n = int(n)
    scalar = np.ndim(x) == 0
    # The cdf of a discrete variable at a non-integer point is its value at the floor.
    xs = np.floor(np.asarray(x, dtype=np.float64))
    if p == 0.0:
        cdf_at = np.where(xs >= 0, 1.0, 0.0)
    elif p == 1.0:
        cdf_at = np.where(xs >= n, 1.0, 0.0)
    else:
        # Sum the pmf only where it is not negligible: below the window the cdf is 0.0, above
        # it 1.0, in double precision. This keeps n = 1e6 to a few milliseconds.
        margin = _negligible_tail_margin(n, p)
        first = max(0, math.floor(n * p - margin))
        last = min(n, math.ceil(n * p + margin))
        cdf_at = np.where(xs >= last, 1.0, 0.0)
        inside = (xs >= first) & (xs < last)
        if np.any(inside):
            top = int(xs[inside].max())
            support = np.arange(first, top + 1, dtype=np.float64)
            cumulative = np.minimum(np.cumsum(_binomial_pmf(support, n, p)), 1.0)
            cdf_at[inside] = cumulative[xs[inside].astype(np.int64) - first]
    return float(cdf_at) if scalar else cdf_at


# --------------------------------------------------------------------------------------------
# Distribution-free interval for the k-th percentile


@functools.lru_cache(maxsize=256)
def _kpp_ranks_cached(n: int, k: float, confidence: float) -> tuple[int | None, int | None]:
    # Cached because early stopping asks for the same (n, k, confidence) after every batch.
    half_alpha = (1.0 - confidence) / 2.0
    cdf = binomial_cdf(np.arange(n), n, k / 100.0)  # cdf[j] = P(B <= j), j = 0..n-1
    # lo = r - 1 for the largest 1-based r with P(B <= r-1) <= alpha/2.
    below = np.flatnonzero(cdf <= half_alpha)
    lo = int(below[-1]) if below.size else None
    # hi = s - 1 for the smallest 1-based s <= n with P(B <= s-1) >= 1 - alpha/2.
    above = np.flatnonzero(cdf >= 1.0 - half_alpha)
    hi = int(above[0]) if above.size else None
    return lo, hi


def kpp_interval_ranks(n: int, k: float, confidence: float = 0.95) -> tuple[int | None, int | None]:
    """0-based sorted-sample indices (lo, hi) bracketing the population k-th percentile.

    P(X_(lo) <= xi_q <= X_(hi)) >= confidence with q = k/100, each tail at most alpha/2; a side
    is None when n samples are too few to reach it at this confidence.
    """
    _check_k(k)
    _check_confidence(confidence)
    if n < 1 or int(n) != n:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return _kpp_ranks_cached(int(n), float(k), float(confidence))


def kpp_interval(
    accuracies: np.ndarray | list[float], k: float, *, confidence: float = 0.95
) -> Interval:
    """Confidence interval for the population KPP; a side the samples cannot reach at this
    level is None (unavailable: shown as a dash, null in JSON), never a bound at 0 or 1,
    which would read as a measured value. ``kpp_min_samples`` says how many samples a
    two-sided interval needs.
    """
    sample = np.sort(_as_sample(accuracies))
    lo, hi = kpp_interval_ranks(sample.size, k, confidence)
    return Interval(
        low=float(sample[lo]) if lo is not None else None,
        high=float(sample[hi]) if hi is not None else None,
        confidence=float(confidence),
        method=KPP_INTERVAL_METHOD,
    )


@functools.lru_cache(maxsize=64)
def kpp_min_samples(k: float, confidence: float = 0.95) -> int:
    """The fewest samples with a two-sided order-statistic KPP interval at ``confidence``.

    The lower side exists once P(B <= 0) = (1 - q)^n <= alpha/2 (q = k/100) and the upper once
    P(B <= n - 1) = 1 - q^n >= 1 - alpha/2; n is the larger of the two smallest solutions
    (k = 1 at 95%: 0.99^n <= 0.025 gives n = 368).
    """
    _check_k(k)
    _check_confidence(confidence)
    q, half_alpha = k / 100.0, (1.0 - confidence) / 2.0
    n = max(
        math.ceil(math.log(half_alpha) / math.log1p(-q)),
        math.ceil(math.log(half_alpha) / math.log(q)),
        1,
    )
    # the logarithms can land a hair off an integer: settle on the exact ranks
    while n > 1 and all(side is not None for side in kpp_interval_ranks(n - 1, k, confidence)):
        n -= 1
    while any(side is None for side in kpp_interval_ranks(n, k, confidence)):
        n += 1
    return n


def kpp_interval_width(
    accuracies: np.ndarray | list[float], k: float, *, confidence: float = 0.95
) -> float:
    """KPP interval width for early stopping (--target-ci); +inf while a side is unreachable."""
    sample = np.sort(_as_sample(accuracies))
    lo, hi = kpp_interval_ranks(sample.size, k, confidence)
    if lo is None or hi is None:
        return math.inf
    return float(sample[hi] - sample[lo])


# --------------------------------------------------------------------------------------------
# Quantiles of the normal and Student t distributions

_ACKLAM_A = (
    -3.969683028665376e01,
    2.209460984245205e02,
    -2.759285104469687e02,
    1.383577518672690e02,
    -3.066479806614716e01,
    2.506628277459239e00,
)
_ACKLAM_B = (
    -5.447609879822406e01,
    1.615858368580409e02,
    -1.556989798598866e02,
    6.680131188771972e01,
    -1.328068155288572e01,
)
_ACKLAM_C = (
    -7.784894002430293e-03,
    -3.223964580411365e-01,
    -2.400758277161838e00,
    -2.549732539343734e00,
    4.374664141464968e00,
    2.938163982698783e00,
)
_ACKLAM_D = (
    7.784695709041462e-03,
    3.224671290700398e-01,
    2.445134137142996e00,
    3.754408661907416e00,
)


def normal_quantile(p: float) -> float:
    """Standard normal quantile: Acklam's approximation (1e-9) plus one Halley step (~1e-15)."""
    _check_probability(p)
    if p > 0.5:
        # 1 - p is exact for p >= 0.5, and the lower tail is where erfc is accurate.
        return -normal_quantile(1.0 - p)
    a, b, c, d = _ACKLAM_A, _ACKLAM_B, _ACKLAM_C, _ACKLAM_D
    if p < 0.02425:
        r = math.sqrt(-2.0 * math.log(p))
        x = (((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]) / (
            (((d[0] * r + d[1]) * r + d[2]) * r + d[3]) * r + 1.0
        )
    else:
        r = p - 0.5
        r2 = r * r
        x = ((((((a[0] * r2 + a[1]) * r2 + a[2]) * r2 + a[3]) * r2 + a[4]) * r2 + a[5]) * r) / (
            ((((b[0] * r2 + b[1]) * r2 + b[2]) * r2 + b[3]) * r2 + b[4]) * r2 + 1.0
        )
    error = 0.5 * math.erfc(-x / math.sqrt(2.0)) - p
    u = error * math.sqrt(2.0 * math.pi) * math.exp(0.5 * x * x)
    return x - u / (1.0 + 0.5 * x * u)


def _t_cdf_upper_half(t: float, df: int) -> float:
    """P(T <= t) for t >= 0 and integer df, from the finite series of A&S 26.7.3-4."""
    theta = math.atan(t / math.sqrt(df))
    sin_t, cos_t = math.sin(theta), math.cos(theta)
    cos2 = cos_t * cos_t
    if df % 2 == 0:
        # A = sin(theta) * sum_{j=0}^{df/2-1} prod_{i<=j} (2i-1)/(2i) * cos^(2j)
        j = np.arange(1, df // 2)
        terms = np.cumprod((2 * j - 1) / (2 * j) * cos2)
        two_sided = sin_t * (1.0 + terms.sum())
    elif df == 1:
        two_sided = 2.0 * theta / math.pi
    else:
        # A = 2/pi * (theta + sin cos * sum_{j=0}^{(df-3)/2} prod_{i<=j} (2i)/(2i+1) * cos^(2j))
        j = np.arange(1, (df - 1) // 2)
        terms = np.cumprod((2 * j) / (2 * j + 1) * cos2)
        two_sided = 2.0 / math.pi * (theta + sin_t * cos_t * (1.0 + terms.sum()))
    return 0.5 + 0.5 * two_sided


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student t with integer ``df`` (exact finite series, A&S 26.7.3-4)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df!r}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    if t >= 0:
        return _t_cdf_upper_half(t, int(df))
    return 1.0 - _t_cdf_upper_half(-t, int(df))


def holm_rejections(p_values: list[float] | np.ndarray, alpha: float) -> list[bool]:
    """Holm's step-down procedure: which hypotheses to reject with family-wise error <= alpha.

    Sort the p-values ascending; reject the i-th smallest (1-based) while p_(i) <= alpha /
    (m - i + 1), stop at the first that is not. Valid under any dependence between the tests
    (the rows of a compare share their draws)."""
    p = np.asarray(p_values, dtype=np.float64)
    reject = [False] * p.size
    for rank, index in enumerate(np.argsort(p, kind="stable")):
        if p[index] > alpha / (p.size - rank):
            break
        reject[int(index)] = True
    return reject


def _t_pdf(t: float, df: int) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))


def _t_quantile_expansion(p: float, df: int) -> float:
    """Cornish-Fisher expansion of the t quantile in powers of 1/df (A&S 26.7.5)."""
    x = normal_quantile(p)
    x2 = x * x
    g1 = (x2 + 1) * x / 4
    g2 = ((5 * x2 + 16) * x2 + 3) * x / 96
    g3 = (((3 * x2 + 19) * x2 + 17) * x2 - 15) * x / 384
    g4 = ((((79 * x2 + 776) * x2 + 1482) * x2 - 1920) * x2 - 945) * x / 92160
    return x + (g1 + (g2 + (g3 + g4 / df) / df) / df) / df


def t_quantile(p: float, df: int) -> float:
    """Student t quantile without scipy: closed form for df 1 and 2, else expansion + Newton.

    Relative error ~1e-12 for 1e-4 <= p <= 1 - 1e-4; further out it degrades (1e-7 at 1 - 1e-10)
    because the cdf is computed from below.
    """
    _check_probability(p)
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df!r}")
    df = int(df)
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2.0 * p - 1.0) / math.sqrt(2.0 * p * (1.0 - p))
    start = _t_quantile_expansion(p, df)
    if df > _T_EXPANSION_ONLY_DF:
        return start
    # Safeguarded Newton on the exact cdf: keep a bracket [low, high] around the root and
    # bisect whenever a Newton step would leave it.
    low, high = 0.0, max(start, 1.0)
    for _ in range(64):  # bounded: for p within an ulp of 1 the cdf may never round up to p
        if _t_cdf_upper_half(high, df) >= p:
            break
        low, high = high, 2.0 * high
    t = min(max(start, low), high)
    for _ in range(100):
        excess = _t_cdf_upper_half(t, df) - p
        if excess > 0:
            high = t
        else:
            low = t
        step = excess / _t_pdf(t, df)
        candidate = t - step
        if not (low < candidate < high):
            candidate = 0.5 * (low + high)
        if abs(candidate - t) <= 1e-15 * max(1.0, abs(t)):
            return candidate
        t = candidate
    return t


# --------------------------------------------------------------------------------------------
# Mean and the one-call summary


def _sample_mean_and_std(sample: np.ndarray) -> tuple[float, float]:
    # One sample or identical samples: the common value exactly and std 0.0, not a sum rounded
    # back near them, so the zero-width mean interval always contains the reported mean.
    if np.all(sample == sample[0]):
        return float(sample[0]), 0.0
    return float(sample.mean()), float(sample.std(ddof=1))


def mean_interval(
    accuracies: np.ndarray | list[float],
    *,
    confidence: float = 0.95,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Interval:
    """Student t interval mean ± t(1-alpha/2, n-1)·s/√n, clipped to the metric's ``bounds``."""
    _check_confidence(confidence)
    sample = _as_sample(accuracies)
    center, std = _sample_mean_and_std(sample)
    # A single sample, or identical samples, carry no spread: the interval is the point.
    if std == 0.0:
        return Interval(center, center, float(confidence), MEAN_INTERVAL_METHOD)
    half_width = t_quantile(1.0 - (1.0 - confidence) / 2.0, sample.size - 1) * std
    half_width /= math.sqrt(sample.size)
    low, high = max(center - half_width, bounds[0]), min(center + half_width, bounds[1])
    return Interval(low, high, float(confidence), MEAN_INTERVAL_METHOD)


def summarize(
    accuracies: np.ndarray | list[float], *, k: float, confidence: float = 0.95
) -> Summary:
    """All statistics of one sigma's accuracies: n, mean, std, KPP, both intervals, min, max."""
    sample = _as_sample(accuracies)
    mean, std = _sample_mean_and_std(sample)
    return Summary(
        n=int(sample.size),
        mean=mean,
        std=std,
        mean_interval=mean_interval(sample, confidence=confidence),
        kpp=kpp(sample, k),
        kpp_interval=kpp_interval(sample, k, confidence=confidence),
        min=float(sample.min()),
        max=float(sample.max()),
    )


# --------------------------------------------------------------------------------------------
# Paired comparison of two models evaluated on the same draws

PAIRED_BOOTSTRAP_METHOD = "paired percentile bootstrap"
#: resamples of the paired KPP-difference bootstrap (a fixed number: the result is reproducible)
BOOTSTRAP_RESAMPLES = 2000
#: the bootstrap interval of a low percentile is only trusted with this many samples below it
BOOTSTRAP_MIN_TAIL = 10


def paired_kpp_difference_interval(
    baseline: np.ndarray | list[float],
    candidate: np.ndarray | list[float],
    k: float,
    *,
    rng: np.random.Generator,
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Interval | None:
    """Percentile-bootstrap interval of KPP(candidate) - KPP(baseline) over paired samples.

    Sample i of both models shares its draws, so indices are resampled in pairs. None when fewer
    than ``BOOTSTRAP_MIN_TAIL`` samples lie below the KPP rank: the bootstrap of an extreme order
    statistic then sees only a handful of distinct values and its coverage is poor.
    """
    _check_confidence(confidence)
    base, cand = _as_sample(baseline), _as_sample(candidate)
    if base.size != cand.size:
        raise ValueError(f"paired samples differ in size: {base.size} and {cand.size}")
    index = kpp_index(base.size, k)
    if index < BOOTSTRAP_MIN_TAIL:
        return None
    differences = np.empty(resamples)
    block = max(1, 2_000_000 // base.size)  # bound the (block, n) index array's memory
    for start in range(0, resamples, block):
        stop = min(start + block, resamples)
        picks = rng.integers(0, base.size, size=(stop - start, base.size))
        kpp_cand = np.partition(cand[picks], index, axis=1)[:, index]
        kpp_base = np.partition(base[picks], index, axis=1)[:, index]
        differences[start:stop] = kpp_cand - kpp_base
    alpha = 1.0 - confidence
    low, high = np.quantile(differences, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    return Interval(float(low), float(high), float(confidence), PAIRED_BOOTSTRAP_METHOD)
