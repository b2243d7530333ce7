"""Additive Gaussian noise scaled per layer: w' = w + N(0, (sigma * max|W|)^2)."""

from __future__ import annotations

import numpy as np

from ftaudit.noise.base import LayerNoise, NoiseModel, PairLayer, register


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


class _GaussianPairLayer(PairLayer):
    """G_w = |w| + sigma max|W| z0 and G_o = sigma max|W| z1, each clamped at 0 if asked."""

    def __init__(self, weight: np.ndarray, clamp: bool) -> None:
        super().__init__(weight)
        self.clamp = clamp

    def program_pair(self, draws: np.ndarray, sigma: float, out: np.ndarray) -> np.ndarray:
        np.multiply(draws[:2], np.float32(sigma) * self.scale, out=out)
        np.add(out[0], self.magnitude, out=out[0])
        if self.clamp:
            np.maximum(out, np.float32(0), out=out)
        return out


@register
class GaussianNoise(NoiseModel):
    """Additive Gaussian noise, w + N(0, (sigma * max|W|)^2), max taken per layer."""

    name = "gaussian"
    differential_rule = (
        "both devices get N(0, (sigma max|W|)^2), each clamped at 0 with --clamp: the zero "
        "device adds its own noise (variance var(G+) + var(G-))"
    )

    def __init__(self, *, differential: bool = False, clamp: bool = True) -> None:
        self.differential, self.clamp = differential, clamp
        self.draws_per_weight = 2 if differential else 1

    def prepare(self, weight: np.ndarray) -> LayerNoise:
        if self.differential:
            return _GaussianPairLayer(weight, self.clamp)
        return _GaussianLayer(weight)

    def parameters(self) -> dict[str, object]:
        params = super().parameters()
        return {**params, "clamp": self.clamp} if self.differential else params
