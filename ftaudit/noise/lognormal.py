"""Log-normal drift (BayesFT eq. 1): w' = w * exp(lambda), lambda ~ N(0, sigma^2) per weight."""

from __future__ import annotations

import numpy as np

from ftaudit.noise.base import LayerNoise, NoiseModel, PairLayer, register


class _LognormalLayer(LayerNoise):
    def __init__(self, weight: np.ndarray) -> None:
        self.weight = np.asarray(weight, dtype=np.float32)

    def unperturbed(self) -> np.ndarray:
        return self.weight

    def perturb(self, draws: np.ndarray, sigma: float, out: np.ndarray) -> np.ndarray:
        np.multiply(draws[0], np.float32(sigma), out=out)
        np.exp(out, out=out)
        np.multiply(out, self.weight, out=out)
        return out


class _LognormalPairLayer(PairLayer):
    """G_w = |w| exp(sigma z0); G_o stays at exactly 0 (0 times any factor), so the weights
    are the single device's; only the cells (stuck-at, drift) see two devices."""

    perturb = _LognormalLayer.perturb  # w exp(sigma z0): the same numbers, no pair built

    def program_pair(self, draws: np.ndarray, sigma: float, out: np.ndarray) -> np.ndarray:
        np.multiply(draws[0], np.float32(sigma), out=out[0])
        np.exp(out[0], out=out[0])
        np.multiply(out[0], self.magnitude, out=out[0])
        out[1] = 0
        return out


@register
class LognormalNoise(NoiseModel):
    """Multiplicative log-normal drift, w * exp(N(0, sigma^2)) per weight (BayesFT eq. 1)."""

    name = "lognormal"
    differential_rule = (
        "multiplicative noise leaves the zero device at 0, so the weights equal the single "
        "device's; stuck-at and drift act on both devices"
    )

    def __init__(self, *, differential: bool = False, clamp: bool = True) -> None:
        self.differential = differential  # conductances exp(.) |w| are never negative

    def prepare(self, weight: np.ndarray) -> LayerNoise:
        return _LognormalPairLayer(weight) if self.differential else _LognormalLayer(weight)
