"""Noise-model registry: every module in this package registers its models by name.

Adding a model means adding one module with a ``@register``-ed class; nothing else changes.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from pathlib import Path

from ftaudit.errors import UserError
from ftaudit.noise.base import NOISE_MODELS, LayerNoise, NoiseModel, register

__all__ = ["NOISE_MODELS", "LayerNoise", "NoiseModel", "get_noise_model", "register"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def get_noise_model(
    spec: str,
    *,
    bits: int | None = None,
    cell_bits: int | None = None,
    clamp: bool = True,
    cell_noise: str = "independent",
    differential: bool | None = None,
) -> NoiseModel:
    """A noise model by registry name, a shipped device profile, or a device ``.toml`` file.

    ``clamp`` (conductances stay >= 0) and ``cell_noise`` (independent or shared per weight)
    are the multi-level devices' physics choices (docs/methods.md); ``differential`` stores
    each weight on a G+/G- pair (None: the device file's choice, else one device per weight;
    what it means per model is the model's ``differential_rule``)."""
    from ftaudit.noise.device import DeviceNoise, load_device_file, shipped_profiles

    physics = {"clamp": clamp, "cell_noise": cell_noise, "differential": differential}
    if spec.endswith(".toml") or Path(spec).suffix == ".toml":
        return load_device_file(Path(spec), bits=bits, cell_bits=cell_bits, **physics)
    profiles = shipped_profiles()
    if spec in profiles and spec not in NOISE_MODELS:
        return load_device_file(
            profiles[spec], bits=bits, cell_bits=cell_bits, shipped=True, **physics
        )
    cls = NOISE_MODELS.get(spec)
    if cls is None:
        names = sorted({*NOISE_MODELS, *profiles})
        close = difflib.get_close_matches(spec, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(
            f"unknown noise model '{spec}'",
            hint=f"{hint}choose one of {', '.join(names)} or a device .toml file",
        )
    if differential and cls.differential_rule is None:
        raise UserError(
            f"noise model '{spec}' cannot model differential pairs",
            hint="drop --differential, or use a model that has one (ftaudit noise-models)",
        )
    if issubclass(cls, DeviceNoise):
        return cls(
            bits=bits, cell_bits=cell_bits, **{**physics, "differential": bool(differential)}
        )
    if bits is not None or cell_bits is not None:
        raise UserError(
            f"--bits/--cell-bits apply to device noise models, not to '{spec}'",
            hint="drop them or use --noise rram|fefet1|fefet2|DEVICE.toml",
        )
    return cls(differential=True, clamp=clamp) if differential else cls()
