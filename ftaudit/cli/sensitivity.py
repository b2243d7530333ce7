"""``ftaudit sensitivity``: rank a model's crossbar layers by the KPP they lose."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ftaudit.cli import groups
from ftaudit.cli.common import (
    audit_inputs,
    check_output_paths,
    input_files,
    print_table,
    run_with_stages,
    show_progress,
    warn,
    warn_untraced,
    write_report_files,
)
from ftaudit.cli.exit_codes import exit_codes
from ftaudit.cli.options import ConfigOpt, ModelArg, SensitivitySamplesOpt
from ftaudit.options import OutputOptions

#: sensitivity's own help for the shared flags it reads differently
_AUDIT = groups.AUDIT.with_help(
    samples=SensitivitySamplesOpt,
    layers=Annotated[
        list[str] | None,
        typer.Option("--layers", help="Glob over the layers to rank (others stay exact)."),
    ],
    exclude=Annotated[
        list[str] | None,
        typer.Option("--exclude", help="Glob over layers always exact, not ranked."),
    ],
)
_OUTPUTS = groups.OUTPUTS.with_help(
    plot_path=Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG bar chart of the ranking.")
    ],
    junit_path=Annotated[
        Path | None,
        typer.Option(
            "--junit", help="Write JUnit XML here: the --target-kpp answer per row, for CI."
        ),
    ],
)


@exit_codes
@groups.uses_groups
def sensitivity_command(
    model: ModelArg,
    audit_flags: groups.ParsedFlags = _AUDIT,
    target_kpp: Annotated[
        float | None,
        typer.Option(
            "--target-kpp",
            help="Find layers to keep digital so KPP >= X at every sigma (and time).",
        ),
    ] = None,
    outputs: OutputOptions = _OUTPUTS,
    config: ConfigOpt = None,
    effects: groups.ParsedFlags = groups.EFFECTS,
    scale_out: groups.ParsedFlags = groups.SCALE_OUT,
    analog: groups.AnalogFlags = groups.ANALOG,
) -> None:
    """Rank MODEL's crossbar layers by the KPP they lose under device variation (and drift,
    stuck-at faults with --time, --stuck-at)."""
    from ftaudit.sensitivity import DEFAULT_SENSITIVITY_SAMPLES, sensitivity

    inputs = audit_inputs(
        config,
        audit_flags,
        {"target_kpp": target_kpp},
        effects,
        analog=analog,
        scale_out=scale_out,
        default_samples=DEFAULT_SENSITIVITY_SAMPLES,
    )
    settings = inputs.settings
    check_output_paths(input_files(settings, model), outputs.labelled())
    report = run_with_stages(
        sensitivity,
        show_progress(outputs.machine_output),
        model,
        settings.data,
        target_kpp=settings.target_kpp,
        **inputs.library_kwargs(),
    )
    warn(report.warnings)
    from ftaudit.report import sensitivity_report as writers

    warn_untraced(report.model)
    if outputs.machine_output:
        sys.stdout.write(writers.payload_json(report.to_dict()))
    write_report_files("sensitivity", report, outputs.files())
    if not outputs.quiet and not outputs.machine_output:
        print_table(writers.sensitivity_renderable(report))
