"""``ftaudit sensitivity``: rank a model's crossbar layers by the KPP they lose."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ftaudit.cli.common import (
    analog_pipeline,
    audit_options,
    check_output_paths,
    config_sets,
    effect_options,
    input_files,
    run_with_stages,
    shared_settings,
    show_progress,
    warn,
    warn_untraced,
    warn_workers,
    write_report_files,
)
from ftaudit.cli.exit_codes import exit_codes
from ftaudit.cli.options import (
    AdcBitsOpt,
    AdcBoundOpt,
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
    HtmlOpt,
    JsonOpt,
    KOpt,
    LimitOpt,
    MeanOpt,
    ModelArg,
    NoiseOpt,
    OutputOpt,
    QuietOpt,
    RayOpt,
    ReadNoiseOpt,
    SeedOpt,
    SensitivitySamplesOpt,
    SigmaOpt,
    StdOpt,
    StuckAtOpt,
    TileSizeOpt,
    TimeOpt,
    WeightReadNoiseOpt,
    WeightScalingOpt,
    WorkersOpt,
)
from ftaudit.options import OutputOptions


@exit_codes
def sensitivity_command(
    model: ModelArg,
    data: DataOpt = None,
    sigma: SigmaOpt = None,
    noise: NoiseOpt = None,
    bits: BitsOpt = None,
    cell_bits: CellBitsOpt = None,
    clamp: ClampOpt = None,
    cell_noise: CellNoiseOpt = None,
    differential: DifferentialOpt = None,
    samples: SensitivitySamplesOpt = None,
    k: KOpt = None,
    seed: SeedOpt = None,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = None,
    layers: Annotated[
        list[str] | None,
        typer.Option("--layers", help="Glob over the layers to rank (others stay exact)."),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", help="Glob over layers always exact, not ranked."),
    ] = None,
    limit: LimitOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    output: OutputOpt = None,
    target_kpp: Annotated[
        float | None,
        typer.Option(
            "--target-kpp",
            help="Find layers to keep digital so KPP >= X at every sigma (and time).",
        ),
    ] = None,
    json_path: JsonOpt = None,
    csv_path: CsvOpt = None,
    plot_path: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG bar chart of the ranking.")
    ] = None,
    html_path: HtmlOpt = None,
    junit_path: Annotated[
        Path | None,
        typer.Option(
            "--junit", help="Write JUnit XML here: the --target-kpp answer per row, for CI."
        ),
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
    dac_bits: DacBitsOpt = None,
    adc_bits: AdcBitsOpt = None,
    adc_bound: AdcBoundOpt = None,
    read_noise: ReadNoiseOpt = None,
    weight_read_noise: WeightReadNoiseOpt = None,
    tile_size: TileSizeOpt = None,
    weight_scaling: WeightScalingOpt = None,
) -> None:
    """Rank MODEL's crossbar layers by the KPP they lose under device variation (and drift,
    stuck-at faults with --time, --stuck-at)."""
    from ftaudit.sensitivity import DEFAULT_SENSITIVITY_SAMPLES, sensitivity

    analog_flags = {
        "dac_bits": dac_bits,
        "adc_bits": adc_bits,
        "adc_bound": adc_bound,
        "read_noise": read_noise,
        "weight_read_noise": weight_read_noise,
        "tile_size": tile_size,
        "weight_scaling": weight_scaling,
    }

    settings = shared_settings(
        config,
        {
            "data": data,
            "sigma": sigma,
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
            "layers": layers,
            "exclude": exclude,
            "limit": limit,
            "mean": mean,
            "std": std,
            "output": output,
            "target_kpp": target_kpp,
            "time": time_spec,
            "drift_nu": drift_nu,
            "drift_nu_std": drift_nu_std,
            "drift_t0": drift_t0,
            "compensation": compensation,
            "stuck_at": stuck_at,
            "workers": workers,
        },
    )
    from ftaudit.evaluation import validate_scale_out

    validate_scale_out(workers=settings.workers, checkpoint_dir=None, resume=False)
    warn_workers(settings.workers, ray)
    effect_options(settings)  # bad drift or fault values fail here, before any output check
    pipeline = analog_pipeline(settings, analog_flags)
    if samples is None and not config_sets(settings, "samples"):
        from dataclasses import replace

        settings = replace(settings, samples=DEFAULT_SENSITIVITY_SAMPLES)
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
    report = run_with_stages(
        sensitivity,
        show_progress(machine_output),
        model,
        settings.data,
        target_kpp=settings.target_kpp,
        pipeline=pipeline,
        **audit_options(settings, ray),
    )
    warn(report.warnings)
    from ftaudit.report import sensitivity_report as writers

    warn_untraced(report.model)
    if machine_output:
        sys.stdout.write(writers.payload_json(report.to_dict()))
    write_report_files("sensitivity", report, outputs.files())
    if not quiet and not machine_output:
        from rich.console import Console

        Console().print(writers.sensitivity_renderable(report))
