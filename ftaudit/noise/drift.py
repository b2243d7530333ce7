"""Conductance drift after programming: g(t) = g0 * (t / t0)^(-nu), one nu per cell.

One job: draw a sample's per-cell drift exponents from their own keyed stream
``(sample, layer, DRIFT_STREAM)`` and turn them into the decay factor at a time. A device keeps
its nu at every sigma and every time (common random numbers across the (sigma, time) grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ftaudit.draws import DEFAULT_RNG, normals
from ftaudit.errors import UserError
from ftaudit.models.base import CrossbarLayer

#: spawn-key tail of the drift exponents (3-element keys never meet the engine's 2-element)
DRIFT_STREAM = 0xD21F7


@dataclass(frozen=True)
class DriftModel:
    """Power-law drift g(t) = g0 * (t / t0)^(-nu), nu ~ max(0, N(nu_mean, nu_std^2)) per cell.

    Defaults: IBM aihwkit's PCMLikeNoiseModel (Nandakumar et al. 2019, as used by Joshi et al.
    2020): t0 = 20 s; nu_mean and nu_std its fit averaged over 4-bit levels (docs/methods.md).
    """

    t0_s: float = 20.0
    nu_mean: float = 0.05
    nu_std: float = 0.01

    def validate(self, where: str = "") -> None:
        prefix = f"{where}: " if where else ""
        if not (math.isfinite(self.t0_s) and self.t0_s > 0):
            raise UserError(f"{prefix}drift t0 must be > 0 seconds, got {self.t0_s:g}")
        for name, value in (("nu mean", self.nu_mean), ("nu std", self.nu_std)):
            if not (math.isfinite(value) and value >= 0):
                raise UserError(
                    f"{prefix}drift {name} must be a finite number >= 0, got {value:g}",
                    hint="PCM drifts with nu about 0.05 (--drift-nu 0.05 --drift-nu-std 0.01)",
                )

    def log_ratio(self, t: float) -> float:
        """ln(t / t0), 0 for t <= t0: no drift before the first read at t0."""
        return math.log(t / self.t0_s) if t > self.t0_s else 0.0

    def draw(
        self, seed: int, sample: int, layer: CrossbarLayer, cells: int, rng: str = DEFAULT_RNG
    ) -> np.ndarray:
        """The drift exponents of ``sample``'s ``cells`` devices per weight of ``layer``:
        float32, contiguous in the stored layout (every row's elementwise drift reads it)."""
        shape = (cells, *layer.canonical_shape)
        if self.nu_std > 0:
            z = normals(seed, (sample, layer.index, DRIFT_STREAM), shape, rng)
            np.multiply(z, np.float32(self.nu_std), out=z)
            np.add(z, np.float32(self.nu_mean), out=z)
            np.maximum(z, np.float32(0), out=z)
        else:
            z = np.full(shape, self.nu_mean, np.float32)
        return np.ascontiguousarray(layer.to_native(z))

    @staticmethod
    def decay(nu: np.ndarray, log_ratio: float, out: np.ndarray | None = None) -> Any:
        """(t / t0)^(-nu) = exp(-nu ln(t / t0)) per cell, float32."""
        out = np.multiply(nu, np.float32(-log_ratio), out=out)
        return np.exp(out, out=out)

    @staticmethod
    def apply(cells: np.ndarray, factor: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The programmed ``cells`` drifted by their ``decay`` factors, into ``out``."""
        return np.multiply(factor, cells, out=out)

    def to_dict(self) -> dict[str, float]:
        return {"t0_s": self.t0_s, "nu_mean": self.nu_mean, "nu_std": self.nu_std}
