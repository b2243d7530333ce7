"""Argument groups: each declares its typer options once and parses them once (Polygraphy's
tools/args are the model).

A command names a group by a parameter whose default is the group, e.g.
``effects: ParsedFlags = EFFECTS``; ``uses_groups`` puts the group's options in the command's
signature at that place (so ``--help`` lists them there) and, on a call, hands the command the
group's ``parse`` of them instead. Adding a flag to a group is one ``Flag`` line below (its
alias, with the help text, lives in ``cli/options.py``; its panel in ``cli/help.py``); every
command using the group gets it, and the value reaches the settings under the flag's ``key``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, get_type_hints

from ftaudit.analog.options import TABLE_KEYS
from ftaudit.cli import options as aliases


@dataclass(frozen=True)
class Flag:
    """One option of a group: its parameter name, its typer alias (flag, type, help), its
    default, the settings key it sets, and how its text becomes a value (None: as typer gave
    it)."""

    name: str
    alias: Any
    default: Any = None
    key: str | None = None
    parse: Callable[[Any], Any] | None = None

    @property
    def setting(self) -> str:
        return self.key or self.name

    def value(self, raw: Any) -> Any:
        if raw is None or self.parse is None:
            return raw
        return self.parse(raw)


@dataclass(frozen=True)
class ParsedFlags(Mapping[str, Any]):
    """A group's flags after parsing: settings key -> value (None: not given)."""

    values: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __iter__(self) -> Any:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class ArgGroup:
    """A named set of flags parsed together; ``with_help`` gives a command its own help text
    for a flag, ``without`` drops flags a command does not take."""

    name: str
    flags: tuple[Flag, ...]
    parser: Callable[[dict[str, Any]], Any] | None = None

    def parse(self, raw: Mapping[str, Any]) -> Any:
        """The group's value from the command's raw keyword values (each flag parsed once)."""
        values = {flag.setting: flag.value(raw[flag.name]) for flag in self.flags}
        return ParsedFlags(values) if self.parser is None else self.parser(values)

    def with_help(self, **new_aliases: Any) -> ArgGroup:
        flags = tuple(
            replace(flag, alias=new_aliases[flag.name]) if flag.name in new_aliases else flag
            for flag in self.flags
        )
        return replace(self, flags=flags)

    def without(self, *names: str) -> ArgGroup:
        return replace(self, flags=tuple(flag for flag in self.flags if flag.name not in names))

    def __add__(self, other: ArgGroup) -> ArgGroup:
        return ArgGroup(f"{self.name}+{other.name}", self.flags + other.flags, self.parser)


def _sigmas(text: str) -> tuple[float, ...]:
    from ftaudit.config import parse_sigmas

    return parse_sigmas(text)


def _floats(flag: str) -> Callable[[str], tuple[float, ...]]:
    def parse(text: str) -> tuple[float, ...]:
        from ftaudit.config import parse_floats

        return parse_floats(text, flag)

    return parse


def _times(text: str) -> tuple[float, ...]:
    from ftaudit.units import parse_times

    return parse_times(text)


def _time(text: str) -> float:
    from ftaudit.units import parse_time

    return parse_time(text)


def _stuck_at(text: str) -> tuple[float, float]:
    from ftaudit.units import parse_stuck_at

    return parse_stuck_at(text)


#: device physics of the device noise models (eval, compare, sensitivity and harden)
DEVICE_PHYSICS = ArgGroup(
    "device physics",
    tuple(
        Flag(name, alias)
        for name, alias in (
            ("bits", aliases.BitsOpt),
            ("cell_bits", aliases.CellBitsOpt),
            ("clamp", aliases.ClampOpt),
            ("cell_noise", aliases.CellNoiseOpt),
            ("differential", aliases.DifferentialOpt),
        )
    ),
)

#: what to audit and how to run the Monte Carlo (PerturbOptions and MonteCarloOptions)
AUDIT = ArgGroup(
    "audit",
    (
        Flag("data", aliases.DataOpt),
        Flag("sigma", aliases.SigmaOpt, parse=_sigmas),
        Flag("noise", aliases.NoiseOpt),
        *DEVICE_PHYSICS.flags,
        Flag("samples", aliases.SamplesOpt),
        Flag("k", aliases.KOpt),
        Flag("seed", aliases.SeedOpt),
        Flag("rng", aliases.RngOpt),
        Flag("batch_size", aliases.BatchSizeOpt),
        Flag("device", aliases.DeviceOpt),
        Flag("layers", aliases.LayersOpt, parse=tuple),
        Flag("exclude", aliases.ExcludeOpt, parse=tuple),
        Flag("limit", aliases.LimitOpt),
        Flag("mean", aliases.MeanOpt, parse=_floats("--mean")),
        Flag("std", aliases.StdOpt, parse=_floats("--std")),
        Flag("output", aliases.OutputOpt),
    ),
)
#: conductance drift, its compensation and stuck-at cells (DeviceEffectOptions)
EFFECTS = ArgGroup(
    "device effects",
    (
        Flag("time_spec", aliases.TimeOpt, key="time", parse=_times),
        Flag("drift_nu", aliases.DriftNuOpt),
        Flag("drift_nu_std", aliases.DriftNuStdOpt),
        Flag("drift_t0", aliases.DriftT0Opt, parse=_time),
        Flag("compensation", aliases.CompensationOpt),
        Flag("stuck_at", aliases.StuckAtOpt, parse=_stuck_at),
    ),
)

