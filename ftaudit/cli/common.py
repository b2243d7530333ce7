"""What every command shares after parsing: the audit commands' inputs from their argument
groups and the config file (checked once, ``audit_inputs``), the output-path checks, warnings
and progress bars."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftaudit.cli.exit_codes import run_argv
from ftaudit.errors import UserError
from ftaudit.options import (
    DeviceEffectOptions,
    MonteCarloOptions,
    PerturbOptions,
    ScaleOutOptions,
)

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


def print_table(renderable: Any) -> None:
    """Print a result table on stdout. Piped (a CI log, a file), rich lays it out at 80
    columns and cuts the last cells of a wider unbreakable row to "…": such a table is printed
    at the width it needs instead (wrappable cells, and tables that fit, stay as they are)."""
    import io

    from rich.console import Console
    from rich.measure import Measurement

    console = Console()
    if not console.is_terminal:
        probe = Console(file=io.StringIO(), width=console.width, color_system=None)
        probe.print(renderable)
        if "…" in probe.file.getvalue():
            unbounded = console.options.update(max_width=10_000)
            console = Console(width=Measurement.get(console, unbounded, renderable).maximum)
    console.print(renderable)


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


@dataclass(frozen=True)
class AuditInputs:
    """What eval, compare and sensitivity run on, parsed and validated once: the settings (the
    config file under the flags), the noise model they name, the device effects, the analog
    pipeline and where the samples run."""

    settings: EvalSettings
    noise: Any  # the NoiseModel
    effects: DeviceEffectOptions
    pipeline: Any  # ForwardPipeline | None
    scale_out: ScaleOutOptions
    checked: Any  # options.CheckedOptions: the library does not check these again

    def library_kwargs(self) -> dict[str, Any]:
        """The keywords of ``audit``/``compare``/``sensitivity`` the option groups stand for."""
        return {
            **PerturbOptions.from_settings(self.settings, noise=self.noise).as_kwargs(),
            **MonteCarloOptions.from_settings(self.settings).as_kwargs(),
            **self.effects.as_kwargs(),
            "workers": self.scale_out.workers,
            "ray": self.scale_out.ray,
            "pipeline": self.pipeline,
            "command": command_line(),
            "config_file": self.settings.config_file,
            "checked": self.checked,
        }


def audit_inputs(
    config: Path | None,
    *groups: Mapping[str, Any],
    analog: Any,
    scale_out: Mapping[str, Any],
    checkpoints: Mapping[str, Any] | None = None,
    gates: tuple[str, ...] = (),
    default_samples: int | None = None,
) -> AuditInputs:
    """The flags of ``groups`` (parsed by their ``ArgGroup``) over ftaudit.toml, checked once,
    before any work or output check: data and sigma required (sigma defaults to the noise
    profile's), then the scale-out, the device effects, the analog pipeline and the Monte Carlo
    options with the command's ``gates`` (settings names). ``default_samples``: the command's
    own default when neither the flags nor the config file set --samples."""
    from ftaudit.config import load_settings, merge
    from ftaudit.evaluation import validate_options

    flags: dict[str, Any] = {"workers": scale_out["workers"]}
    for group in groups:
        flags.update(group)
    settings = merge(load_settings(config, Path.cwd()), flags)
    noise = noise_of(settings)
    if settings.sigma is None and getattr(noise.profile, "sigma", None) is not None:
        settings = replace(settings, sigma=noise.profile.sigma)
    if settings.sigma is None:
        raise UserError("no sigma given", hint="pass --sigma 0.3 (or set sigma in ftaudit.toml)")
    if settings.data is None:
        raise UserError(
            "no evaluation data given", hint="pass --data FILE (or set data in ftaudit.toml)"
        )
    own_default = default_samples is not None and flags.get("samples") is None
    if own_default and not config_sets(settings, "samples"):
        settings = replace(settings, samples=default_samples)
    where = ScaleOutOptions(workers=settings.workers, ray=scale_out["ray"], **(checkpoints or {}))
    where.validate()
    warn_workers(where.workers, where.ray)
    effects = DeviceEffectOptions.from_settings(settings)
    effects.resolve(noise.profile)  # bad drift or fault values fail here
    pipeline = analog.pipeline(noise, settings)  # flags > ftaudit.toml > the profile
    checked = validate_options(
        sigmas=settings.sigma,
        samples=settings.samples,
        k=settings.k,
        seed=settings.seed,
        batch_size=settings.batch_size,
        device=settings.device,
        rng=settings.rng,
        **{gate: getattr(settings, gate) for gate in gates},
    )
    return AuditInputs(settings, noise, effects, pipeline, where, checked)


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


def warn_untraced(model_block: dict[str, Any]) -> None:
    """One stderr warning per operator whose stored weight the audit left exact, and one when
    the model has other outputs than the one evaluated as the class scores."""
    untraced = model_block.get("untraced") or []
    tables = [op for op in untraced if "is looked up by index" in op["reason"]]
    for op in untraced:
        if op not in tables:
            print(
                f"ftaudit: warning: {op['op']} '{op['node']}' is not perturbed: {op['reason']}",
                file=sys.stderr,
            )
    if tables:  # a transformer has several: one line for them all
        names = ", ".join(_table_name(op) for op in tables)
        print(
            f"ftaudit: warning: {len(tables)} embedding table(s) not perturbed ({names}): looked "
            "up by index, not multiplied by the data, so a crossbar does not store them and "
            "they stay exact (inspect lists them)",
            file=sys.stderr,
        )
    output = model_block.get("output") or {}
    if output.get("other_outputs"):
        print(f"ftaudit: warning: {other_outputs_note(model_block)}", file=sys.stderr)


def _table_name(op: dict[str, str]) -> str:
    """The embedding table an untraced lookup names in its reason, else its operator's name."""
    found = re.search(r"table '([^']+)' (\([^)]*\))|parameter (\S+)", op["reason"])
    if found is None:
        return op["node"]
    return f"{found[1]} {found[2]}" if found[1] else found[3]


def other_outputs_note(model_block: dict[str, Any]) -> str:
    """Which of several outputs is evaluated, and how to evaluate another."""
    output = model_block["output"]
    others = ", ".join(output["other_outputs"])
    how = (
        "choose another with --output NAME"
        if model_block.get("format") == "onnx"
        else "choose another by its position: --output 1"
    )
    return (
        f"the model also returns {others}; ftaudit evaluates "
        f"'{output.get('binary_output') or output['name']}' as the class scores ({how})"
    )
