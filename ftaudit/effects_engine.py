"""The device-effects step of the Monte Carlo loop: one sample's weight sets per report row.

The engine composes the effect classes of the noise family (``ftaudit.noise.effects``): stuck
cells forced after programming (``StuckAt``), drift to each time (``DriftModel``), global drift
compensation (``GlobalDriftCompensation``: its gains folded into the weights, or yielded beside
the drifted weights for a runner that applies them digitally after its ADC, the analog
pipeline's ``digital_gains``). The programming-noise draws are the loop's,
unchanged; each effect draws from its own keyed stream, so adding drift or faults never changes
the programming noise, and a device keeps its nu and its fault at every sigma and every time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ftaudit.draws import DEFAULT_RNG
from ftaudit.models.base import CrossbarLayer
from ftaudit.noise.compensation import GlobalDriftCompensation
from ftaudit.noise.drift import DriftModel
from ftaudit.noise.effects import Condition, DeviceEffects

#: cells x times of drift factors a sample may precompute beside its draws (64 MB of float32)
DECAY_BUDGET = 1 << 24


@dataclass
class SampleEffects:
    """One sample's per-cell drift exponents and stuck masks, native layout, one per layer."""

    nu: list[np.ndarray | None]
    stuck_low: list[np.ndarray | None]
    stuck_high: list[np.ndarray | None]
    #: time index -> per-layer drift factors exp(-nu ln(t / t0)), made beside the draws (on the
    #: engine's helper thread) when they fit ``DECAY_BUDGET``; else computed per row
    decay: dict[int, list[np.ndarray]] = field(default_factory=dict)


