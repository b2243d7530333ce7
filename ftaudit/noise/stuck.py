"""Stuck-at faults: cells stuck at the lowest or the highest conductance.

One job: draw which cells of a sample are stuck (their own keyed stream
``(sample, layer, STUCK_STREAM)``) and force them to their value after programming.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ftaudit.draws import keyed_generator
from ftaudit.errors import UserError
from ftaudit.models.base import CrossbarLayer
from ftaudit.noise.base import CellModel

#: spawn-key tail of the stuck-cell draws (3-element keys never meet the engine's 2-element)
STUCK_STREAM = 0x57C4


@dataclass(frozen=True)
class StuckAt:
    """Fractions of cells stuck at the lowest (p_low) and the highest (p_high) conductance."""

    p_low: float = 0.0
    p_high: float = 0.0

    def validate(self, where: str = "") -> None:
        prefix = f"{where}: " if where else ""
        for name, value in (("P_LOW", self.p_low), ("P_HIGH", self.p_high)):
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise UserError(
                    f"{prefix}stuck-at {name} must be a fraction in [0, 1], got {value:g}",
                    hint="e.g. --stuck-at 0.01,0.005",
                )
        if self.p_low + self.p_high > 1:
            raise UserError(
                f"{prefix}stuck-at fractions add up to {self.p_low + self.p_high:g} > 1",
                hint="a cell is stuck low, stuck high or free: P_LOW + P_HIGH <= 1",
            )

    @property
    def active(self) -> bool:
        return self.p_low > 0 or self.p_high > 0

    def draw(
        self, seed: int, sample: int, layer: CrossbarLayer, cells: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Boolean masks (stuck low, stuck high) of ``sample``'s ``cells`` devices per weight
        of ``layer``, in the stored layout; disjoint."""
        shape = (cells, *layer.canonical_shape)
        u = keyed_generator(seed, (sample, layer.index, STUCK_STREAM)).random(
            shape, dtype=np.float32
        )
        low = layer.to_native(u < np.float32(self.p_low))
        high = layer.to_native(
            (u >= np.float32(self.p_low)) & (u < np.float32(self.p_low + self.p_high))
        )
        return low, high

    @staticmethod
    def apply(cells: np.ndarray, model: CellModel, low: np.ndarray, high: np.ndarray) -> None:
        """Force the stuck cells of programmed ``cells`` (in place) to the cell model's lowest
        and highest conductance."""
        low_value, high_value = model.stuck_values()
        np.copyto(cells, low_value, where=low)
        np.copyto(cells, high_value, where=high)

    def to_dict(self) -> dict[str, float]:
        return {"p_low": self.p_low, "p_high": self.p_high}
