"""NoiseTrain (TRICE Algorithm 1): training at weights perturbed by the evaluation noise."""

from __future__ import annotations

from ftaudit.harden.methods.base import HardenContext, HardenMethod
from ftaudit.harden.training import TrainingNoise


class NoiseMethod(HardenMethod):
    """NoiseTrain (TRICE Algorithm 1): gradients at weights perturbed by the evaluation noise."""

    name = "noise"

    def training_noise(self, ctx: HardenContext) -> TrainingNoise | None:
        return TrainingNoise(ctx.noise, ctx.sigma)
