"""The device effects a run asks for, composed: which effects, at which times, and the rows.

Per Monte Carlo sample and crossbar layer the engine (``ftaudit.effects_engine``) applies

    clean (quantised) weights -> programming noise at sigma -> stuck-at faults (``noise.stuck``)
    -> drift to time t (``noise.drift``) -> optional global drift compensation
    (``noise.compensation``)

on the cells of the layer's noise model (``LayerNoise.cells()``). Each effect is a small class
with one job: a per-cell effect draws its state for a (sample, layer) from its own keyed stream
(``draw``) and acts on the cells (``apply``; drift's ``decay`` gives the factor at a time);
compensation reads the layer out before and after (``baseline``, ``apply``). docs/methods.md
gives the sources and every choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ftaudit.noise.drift import DriftModel
from ftaudit.noise.stuck import StuckAt


@dataclass(frozen=True)
class Condition:
    """One report row: a sigma, and with drift a time and a compensation."""

    sigma: float
    time_s: float | None = None
    compensation: str | None = None


@dataclass(frozen=True)
class DeviceEffects:
    """Stuck-at faults and drift applied after programming; ``times`` empty means no drift."""

    times: tuple[float, ...] = ()
    compensations: tuple[str, ...] = ()
    drift: DriftModel = field(default_factory=DriftModel)
    stuck_at: StuckAt = field(default_factory=StuckAt)

    @property
    def drifts(self) -> bool:
        """True when some time lies past t0 (before it, nothing drifts)."""
        return any(t > self.drift.t0_s for t in self.times)

    @property
    def compensates(self) -> bool:
        """True when some row rescales drifted weights (global compensation)."""
        return self.drifts and "global" in self.compensations

    def conditions(self, sigmas: Sequence[float]) -> list[Condition]:
        """Report rows in order: sigma-major, then time, then compensation."""
        if not self.times:
            return [Condition(float(s)) for s in sigmas]
        return [
            Condition(float(s), t, c)
            for s in sigmas
            for t in self.times
            for c in self.compensations
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "times_s": list(self.times),
            "compensation": list(self.compensations),
            "drift": self.drift.to_dict() if self.times else None,
            "stuck_at": self.stuck_at.to_dict(),
        }
