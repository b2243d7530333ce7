"""Multi-level cell devices (TRICE section IV-A, eq. 11-17): rram, fefet1, fefet2, user TOML.

Each layer's |W| is quantised to H bits, ``q = round(|W| / max|W| * (2^H - 1))``, and split over
H/B cells of B bits, ``g_i = (q >> iB) & (2^B - 1)``. Every cell's conductance gets
``dg_i ~ N(0, (sigma * m[g_i])^2)`` with a per-level multiplier ``m`` (1 everywhere for rram), so

    W_p = sign(W) * max|W| / (2^H - 1) * sum_i 2^(iB) * (g_i + dg_i)

The sign is kept (negative weights sit on a mirrored array); a zero weight counts as positive,
so its cells are perturbed too. With ``differential`` the mirrored array is modelled too: each
weight's other device holds H/B cells at level 0, each with its own ``dg ~ N(0, (sigma *
m[0])^2)`` (clamped at conductance 0), subtracted, so ``W_p`` gains ``-sign * max|W| / (2^H - 1)
* sum_i 2^(iB) dg'_i``. Its draws follow the weight's own in the (sample, layer) stream.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftaudit.analog.options import ForwardPipeline, pipeline_from_table
from ftaudit.errors import UserError
from ftaudit.noise.base import CellModel, LayerNoise, NoiseModel, register
from ftaudit.noise.drift import DriftModel
from ftaudit.noise.stuck import StuckAt

#: --cell-noise choices: one conductance deviation per cell, or one per weight shared by its cells
CELL_NOISE = {
    "independent": "every cell of a weight gets its own dg (variance sum_i 4^(iB): 17 for 4-bit "
    "weights over 2-bit cells)",
    "shared": "one dg per weight, the same on each of its cells (eq. 14 read literally; "
    "variance (sum_i 2^(iB))^2: 25 for 4 bits over 2-bit cells)",
}


class _DeviceLayer(LayerNoise):
    def __init__(
        self,
        weight: np.ndarray,
        bits: int,
        cell_bits: int,
        multipliers: np.ndarray,
        *,
        clamp: bool = True,
        cell_noise: str = "independent",
        differential: bool = False,
    ) -> None:
        weight = np.asarray(weight, dtype=np.float32)
        cells = bits // cell_bits
        levels = 2**bits - 1
        max_abs = float(np.max(np.abs(weight))) if weight.size else 0.0
        step = max_abs / levels
        magnitude = np.abs(weight.astype(np.float64))
        q = np.zeros(weight.shape, np.int64) if step == 0 else np.rint(magnitude / step)
        q = np.clip(q, 0, levels).astype(np.int64)
        sign = np.where(weight < 0, -1.0, 1.0)
        self.step = step
        self.levels = q
        self.cell_bits = cell_bits
        self.multipliers = multipliers
        self.negative = weight < 0
        # a negative weight quantised to level 0 is stored as +0.0, not -0.0, so that sigma = 0
        # (noise 0 added to it) reproduces the stored weights bit for bit
        self.quantized = np.where(q == 0, 0.0, sign * step * q).astype(np.float32)
        mask = 2**cell_bits - 1
        values = [(q >> (i * cell_bits)) & mask for i in range(cells)]
        # place_i = sign * step * 2^(iB): the weight change per unit of cell i's conductance;
        # a differential pair's other device adds cells at level 0 placed with the other sign
        place = [sign * step * 2.0 ** (i * cell_bits) for i in range(cells)]
        self.shared = cell_noise == "shared"
        draw = [0 if self.shared else i for i in range(cells)]
        if differential:
            values += [np.zeros_like(q) for _ in range(cells)]
            place += [-p for p in place]
            draw += [cells + d for d in draw]
        self.cell_values = np.stack(values)
        places = np.stack(place)
        self.place = places.astype(np.float32)
        #: which base draw each cell takes
        self.draw_index = np.array(draw)
        self.spread = multipliers[self.cell_values].astype(np.float32)
        # coef_i = place_i * m[g_i]: the weight change per unit of cell noise
        self.coef = (places * multipliers[self.cell_values]).astype(np.float32)
        self._term = np.empty(weight.shape, np.float32)
        self.clamp = clamp
        # clamping: a cell's deviation may not take its conductance below 0, dg >= -g_i
        self.floor = (-self.cell_values).astype(np.float32)

    def unperturbed(self) -> np.ndarray:
        return self.quantized

    def perturb(self, draws: np.ndarray, sigma: float, out: np.ndarray) -> np.ndarray:
        """quantized + sum_i place_i * dg_i with dg_i = sigma * m[g_i] * z_i (z_0 for every cell
        with shared noise), each dg_i >= -g_i when clamping (conductance >= 0). At sigma = 0
        every dg is 0, so the quantised weights come back bit for bit."""
        draw = self.draw_index
        if not self.clamp:
            np.multiply(draws[draw[0]], self.coef[0], out=out)
            for i in range(1, len(self.coef)):
                np.multiply(draws[draw[i]], self.coef[i], out=self._term)
                np.add(out, self._term, out=out)
            np.multiply(out, np.float32(sigma), out=out)
            np.add(out, self.quantized, out=out)
            return out
        np.copyto(out, self.quantized)
        for i in range(len(self.coef)):
            term = self._term
            np.multiply(draws[draw[i]], self.spread[i], out=term)
            np.multiply(term, np.float32(sigma), out=term)
            np.maximum(term, self.floor[i], out=term)
            np.multiply(term, self.place[i], out=term)
            np.add(out, term, out=out)
        return out

    def cells(self) -> CellModel:
        return _DeviceCells(self)


class _DeviceCells(CellModel):
    """The H/B cells of every weight, conductances in level units (0 .. 2^B - 1).

    ``W = sign * step * sum_i 2^(iB) * c_i``, the device equation with each cell's conductance
    ``c_i`` made explicit so that faults and drift act per cell.
    """

    def __init__(self, layer: _DeviceLayer) -> None:
        self.count = len(layer.cell_values)
        self.targets = layer.cell_values.astype(np.float32)
        self.spread = layer.spread
        self.place = layer.place
        self._low = np.zeros((), np.float32)
        self._high = np.full((), 2**layer.cell_bits - 1, np.float32)
        self._term = np.empty(layer.place.shape[1:], np.float32)
        self.clamp = layer.clamp
        in_order = np.array_equal(layer.draw_index, np.arange(self.count))
        self.draw_index = None if in_order else layer.draw_index

    def program(self, draws: np.ndarray, sigma: float, out: np.ndarray) -> np.ndarray:
        if self.draw_index is not None:  # shared dg: one draw per device on all its cells
            draws = draws[self.draw_index]
        np.multiply(draws, self.spread, out=out)
        np.multiply(out, np.float32(sigma), out=out)
        np.add(out, self.targets, out=out)
        if self.clamp:
            np.maximum(out, 0.0, out=out)
        return out

    def stuck_values(self) -> tuple[np.ndarray, np.ndarray]:
        return self._low, self._high

    def assemble(self, cells: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.multiply(cells[0], self.place[0], out=out)
        for i in range(1, self.count):
            np.multiply(cells[i], self.place[i], out=self._term)
            np.add(out, self._term, out=out)
        return out


class DeviceNoise(NoiseModel):
    """H-bit weights over B-bit cells with per-level Gaussian conductance variation."""

    name = "device"
    quantizes = True
    differential_rule = (
        "the other device's H/B cells sit at level 0 with their own dg ~ N(0, (sigma m[0])^2), "
        "clamped at 0 with --clamp: variance var(G+) + var(G-)"
    )
    default_multipliers: tuple[float, ...] | None = None

    def __init__(
        self,
        *,
        bits: int | None = None,
        cell_bits: int | None = None,
        multipliers: tuple[float, ...] | None = None,
        label: str | None = None,
        source: str | None = None,
        clamp: bool = True,
        cell_noise: str = "independent",
        differential: bool = False,
    ) -> None:
        if cell_noise not in CELL_NOISE:
            raise UserError(
                f"--cell-noise must be one of {', '.join(CELL_NOISE)}, got '{cell_noise}'",
                hint="independent (default): one dg per cell; shared: one dg per weight",
            )
        self.clamp, self.cell_noise = bool(clamp), cell_noise
        self.differential = bool(differential)
        self.bits = 4 if bits is None else int(bits)
        self.cell_bits = 2 if cell_bits is None else int(cell_bits)
        self.label = label or self.name
        self.source = source
        self.profile_name: str | None = None
        if self.bits < 1 or self.cell_bits < 1 or self.bits > 16:
            raise UserError(
                f"--bits must be in 1..16 and --cell-bits at least 1 (got {self.bits}, "
                f"{self.cell_bits})",
                hint="the TRICE defaults are --bits 4 --cell-bits 2",
            )
        if self.bits % self.cell_bits:
            raise UserError(
                f"--bits {self.bits} is not a multiple of --cell-bits {self.cell_bits}",
                hint="each weight is split over bits/cell_bits whole cells",
            )
        n_levels = 2**self.cell_bits
        table = multipliers if multipliers is not None else self.default_multipliers
        if table is None:
            table = (1.0,) * n_levels
        if len(table) != n_levels:
            raise UserError(
                f"noise model {self.label} defines {len(table)} per-level sigma multipliers but "
                f"{self.cell_bits}-bit cells have {n_levels} levels",
                hint=f"use --cell-bits {max(1, len(table).bit_length() - 1)} or a device file "
                f"with {n_levels} multipliers",
            )
        if any(not np.isfinite(m) or m < 0 or m > MAX_MULTIPLIER for m in table):
            raise UserError(
                f"noise model {self.label} has a negative or non-finite multiplier, or one "
                f"above {MAX_MULTIPLIER:g} (sigma times it overflows)",
                hint="multipliers scale sigma per cell level, e.g. [1.0, 4.0, 4.0, 1.0]",
            )
        self.multipliers = np.asarray(table, dtype=np.float64)
        self.draws_per_weight = self.bits // self.cell_bits * (2 if self.differential else 1)

    def prepare(self, weight: np.ndarray) -> LayerNoise:
        return _DeviceLayer(
            weight,
            self.bits,
            self.cell_bits,
            self.multipliers,
            clamp=self.clamp,
            cell_noise=self.cell_noise,
            differential=self.differential,
        )

    def parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "name": self.label,
            "bits": self.bits,
            "cell_bits": self.cell_bits,
            "sigma_multipliers": [float(m) for m in self.multipliers],
            "clamp": self.clamp,
            "cell_noise": self.cell_noise,
            "differential": self.differential,
        }
        if self.source:
            params["device_file"] = self.source
        if self.profile_name:
            params["profile"] = self.profile_name
        return params


@register
class RramNoise(DeviceNoise):
    """RRAM (TRICE IV-A): H-bit weights over B-bit cells, dg ~ N(0, sigma^2) on every cell."""

    name = "rram"


@register
class Fefet1Noise(DeviceNoise):
    """FeFET1 (TRICE eq. 16): like rram, cell levels 1 and 2 get 4*sigma, levels 0 and 3 sigma."""

    name = "fefet1"
    default_multipliers = (1.0, 4.0, 4.0, 1.0)


@register
class Fefet2Noise(DeviceNoise):
    """FeFET2 (TRICE eq. 17): like rram, cell levels 1 and 2 get 2*sigma, levels 0 and 3 sigma."""

    name = "fefet2"
    default_multipliers = (1.0, 2.0, 2.0, 1.0)


DEVICE_FILE_KEYS = {
    "name",
    "description",
    "bits",
    "cell_bits",
    "sigma_multipliers",
    "sigma",
    "drift",
    "stuck_at",
    "analog",
    "differential",
}
DRIFT_KEYS = {"t0_s", "nu_mean", "nu_std"}
STUCK_AT_KEYS = {"p_low", "p_high"}
#: device profiles shipped with ftaudit: ``--noise NAME`` loads ``profiles/NAME.toml``
PROFILE_DIR = Path(__file__).with_name("profiles")


@dataclass(frozen=True)
class DeviceProfile:
    """Defaults a device file adds to its noise model: sigma, drift and stuck-at fractions."""

    description: str = ""
    sigma: tuple[float, ...] | None = None
    drift: DriftModel | None = None
    stuck_at: StuckAt | None = None
    #: the analog forward pipeline of the device's chip (``[analog]``; ftaudit.analog)
    analog: ForwardPipeline | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "sigma": None if self.sigma is None else list(self.sigma),
            "drift": None if self.drift is None else self.drift.to_dict(),
            "stuck_at": None if self.stuck_at is None else self.stuck_at.to_dict(),
            **({"analog": self.analog.to_dict()} if self.analog is not None else {}),
        }


def shipped_profiles() -> dict[str, Path]:
    """Name -> TOML file of every device profile shipped in ``ftaudit/noise/profiles``."""
    return {path.stem: path for path in sorted(PROFILE_DIR.glob("*.toml"))}


#: the largest per-level sigma multiplier accepted: beyond it draws overflow to inf/NaN
MAX_MULTIPLIER = 1e6


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_table(
    spec: dict[str, Any], key: str, allowed: set[str], path: Path
) -> dict[str, float]:
    """A TOML table of numbers with only ``allowed`` keys; {} when absent."""
    table = spec.get(key, {})
    if not isinstance(table, dict):
        raise UserError(
            f"device file {path}: {key} must be a table",
            hint=f"write [{key}] with keys {', '.join(sorted(allowed))}",
        )
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise UserError(
            f"device file {path}: [{key}] has unknown key(s): {', '.join(unknown)}",
            hint=f"allowed keys: {', '.join(sorted(allowed))}",
        )
    for name, value in table.items():
        if not _is_number(value):
            raise UserError(f"device file {path}: [{key}] {name} must be a number, got {value!r}")
    return {name: float(value) for name, value in table.items()}


def _profile(spec: dict[str, Any], path: Path) -> DeviceProfile:
    """The optional sigma, [drift] and [stuck_at] defaults of a device file, validated."""
    from ftaudit.config import parse_sigmas

    sigma = None
    if "sigma" in spec:
        value = spec["sigma"]
        if not (_is_number(value) or isinstance(value, (str, list))):
            raise UserError(f"device file {path}: sigma must be a number, a list or a range")
        try:
            sigma = parse_sigmas(value)
        except UserError as exc:
            raise UserError(f"device file {path}: {exc.message}", hint=exc.hint) from exc
        if any(not np.isfinite(s) or s < 0 for s in sigma):
            raise UserError(f"device file {path}: sigma values must be finite and >= 0")
    drift = None
    if "drift" in spec:
        drift = DriftModel(**_number_table(spec, "drift", DRIFT_KEYS, path))
        drift.validate(f"device file {path}")
    stuck_at = None
    if "stuck_at" in spec:
        stuck_at = StuckAt(**_number_table(spec, "stuck_at", STUCK_AT_KEYS, path))
        stuck_at.validate(f"device file {path}")
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise UserError(f"device file {path}: description must be a string")
    analog = None
    if "analog" in spec:
        try:
            analog = pipeline_from_table(spec["analog"])
        except UserError as exc:
            raise UserError(f"device file {path}: [analog] {exc.message}", hint=exc.hint) from exc
    return DeviceProfile(
        description=description, sigma=sigma, drift=drift, stuck_at=stuck_at, analog=analog
    )


def load_device_file(
    path: Path,
    *,
    bits: int | None = None,
    cell_bits: int | None = None,
    shipped: bool = False,
    clamp: bool = True,
    cell_noise: str = "independent",
    differential: bool | None = None,
) -> DeviceNoise:
    """A device from TOML: bits, cell_bits, per-level sigma multipliers, optional defaults.

    Optional defaults: ``sigma`` (number, list or range), ``[drift]`` (t0_s, nu_mean, nu_std),
    ``[stuck_at]`` (p_low, p_high) and ``[analog]`` (the forward pipeline: dac_bits, adc_bits,
    adc_bound, read_noise, weight_read_noise, weight_read_noise_type, tile_size,
    weight_scaling) and ``differential``
    (true: each weight on a G+/G- pair; ``differential`` given here wins). ``shipped`` marks
    a profile from ``ftaudit/noise/profiles``.
    """
    if not path.is_file():
        raise UserError(f"device file {path} does not exist", hint="check the --noise path")
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"device file {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(spec) - DEVICE_FILE_KEYS)
    if unknown:
        raise UserError(
            f"device file {path} has unknown key(s): {', '.join(unknown)}",
            hint=f"allowed keys: {', '.join(sorted(DEVICE_FILE_KEYS))}",
        )
    table = spec.get("sigma_multipliers")
    if not isinstance(table, list) or not table or not all(_is_number(v) for v in table):
        raise UserError(
            f"device file {path} needs sigma_multipliers, a list of numbers (one per cell level)",
            hint="e.g. sigma_multipliers = [1.0, 4.0, 4.0, 1.0] for 2-bit cells",
        )
    for key in ("bits", "cell_bits"):
        if key in spec and (not isinstance(spec[key], int) or isinstance(spec[key], bool)):
            raise UserError(f"device file {path}: {key} must be a whole number")
    if "differential" in spec and not isinstance(spec["differential"], bool):
        raise UserError(f"device file {path}: differential must be true or false")
    profile = _profile(spec, path)
    model = DeviceNoise(
        bits=bits if bits is not None else spec.get("bits"),
        cell_bits=cell_bits if cell_bits is not None else spec.get("cell_bits"),
        multipliers=tuple(float(v) for v in table),
        label=str(spec.get("name", path.stem)),
        source=None if shipped else str(path),
        clamp=clamp,
        cell_noise=cell_noise,
        differential=spec.get("differential", False) if differential is None else differential,
    )
    model.profile = profile
    if shipped:
        model.profile_name = path.stem
    return model
