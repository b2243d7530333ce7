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

    def cells(self) -> CellModel:
        """The layer as device cells, for stuck-at faults and drift (default: one per weight)."""
        return WeightCells(self)


class CellModel(ABC):
    """Where a layer's weights live in device cells: program, fault and read them back.

    ``count`` cells per weight; cell arrays have shape (count, *weight.shape) and hold each
    cell's conductance in the model's own units. Drift multiplies a cell by a positive factor,
    a stuck cell holds ``stuck_low``/``stuck_high``; ``assemble`` turns cells into weights.
    """

    count: int = 1

    @abstractmethod
    def program(self, draws: np.ndarray, sigma: float, out: np.ndarray) -> np.ndarray:
        """Programmed cell conductances (programming noise at ``sigma``) written into ``out``."""

    @abstractmethod
    def stuck_values(self) -> tuple[np.ndarray, np.ndarray]:
        """Conductances of a cell stuck low and stuck high, broadcastable to the cell array."""

    @abstractmethod
    def assemble(self, cells: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The weights the cell conductances ``cells`` represent: written into ``out``, or a
        view of ``cells`` where the cells already are the weights (no copy to make)."""


class WeightCells(CellModel):
    """One cell per weight holding the signed weight (a differential pair seen as one device).

    Drift scales the weight's magnitude and keeps its sign; a cell stuck low reads 0, one stuck
    high reads the layer's largest magnitude with the clean weight's sign (zero counts as +).
    """

    def __init__(self, layer: LayerNoise) -> None:
        self.layer = layer
        clean = np.asarray(layer.unperturbed(), dtype=np.float32)
        scale = np.float32(np.max(np.abs(clean))) if clean.size else np.float32(0)
        self._low = np.zeros((), np.float32)
        self._high = np.where(clean < 0, -scale, scale).astype(np.float32)[np.newaxis]

    def program(self, draws: np.ndarray, sigma: float, out: np.ndarray) -> np.ndarray:
        self.layer.perturb(draws, sigma, out=out[0])
        return out

    def stuck_values(self) -> tuple[np.ndarray, np.ndarray]:
        return self._low, self._high

    def assemble(self, cells: np.ndarray, out: np.ndarray) -> np.ndarray:
        return cells[0]  # one signed cell per weight: the cells are the weights


class PairLayer(LayerNoise):
    """A weight stored on a differential pair, ``w = sign * (G_w - G_o)``: ``G_w`` the device
    on the weight's own side (G+ for w >= 0, G- for w < 0) holding |w|, ``G_o`` the other one
    at zero conductance; each is programmed and noisy on its own (``program_pair``)."""

    def __init__(self, weight: np.ndarray) -> None:
        self.weight = np.asarray(weight, dtype=np.float32)
        self.sign = np.where(self.weight < 0, -1.0, 1.0).astype(np.float32)
        self.magnitude = np.abs(self.weight)
        self.scale = np.float32(self.magnitude.max()) if self.weight.size else np.float32(0)
        self._pair: np.ndarray | None = None

    @abstractmethod
    def program_pair(self, draws: np.ndarray, sigma: float, out: np.ndarray) -> np.ndarray:
        """Both devices' conductances (2, *weight.shape) into ``out``: [G_w, G_o]."""

    def unperturbed(self) -> np.ndarray:
        return self.weight

    def perturb(self, draws: np.ndarray, sigma: float, out: np.ndarray) -> np.ndarray:
        if self._pair is None:
            self._pair = np.empty((2, *self.weight.shape), np.float32)
        pair = self.program_pair(draws, sigma, self._pair)
        np.subtract(pair[0], pair[1], out=out)
        np.multiply(out, self.sign, out=out)
        return out

    def cells(self) -> CellModel:
        return PairCells(self)


class PairCells(CellModel):
    """The two devices of a ``PairLayer``'s weights: drift scales each on its own, a device
    stuck low reads 0, one stuck high reads the layer's largest magnitude (g_max)."""

    count = 2

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self._low = np.zeros((), np.float32)
        self._high = np.full((), layer.scale, np.float32)

    def program(self, draws: np.ndarray, sigma: float, out: np.ndarray) -> np.ndarray:
        return self.layer.program_pair(draws, sigma, out)

    def stuck_values(self) -> tuple[np.ndarray, np.ndarray]:
        return self._low, self._high

    def assemble(self, cells: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.subtract(cells[0], cells[1], out=out)
        np.multiply(out, self.layer.sign, out=out)
        return out


class NoiseModel(ABC):
    """A named device-variation model; its docstring is its help text."""

    name: ClassVar[str]
    #: standard-normal numbers consumed per weight per sample
    draws_per_weight: int = 1
    #: True when sigma = 0 stores a quantised model (device models), not the float weights
    quantizes: bool = False
    #: defaults from a device file (sigma, drift, stuck-at): a ``DeviceProfile`` or None
    profile: Any = None
    #: each weight on a differential pair (G+ - G-, both devices programmed and noisy)
    differential: bool = False
    #: what a differential pair means for this model (docs, ``noise-models``); None: unsupported
    differential_rule: ClassVar[str | None] = None

    @abstractmethod
    def prepare(self, weight: np.ndarray) -> LayerNoise:
        """Precompute everything about one layer that does not depend on the draws."""

    def parameters(self) -> dict[str, Any]:
        """The model's parameters, recorded in the report."""
        return {"name": self.name, **({"differential": True} if self.differential else {})}

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
