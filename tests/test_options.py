"""ftaudit.options: frozen option groups, the one home of the audit commands' defaults."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from ftaudit.config import EvalSettings
from ftaudit.errors import UserError
from ftaudit.options import (
    AUDIT_DEFAULTS,
    DeviceEffectOptions,
    MonteCarloOptions,
    OutputOptions,
    PerturbOptions,
    ScaleOutOptions,
)

GROUPS = (PerturbOptions, DeviceEffectOptions, MonteCarloOptions, ScaleOutOptions, OutputOptions)


@pytest.mark.parametrize("group", GROUPS)
def test_groups_are_frozen(group):
    options = group()
    name = dataclasses.fields(group)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(options, name, None)


def test_config_defaults_come_from_the_options():
    settings = EvalSettings()
    renamed = {"sigmas": "sigma", "times": "time"}
    for name, default in AUDIT_DEFAULTS.items():
        field = renamed.get(name, name)
        if hasattr(settings, field):
            assert getattr(settings, field) == default, name


@pytest.mark.parametrize(
    ("module", "function"),
    [("evaluation", "audit"), ("compare", "compare"), ("sensitivity", "sensitivity")],
)
def test_library_defaults_come_from_the_options(module, function):
    import importlib

    library = importlib.import_module(f"ftaudit.{module}")
    parameters = inspect.signature(getattr(library, function)).parameters
    for name, default in AUDIT_DEFAULTS.items():
        if function == "sensitivity" and name == "samples":
            continue  # sensitivity runs 2L+1 audits: its own, smaller default
        if name in parameters and parameters[name].default is not inspect.Parameter.empty:
            expected = None if default == () else default  # globs: None and () mean all
            assert parameters[name].default in (default, expected), name


def test_from_settings_maps_the_config_names():
    settings = EvalSettings(sigma=(0.1, 0.2), time=(1.0, 3600.0), stuck_at=(0.01, 0.0), k=5.0)
    assert PerturbOptions.from_settings(settings).sigmas == (0.1, 0.2)
    effects = DeviceEffectOptions.from_settings(settings)
    assert effects.times == (1.0, 3600.0)
    assert effects.stuck_at == (0.01, 0.0)
    assert MonteCarloOptions.from_settings(settings, seed=7) == MonteCarloOptions(k=5.0, seed=7)


def test_effects_resolve_once_and_fail_as_user_errors():
    assert DeviceEffectOptions().resolve() is None
    effects = DeviceEffectOptions(times=(1.0, 86400.0)).resolve()
    assert effects is not None and len(effects.conditions([0.1])) > 0
    with pytest.raises(UserError):
        DeviceEffectOptions(drift_nu=0.05).resolve()  # drift options need --time


def test_output_files_leave_stdout_to_the_caller():
    outputs = OutputOptions(json="-", csv=Path("t.csv"), quiet=True)
    assert outputs.machine_output
    assert outputs.files() == {"csv": Path("t.csv"), "plot": None, "html": None, "junit": None}


def test_scale_out_is_validated_in_one_place():
    ScaleOutOptions(workers=2, checkpoint_dir="ckpt", resume=True).validate()
    with pytest.raises(UserError, match="--workers must be at least 1, got 0"):
        ScaleOutOptions(workers=0).validate()
    with pytest.raises(UserError, match="--resume needs the --checkpoint-dir"):
        ScaleOutOptions(resume=True).validate()
