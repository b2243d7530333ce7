"""``ftaudit compare``: two models on the same draws, with paired differences."""

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
from ftaudit.cli.options import ConfigOpt
from ftaudit.errors import GateFailure
from ftaudit.options import OutputOptions

_OUTPUTS = groups.OUTPUTS.without("plot_path")


@exit_codes
@groups.uses_groups
def compare_command(
    baseline: Annotated[Path, typer.Argument(help="Reference model (ONNX or TorchScript).")],
    candidate: Annotated[Path, typer.Argument(help="Model compared with it, same crossbars.")],
    audit_flags: groups.ParsedFlags = groups.AUDIT,
    fail_if_worse: Annotated[
        float | None,
        typer.Option(
            "--fail-if-worse",
            help="Exit 1 if the candidate's mean is below the baseline's by more than TOL "
            "with 95% confidence, at any sigma (and time).",
        ),
    ] = None,
    gate_correction: Annotated[
        str | None,
        typer.Option(
            "--gate-correction",
            help="How --fail-if-worse shares its 2.5% error over the rows: holm (family-wise) "
            "or per-row [holm].",
        ),
    ] = None,
    outputs: OutputOptions = _OUTPUTS,
    config: ConfigOpt = None,
    effects: groups.ParsedFlags = groups.EFFECTS,
    scale_out: groups.ParsedFlags = groups.SCALE_OUT,
    analog: groups.AnalogFlags = groups.ANALOG,
) -> None:
    """BASELINE and CANDIDATE on the same draws: mean, KPP and paired differences per sigma
    (and time, compensation with --time)."""
    from ftaudit.compare import compare

    gates = {"fail_if_worse": fail_if_worse, "gate_correction": gate_correction}
    inputs = audit_inputs(config, audit_flags, gates, effects, analog=analog, scale_out=scale_out)
    settings = inputs.settings
    check_output_paths(input_files(settings, baseline, candidate), outputs.labelled())
    report = run_with_stages(
        compare,
        show_progress(outputs.machine_output),
        baseline,
        candidate,
        settings.data,
        fail_if_worse=settings.fail_if_worse,
        gate_correction=settings.gate_correction,
        **inputs.library_kwargs(),
    )
    warn(report.baseline.warnings)
    from ftaudit.report import compare_report as writers

    warn_untraced(report.baseline.model)
    warn_untraced(report.candidate.model)
    if outputs.machine_output:
        sys.stdout.write(writers.payload_json(report.to_dict()))
    write_report_files("compare", report, outputs.files())
    if not outputs.quiet and not outputs.machine_output:
        print_table(writers.compare_table(report))
    failed = report.failed_gates()
    if failed:
        raise GateFailure([gate.message() for gate in failed])