class EffectsEngine:
    """Applies ``DeviceEffects`` to the selected layers of a crossbar, one sample at a time."""

    def __init__(
        self,
        layers: Sequence[CrossbarLayer],
        states: Sequence[Any],
        effects: DeviceEffects,
        seed: int,
        rng: str = DEFAULT_RNG,
        digital_gains: bool = False,
    ) -> None:
        self.layers = list(layers)
        #: compensated rows keep the drifted weights and yield alpha per layer beside them
        self.digital_gains = digital_gains
        self.effects = effects
        self.seed = seed
        self.rng = rng
        self.cells = [state.cells() for state in states]
        shapes = [
            (cm.count, *layer.shape) for cm, layer in zip(self.cells, self.layers, strict=True)
        ]
        self.cell_buffers = [np.empty(shape, np.float32) for shape in shapes]
        self.drift_buffers = (
            [np.empty(shape, np.float32) for shape in shapes] if effects.drifts else []
        )
        self.weights = [np.empty(layer.shape, np.float32) for layer in self.layers]
        self.compensated = [np.empty(layer.shape, np.float32) for layer in self.layers]
        self.compensation = (
            GlobalDriftCompensation(self.layers, seed, rng) if effects.compensates else None
        )

    def rows(self, sigmas: Sequence[float]) -> list[Condition]:
        return self.effects.conditions(sigmas)

    def draw(self, sample: int) -> SampleEffects:
        """Per-cell drift exponents and stuck masks of ``sample`` (fresh arrays, thread-safe)."""
        effects = self.effects
        drift, stuck = effects.drift, effects.stuck_at
        nus: list[np.ndarray | None] = []
        lows: list[np.ndarray | None] = []
        highs: list[np.ndarray | None] = []
        for layer, cm in zip(self.layers, self.cells, strict=True):
            low = high = None
            if stuck.active:
                low, high = stuck.draw(self.seed, sample, layer, cm.count)
            nu = None
            if effects.drifts:
                nu = drift.draw(self.seed, sample, layer, cm.count, self.rng)
                if low is not None and high is not None:
                    nu[low | high] = 0  # a stuck cell stays where it is stuck
            nus.append(nu)
            lows.append(low)
            highs.append(high)
        sample_effects = SampleEffects(nus, lows, highs)
        cells = sum(buffer.size for buffer in self.cell_buffers)
        for k, t in enumerate(effects.times if effects.drifts else ()):
            log_ratio = drift.log_ratio(t)
            if log_ratio <= 0 or (k + 1) * cells > DECAY_BUDGET:
                continue
            sample_effects.decay[k] = [self._decay(nu, log_ratio) for nu in nus]
        return sample_effects

    @staticmethod
    def _decay(nu: np.ndarray | None, log_ratio: float, out: np.ndarray | None = None) -> Any:
        assert nu is not None  # drift rows exist only when the sample drew its exponents
        return DriftModel.decay(nu, log_ratio, out)

    # one sample ---------------------------------------------------------------------------

    def weight_sets(
        self,
        sigmas: Sequence[float],
        active: Sequence[int],
        draws: Sequence[np.ndarray],
        sample: SampleEffects,
    ) -> Iterator[tuple[int, list[np.ndarray], list[float] | None]]:
        """(row, weights, gains) of one sample at every active row; the arrays are reused
        buffers, valid until the next item. Rows are (sigma, time, compensation) in
        ``conditions`` order. ``gains``: per layer, the compensation factors the runner applies
        to the layers' outputs (``digital_gains``), else None (every gain 1 or in the weights)."""
        effects = self.effects
        per_sigma = max(1, len(effects.times) * len(effects.compensations))
        active_rows = set(active)
        native = [layer.to_native(z) for layer, z in zip(self.layers, draws, strict=True)]
        for s, sigma in enumerate(sigmas):
            first = s * per_sigma
            if not active_rows.intersection(range(first, first + per_sigma)):
                continue
            programmed = self._program(native, sigma, sample)
            if not effects.times:
                yield first, self._assemble(programmed), None
                continue
            baseline = None
            if self.compensation is not None:
                baseline = self.compensation.baseline(self._assemble(programmed))
            row = first
            for k, t in enumerate(effects.times):
                log_ratio = effects.drift.log_ratio(t)
                rows = range(row, row + len(effects.compensations))
                if active_rows.intersection(rows):
                    cells = (
                        self._drift(programmed, sample, log_ratio, k)
                        if log_ratio > 0
                        else programmed
                    )
                    weights = self._assemble(cells)
                    for r, compensation in zip(rows, effects.compensations, strict=True):
                        if r not in active_rows:
                            continue
                        if compensation == "global" and log_ratio > 0 and baseline is not None:
                            yield r, *self._compensate(weights, baseline)
                        else:
                            yield r, weights, None
                row += len(effects.compensations)

    def _compensate(
        self, weights: list[np.ndarray], baseline: list[float]
    ) -> tuple[list[np.ndarray], list[float] | None]:
        """The compensated row: the drifted weights and their gains (``digital_gains``), else
        alpha * W_t with the gains folded in."""
        assert self.compensation is not None
        gains = self.compensation.gains(weights, baseline)
        if self.digital_gains:
            return weights, gains
        return self.compensation.apply(weights, gains, self.compensated), None

    def _program(
        self, draws: Sequence[np.ndarray], sigma: float, sample: SampleEffects
    ) -> list[np.ndarray]:
        """Programmed cells at ``sigma`` with the sample's stuck cells forced to their value."""
        result = []
        for i, (cm, z, buffer) in enumerate(zip(self.cells, draws, self.cell_buffers, strict=True)):
            cells = cm.program(z, sigma, out=buffer)
            low_mask, high_mask = sample.stuck_low[i], sample.stuck_high[i]
            if low_mask is not None and high_mask is not None:
                self.effects.stuck_at.apply(cells, cm, low_mask, high_mask)
            result.append(cells)
        return result

    def _drift(
        self, cells: Sequence[np.ndarray], sample: SampleEffects, log_ratio: float, time: int
    ) -> list[np.ndarray]:
        """cells * (t / t0)^(-nu) = cells * exp(-nu * ln(t / t0)), per cell (the factors
        precomputed with the draws when there are)."""
        result = []
        decay = sample.decay.get(time)
        for i, (programmed, buffer) in enumerate(zip(cells, self.drift_buffers, strict=True)):
            factor = decay[i] if decay is not None else self._decay(sample.nu[i], log_ratio, buffer)
            result.append(DriftModel.apply(programmed, factor, buffer))
        return result

    def _assemble(self, cells: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [
            cm.assemble(c, out=w) for cm, c, w in zip(self.cells, cells, self.weights, strict=True)
        ]
