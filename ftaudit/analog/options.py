"""The analog forward pipeline's options: one frozen object, validated once.

A crossbar tile quantises its inputs (DAC), adds read noise to every output it reads, converts
each tile's column currents with a saturating ADC, and maps weights to conductances with a scale
per layer, column or tile. ``ForwardPipeline`` names those settings; ``active`` is False for the
ideal crossbar, and then nothing about the model's graph or numbers changes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ftaudit.errors import UserError

WEIGHT_SCALINGS = ("layer", "column", "tile")
#: how weight read noise scales: ``additive`` (aihwkit's ADDITIVE_CONSTANT, the same std on
#: every weight) or ``pcm`` (aihwkit's PCM_READ, variance proportional to |W|)
WEIGHT_READ_NOISE_TYPES = ("additive", "pcm")
MAX_BITS = 24
#: calibration images drawn (seeded) from the evaluation data to set DAC and ADC ranges
CALIBRATION_IMAGES = 256


def parse_tile_size(text: str | None) -> tuple[int, int] | None:
    """'256x256' -> (256, 256): crossbar rows (inputs) x columns (outputs); None stays None."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise UserError(
            f"--tile-size must be ROWSxCOLS with positive integers, got '{text}'",
            hint="e.g. --tile-size 256x256 (crossbar inputs x outputs)",
        )
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class ForwardPipeline:
    """Non-idealities of the analog forward pass, applied to every selected crossbar layer.

    ``dac_bits``/``adc_bits``: input and output converter resolution (None: ideal).
    ``adc_bound``: ADC full scale in normalised units (outputs of weights scaled to max|W| = 1
    and inputs to the DAC range); None calibrates it per tile (see ``ftaudit.analog``).
    ``read_noise``: standard deviation of the additive output noise per read, in the same
    normalised units (aihwkit's ``out_noise``). ``weight_read_noise``: standard deviation of
    fresh Gaussian noise on every weight at every read, normalised to max|W| = 1 (aihwkit's
    ``w_noise`` with ``w_noise_type`` ADDITIVE_CONSTANT); it reaches each output as
    ``weight_read_noise * ||x_tile||_2`` times a standard normal. ``weight_read_noise_type``
    ``pcm`` makes it aihwkit's PCM_READ instead: each weight's read variance is
    ``weight_read_noise**2 * |W|`` (max|W| = 1, the programmed weight), so an output gets
    ``weight_read_noise * sqrt(sum_j |W_j| x_j**2)``. ``tile_size``: (rows, cols)
    of one crossbar; None is one tile per layer. ``weight_scaling``: what max|W| sets the
    conductance range.
    """

    dac_bits: int | None = None
    adc_bits: int | None = None
    adc_bound: float | None = None
    read_noise: float = 0.0
    weight_read_noise: float = 0.0
    weight_read_noise_type: str = "additive"
    tile_size: tuple[int, int] | None = None
    weight_scaling: str = "layer"

    def __post_init__(self) -> None:
        for flag, bits in (("--dac-bits", self.dac_bits), ("--adc-bits", self.adc_bits)):
            if bits is not None and not (1 <= bits <= MAX_BITS):
                raise UserError(
                    f"{flag} must be between 1 and {MAX_BITS}, got {bits}",
                    hint=f"e.g. {flag} 8 (leave it out for an ideal converter)",
                )
        if not math.isfinite(self.read_noise) or self.read_noise < 0:
            raise UserError(
                f"--read-noise must be a finite number >= 0, got {self.read_noise:g}",
                hint="it is a standard deviation in normalised output units, e.g. 0.06",
            )
        if not math.isfinite(self.weight_read_noise) or self.weight_read_noise < 0:
            raise UserError(
                f"--weight-read-noise must be a finite number >= 0, got {self.weight_read_noise:g}",
                hint="it is a standard deviation per weight read, max|W| = 1, e.g. 0.02",
            )
        if self.weight_read_noise_type not in WEIGHT_READ_NOISE_TYPES:
            raise UserError(
                f"unknown --weight-read-noise-type '{self.weight_read_noise_type}'",
                hint=f"use one of: {', '.join(WEIGHT_READ_NOISE_TYPES)}",
            )
        if self.adc_bound is not None and not (
            math.isfinite(self.adc_bound) and self.adc_bound > 0
        ):
            raise UserError(
                f"--adc-bound must be a finite number > 0, got {self.adc_bound:g}",
                hint="e.g. --adc-bound 12 (aihwkit's out_bound), or leave it out to calibrate",
            )
        if self.tile_size is not None and (len(self.tile_size) != 2 or min(self.tile_size) < 1):
            raise UserError(
                f"tile size must be two positive integers, got {self.tile_size}",
                hint="e.g. --tile-size 256x256",
            )
        if self.weight_scaling not in WEIGHT_SCALINGS:
            raise UserError(
                f"unknown --weight-scaling '{self.weight_scaling}'",
                hint=f"use one of: {', '.join(WEIGHT_SCALINGS)}",
            )

    @property
    def active(self) -> bool:
        """Whether any non-ideality changes the forward pass (tiles and scaling alone do not)."""
        return self.dac_bits is not None or self.per_tile

    @property
    def per_tile(self) -> bool:
        """Whether each tile's partial sum is read on its own (ADC or read noise)."""
        return self.adc_bits is not None or self.random_reads

    @property
    def random_reads(self) -> bool:
        """Whether every read draws fresh noise (on the outputs or on the weights)."""
        return self.read_noise > 0 or self.weight_read_noise > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dac_bits": self.dac_bits,
            "adc_bits": self.adc_bits,
            "adc_bound": self.adc_bound,
            "read_noise": self.read_noise,
            "weight_read_noise": self.weight_read_noise,
            "weight_read_noise_type": self.weight_read_noise_type,
            "tile_size": None if self.tile_size is None else list(self.tile_size),
            "weight_scaling": self.weight_scaling,
        }

    def report_block(self, calibration: Any) -> dict[str, Any]:
        """The report's ``analog`` entry: settings, every non-ideality in force, calibration."""
        return {
            **self.to_dict(),
            "in_force": self.describe(),
            "calibration": None if calibration is None else calibration.to_dict(),
        }

    def describe(self) -> list[str]:
        """One line per non-ideality in force, for tables and reports."""
        lines = []
        if self.dac_bits is not None:
            lines.append(f"DAC {self.dac_bits} bits, per-layer calibrated input range")
        if self.adc_bits is not None:
            bound = (
                "calibrated per tile"
                if self.adc_bound is None
                else f"bound {self.adc_bound:g} (normalised)"
            )
            lines.append(f"ADC {self.adc_bits} bits per tile, saturating, {bound}")
        if self.read_noise > 0:
            lines.append(f"read noise {self.read_noise:g} (normalised output units) per read")
        if self.weight_read_noise > 0:
            form = "PCM: variance S^2 |W|" if self.weight_read_noise_type == "pcm" else "additive"
            lines.append(
                f"weight read noise {self.weight_read_noise:g} ({form}, max|W| = 1) "
                "per weight per read"
            )
        if self.active:
            tiles = (
                "one per layer" if self.tile_size is None else "x".join(map(str, self.tile_size))
            )
            lines.append(f"tiles {tiles}; weight scaling per {self.weight_scaling}")
        return lines


