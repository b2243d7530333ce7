"""``ftaudit compare``: two models on the same draws, with paired differences."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ftaudit.cli.common import (
    analog_pipeline,
    audit_options,
    check_output_paths,
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
    ExcludeOpt,
    HtmlOpt,
    JsonOpt,
    JunitOpt,
    KOpt,
    LayersOpt,
    LimitOpt,
    MeanOpt,
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
from ftaudit.errors import GateFailure
from ftaudit.options import OutputOptions


@exit_codes
def compare_command(
    baseline: Annotated[Path, typer.Argument(help="Reference model (ONNX or TorchScript).")],
    candidate: Annotated[Path, typer.Argument(help="Model compared with it, same crossbars.")],
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
    json_path: JsonOpt = None,
    csv_path: CsvOpt = None,
    html_path: HtmlOpt = None,
    junit_path: JunitOpt = None,
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
    """BASELINE and CANDIDATE on the same draws: mean, KPP and paired differences per sigma
    (and time, compensation with --time)."""
    from ftaudit.compare import compare

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
            "fail_if_worse": fail_if_worse,
            "gate_correction": gate_correction,
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
    check_output_paths(
        input_files(settings, baseline, candidate),
        {
            "JSON report": json_path,
            "CSV table": csv_path,
            "HTML report": html_path,
            "JUnit XML": junit_path,
        },
    )
    outputs = OutputOptions(
        json=json_path, csv=csv_path, html=html_path, junit=junit_path, quiet=quiet
    )
    machine_output = outputs.machine_output
    report = run_with_stages(
        compare,
        show_progress(machine_output),
        baseline,
        candidate,
        settings.data,
        fail_if_worse=settings.fail_if_worse,
        gate_correction=settings.gate_correction,
        pipeline=pipeline,
        **audit_options(settings, ray),
    )
    warn(report.baseline.warnings)
    from ftaudit.report import compare_report as writers

    warn_untraced(report.baseline.model)
    warn_untraced(report.candidate.model)
    if machine_output:
        sys.stdout.write(writers.payload_json(report.to_dict()))
    write_report_files("compare", report, outputs.files())
    if not quiet and not machine_output:
        from rich.console import Console

        Console().print(writers.compare_table(report))
    failed = report.failed_gates()
    if failed:
        raise GateFailure([gate.message() for gate in failed])
