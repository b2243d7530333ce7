"""``ftaudit noise-models``: the registered noise models and shipped device profiles."""

from __future__ import annotations

import typer


def noise_models_command() -> None:
    """List the registered noise models."""
    from ftaudit.noise import NOISE_MODELS
    from ftaudit.noise.device import load_device_file, shipped_profiles

    for name, cls in sorted(NOISE_MODELS.items()):
        typer.echo(f"{name:12s} {cls.describe()}")
        if cls.differential_rule:
            typer.echo(f"{'':12s}   --differential: {cls.differential_rule}")
    for name, path in shipped_profiles().items():
        profile = load_device_file(path, shipped=True).profile
        typer.echo(f"{name:12s} Profile: {profile.description}")
    typer.echo(f"{'FILE.toml':12s} A user-defined multi-level cell device (see the README).")
