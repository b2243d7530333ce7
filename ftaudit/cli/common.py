"""What every command shares after parsing: eval's settings from flags and config (parsed and
checked once), the drift/stuck-at options, the output-path checks, warnings and progress bars."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftaudit.cli.exit_codes import run_argv
from ftaudit.errors import UserError
from ftaudit.options import DeviceEffectOptions, MonteCarloOptions, PerturbOptions

if TYPE_CHECKING:
    from ftaudit.config import EvalSettings


def warn(lines: Any) -> None:
    """Print what the user is probably wrong about, one stderr line each (never fatal)."""
    from ftaudit.text import printable

    for line in lines:
        if line:
            print(f"ftaudit: warning: {printable(line)}", file=sys.stderr)


def warn_workers(workers: int, ray: str | None) -> None:
    from ftaudit.parallel import oversubscription_warning

    warn([oversubscription_warning(workers, ray)])


def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def show_progress(machine_output: bool) -> bool:
    """A progress bar only for people: not for machine output, CI, or a redirected stderr."""
    return not machine_output and not os.environ.get("CI") and sys.stderr.isatty()


def run_with_progress(audit_fn: Any, show: bool, *args: Any, **kwargs: Any) -> Any:
    """Call ``audit_fn`` (whose ``progress`` takes (done, total)) with the progress bar of
    ``run_with_stages``, labelled "Monte Carlo samples" throughout."""
    label = "Monte Carlo samples"

    def staged(*inner: Any, progress: Any, **options: Any) -> Any:
        return audit_fn(
            *inner, progress=lambda done, total: progress(label, done, total), **options
        )

    if not show:
        return audit_fn(*args, **kwargs)
    return run_with_stages(staged, show, *args, first_stage=label, **kwargs)


def run_with_stages(
    fn: Any,
    show: bool,
    *args: Any,
    console: Any = None,
    first_stage: str = "starting",
    **kwargs: Any,
) -> Any:
    """Call ``fn`` with a progress bar (with ETA) on stderr whose label follows the current
    stage (``progress(stage, done, total)``); lines printed on ``console`` meanwhile appear
    above the bar."""
    if not show:
        return fn(*args, **kwargs)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from ftaudit.text import escape

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console or stderr_console(),
        transient=True,
    ) as bar:
        task = bar.add_task(escape(first_stage), total=kwargs.get("samples"))

        def update(stage: str, done: int, total: int) -> None:
            bar.update(task, description=escape(stage), completed=done, total=total)

        return fn(*args, progress=update, **kwargs)


def command_line() -> list[str]:
    return ["ftaudit", *run_argv()]


def noise_of(settings: Any) -> Any:
    """The noise model the settings name, with their device-physics choices: the one place the
    CLI builds it from settings."""
    from ftaudit.noise import get_noise_model

    return get_noise_model(
        settings.noise,
        bits=settings.bits,
        cell_bits=settings.cell_bits,
        clamp=settings.clamp,
        cell_noise=settings.cell_noise,
        differential=settings.differential,
    )


def shared_settings(config: Path | None, flags: dict[str, Any]) -> EvalSettings:
    """eval's options: ftaudit.toml defaults under the given flags; data and sigma required
    (sigma defaults to the noise profile's, as in eval)."""
    from ftaudit.config import load_settings, merge, parse_floats, parse_sigmas
    from ftaudit.units import parse_stuck_at, parse_time, parse_times

    for key, parse in (
        ("sigma", parse_sigmas),
        ("mean", lambda v: parse_floats(v, "--mean")),
        ("std", lambda v: parse_floats(v, "--std")),
        ("time", parse_times),
        ("drift_t0", parse_time),
        ("stuck_at", parse_stuck_at),
    ):
        if flags.get(key) is not None:
            flags[key] = parse(flags[key])
    for key in ("layers", "exclude"):
        if key in flags:
            flags[key] = tuple(flags[key] or ())
    settings = merge(load_settings(config, Path.cwd()), flags)
    if settings.sigma is None:
        noise = noise_of(settings)
        if getattr(noise.profile, "sigma", None) is not None:
            settings = replace(settings, sigma=noise.profile.sigma)
    if settings.sigma is None:
        raise UserError("no sigma given", hint="pass --sigma 0.3 (or set sigma in ftaudit.toml)")
    if settings.data is None:
        raise UserError(
            "no evaluation data given", hint="pass --data FILE (or set data in ftaudit.toml)"
        )
    return settings


def effect_options(settings: EvalSettings) -> DeviceEffectOptions:
    """The drift and stuck-at options, checked against the noise profile like eval's (exit 2)
    before any work or output check."""
    options = DeviceEffectOptions.from_settings(settings)
    noise = noise_of(settings)
    options.resolve(noise.profile)  # bad values fail here, before any work
    return options


def audit_options(settings: EvalSettings, ray: str | None) -> dict[str, Any]:
    """The keyword options compare and sensitivity pass through to every audit they run
    (the option groups of ``ftaudit.options``; the effects were checked by ``effect_options``)."""
    return {
        **PerturbOptions.from_settings(settings).as_kwargs(),
        **MonteCarloOptions.from_settings(settings).as_kwargs(),
        **DeviceEffectOptions.from_settings(settings).as_kwargs(),
        "command": command_line(),
        "config_file": settings.config_file,
        "workers": settings.workers,
        "ray": ray,
    }


def config_sets(settings: EvalSettings, key: str) -> bool:
    """Whether the config file the settings came from sets ``key`` itself."""
    from ftaudit.config import read_config

    if settings.config_file is None:
        return False
    table = read_config(Path(settings.config_file))
    return any(raw.replace("-", "_") == key for raw in table)


def input_files(settings: EvalSettings, *models: Path) -> tuple[Path | str | None, ...]:
    """Every file a run reads: the models, the data, a device file and the config file."""
    noise = settings.noise
    device_file = noise if noise.lower().endswith(".toml") else None
    return (*models, *external_data(models), settings.data, device_file, settings.config_file)


def external_data(models: tuple[Path, ...]) -> list[Path]:
    from ftaudit.models.onnx import declared_external_files

    return [file for model in models for file in declared_external_files(Path(model))]


def check_output_paths(
    inputs: tuple[Path | str | None, ...], paths: dict[str, Path | str | None]
) -> None:
    """Validate every output path before any work, against every input and every other
    output; '-' (stdout) needs no check."""
    from ftaudit.fileio import check_outputs

    if paths.get("plot") is not None:
        from ftaudit._optional import require_matplotlib

        require_matplotlib("plots")
    check_outputs(paths, inputs=inputs)


def write_report_files(kind: str, report: Any, paths: dict[str, Path | str | None]) -> None:
    """Write ``report`` in each format of ``paths`` given a path, with the writer registered
    for (``kind``, format): all of the files or none ('-', stdout, is the caller's)."""
    from ftaudit.fileio import output_set
    from ftaudit.report import get_writer

    with output_set():
        for fmt, path in paths.items():
            if path is not None and path != "-":
                get_writer(fmt, kind)(report, Path(path))


def analog_pipeline(settings: Any, flags: dict[str, Any], config: Any = None) -> Any:
    """The analog forward pipeline: each flag given, else its key in the config file
    (``config``: the eval settings holding them, default ``settings``), over the noise
    profile's ``[analog]``."""
    from ftaudit.analog.options import pipeline_from_flags

    source = settings if config is None else config
    given = {key: getattr(source, key) if flag is None else flag for key, flag in flags.items()}
    noise = noise_of(settings)
    return pipeline_from_flags(**given, base=getattr(noise.profile, "analog", None))


def warn_untraced(model_block: dict[str, Any]) -> None:
    """One stderr warning per multiply operator whose weight the audit left exact."""
    for op in model_block.get("untraced") or []:
        print(
            f"ftaudit: warning: {op['op']} '{op['node']}' is not perturbed: {op['reason']}",
            file=sys.stderr,
        )