#: where the samples run (ScaleOutOptions); eval adds its checkpoints and batching
SCALE_OUT = ArgGroup(
    "scale-out", (Flag("workers", aliases.WorkersOpt), Flag("ray", aliases.RayOpt))
)
CHECKPOINTS = ArgGroup(
    "checkpoints",
    (
        Flag("checkpoint_dir", aliases.EvalCheckpointOpt),
        Flag("resume", aliases.EvalResumeOpt, default=False),
        Flag("batch_samples", aliases.BatchSamplesOpt),
    ),
)


def _outputs(values: dict[str, Any]) -> Any:
    from ftaudit.options import OutputOptions

    return OutputOptions(**values)


#: the report files and the terminal table (OutputOptions)
OUTPUTS = ArgGroup(
    "outputs",
    (
        Flag("json_path", aliases.JsonOpt, key="json"),
        Flag("csv_path", aliases.CsvOpt, key="csv"),
        Flag("plot_path", aliases.PlotOpt, key="plot"),
        Flag("html_path", aliases.HtmlOpt, key="html"),
        Flag("junit_path", aliases.JunitOpt, key="junit"),
        Flag("quiet", aliases.QuietOpt, default=False),
    ),
    parser=_outputs,
)


@dataclass(frozen=True)
class AnalogFlags:
    """The analog pipeline flags as given (None: not given); ``pipeline`` lays them over the
    config file's keys and those over a noise profile's ``[analog]`` table."""

    values: Mapping[str, Any]

    def pipeline(self, noise_model: Any, config: Any = None) -> Any:
        """Each flag given, else its key in ``config`` (settings read from ftaudit.toml, whose
        fields hold the analog keys), else the profile's."""
        from ftaudit.analog.options import pipeline_from_flags

        given = {
            key: getattr(config, key, None) if value is None else value
            for key, value in self.values.items()
        }
        return pipeline_from_flags(**given, base=getattr(noise_model.profile, "analog", None))


#: the analog forward pipeline (ftaudit.analog.options.ForwardPipeline)
ANALOG = ArgGroup(
    "analog",
    tuple(
        Flag(name, alias)
        for name, alias in zip(
            TABLE_KEYS,
            (
                aliases.DacBitsOpt,
                aliases.AdcBitsOpt,
                aliases.AdcBoundOpt,
                aliases.ReadNoiseOpt,
                aliases.WeightReadNoiseOpt,
                aliases.WeightReadNoiseTypeOpt,
                aliases.TileSizeOpt,
                aliases.WeightScalingOpt,
            ),
            strict=True,
        )
    ),
    parser=AnalogFlags,
)

F = TypeVar("F", bound=Callable[..., Any])


def uses_groups(command: F) -> F:
    """Expand each parameter whose default is an ``ArgGroup`` into the group's options, in
    place; the command is called with the group's parsed value under that parameter's name."""
    signature = inspect.signature(command)
    hints = get_type_hints(command, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, ArgGroup] = {}
    annotations: dict[str, Any] = {}
    for param in signature.parameters.values():
        if isinstance(param.default, ArgGroup):
            groups[param.name] = param.default
            for flag in param.default.flags:
                params.append(
                    inspect.Parameter(
                        flag.name,
                        inspect.Parameter.POSITIONAL_OR_KEYWORD,
                        default=flag.default,
                        annotation=flag.alias,
                    )
                )
                annotations[flag.name] = flag.alias
            continue
        params.append(param.replace(annotation=hints[param.name]))
        annotations[param.name] = hints[param.name]
    names = [param.name for param in params]
    if len(set(names)) != len(names):
        raise TypeError(f"{command.__name__}: two options share a name in {names}")

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for name, group in groups.items():
            raw = {flag.name: kwargs.pop(flag.name, flag.default) for flag in group.flags}
            kwargs[name] = group.parse(raw)
        return command(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = annotations
    return wrapper  # type: ignore[return-value]
