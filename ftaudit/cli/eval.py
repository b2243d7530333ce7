"""``ftaudit eval``: Monte Carlo accuracy of one model under device variation."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ftaudit.cli import groups
from ftaudit.cli.common import (
    audit_inputs,
    check_output_paths,
    input_files,
    print_table,
    run_with_progress,
    show_progress,
    warn,
    warn_untraced,
    write_report_files,
)
from ftaudit.cli.exit_codes import exit_codes
from ftaudit.cli.options import ConfigOpt, ModelArg
from ftaudit.errors import GateFailure
from ftaudit.options import OutputOptions


@exit_codes
@groups.uses_groups
def eval_command(
    model: ModelArg,
    audit_flags: groups.ParsedFlags = groups.AUDIT,
    test_set_error: Annotated[
        bool | None,
        typer.Option(
            "--test-set-error/--no-test-set-error",
            help="Intervals also cover the test set's sampling error (binomial bound) "
            "[monte-carlo only].",
        ),
    ] = None,
    target_ci: Annotated[
        float | None,
        typer.Option("--target-ci", help="Stop a sigma once its KPP 95% interval is this narrow."),
    ] = None,
    outputs: OutputOptions = groups.OUTPUTS,
    fold_batchnorm: Annotated[
        bool,
        typer.Option(
            "--fold-batchnorm/--no-fold-batchnorm",
            help="Perturb convolution weights with the following BatchNorm folded in, as a "
            "chip stores them [on].",
        ),
    ] = True,
    fail_under_kpp: Annotated[
        float | None, typer.Option("--fail-under-kpp", help="Exit 1 if KPP < X at any sigma.")
    ] = None,
    fail_under_mean: Annotated[
        float | None, typer.Option("--fail-under-mean", help="Exit 1 if mean < X at any sigma.")
    ] = None,
    config: ConfigOpt = None,
    effects: groups.ParsedFlags = groups.EFFECTS,
    scale_out: groups.ParsedFlags = groups.SCALE_OUT,
    checkpoints: groups.ParsedFlags = groups.CHECKPOINTS,
    analog: groups.AnalogFlags = groups.ANALOG,
) -> None:
    """Monte Carlo accuracy (mean and KPP) of MODEL under device variation."""
    from ftaudit.evaluation import audit

    gates = {
        "target_ci": target_ci,
        "test_set_error": test_set_error,
        "fail_under_kpp": fail_under_kpp,
        "fail_under_mean": fail_under_mean,
    }
    inputs = audit_inputs(
        config,
        audit_flags,
        gates,
        effects,
        analog=analog,
        scale_out=scale_out,
        checkpoints={key: checkpoints[key] for key in ("checkpoint_dir", "resume")},
        gates=("target_ci", "fail_under_kpp", "fail_under_mean"),
    )
    settings = inputs.settings
    check_output_paths(input_files(settings, model), outputs.labelled())
    report = run_with_progress(
        audit,
        show_progress(outputs.machine_output),
        model,
        settings.data,
        **inputs.library_kwargs(),
        **{gate: getattr(settings, gate) for gate in gates},
        checkpoint_dir=checkpoints["checkpoint_dir"],
        resume=checkpoints["resume"],
        batch_samples=checkpoints["batch_samples"],
        fold_batchnorm=fold_batchnorm,
    )
    warn(report.warnings)

    from ftaudit import report as writers

    warn_untraced(report.model)
    if outputs.machine_output:
        sys.stdout.write(writers.report_json(report) + "\n")
    write_report_files("audit", report, outputs.files())
    if not outputs.quiet and not outputs.machine_output:
        print_table(writers.report_renderable(report))
    failed = report.failed_gates()
    if failed:
        raise GateFailure([gate.message() for gate in failed])
