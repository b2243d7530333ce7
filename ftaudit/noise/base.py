"""What a noise model is: a per-layer transform of standard-normal base draws into weights.

Every model consumes ``draws_per_weight`` standard-normal numbers per weight (the base draws),
so one set of draws serves every sigma of a run (common random numbers) and sigma = 0 gives the
unperturbed weights exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np


class LayerNoise(ABC):
    """Precomputed per-layer state: maps base draws and sigma to perturbed weights."""

    @abstractmethod
    def unperturbed(self) -> np.ndarray:
        """The weights at sigma = 0: the stored weights, or their quantised image on the device."""

    @abstractmethod
    def perturb(self, draws: np.ndarray, sigma: float, out: np.ndarray) -> np.ndarray:
        """Write the perturbed weights for base ``draws`` (d, *weight.shape) into ``out``."""


class NoiseModel(ABC):
    """A named device-variation model; its docstring is its help text."""

    name: ClassVar[str]
    #: standard-normal numbers consumed per weight per sample
    draws_per_weight: int = 1
    #: True when sigma = 0 stores a quantised model (device models), not the float weights
    quantizes: bool = False

    @abstractmethod
    def prepare(self, weight: np.ndarray) -> LayerNoise:
        """Precompute everything about one layer that does not depend on the draws."""

    def parameters(self) -> dict[str, Any]:
        """The model's parameters, recorded in the report."""
        return {"name": self.name}

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0]


NoiseFactory = Callable[..., NoiseModel]

#: name -> noise model class; filled by ``register`` where each model is defined
NOISE_MODELS: dict[str, type[NoiseModel]] = {}


def register(cls: type[NoiseModel]) -> type[NoiseModel]:
    """Class decorator adding a noise model to the registry under ``cls.name``."""
    if cls.name in NOISE_MODELS:
        raise RuntimeError(f"noise model {cls.name!r} is registered twice")
    NOISE_MODELS[cls.name] = cls
    return cls
