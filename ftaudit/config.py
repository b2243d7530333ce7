"""Defaults for ``eval`` from ``ftaudit.toml`` or ``[tool.ftaudit]`` in pyproject.toml.

``compare`` and ``sensitivity`` read the same settings (and their own gate keys); ``harden``
reads the shared device keys from them and its own from a ``[harden]`` table
(ftaudit/harden/settings.py).

Precedence: command-line flag > config file > built-in default. Relative paths in a config file
are resolved against the file's folder, so a config works from any working directory.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ftaudit.errors import UserError
from ftaudit.options import MonteCarloOptions, PerturbOptions, ScaleOutOptions


@dataclass(frozen=True)
class EvalSettings:
    """Every ``eval`` option with its built-in default (read from ``ftaudit.options``, the one
    source of truth)."""

    data: str | None = None
    sigma: tuple[float, ...] | None = None
    noise: str = PerturbOptions.noise
    bits: int | None = None
    cell_bits: int | None = None
    clamp: bool = PerturbOptions.clamp  # device models: conductances stay >= 0
    cell_noise: str = PerturbOptions.cell_noise  # device models: independent or shared dg
    differential: bool | None = PerturbOptions.differential  # G+/G- pairs (None: device file's)
    # the analog forward pipeline (ftaudit.analog; None: the noise profile's [analog], else off)
    dac_bits: int | None = None
    adc_bits: int | None = None
    adc_bound: float | None = None
    read_noise: float | None = None
    weight_read_noise: float | None = None
    weight_read_noise_type: str | None = None  # additive or pcm
    tile_size: str | None = None  # "ROWSxCOLS" (a [rows, cols] list in the file)
    weight_scaling: str | None = None
    samples: int = MonteCarloOptions.samples
    k: float = MonteCarloOptions.k
    seed: int = MonteCarloOptions.seed
    rng: str = MonteCarloOptions.rng  # the normal generator: fast or ziggurat
    batch_size: int = MonteCarloOptions.batch_size
    device: str = MonteCarloOptions.device
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    limit: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    output: str | None = None
    target_ci: float | None = None
    test_set_error: bool = False  # eval: intervals also cover the test set's sampling error
    fail_under_kpp: float | None = None
    fail_under_mean: float | None = None
    time: tuple[float, ...] | None = None  # seconds after programming (drift)
    drift_nu: float | None = None  # None: the noise profile's, else DriftModel's default
    drift_nu_std: float | None = None
    drift_t0: float | None = None
    compensation: str | None = None  # none, global or both (default both with time)
    stuck_at: tuple[float, float] | None = None
    workers: int = ScaleOutOptions.workers  # local worker processes (results do not depend on it)
    fail_if_worse: float | None = None  # compare's gate (eval ignores it)
    gate_correction: str = "holm"  # compare: holm or per-row (ftaudit/compare.py)
    target_kpp: float | None = None  # sensitivity's keep-digital target (eval ignores it)
    config_file: str | None = None  # where the non-default values came from


SettingsT = TypeVar("SettingsT")  # a settings dataclass

PATH_KEYS = {"data"}
TUPLE_KEYS = {"layers", "exclude"}
FLOAT_LIST_KEYS = {"mean", "std"}
#: a sigma range with more values than this is a typo, not an audit
MAX_SIGMAS = 10_000


def parse_sigmas(spec: str | float | list[Any]) -> tuple[float, ...]:
    """Sigma values from '0.3', a list '0.1,0.2' or an inclusive range 'start:stop:step'."""
    if isinstance(spec, bool):
        raise UserError(f"sigma must be a number, got {spec!r}")
    if isinstance(spec, (int, float)):
        return (float(spec),)
    if isinstance(spec, list):
        return tuple(v for item in spec for v in parse_sigmas(item))
    text = str(spec).strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if not all(math.isfinite(p) for p in parts) or step <= 0 or stop < start:
                raise UserError(
                    f"sigma range '{text}' needs finite numbers, start <= stop and a step > 0",
                    hint="e.g. --sigma 0:0.4:0.05",
                )
            steps = (stop - start) / step  # inf when step is tiny
            if not steps < MAX_SIGMAS:
                raise UserError(
                    f"sigma range '{text}' has more than {MAX_SIGMAS} values",
                    hint="use a larger step, e.g. --sigma 0:0.4:0.05",
                )
            count = math.floor(steps + 1e-9) + 1
            return tuple(float(np.round(start + i * step, 10)) for i in range(count))
        values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError as exc:
        raise UserError(
            f"sigma '{text}' is not a number, a list or a range",
            hint="use --sigma 0.3, --sigma 0.1,0.2,0.3 or --sigma 0:0.4:0.05",
        ) from exc
    if not values:
        raise UserError("--sigma is empty", hint="e.g. --sigma 0.3")
    return values


def parse_floats(spec: str | float | list[Any], what: str) -> tuple[float, ...]:
    """A scalar or comma-separated list of numbers (for --mean/--std)."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return (float(spec),)
    items = spec if isinstance(spec, list) else str(spec).split(",")
    try:
        return tuple(float(v) for v in items)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{what} must be a number or a comma-separated list, got {spec!r}") from exc


def find_config(cwd: Path) -> Path | None:
    """``ftaudit.toml`` in ``cwd``, else a pyproject.toml there with a [tool.ftaudit] table."""
    candidate = cwd / "ftaudit.toml"
    if candidate.is_file():
        return candidate
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file():
        try:
            content = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            return None  # not ours to complain about unless it holds our table
        tool = content.get("tool", {})
        if isinstance(tool, dict) and "ftaudit" in tool:
            return pyproject
    return None


#: the table of harden-only settings (``[harden]`` or ``[tool.ftaudit.harden]``)
HARDEN_TABLE = "harden"


