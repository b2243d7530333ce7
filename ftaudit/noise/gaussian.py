"""Additive Gaussian noise scaled per layer: w' = w + N(0, (sigma * max|W|)^2)."""

from __future__ import annotations

import numpy as np

from ftaudit.noise.base import LayerNoise, NoiseModel, register


class _GaussianLayer(LayerNoise):
    def __init__(self, weight: np.ndarray) -> None:
        self.weight = np.asarray(weight, dtype=np.float32)
        self.scale = np.float32(np.max(np.abs(self.weight))) if self.weight.size else np.float32(0)

    def unperturbed(self) -> np.ndarray:
        return self.weight

    def perturb(self, draws: np.ndarray, sigma: float, out: np.ndarray) -> np.ndarray:
        np.multiply(draws[0], np.float32(sigma) * self.scale, out=out)
        np.add(out, self.weight, out=out)
        return out


@register
class GaussianNoise(NoiseModel):
    """Additive Gaussian noise, w + N(0, (sigma * max|W|)^2), max taken per layer."""

    name = "gaussian"

    def prepare(self, weight: np.ndarray) -> LayerNoise:
        return _GaussianLayer(weight)