def pipeline_from_flags(
    *,
    dac_bits: int | None = None,
    adc_bits: int | None = None,
    adc_bound: float | None = None,
    read_noise: float | None = None,
    weight_read_noise: float | None = None,
    weight_read_noise_type: str | None = None,
    tile_size: str | None = None,
    weight_scaling: str | None = None,
    base: ForwardPipeline | None = None,
) -> ForwardPipeline | None:
    """The pipeline the command-line flags ask for (validated), each flag given replacing that
    setting of ``base`` (a device profile's); ``base`` when no flag is given."""
    flags = (
        dac_bits,
        adc_bits,
        adc_bound,
        read_noise,
        weight_read_noise,
        weight_read_noise_type,
        tile_size,
        weight_scaling,
    )
    if all(flag is None for flag in flags):
        return base
    base = base or ForwardPipeline()
    return ForwardPipeline(
        dac_bits=base.dac_bits if dac_bits is None else dac_bits,
        adc_bits=base.adc_bits if adc_bits is None else adc_bits,
        adc_bound=base.adc_bound if adc_bound is None else adc_bound,
        read_noise=base.read_noise if read_noise is None else float(read_noise),
        weight_read_noise=(
            base.weight_read_noise if weight_read_noise is None else float(weight_read_noise)
        ),
        weight_read_noise_type=weight_read_noise_type or base.weight_read_noise_type,
        tile_size=base.tile_size if tile_size is None else parse_tile_size(tile_size),
        weight_scaling=weight_scaling or base.weight_scaling,
    )


#: keys of a device file's or config file's ``[analog]`` table
TABLE_KEYS = (
    "dac_bits",
    "adc_bits",
    "adc_bound",
    "read_noise",
    "weight_read_noise",
    "weight_read_noise_type",
    "tile_size",
    "weight_scaling",
)


def pipeline_from_table(table: Any) -> ForwardPipeline:
    """A pipeline from a TOML ``[analog]`` table (tile_size as "256x256" or [256, 256])."""
    if not isinstance(table, dict):
        raise UserError("must be a table", hint=f"write [analog] with keys {', '.join(TABLE_KEYS)}")
    unknown = sorted(set(table) - set(TABLE_KEYS))
    if unknown:
        raise UserError(
            f"unknown key(s): {', '.join(unknown)}", hint=f"allowed keys: {', '.join(TABLE_KEYS)}"
        )
    for key in ("dac_bits", "adc_bits"):
        if key in table and (not isinstance(table[key], int) or isinstance(table[key], bool)):
            raise UserError(f"{key} must be a whole number, got {table[key]!r}")
    for key in ("adc_bound", "read_noise", "weight_read_noise"):
        value = table.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise UserError(f"{key} must be a number, got {value!r}")
    tile = table.get("tile_size")
    if isinstance(tile, list):
        tile = "x".join(str(v) for v in tile)
    return (
        pipeline_from_flags(
            dac_bits=table.get("dac_bits"),
            adc_bits=table.get("adc_bits"),
            adc_bound=table.get("adc_bound"),
            read_noise=table.get("read_noise"),
            weight_read_noise=table.get("weight_read_noise"),
            weight_read_noise_type=table.get("weight_read_noise_type"),
            tile_size=None if tile is None else str(tile),
            weight_scaling=table.get("weight_scaling"),
        )
        or ForwardPipeline()
    )


def resolve_pipeline(pipeline: ForwardPipeline | None, profile: Any) -> ForwardPipeline | None:
    """The pipeline a run uses: the one given, else the noise profile's ``[analog]``; None
    when nothing in it is active."""
    if pipeline is None:
        pipeline = getattr(profile, "analog", None)
    if pipeline is None or not pipeline.active:
        return None
    return pipeline