def _ftaudit_content(path: Path) -> dict[str, Any]:
    """The whole ftaudit part of a config file (ftaudit.toml, or [tool.ftaudit])."""
    if not path.is_file():
        raise UserError(f"config file {path} does not exist", hint="check the --config path")
    try:
        content = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from exc
    if path.name == "pyproject.toml":
        tool = content.get("tool", {})
        content = tool.get("ftaudit", {}) if isinstance(tool, dict) else None
    if not isinstance(content, dict):
        raise UserError(f"config file {path}: the ftaudit settings must be a table")
    if not isinstance(content.get(HARDEN_TABLE, {}), dict):
        raise UserError(f"config file {path}: [{HARDEN_TABLE}] must be a table")
    return content


def is_device_file(noise: Any) -> bool:
    """Whether a ``noise`` value names a device TOML file (a path) rather than a model name."""
    return isinstance(noise, str) and noise.lower().endswith(".toml")


def read_config(path: Path) -> dict[str, Any]:
    """The raw eval table of a config file: the top level (without the [harden] table) or an
    optional [eval] table."""
    content = _ftaudit_content(path)
    top = {key: value for key, value in content.items() if key not in (HARDEN_TABLE, "eval")}
    if "eval" not in content:
        return top
    table = content["eval"]
    if not isinstance(table, dict):
        raise UserError(f"config file {path}: [eval] must be a table")
    # both places hold eval's keys (the README's promise): a key in both is ambiguous
    both = sorted(set(top) & set(table))
    if both:
        raise UserError(
            f"config file {path} sets {', '.join(both)} both at the top level and in [eval]",
            hint="keep each setting in one place",
        )
    return {**top, **table}


def read_harden_table(path: Path) -> dict[str, Any]:
    """The raw [harden] table of a config file (empty when it has none)."""
    return _ftaudit_content(path).get(HARDEN_TABLE, {})


def settings_from_config(table: dict[str, Any], path: Path) -> EvalSettings:
    """Validated EvalSettings from a config table; unknown keys get a 'did you mean'."""
    known = {f.name for f in fields(EvalSettings)} - {"config_file"}
    values: dict[str, Any] = {}
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            raise UserError(
                f"config file {path} has an unknown setting '{raw_key}'",
                hint=f"did you mean '{close[0]}'?"
                if close
                else f"known: {', '.join(sorted(known))}",
            )
        if (key in PATH_KEYS and not isinstance(value, str)) or (
            key in TUPLE_KEYS
            and not isinstance(value, str)
            and not (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            raise UserError(f"config file {path}: '{raw_key}' has the wrong type ({value!r})")
        if key in PATH_KEYS or (key == "noise" and is_device_file(value)):
            value = str((path.parent / value).resolve())
        elif key == "sigma":
            value = parse_sigmas(value)
        elif key in FLOAT_LIST_KEYS:
            value = parse_floats(value, key)
        elif key == "time":
            from ftaudit.units import parse_times

            value = parse_times(value)
        elif key == "stuck_at":
            from ftaudit.units import parse_stuck_at

            value = parse_stuck_at(value)
        elif key in TUPLE_KEYS:
            value = (value,) if isinstance(value, str) else tuple(value)
        elif key == "tile_size" and isinstance(value, list):
            value = "x".join(str(v) for v in value)
        values[key] = value
    _check_types(values, path)
    _check_pipeline(values, path)
    return replace(EvalSettings(), **values, config_file=str(path))


def _check_pipeline(values: dict[str, Any], path: Path) -> None:
    """The analog keys of a config file validated as their flags are, naming the file."""
    from ftaudit.analog.options import TABLE_KEYS, pipeline_from_flags

    try:
        pipeline_from_flags(**{key: values.get(key) for key in TABLE_KEYS})
    except UserError as exc:
        raise UserError(f"config file {path}: {exc.message}", hint=exc.hint) from exc


def _check_types(values: dict[str, Any], path: Path) -> None:
    expect_int = {
        "bits",
        "cell_bits",
        "samples",
        "seed",
        "batch_size",
        "limit",
        "workers",
        "dac_bits",
        "adc_bits",
    }
    expect_num = {
        "k",
        "target_ci",
        "fail_under_kpp",
        "fail_under_mean",
        "drift_nu",
        "drift_nu_std",
        "drift_t0",
        "fail_if_worse",
        "target_kpp",
        "adc_bound",
        "read_noise",
        "weight_read_noise",
    }
    expect_str = {
        "noise",
        "device",
        "output",
        "compensation",
        "gate_correction",
        "cell_noise",
        "tile_size",
        "weight_scaling",
        "weight_read_noise_type",
        "rng",
    }
    for key, value in values.items():
        bad = (
            (key in expect_int and (not isinstance(value, int) or isinstance(value, bool)))
            or (
                key in expect_num
                and (not isinstance(value, (int, float)) or isinstance(value, bool))
            )
            or (key in expect_str and not isinstance(value, str))
            or (key in ("clamp", "test_set_error", "differential") and not isinstance(value, bool))
        )
        if bad:
            raise UserError(f"config file {path}: '{key}' has the wrong type ({value!r})")


def load_settings(config: Path | None, cwd: Path) -> EvalSettings:
    """Settings from ``--config`` or the discovered config file, else the built-in defaults."""
    path = config if config is not None else find_config(cwd)
    if path is None:
        return EvalSettings()
    return settings_from_config(read_config(path), path)


def merge(settings: SettingsT, overrides: dict[str, Any]) -> SettingsT:
    """Apply command-line values that were given (not None, not empty) over the settings."""
    given = {k: v for k, v in overrides.items() if v is not None and v != ()}
    return replace(settings, **given)
