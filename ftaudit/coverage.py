"""What an interval covers: early stopping that keeps the nominal coverage (--target-ci) and
the test set's own sampling error (--test-set-error). Pure numpy, built on ``stats``."""

from __future__ import annotations

import math

import numpy as np

from ftaudit.results import Interval, Summary, test_set_half_width
from ftaudit.stats import summarize


def _half_width(accuracy: float, n_images: int, confidence: float) -> float:
    return test_set_half_width(accuracy, n_images, confidence)


# --------------------------------------------------------------------------------------------
# Early stopping (--target-ci) that keeps the nominal coverage

#: the first sequential look, in samples; later looks double it (50, 100, 200, ...)
FIRST_LOOK = 50
SEQUENTIAL_METHOD = "alpha split over the looks at {looks} samples (Bonferroni), {level} each"


def sequential_looks(samples: int, first: int = FIRST_LOOK) -> list[int]:
    """Sample counts at which --target-ci checks its criterion: a geometric schedule
    first, 2 first, 4 first, ... below ``samples``, then ``samples`` itself (the last look).

    Few looks (log2 of samples/first) keep the per-look level close to the nominal one."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    looks = []
    n = first
    while n < samples:
        looks.append(n)
        n *= 2
    return [*looks, samples]


def look_confidence(confidence: float, looks: int) -> float:
    """The level of each look's interval so that, whichever look a run stops at, its interval
    covers with probability >= ``confidence``: alpha / looks per look (the union bound over
    the looks holds for any stopping rule, so stopping on the interval's own width is safe)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
    if looks < 1:
        raise ValueError(f"looks must be at least 1, got {looks}")
    return 1.0 - (1.0 - confidence) / looks


def sequential_summary(
    accuracies: np.ndarray | list[float], *, k: float, samples: int, confidence: float = 0.95
) -> Summary:
    """``summarize`` of a run that may have stopped early on --target-ci: both intervals at the
    per-look level of ``sequential_looks(samples)``, labelled with the nominal ``confidence``
    they keep after stopping."""
    looks = sequential_looks(samples)
    level = look_confidence(confidence, len(looks))
    summary = summarize(accuracies, k=k, confidence=level)
    note = SEQUENTIAL_METHOD.format(
        looks=", ".join(str(n) for n in looks), level=f"{100 * level:.4g}%"
    )

    def relabel(interval: Interval) -> Interval:
        return Interval(
            interval.low, interval.high, float(confidence), f"{interval.method}; {note}"
        )

    return Summary(
        n=summary.n,
        mean=summary.mean,
        std=summary.std,
        mean_interval=relabel(summary.mean_interval),
        kpp=summary.kpp,
        kpp_interval=relabel(summary.kpp_interval),
        min=summary.min,
        max=summary.max,
    )


# --------------------------------------------------------------------------------------------
# What the intervals cover: Monte Carlo error, and optionally the test set's sampling error

TEST_SET_METHOD = "widened for test-set sampling (binomial bound a(1-a)/N over {n} images)"


def with_test_set_error(summary: Summary, n_images: int) -> Summary:
    """``summary`` with intervals that also cover the test set's sampling error (conservative).

    Mean: the Monte Carlo half-width and the test-set one added in quadrature (independent
    errors). KPP: each available side moved out by the test-set half-width at that side's
    accuracy. Both use the binomial bound, which overstates the test-set error when the same
    images are right under every draw, so the widened intervals err on the wide side."""

    def widen(interval: Interval, mean: float | None) -> Interval:
        note = TEST_SET_METHOD.format(n=n_images)
        method = f"{interval.method}; {note}"
        if interval.low is None and interval.high is None:
            return Interval(None, None, interval.confidence, method)
        if mean is not None and interval.low is not None and interval.high is not None:
            mc = (interval.high - interval.low) / 2
            half = math.hypot(mc, _half_width(mean, n_images, interval.confidence))
            low, high = max(mean - half, 0.0), min(mean + half, 1.0)
            return Interval(low, high, interval.confidence, method)
        low = interval.low
        high = interval.high
        if low is not None:
            low = max(low - _half_width(low, n_images, interval.confidence), 0.0)
        if high is not None:
            high = min(high + _half_width(high, n_images, interval.confidence), 1.0)
        return Interval(low, high, interval.confidence, method)

    return Summary(
        n=summary.n,
        mean=summary.mean,
        std=summary.std,
        mean_interval=widen(summary.mean_interval, summary.mean),
        kpp=summary.kpp,
        kpp_interval=widen(summary.kpp_interval, None),
        min=summary.min,
        max=summary.max,
    )
