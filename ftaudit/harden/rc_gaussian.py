"""Right-censored Gaussian noise (TRICE eq. 10) in the noise model's own domain.

TRICE trains with RC-Gaussian(th, sigma_t): a draw g ~ N(0, sigma_t^2) is kept below th * sigma_t
and set to th * sigma_t above it. Equivalently RC-Gaussian(th, sigma_t) = sigma_t * min(z, th) with
z ~ N(0, 1), so the training noise is the *evaluation* noise model itself, fed base draws censored
at th and run at scale sigma_t instead of the device's sigma_d. Every ``LayerNoise.perturb`` maps
standard-normal base draws to weights, so censoring the draws censors whatever the model makes of
them: for ``lognormal`` the exponent lambda (w * exp(sigma_t * min(z, th))), for the device models
(rram, fefet1, fefet2, TOML devices) each cell's conductance deviation dg, and for ``gaussian`` the
additive term. Every base draw of a weight is censored, one per cell for multi-cell devices.

Censoring gives the noise a negative mean (see ``rc_gaussian_mean``), which TRICE III-C shows is
what pushes training towards large first derivatives and a better k-th percentile performance.
The closed forms below are for tests and reports; they use only ``math`` (no scipy at run time).
"""

from __future__ import annotations

import math

import numpy as np

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def censor_draws(z: np.ndarray, threshold: float, out: np.ndarray | None = None) -> np.ndarray:
    """Right-censor standard-normal base draws at ``threshold``: min(z, threshold), elementwise.

    ``out`` may be ``z`` itself (in place) or any array of ``z``'s shape; ``z``'s dtype is kept.
    Scaling by sigma_t is left to the noise model's ``perturb``, which multiplies by its sigma.
    """
    _check_threshold(threshold)
    return np.minimum(z, np.asarray(threshold, dtype=z.dtype), out=out)


def censored_fraction(threshold: float) -> float:
    """P(z >= threshold) = 1 - Phi(threshold): the share of draws set to the threshold."""
    _check_threshold(threshold)
    return _upper_tail(threshold)


def rc_gaussian_mean(threshold: float, sigma_t: float) -> float:
    """E[sigma_t * min(z, th)] = sigma_t * (th * (1 - Phi(th)) - phi(th)), < 0 for finite th."""
    _check_threshold(threshold)
    _check_sigma(sigma_t)
    if math.isinf(threshold):
        return 0.0
    return sigma_t * (threshold * _upper_tail(threshold) - _density(threshold))


def rc_gaussian_second_moment(threshold: float, sigma_t: float) -> float:
    """E[(sigma_t * min(z, th))^2] = sigma_t^2 * (Phi(th) - th * phi(th) + th^2 * (1 - Phi(th))).

    Below th, E[z^2; z < c] = Phi(c) - c * phi(c) (integrate z * z * phi(z) by parts, since
    z * phi(z) = -phi'(z)); above th every draw contributes c^2 with probability 1 - Phi(c).
    """
    _check_threshold(threshold)
    _check_sigma(sigma_t)
    if math.isinf(threshold):
        return sigma_t * sigma_t
    upper = _upper_tail(threshold)
    below = (1.0 - upper) - threshold * _density(threshold)
    return sigma_t * sigma_t * (below + threshold * threshold * upper)


def _upper_tail(x: float) -> float:
    """1 - Phi(x), via erfc so that large x keeps its relative precision."""
    return 0.5 * math.erfc(x * _INV_SQRT_2)


def _density(x: float) -> float:
    """The standard normal density phi(x)."""
    return _INV_SQRT_2PI * math.exp(-0.5 * x * x)


def _check_threshold(threshold: float) -> None:
    # +inf is allowed (no censoring: plain Gaussian noise); -inf or NaN would censor everything
    # to a non-number, which is a caller's bug rather than a setting.
    if math.isnan(threshold) or threshold == -math.inf:
        raise ValueError(f"RC-Gaussian threshold must be a number or +inf, got {threshold}")


def _check_sigma(sigma_t: float) -> None:
    if not (math.isfinite(sigma_t) and sigma_t >= 0.0):
        raise ValueError(f"RC-Gaussian scale sigma_t must be finite and >= 0, got {sigma_t}")
