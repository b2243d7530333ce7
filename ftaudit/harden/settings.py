"""Defaults for ``harden``: built in, from the config file, under command-line flags.

Precedence: command-line flag > the ``[harden]`` table > a shared key of the eval settings (top
level or ``[eval]``) > the built-in default. The shared keys describe the hardware and the run
(noise model, bits, seed, device, KPP percentile, workers), so one file states them once for
``eval`` and ``harden``. Everything else is harden's own: eval's ``batch_size`` is an inference
batch and its ``data`` the test set, neither of which is a training setting.

This module imports nothing heavy: the CLI reads the defaults for its help text.
"""

from __future__ import annotations

import difflib
import math
import types
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

from ftaudit.errors import UserError


@dataclass(frozen=True)
class HardenSettings:
    """Every configurable ``harden`` option with its built-in default (the one source of truth:
    the CLI, the config file and the defaults of ``ftaudit.harden.api.harden`` read it)."""

    data: str | None = None  # training data (required)
    sigma: float | None = None  # target device variation (required)
    method: str = "trice"
    noise: str = "lognormal"
    bits: int | None = None
    cell_bits: int | None = None
    clamp: bool = True  # device models: conductances stay >= 0 (as aihwkit clamps)
    cell_noise: str = "independent"  # device models: one dg per cell, or shared per weight
    differential: bool | None = None  # G+/G- pairs (None: the device file's, else one device)
    #: TRICE: RC-Gaussian censoring of a negative weight's draws: its magnitude (the mirrored
    #: array's conductance, default) or its value
    rc_negative: str = "magnitude"
    val_data: str | None = None  # None: a seeded 10% of the training data is held out
    epochs: int = 10
    batch_size: int = 128  # the training batch
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    k: float = 1.0
    trice_start: float = 0.0
    trice_end: float | None = None  # None: 2 * sigma
    threshold: float = 2.0
    warmup: int = 5
    search_samples: int = 300
    eval_samples: int = 1000
    eval_sigmas: tuple[float, ...] | None = None  # None: 0, sigma/2, sigma, 3 sigma/2
    #: BayesFT: upper end of every dropout rate's range. The paper searches [0, 1] (Algorithm 1
    #: line 3); measured on the sample MLP (docs/reproductions/bayesft-acceptance.md) that range
    #: lost accuracy, because weights carry over from trial to trial and a high-rate trial
    #: damages them, so the default stays 0.5
    max_dropout: float = 0.5
    trials: int = 10  # BayesFT: Bayesian-optimisation trials (Algorithm 1's outer loop)
    epochs_per_trial: int = 1  # BayesFT: training epochs per trial (Algorithm 1's E)
    objective_samples: int = 20  # BayesFT: Monte Carlo samples T of the objective (eq. 3-4)
    #: BayesFT: noise draws averaged per training step (Monte Carlo gradient of u, eq. 3-4;
    #: one draw is already an unbiased estimate, and each further draw costs a forward/backward)
    train_draws: int = 1
    limit: int | None = None  # train on the first N samples
    workers: int = 1
    config_file: str | None = None  # where the non-default values came from


HARDEN_DEFAULTS = HardenSettings()

#: keys of the eval settings (top level or [eval]) that harden uses too
SHARED_KEYS = (
    "noise",
    "bits",
    "cell_bits",
    "clamp",
    "cell_noise",
    "differential",
    "seed",
    "device",
    "k",
    "workers",
)
#: keys holding paths, resolved against the config file's folder
PATH_KEYS = ("data", "val_data")
CONFIG_KEYS = tuple(f.name for f in fields(HardenSettings) if f.name != "config_file")


def load_harden_settings(config: Path | None, cwd: Path) -> HardenSettings:
    """Settings from ``--config`` or the discovered config file, else the built-in defaults."""
    from ftaudit.config import find_config

    path = config if config is not None else find_config(cwd)
    if path is None:
        return HARDEN_DEFAULTS
    return harden_settings_from_config(path)


def harden_settings_from_config(path: Path) -> HardenSettings:
    """Validated HardenSettings from a config file: the shared keys of its eval settings, then
    its [harden] table. The eval settings are validated as ``eval`` would, so a typo anywhere
    that harden reads fails the same way in both commands."""
    from ftaudit.config import read_config, read_harden_table, settings_from_config

    eval_table = read_config(path)
    settings_from_config(eval_table, path)  # the same errors as eval for the shared part
    values: dict[str, Any] = {}
    for raw_key, value in eval_table.items():
        key = raw_key.replace("-", "_")
        if key in SHARED_KEYS:
            values[key] = _convert(key, raw_key, value, path)
    for raw_key, value in read_harden_table(path).items():
        key = raw_key.replace("-", "_")
        if key not in CONFIG_KEYS:
            close = difflib.get_close_matches(key, CONFIG_KEYS, n=1)
            raise UserError(
                f"config file {path} has an unknown setting '{raw_key}' in [harden]",
                hint=f"did you mean '{close[0]}'?"
                if close
                else f"known: {', '.join(sorted(CONFIG_KEYS))}",
            )
        values[key] = _convert(key, raw_key, value, path)
    return replace(HardenSettings(), **values, config_file=str(path))


_HINTS = get_type_hints(HardenSettings)


def _convert(key: str, raw_key: str, value: Any, path: Path) -> Any:
    """One config value checked against the field's type (bool is never a number)."""
    hint = _HINTS[key]
    kinds = [a for a in getattr(hint, "__args__", ()) if a is not type(None)]
    kind = kinds[0] if isinstance(hint, types.UnionType) else hint
    wrong = UserError(f"config file {path}: '{raw_key}' has the wrong type ({value!r})")
    if kind is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if isinstance(value, bool):
        raise wrong
    if kind is int:
        if not isinstance(value, int):
            raise wrong
        return value
    if kind is float:
        if not isinstance(value, (int, float)):
            raise wrong
        if not math.isfinite(value):
            raise UserError(f"config file {path}: '{raw_key}' must be finite, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise wrong
        from ftaudit.config import is_device_file

        relative = key in PATH_KEYS or (key == "noise" and is_device_file(value))
        return str((path.parent / value).resolve()) if relative else value
    # eval_sigmas: a number, a list, '0.1,0.2' or a range 'start:stop:step', as eval's sigma
    from ftaudit.config import parse_sigmas

    if not isinstance(value, (int, float, str, list)):
        raise wrong
    try:
        return parse_sigmas(value)
    except UserError as exc:
        raise UserError(f"config file {path}: '{raw_key}': {exc.message}") from exc
