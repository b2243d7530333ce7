"""What happens to programmed devices: stuck-at faults and conductance drift over time.

Per Monte Carlo sample and crossbar layer the pipeline is

    clean (quantised) weights -> programming noise at sigma -> stuck-at faults
    -> drift to time t, g(t) = g0 * (t / t0)^(-nu) -> optional global drift compensation

on the cells of the layer's noise model (``LayerNoise.cells()``). The programming-noise draws
are the engine's, unchanged; the drift exponents ``nu`` and the stuck-at draws come from their
own keyed streams ``(sample, layer, STREAM)`` (``ftaudit.draws``), so adding drift or faults
never changes the programming noise, and a device keeps its ``nu`` and its fault at every sigma
and every time (common random numbers across the (sigma, time) grid). docs/methods.md gives the
sources and every choice.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ftaudit.draws import DEFAULT_RNG, keyed_generator, normals
from ftaudit.errors import UserError
from ftaudit.models.base import CrossbarLayer

# the option parsers' old home: re-exported for code that imports them from here
from ftaudit.units import TIME_UNITS as TIME_UNITS
from ftaudit.units import format_time as format_time
from ftaudit.units import parse_stuck_at as parse_stuck_at
from ftaudit.units import parse_time as parse_time
from ftaudit.units import parse_times as parse_times

#: spawn-key tails of the new random streams (3-element keys never meet the engine's 2-element)
DRIFT_STREAM = 0xD21F7
STUCK_STREAM = 0x57C4
CALIBRATION_STREAM = 0xCA1B
#: calibration input vectors per layer for global drift compensation
CALIBRATION_VECTORS = 64
#: cells x times of drift factors a sample may precompute beside its draws (64 MB of float32)
DECAY_BUDGET = 1 << 24

COMPENSATIONS = ("none", "global")
COMPENSATION_CHOICES = ("none", "global", "both")
#: other spellings accepted for a compensation mode (reports always say "global")
COMPENSATION_ALIASES = {"gdc": "global"}


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

    def to_dict(self) -> dict[str, float]:
        return {"t0_s": self.t0_s, "nu_mean": self.nu_mean, "nu_std": self.nu_std}


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

    def to_dict(self) -> dict[str, float]:
        return {"p_low": self.p_low, "p_high": self.p_high}


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


def resolve_effects(
    *,
    times: Sequence[float] | None = None,
    drift_nu: float | None = None,
    drift_nu_std: float | None = None,
    drift_t0: float | None = None,
    compensation: str | None = None,
    stuck_at: tuple[float, float] | StuckAt | None = None,
    profile: Any = None,
) -> DeviceEffects | None:
    """Options over the noise profile's defaults over the built-ins; None when nothing applies.

    ``profile`` is a ``DeviceProfile`` (or None). Drift options without ``times`` are an error;
    stuck-at fractions of 0 and no times mean no effects at all (results exactly unchanged).
    """
    times = tuple(float(t) for t in times or ())
    for t in times:
        if not (math.isfinite(t) and t >= 0):
            raise UserError(f"time must be a finite number of seconds >= 0, got {t:g}")
    drift_given = {
        "--drift-nu": drift_nu,
        "--drift-nu-std": drift_nu_std,
        "--drift-t0": drift_t0,
        "--compensation": compensation,
    }
    if not times and any(v is not None for v in drift_given.values()):
        flags = ", ".join(k for k, v in drift_given.items() if v is not None)
        raise UserError(f"{flags} given without --time", hint="add e.g. --time 1h,1d,1y")
    base = getattr(profile, "drift", None) or DriftModel()
    drift = DriftModel(
        t0_s=float(base.t0_s if drift_t0 is None else drift_t0),
        nu_mean=float(base.nu_mean if drift_nu is None else drift_nu),
        nu_std=float(base.nu_std if drift_nu_std is None else drift_nu_std),
    )
    drift.validate()
    choice = "both" if compensation is None else compensation
    choice = COMPENSATION_ALIASES.get(choice, choice)
    if choice not in COMPENSATION_CHOICES:
        raise UserError(
            f"unknown compensation '{choice}'",
            hint="use --compensation none, global (alias gdc) or both",
        )
    compensations = COMPENSATIONS if choice == "both" else (choice,)
    if stuck_at is None:
        stuck = getattr(profile, "stuck_at", None) or StuckAt()
    elif isinstance(stuck_at, StuckAt):
        stuck = stuck_at
    else:
        stuck = StuckAt(float(stuck_at[0]), float(stuck_at[1]))
    stuck.validate()
    if not times and not stuck.active:
        return None
    return DeviceEffects(
        times=times,
        compensations=compensations if times else (),
        drift=drift,
        stuck_at=stuck,
    )


# --- the Monte Carlo step ------------------------------------------------------------------


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
    ) -> None:
        self.layers = list(layers)
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
        self.compensates = effects.drifts and "global" in effects.compensations
        self._blas: Any = None  # the BLAS thread controller of ``readout``, made on first use
        self.calibration = (
            [self._calibration(layer) for layer in self.layers] if self.compensates else []
        )

    def rows(self, sigmas: Sequence[float]) -> list[Condition]:
        return self.effects.conditions(sigmas)

    # draws --------------------------------------------------------------------------------

    def draw(self, sample: int) -> SampleEffects:
        """Per-cell drift exponents and stuck masks of ``sample`` (fresh arrays, thread-safe)."""
        effects = self.effects
        drift, stuck = effects.drift, effects.stuck_at
        nus: list[np.ndarray | None] = []
        lows: list[np.ndarray | None] = []
        highs: list[np.ndarray | None] = []
        for layer, cm in zip(self.layers, self.cells, strict=True):
            shape = (cm.count, *layer.canonical_shape)
            low = high = None
            if stuck.active:
                u = keyed_generator(self.seed, (sample, layer.index, STUCK_STREAM)).random(
                    shape, dtype=np.float32
                )
                low = layer.to_native(u < np.float32(stuck.p_low))
                high = layer.to_native(
                    (u >= np.float32(stuck.p_low)) & (u < np.float32(stuck.p_low + stuck.p_high))
                )
            nu = None
            if effects.drifts:
                if drift.nu_std > 0:
                    z = normals(self.seed, (sample, layer.index, DRIFT_STREAM), shape, self.rng)
                    np.multiply(z, np.float32(drift.nu_std), out=z)
                    np.add(z, np.float32(drift.nu_mean), out=z)
                    np.maximum(z, np.float32(0), out=z)
                else:
                    z = np.full(shape, drift.nu_mean, np.float32)
                # contiguous in the stored layout: every row's elementwise drift reads it
                nu = np.ascontiguousarray(layer.to_native(z))
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
        """(t / t0)^(-nu) = exp(-nu ln(t / t0)) per cell, float32."""
        assert nu is not None
        out = np.multiply(nu, np.float32(-log_ratio), out=out)
        return np.exp(out, out=out)

    # compensation -------------------------------------------------------------------------

    @staticmethod
    def _rows_are_inputs(layer: CrossbarLayer) -> bool:
        """True when the stored tensor's first axis is the crossbar's input (MatMul, ConvT)."""
        return layer.transposed or "ConvTranspose" in layer.op

    def _calibration(self, layer: CrossbarLayer) -> np.ndarray:
        """A fixed seeded batch of standard-normal input vectors for the layer's crossbar.

        Shaped for ``readout``: (vectors, inputs) when the stored tensor's rows are the
        inputs, else (inputs, vectors).
        """
        rows_are_inputs = self._rows_are_inputs(layer)
        fan_in = (
            layer.shape[0] if rows_are_inputs else int(np.prod(layer.shape[1:], dtype=np.int64))
        )
        key = (0, layer.index, CALIBRATION_STREAM)
        batch = normals(self.seed, key, (CALIBRATION_VECTORS, fan_in), self.rng)
        return batch if rows_are_inputs else np.ascontiguousarray(batch.T)

    def readout(self, index: int, weights: np.ndarray) -> float:
        """sum |W u| over the layer's calibration batch u (the outputs' absolute sum)."""
        matrix = weights.reshape(weights.shape[0], -1)
        batch = self.calibration[index]
        # float32 BLAS on one thread: a BLAS thread pool fights the model runtime's threads and
        # the draw thread for the cores (measured on 2 loaded cores: 2-15x slower than one
        # thread), and numpy's einsum does not use BLAS (2-5x slower than one BLAS thread)
        with self._one_blas_thread():
            if self._rows_are_inputs(self.layers[index]):
                product = np.matmul(batch, matrix)
            else:
                product = np.matmul(matrix, batch)
        return float(np.abs(product).sum(dtype=np.float64))

    def _one_blas_thread(self) -> Any:
        """A context in which BLAS runs on the calling thread only (threadpoolctl)."""
        if self._blas is None:
            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController()
        return self._blas.limit(limits=1, user_api="blas")

    # one sample ---------------------------------------------------------------------------

    def weight_sets(
        self,
        sigmas: Sequence[float],
        active: Sequence[int],
        draws: Sequence[np.ndarray],
        sample: SampleEffects,
    ) -> Iterator[tuple[int, list[np.ndarray]]]:
        """(row, weights) of one sample at every active row; the arrays are reused buffers,
        valid until the next item. Rows are (sigma, time, compensation) in ``conditions`` order."""
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
                yield first, self._assemble(programmed)
                continue
            baseline = None
            if self.compensates:
                baseline = [self.readout(i, w) for i, w in enumerate(self._assemble(programmed))]
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
                        final = weights
                        if compensation == "global" and log_ratio > 0 and baseline is not None:
                            final = self._compensate(weights, baseline)
                        yield r, final
                row += len(effects.compensations)

    def _program(
        self, draws: Sequence[np.ndarray], sigma: float, sample: SampleEffects
    ) -> list[np.ndarray]:
        """Programmed cells at ``sigma`` with the sample's stuck cells forced to their value."""
        result = []
        for i, (cm, z, buffer) in enumerate(zip(self.cells, draws, self.cell_buffers, strict=True)):
            cells = cm.program(z, sigma, out=buffer)
            low_mask, high_mask = sample.stuck_low[i], sample.stuck_high[i]
            if low_mask is not None and high_mask is not None:
                low, high = cm.stuck_values()
                np.copyto(cells, low, where=low_mask)
                np.copyto(cells, high, where=high_mask)
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
            np.multiply(factor, programmed, out=buffer)
            result.append(buffer)
        return result

    def _assemble(self, cells: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [
            cm.assemble(c, out=w) for cm, c, w in zip(self.cells, cells, self.weights, strict=True)
        ]

    def _compensate(
        self, weights: Sequence[np.ndarray], baseline: Sequence[float]
    ) -> list[np.ndarray]:
        """alpha * W_t per layer, alpha = sum|W_0 u| / sum|W_t u| on the calibration batch."""
        result = []
        for i, (w, ref, out) in enumerate(zip(weights, baseline, self.compensated, strict=True)):
            now = self.readout(i, w)
            alpha = ref / now if now > 0 else 1.0
            np.multiply(w, np.float32(alpha), out=out)
            result.append(out)
        return result
