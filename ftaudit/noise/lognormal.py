"""Log-normal drift (BayesFT eq. 1): w' = w * exp(lambda), lambda ~ N(0, sigma^2) per weight."""

from __future__ import annotations

import numpy as np

from ftaudit.noise.base import LayerNoise, NoiseModel, register


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


@register
class LognormalNoise(NoiseModel):
    """Multiplicative log-normal drift, w * exp(N(0, sigma^2)) per weight (BayesFT eq. 1)."""

    name = "lognormal"

    def prepare(self, weight: np.ndarray) -> LayerNoise:
        return _LognormalLayer(weight)
