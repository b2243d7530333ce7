"""``ftaudit eval``: Monte Carlo accuracy of one model under device variation."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from ftaudit.cli.common import (
    analog_pipeline,
    check_output_paths,
    input_files,
    noise_of,
    run_with_progress,
    show_progress,
    warn,
    warn_untraced,
    warn_workers,
    write_report_files,
)
from ftaudit.cli.exit_codes import exit_codes, run_argv
from ftaudit.cli.options import (
    AdcBitsOpt,
    AdcBoundOpt,
    BatchSamplesOpt,
    BatchSizeOpt,
    BitsOpt,
    CellBitsOpt,
    CellNoiseOpt,
    ClampOpt,
    CompensationOpt,
    ConfigOpt,
    CsvOpt,
    DacBitsOpt,
    DataOpt,
    DeviceOpt,
    DifferentialOpt,
    DriftNuOpt,
    DriftNuStdOpt,
    DriftT0Opt,
    EvalCheckpointOpt,
    EvalResumeOpt,
    ExcludeOpt,
    HtmlOpt,
    JsonOpt,
    JunitOpt,
    KOpt,
    LayersOpt,
    LimitOpt,
    MeanOpt,
    ModelArg,
    NoiseOpt,
    OutputOpt,
    QuietOpt,
    RayOpt,
    ReadNoiseOpt,
    SamplesOpt,
    SeedOpt,
    SigmaOpt,
    StdOpt,
    StuckAtOpt,
    TileSizeOpt,
    TimeOpt,
    WeightReadNoiseOpt,
    WeightScalingOpt,
    WorkersOpt,
)
from ftaudit.errors import GateFailure, UserError
from ftaudit.options import DeviceEffectOptions, OutputOptions


@exit_codes
def eval_command(
    model: ModelArg,
    data: DataOpt = None,
    sigma: SigmaOpt = None,
    noise: NoiseOpt = None,
    bits: BitsOpt = None,
    cell_bits: CellBitsOpt = None,
    clamp: ClampOpt = None,
    cell_noise: CellNoiseOpt = None,
    differential: DifferentialOpt = None,
    samples: SamplesOpt = None,
    k: KOpt = None,
    seed: SeedOpt = None,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = None,
    layers: LayersOpt = None,
    exclude: ExcludeOpt = None,
    limit: LimitOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    output: OutputOpt = None,
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
    json_path: JsonOpt = None,
    csv_path: CsvOpt = None,
    plot_path: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG plot of mean/KPP vs sigma.")
    ] = None,
    html_path: HtmlOpt = None,
    junit_path: JunitOpt = None,
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
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
    time_spec: TimeOpt = None,
    drift_nu: DriftNuOpt = None,
    drift_nu_std: DriftNuStdOpt = None,
    drift_t0: DriftT0Opt = None,
    compensation: CompensationOpt = None,
    stuck_at: StuckAtOpt = None,
    workers: WorkersOpt = None,
    ray: RayOpt = None,
    checkpoint_dir: EvalCheckpointOpt = None,
    resume: EvalResumeOpt = False,
    batch_samples: BatchSamplesOpt = None,
    dac_bits: DacBitsOpt = None,
    adc_bits: AdcBitsOpt = None,
    adc_bound: AdcBoundOpt = None,
    read_noise: ReadNoiseOpt = None,
    weight_read_noise: WeightReadNoiseOpt = None,
    tile_size: TileSizeOpt = None,
    weight_scaling: WeightScalingOpt = None,
) -> None:
    """Monte Carlo accuracy (mean and KPP) of MODEL under device variation."""
    from ftaudit.config import load_settings, merge, parse_floats, parse_sigmas
    from ftaudit.evaluation import audit, validate_options, validate_scale_out
    from ftaudit.units import parse_stuck_at, parse_time, parse_times

    settings = merge(
        load_settings(config, Path.cwd()),
        {
            "data": data,
            "sigma": parse_sigmas(sigma) if sigma is not None else None,
            "noise": noise,
            "bits": bits,
            "cell_bits": cell_bits,
            "clamp": clamp,
            "cell_noise": cell_noise,
            "differential": differential,
            "samples": samples,
            "k": k,
            "seed": seed,
            "batch_size": batch_size,
            "device": device,
            "layers": tuple(layers or ()),
            "exclude": tuple(exclude or ()),
            "limit": limit,
            "mean": parse_floats(mean, "--mean") if mean is not None else None,
            "std": parse_floats(std, "--std") if std is not None else None,
            "output": output,
            "target_ci": target_ci,
            "test_set_error": test_set_error,
            "fail_under_kpp": fail_under_kpp,
            "fail_under_mean": fail_under_mean,
            "time": parse_times(time_spec) if time_spec is not None else None,
            "drift_nu": drift_nu,
            "drift_nu_std": drift_nu_std,
            "drift_t0": parse_time(drift_t0) if drift_t0 is not None else None,
            "compensation": compensation,
            "stuck_at": parse_stuck_at(stuck_at) if stuck_at is not None else None,
            "workers": workers,
        },
    )
    validate_scale_out(workers=settings.workers, checkpoint_dir=checkpoint_dir, resume=resume)
    warn_workers(settings.workers, ray)
    noise_model = noise_of(settings)
    analog_flags = {
        "dac_bits": dac_bits,
        "adc_bits": adc_bits,
        "adc_bound": adc_bound,
        "read_noise": read_noise,
        "weight_read_noise": weight_read_noise,
        "tile_size": tile_size,
        "weight_scaling": weight_scaling,
    }
    pipeline = analog_pipeline(settings, analog_flags)
    if settings.sigma is None and getattr(noise_model.profile, "sigma", None) is not None:
        settings = replace(settings, sigma=noise_model.profile.sigma)
    if settings.sigma is None:
        raise UserError("no sigma given", hint="pass --sigma 0.3 (or set sigma in ftaudit.toml)")
    effect_options = DeviceEffectOptions.from_settings(settings)
    effect_options.resolve(noise_model.profile)  # bad values fail here
    if settings.data is None:
        raise UserError(
            "no evaluation data given", hint="pass --data FILE (or set data in ftaudit.toml)"
        )
    validate_options(
        sigmas=settings.sigma,
        samples=settings.samples,
        k=settings.k,
        seed=settings.seed,
        batch_size=settings.batch_size,
        device=settings.device,
        target_ci=settings.target_ci,
        fail_under_kpp=settings.fail_under_kpp,
        fail_under_mean=settings.fail_under_mean,
    )
    check_output_paths(
        input_files(settings, model),
        {
            "JSON report": json_path,
            "CSV table": csv_path,
            "plot": plot_path,
            "HTML report": html_path,
            "JUnit XML": junit_path,
        },
    )

    outputs = OutputOptions(
        json=json_path, csv=csv_path, plot=plot_path, html=html_path, junit=junit_path, quiet=quiet
    )
    machine_output = outputs.machine_output
    report = run_with_progress(
        audit,
        show_progress(machine_output),
        model,
        settings.data,
        sigmas=settings.sigma,
        noise=noise_model,
        samples=settings.samples,
        k=settings.k,
        seed=settings.seed,
        batch_size=settings.batch_size,
        device=settings.device,
        layers=settings.layers,
        exclude=settings.exclude,
        limit=settings.limit,
        mean=settings.mean,
        std=settings.std,
        output=settings.output,
        target_ci=settings.target_ci,
        test_set_error=settings.test_set_error,
        fail_under_kpp=settings.fail_under_kpp,
        fail_under_mean=settings.fail_under_mean,
        config_file=settings.config_file,
        command=["ftaudit", *run_argv()],
        **effect_options.as_kwargs(),
        workers=settings.workers,
        ray=ray,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        batch_samples=batch_samples,
        fold_batchnorm=fold_batchnorm,
        pipeline=pipeline,
    )
    warn(report.warnings)

    from ftaudit import report as writers

    warn_untraced(report.model)
    if json_path == "-":
        sys.stdout.write(writers.report_json(report) + "\n")
    write_report_files("audit", report, outputs.files())
    if not quiet and not machine_output:
        from rich.console import Console

        Console().print(writers.report_renderable(report))
    failed = report.failed_gates()
    if failed:
        raise GateFailure([gate.message() for gate in failed])
