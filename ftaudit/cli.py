"""Command-line interface: parses options, calls the library, prints, and sets the exit code.

Exit codes: 0 ok, 1 a CI gate failed, 2 bad input or usage, 3 internal error (a bug),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM); see ftaudit/exit_codes.py.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ftaudit import __version__, cli_help
from ftaudit.errors import GateFailure, UserError
from ftaudit.exit_codes import exit_codes, on_sigterm, run_argv, set_run_argv
from ftaudit.harden.settings import HARDEN_DEFAULTS as _HARDEN

if TYPE_CHECKING:
    from ftaudit.config import EvalSettings

app = typer.Typer(
    name="ftaudit",
    help="Audit neural networks for analog compute-in-memory hardware under device variation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)

# Shared option aliases, defined once and reused by every command.
ModelArg = Annotated[
    Path, typer.Argument(help="ONNX (.onnx) or TorchScript (torch.jit.save) file.")
]
LayersOpt = Annotated[
    list[str] | None,
    typer.Option("--layers", help="Glob over crossbar weight names to perturb (repeatable)."),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Glob over crossbar weight names to keep exact (repeatable)."),
]
OutputOpt = Annotated[
    str | None, typer.Option("--output", help="ONNX output holding the logits (default: first).")
]
BitsOpt = Annotated[int | None, typer.Option("--bits", help="Device models: weight bits H [4].")]
CellBitsOpt = Annotated[
    int | None, typer.Option("--cell-bits", help="Device models: bits per cell B [2].")
]
ClampOpt = Annotated[
    bool | None,
    typer.Option("--clamp/--no-clamp", help="Device models: keep cell conductances >= 0 [clamp]."),
]
CellNoiseOpt = Annotated[
    str | None,
    typer.Option(
        "--cell-noise",
        help="Device models: one dg per cell (independent) or per weight (shared) [independent].",
    ),
]
HtmlOpt = Annotated[
    Path | None,
    typer.Option("--html", help="Write a self-contained HTML report here (no network references)."),
]
JunitOpt = Annotated[
    Path | None,
    typer.Option("--junit", help="Write JUnit XML here: one test case per gate, for CI."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Config file (default: ./ftaudit.toml or [tool.ftaudit])."),
]
TimeOpt = Annotated[
    str | None,
    typer.Option(
        "--time", help="Drift: times after programming, e.g. 1s,1h,1d,1y (s, min, h, d, w, y)."
    ),
]
DriftNuOpt = Annotated[
    float | None, typer.Option("--drift-nu", help="Drift exponent nu, mean [profile or 0.05].")
]
DriftNuStdOpt = Annotated[
    float | None,
    typer.Option("--drift-nu-std", help="Drift exponent spread across devices [profile or 0.01]."),
]
DriftT0Opt = Annotated[
    str | None, typer.Option("--drift-t0", help="Drift reference time t0 [profile or 20s].")
]
CompensationOpt = Annotated[
    str | None,
    typer.Option(
        "--compensation",
        help="Drift compensation: none, global (alias gdc) or both [both].",
    ),
]
StuckAtOpt = Annotated[
    str | None,
    typer.Option("--stuck-at", help="Fractions of cells stuck low,high, e.g. 0.01,0.005."),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", help="Local worker processes for the Monte Carlo samples [1]."),
]
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="Run samples as Ray tasks: --ray alone starts a local cluster; --ray auto or "
        "--ray HOST:PORT joins one (pip install 'ftaudit[ray]').",
    ),
]
EvalCheckpointOpt = Annotated[
    Path | None,
    typer.Option("--checkpoint-dir", help="Keep counted samples here so --resume can continue."),
]
BatchSamplesOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-samples",
        help="Monte Carlo samples per forward pass (torch vmap, ONNX models) [16 on cuda, else 1].",
    ),
]
EvalResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue the run checkpointed in --checkpoint-dir.")
]
DataOpt = Annotated[
    str | None, typer.Option("--data", help=".npz (x, y), IDX images file, or image folder.")
]
SigmaOpt = Annotated[
    str | None,
    typer.Option("--sigma", help="Device variation: 0.3, a list 0.1,0.2 or a range 0:0.4:0.05."),
]
NoiseOpt = Annotated[
    str | None,
    typer.Option(
        "--noise",
        help="lognormal, gaussian, rram, fefet1, fefet2, a profile (pcm, ...) or DEVICE.toml.",
    ),
]
SamplesOpt = Annotated[
    int | None,
    typer.Option("--samples", help="Monte Carlo samples (noise draws) per sigma [1000]."),
]
KOpt = Annotated[float | None, typer.Option("--k", help="Percentile for KPP, in (0, 100) [1].")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed [0].")]
BatchSizeOpt = Annotated[
    int | None, typer.Option("--batch-size", help="Inference batch size [512].")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu or cuda [cpu].")]
LimitOpt = Annotated[
    int | None,
    typer.Option(
        "--limit", help="Evaluate on only the first N examples of the data (not --samples)."
    ),
]
MeanOpt = Annotated[
    str | None, typer.Option("--mean", help="Normalise: subtract (scalar or per channel).")
]
StdOpt = Annotated[
    str | None, typer.Option("--std", help="Normalise: divide (scalar or per channel).")
]
JsonOpt = Annotated[
    str | None, typer.Option("--json", help="Write the JSON report here ('-' for stdout).")
]
CsvOpt = Annotated[Path | None, typer.Option("--csv", help="Write a CSV table here.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No table on stdout.")]
# the analog forward pipeline (ftaudit.analog): parsed into a ForwardPipeline in one call
DacBitsOpt = Annotated[
    int | None, typer.Option("--dac-bits", help="Analog: input DAC bits per crossbar layer.")
]
AdcBitsOpt = Annotated[
    int | None, typer.Option("--adc-bits", help="Analog: ADC bits per tile output (saturating).")
]
AdcBoundOpt = Annotated[
    float | None,
    typer.Option("--adc-bound", help="Analog: fixed ADC bound, normalised [calibrated]."),
]
ReadNoiseOpt = Annotated[
    float | None,
    typer.Option("--read-noise", help="Analog: output noise per read, normalised units [0]."),
]
TileSizeOpt = Annotated[
    str | None, typer.Option("--tile-size", help="Analog: crossbar ROWSxCOLS, e.g. 256x256.")
]
WeightScalingOpt = Annotated[
    str | None,
    typer.Option("--weight-scaling", help="Analog: max|W| per layer, column or tile [layer]."),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ftaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, metavar="", help="Show the version."
        ),
    ] = False,
) -> None:
    """Audit neural networks for analog compute-in-memory hardware under device variation."""


def _warn(lines: Any) -> None:
    """Print what the user is probably wrong about, one stderr line each (never fatal)."""
    from ftaudit.text import printable

    for line in lines:
        if line:
            print(f"ftaudit: warning: {printable(line)}", file=sys.stderr)


def _warn_workers(workers: int, ray: str | None) -> None:
    from ftaudit.parallel import oversubscription_warning

    _warn([oversubscription_warning(workers, ray)])


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _show_progress(machine_output: bool) -> bool:
    """A progress bar only for people: not for machine output, CI, or a redirected stderr."""
    return not machine_output and not os.environ.get("CI") and sys.stderr.isatty()


@app.command("eval", cls=cli_help.HelpfulCommand, epilog=cli_help.EVAL_EXAMPLES)
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
    tile_size: TileSizeOpt = None,
    weight_scaling: WeightScalingOpt = None,
) -> None:
    """Monte Carlo accuracy (mean and KPP) of MODEL under device variation."""
    from ftaudit.analog.options import pipeline_from_flags
    from ftaudit.config import load_settings, merge, parse_floats, parse_sigmas
    from ftaudit.device_effects import parse_stuck_at, parse_time, parse_times, resolve_effects
    from ftaudit.evaluation import audit, validate_options, validate_scale_out

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
    _warn_workers(settings.workers, ray)
    noise_model = _noise_of(settings)
    pipeline = pipeline_from_flags(
        dac_bits=dac_bits,
        adc_bits=adc_bits,
        adc_bound=adc_bound,
        read_noise=read_noise,
        tile_size=tile_size,
        weight_scaling=weight_scaling,
        base=getattr(noise_model.profile, "analog", None),
    )
    if settings.sigma is None and getattr(noise_model.profile, "sigma", None) is not None:
        settings = replace(settings, sigma=noise_model.profile.sigma)
    if settings.sigma is None:
        raise UserError("no sigma given", hint="pass --sigma 0.3 (or set sigma in ftaudit.toml)")
    effect_options = {
        "times": settings.time,
        "drift_nu": settings.drift_nu,
        "drift_nu_std": settings.drift_nu_std,
        "drift_t0": settings.drift_t0,
        "compensation": settings.compensation,
        "stuck_at": settings.stuck_at,
    }
    resolve_effects(**effect_options, profile=noise_model.profile)  # bad values fail here
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
    _check_outputs(
        _inputs(settings, model),
        {
            "JSON report": json_path,
            "CSV table": csv_path,
            "plot": plot_path,
            "HTML report": html_path,
            "JUnit XML": junit_path,
        },
    )

    machine_output = json_path == "-"
    report = _run_with_progress(
        audit,
        _show_progress(machine_output),
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
        **effect_options,
        workers=settings.workers,
        ray=ray,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        batch_samples=batch_samples,
        fold_batchnorm=fold_batchnorm,
        pipeline=pipeline,
    )
    _warn(report.warnings)

    from ftaudit import report as writers
    from ftaudit.fileio import output_set

    warn_untraced(report.model)
    if json_path == "-":
        sys.stdout.write(writers.report_json(report) + "\n")
    with output_set():  # all of them or none
        if json_path is not None and json_path != "-":
            writers.write_json(report, Path(json_path))
        if csv_path is not None:
            writers.write_csv(report, csv_path)
        if plot_path is not None:
            writers.write_plot(report, plot_path)
        if html_path is not None:
            writers.write_html(report, html_path)
        if junit_path is not None:
            writers.write_junit(report, junit_path)
    if not quiet and not machine_output:
        from rich.console import Console

        Console().print(writers.report_renderable(report))
    failed = report.failed_gates()
    if failed:
        raise GateFailure([gate.message() for gate in failed])


def _analog_pipeline(settings: Any, flags: dict[str, Any]) -> Any:
    """The analog forward pipeline: the flags given over the noise profile's ``[analog]``."""
    from ftaudit.analog.options import pipeline_from_flags

    noise = _noise_of(settings)
    return pipeline_from_flags(**flags, base=getattr(noise.profile, "analog", None))


def warn_untraced(model_block: dict[str, Any]) -> None:
    """One stderr warning per multiply operator whose weight the audit left exact."""
    for op in model_block.get("untraced") or []:
        print(
            f"ftaudit: warning: {op['op']} '{op['node']}' is not perturbed: {op['reason']}",
            file=sys.stderr,
        )


def _run_with_progress(audit_fn: Any, show: bool, *args: Any, **kwargs: Any) -> Any:
    """Call ``audit_fn`` with a rich progress bar on stderr when a person is watching."""
    if not show:
        return audit_fn(*args, **kwargs)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=_stderr_console(),
        transient=True,
    ) as bar:
        task = bar.add_task("Monte Carlo samples", total=kwargs.get("samples"))
        return audit_fn(
            *args,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            **kwargs,
        )


@app.command("inspect", cls=cli_help.HelpfulCommand, epilog=cli_help.INSPECT_EXAMPLES)
@exit_codes
def inspect_command(
    model: ModelArg,
    layers: LayersOpt = None,
    exclude: ExcludeOpt = None,
    output: OutputOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Format, inputs/outputs, crossbar layers, parameter and MAC counts of MODEL."""
    from ftaudit.inspect import inspect_model

    summary = inspect_model(model, layers=layers, exclude=exclude, output=output)
    if as_json:
        import json

        from ftaudit.report.json_report import to_json_compatible

        payload = to_json_compatible(summary.to_dict())  # NaN (a broken weight) -> null
        sys.stdout.write(json.dumps(payload, indent=2, allow_nan=False) + "\n")
        return
    from rich.console import Console

    from ftaudit.report.inspect_table import inspect_renderable

    Console().print(inspect_renderable(summary))


@app.command("harden", cls=cli_help.HelpfulCommand, epilog=cli_help.HARDEN_EXAMPLES)
@exit_codes
def harden_command(
    model: ModelArg,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the hardened model.")
    ],
    data: Annotated[
        str | None,
        typer.Option("--data", help="Training data (.npz, IDX or image folder) [config: data]."),
    ] = None,
    sigma: Annotated[
        float | None, typer.Option("--sigma", help="Target device variation [config: sigma].")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option("--method", help=f"trice, noise, erm or bayesft [{_HARDEN.method}]."),
    ] = None,
    noise: Annotated[
        str | None, typer.Option("--noise", help=f"Evaluation noise model [{_HARDEN.noise}].")
    ] = None,
    bits: BitsOpt = None,
    cell_bits: CellBitsOpt = None,
    clamp: ClampOpt = None,
    cell_noise: CellNoiseOpt = None,
    val_data: Annotated[
        str | None, typer.Option("--val-data", help="Validation data (default: 10% held out).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help=f"Training epochs [{_HARDEN.epochs}].")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help=f"Training batch size [{_HARDEN.batch_size}]."),
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help=f"Adam learning rate [{_HARDEN.lr:g}].")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help=f"Random seed [{_HARDEN.seed}].")
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help=f"cpu or cuda [{_HARDEN.device}].")
    ] = None,
    k: Annotated[
        float | None, typer.Option("--k", help=f"Percentile for KPP [{_HARDEN.k:g}].")
    ] = None,
    trice_start: Annotated[
        float | None,
        typer.Option("--trice-start", help=f"TRICE search start [{_HARDEN.trice_start:g}]."),
    ] = None,
    trice_end: Annotated[
        float | None, typer.Option("--trice-end", help="TRICE search end [2*sigma].")
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold", help=f"RC-Gaussian censoring threshold th [{_HARDEN.threshold:g}]."
        ),
    ] = None,
    warmup: Annotated[
        int | None, typer.Option("--warmup", help=f"TRICE warm-up epochs [{_HARDEN.warmup}].")
    ] = None,
    search_samples: Annotated[
        int | None,
        typer.Option(
            "--search-samples",
            help=f"MC samples per TRICE KPP estimate [{_HARDEN.search_samples}].",
        ),
    ] = None,
    eval_samples: Annotated[
        int | None,
        typer.Option(
            "--eval-samples",
            help=f"MC samples of the before/after report [{_HARDEN.eval_samples}].",
        ),
    ] = None,
    eval_sigmas: Annotated[
        str | None,
        typer.Option(
            "--eval-sigmas",
            help="Sigmas of the before/after report, a list or a range [0, sigma/2, sigma, "
            "3 sigma/2].",
        ),
    ] = None,
    rc_negative: Annotated[
        str | None,
        typer.Option(
            "--rc-negative",
            help="TRICE: censor a negative weight's |w| growth (magnitude) or its rise (value) "
            f"[{_HARDEN.rc_negative}].",
        ),
    ] = None,
    max_dropout: Annotated[
        float | None,
        typer.Option(
            "--max-dropout",
            help=f"BayesFT: upper end of every dropout rate [{_HARDEN.max_dropout:g}].",
        ),
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option("--trials", help=f"BayesFT: Bayesian-optimisation trials [{_HARDEN.trials}]."),
    ] = None,
    epochs_per_trial: Annotated[
        int | None,
        typer.Option(
            "--epochs-per-trial",
            help=f"BayesFT: training epochs per trial [{_HARDEN.epochs_per_trial}].",
        ),
    ] = None,
    objective_samples: Annotated[
        int | None,
        typer.Option(
            "--objective-samples",
            help=f"BayesFT: MC samples of the objective [{_HARDEN.objective_samples}].",
        ),
    ] = None,
    train_draws: Annotated[
        int | None,
        typer.Option(
            "--train-draws",
            help=f"BayesFT: noise draws averaged per training step [{_HARDEN.train_draws}].",
        ),
    ] = None,
    study: Annotated[
        Path | None,
        typer.Option("--study", help="BayesFT: SQLite file holding the search (resumable)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Train on only the first N examples.")
    ] = None,
    report_path: Annotated[
        Path | None, typer.Option("--report", help="Write the JSON report here.")
    ] = None,
    checkpoint_dir: Annotated[
        Path | None, typer.Option("--checkpoint-dir", help="Save a checkpoint every epoch.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No table on stdout.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", help=f"Local worker processes for the Monte Carlo [{_HARDEN.workers}]."
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Run the Monte Carlo as Ray tasks: --ray local starts a cluster; --ray auto or "
            "--ray HOST:PORT joins one (pip install 'ftaudit[ray]').",
        ),
    ] = None,
    config: ConfigOpt = None,
    dac_bits: DacBitsOpt = None,
    adc_bits: AdcBitsOpt = None,
    adc_bound: AdcBoundOpt = None,
    read_noise: ReadNoiseOpt = None,
    tile_size: TileSizeOpt = None,
    weight_scaling: WeightScalingOpt = None,
) -> None:
    """Retrain MODEL to survive device variation; write it in the input's format."""
    from ftaudit.config import merge, parse_sigmas
    from ftaudit.harden.settings import load_harden_settings

    settings = merge(
        load_harden_settings(config, Path.cwd()),
        {
            "data": data,
            "sigma": sigma,
            "method": method,
            "noise": noise,
            "bits": bits,
            "cell_bits": cell_bits,
            "clamp": clamp,
            "cell_noise": cell_noise,
            "val_data": val_data,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "device": device,
            "k": k,
            "trice_start": trice_start,
            "trice_end": trice_end,
            "threshold": threshold,
            "warmup": warmup,
            "search_samples": search_samples,
            "eval_samples": eval_samples,
            "eval_sigmas": parse_sigmas(eval_sigmas) if eval_sigmas is not None else None,
            "rc_negative": rc_negative,
            "max_dropout": max_dropout,
            "trials": trials,
            "epochs_per_trial": epochs_per_trial,
            "objective_samples": objective_samples,
            "train_draws": train_draws,
            "limit": limit,
            "workers": workers,
        },
    )
    if settings.data is None:
        raise UserError(
            "no training data given",
            hint="pass --data FILE (or set data in the [harden] table of ftaudit.toml)",
        )
    if settings.sigma is None:
        raise UserError(
            "no target sigma given",
            hint="pass --sigma 0.3 (or set sigma in the [harden] table of ftaudit.toml)",
        )
    noise_file = settings.noise if settings.noise.lower().endswith(".toml") else None
    inputs = (model, *_external_data((model,)), settings.data, settings.val_data, noise_file)
    _check_outputs(
        (*inputs, settings.config_file),
        {"hardened model": output, "harden report": report_path, "study database": study},
    )
    _warn_workers(settings.workers, ray)
    analog_flags = {
        "dac_bits": dac_bits,
        "adc_bits": adc_bits,
        "adc_bound": adc_bound,
        "read_noise": read_noise,
        "tile_size": tile_size,
        "weight_scaling": weight_scaling,
    }
    pipeline = _analog_pipeline(settings, analog_flags)
    from ftaudit.harden.api import harden

    err = _stderr_console()
    show = not quiet and not os.environ.get("CI")

    def on_epoch(epoch: int, info: dict[str, Any]) -> None:
        if not show:
            return
        if "trial" in info:  # bayesft: one line per trial
            parts = [f"trial {info['index'] + 1}/{settings.trials}", f"loss {info['loss']:.4f}"]
            parts.append("rates " + "/".join(f"{r:.3f}" for r in info["rates"].values()))
            objective = info["objective"]
            parts.append("objective " + ("non-finite" if objective is None else f"{objective:.4f}"))
            err.print(" · ".join(parts), highlight=False)
            return
        parts = [f"epoch {epoch + 1}/{settings.epochs}", f"loss {info['loss']:.4f}"]
        if info.get("sigma_t") is not None:
            parts.append(f"sigma_t {info['sigma_t']:.4g}")
        if "kpps" in info:
            parts.append("val KPP " + "/".join(f"{v:.3f}" for v in info["kpps"]))
        err.print(" · ".join(parts), highlight=False)

    options = {f.name: getattr(settings, f.name) for f in fields(settings)}
    training_data = options.pop("data")
    report = _run_with_stages(
        harden,
        show and _show_progress(False),
        model,
        training_data,
        output=output,
        **options,
        study=study,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        on_epoch=on_epoch,
        ray=ray,
        command=["ftaudit", *run_argv()],
        console=err,
        pipeline=pipeline,
    )
    from ftaudit.text import escape

    for note in report.notes:
        err.print(f"note: {escape(note)}", highlight=False)
    if report_path is not None:
        import json

        from ftaudit.fileio import atomic_write_text
        from ftaudit.report.json_report import to_json_compatible

        atomic_write_text(
            report_path, json.dumps(to_json_compatible(report.to_dict()), indent=2) + "\n"
        )
    if not quiet:
        from rich.console import Console

        from ftaudit.report.harden_table import harden_table

        Console().print(harden_table(report))


@app.command("noise-models", cls=cli_help.HelpfulCommand)
def noise_models_command() -> None:
    """List the registered noise models."""
    from ftaudit.noise import NOISE_MODELS
    from ftaudit.noise.device import load_device_file, shipped_profiles

    for name, cls in sorted(NOISE_MODELS.items()):
        typer.echo(f"{name:12s} {cls.describe()}")
    for name, path in shipped_profiles().items():
        profile = load_device_file(path, shipped=True).profile
        typer.echo(f"{name:12s} Profile: {profile.description}")
    typer.echo(f"{'FILE.toml':12s} A user-defined multi-level cell device (see the README).")


# --- compare and sensitivity: eval's options, several audits on the same draws ---------------

SensitivitySamplesOpt = Annotated[
    int | None,
    typer.Option(
        "--samples", help="Monte Carlo samples per sigma (and time) of each of the runs [200]."
    ),
]


def _command() -> list[str]:
    return ["ftaudit", *run_argv()]


def _shared_settings(config: Path | None, flags: dict[str, Any]) -> EvalSettings:
    """eval's options: ftaudit.toml defaults under the given flags; data and sigma required
    (sigma defaults to the noise profile's, as in eval)."""
    from ftaudit.config import load_settings, merge, parse_floats, parse_sigmas
    from ftaudit.device_effects import parse_stuck_at, parse_time, parse_times

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
        noise = _noise_of(settings)
        if getattr(noise.profile, "sigma", None) is not None:
            settings = replace(settings, sigma=noise.profile.sigma)
    if settings.sigma is None:
        raise UserError("no sigma given", hint="pass --sigma 0.3 (or set sigma in ftaudit.toml)")
    if settings.data is None:
        raise UserError(
            "no evaluation data given", hint="pass --data FILE (or set data in ftaudit.toml)"
        )
    return settings


def _effect_options(settings: EvalSettings) -> dict[str, Any]:
    """The drift and stuck-at options as audit/compare keywords, checked like eval's (exit 2)."""
    from ftaudit.device_effects import resolve_effects

    options = {
        "times": settings.time,
        "drift_nu": settings.drift_nu,
        "drift_nu_std": settings.drift_nu_std,
        "drift_t0": settings.drift_t0,
        "compensation": settings.compensation,
        "stuck_at": settings.stuck_at,
    }
    noise = _noise_of(settings)
    resolve_effects(**options, profile=noise.profile)  # bad values fail here, before any work
    return options


def _noise_of(settings: Any) -> Any:
    """The noise model the settings name, with their device-physics choices."""
    from ftaudit.noise import get_noise_model

    return get_noise_model(
        settings.noise,
        bits=settings.bits,
        cell_bits=settings.cell_bits,
        clamp=settings.clamp,
        cell_noise=settings.cell_noise,
    )


def _audit_options(settings: EvalSettings, ray: str | None) -> dict[str, Any]:
    """The keyword options compare and sensitivity pass through to every audit they run."""
    return {
        "sigmas": settings.sigma,
        "noise": settings.noise,
        "bits": settings.bits,
        "cell_bits": settings.cell_bits,
        "clamp": settings.clamp,
        "cell_noise": settings.cell_noise,
        "samples": settings.samples,
        "k": settings.k,
        "seed": settings.seed,
        "batch_size": settings.batch_size,
        "device": settings.device,
        "layers": settings.layers,
        "exclude": settings.exclude,
        "limit": settings.limit,
        "mean": settings.mean,
        "std": settings.std,
        "output": settings.output,
        "command": _command(),
        "config_file": settings.config_file,
        **_effect_options(settings),
        "workers": settings.workers,
        "ray": ray,
    }


def _config_sets(settings: EvalSettings, key: str) -> bool:
    """Whether the config file the settings came from sets ``key`` itself."""
    from ftaudit.config import read_config

    if settings.config_file is None:
        return False
    table = read_config(Path(settings.config_file))
    return any(raw.replace("-", "_") == key for raw in table)


def _inputs(settings: EvalSettings, *models: Path) -> tuple[Path | str | None, ...]:
    """Every file a run reads: the models, the data, a device file and the config file."""
    noise = settings.noise
    device_file = noise if noise.lower().endswith(".toml") else None
    return (*models, *_external_data(models), settings.data, device_file, settings.config_file)


def _external_data(models: tuple[Path, ...]) -> list[Path]:
    from ftaudit.models.onnx import declared_external_files

    return [file for model in models for file in declared_external_files(Path(model))]


def _check_outputs(
    inputs: tuple[Path | str | None, ...], paths: dict[str, Path | str | None]
) -> None:
    """Validate every output path before any work, against every input and every other
    output; '-' (stdout) needs no check."""
    from ftaudit.fileio import check_outputs

    if paths.get("plot") is not None:
        from ftaudit._optional import require_matplotlib

        require_matplotlib("plots")
    check_outputs(paths, inputs=inputs)


def _run_with_stages(fn: Any, show: bool, *args: Any, console: Any = None, **kwargs: Any) -> Any:
    """Call ``fn`` with a progress bar (with ETA) on stderr whose label follows the current
    stage; lines printed on ``console`` meanwhile appear above the bar."""
    if not show:
        return fn(*args, **kwargs)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from ftaudit.text import escape

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console or _stderr_console(),
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=kwargs.get("samples"))

        def update(stage: str, done: int, total: int) -> None:
            bar.update(task, description=escape(stage), completed=done, total=total)

        return fn(*args, progress=update, **kwargs)


@app.command("compare", cls=cli_help.HelpfulCommand, epilog=cli_help.COMPARE_EXAMPLES)
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
        "tile_size": tile_size,
        "weight_scaling": weight_scaling,
    }

    settings = _shared_settings(
        config,
        {
            "data": data,
            "sigma": sigma,
            "noise": noise,
            "bits": bits,
            "cell_bits": cell_bits,
            "clamp": clamp,
            "cell_noise": cell_noise,
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
    _warn_workers(settings.workers, ray)
    _effect_options(settings)  # bad drift or fault values fail here, before any output check
    pipeline = _analog_pipeline(settings, analog_flags)
    _check_outputs(
        _inputs(settings, baseline, candidate),
        {
            "JSON report": json_path,
            "CSV table": csv_path,
            "HTML report": html_path,
            "JUnit XML": junit_path,
        },
    )
    machine_output = json_path == "-"
    report = _run_with_stages(
        compare,
        _show_progress(machine_output),
        baseline,
        candidate,
        settings.data,
        fail_if_worse=settings.fail_if_worse,
        gate_correction=settings.gate_correction,
        pipeline=pipeline,
        **_audit_options(settings, ray),
    )
    _warn(report.baseline.warnings)
    from ftaudit.fileio import output_set
    from ftaudit.report import compare_report as writers

    warn_untraced(report.baseline.model)
    warn_untraced(report.candidate.model)
    if machine_output:
        sys.stdout.write(writers.payload_json(report.to_dict()))
    with output_set():  # all of them or none
        if json_path is not None and not machine_output:
            writers.write_compare_json(report, Path(json_path))
        if csv_path is not None:
            writers.write_compare_csv(report, csv_path)
        if html_path is not None:
            from ftaudit.report.compare_html import write_compare_html

            write_compare_html(report, html_path)
        if junit_path is not None:
            writers.write_compare_junit(report, junit_path)
    if not quiet and not machine_output:
        from rich.console import Console

        Console().print(writers.compare_table(report))
    failed = report.failed_gates()
    if failed:
        raise GateFailure([gate.message() for gate in failed])


@app.command("sensitivity", cls=cli_help.HelpfulCommand, epilog=cli_help.SENSITIVITY_EXAMPLES)
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
        "tile_size": tile_size,
        "weight_scaling": weight_scaling,
    }

    settings = _shared_settings(
        config,
        {
            "data": data,
            "sigma": sigma,
            "noise": noise,
            "bits": bits,
            "cell_bits": cell_bits,
            "clamp": clamp,
            "cell_noise": cell_noise,
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
    _warn_workers(settings.workers, ray)
    _effect_options(settings)  # bad drift or fault values fail here, before any output check
    pipeline = _analog_pipeline(settings, analog_flags)
    if samples is None and not _config_sets(settings, "samples"):
        from dataclasses import replace

        settings = replace(settings, samples=DEFAULT_SENSITIVITY_SAMPLES)
    _check_outputs(
        _inputs(settings, model),
        {
            "JSON report": json_path,
            "CSV table": csv_path,
            "plot": plot_path,
            "HTML report": html_path,
            "JUnit XML": junit_path,
        },
    )
    machine_output = json_path == "-"
    report = _run_with_stages(
        sensitivity,
        _show_progress(machine_output),
        model,
        settings.data,
        target_kpp=settings.target_kpp,
        pipeline=pipeline,
        **_audit_options(settings, ray),
    )
    _warn(report.warnings)
    from ftaudit.fileio import output_set
    from ftaudit.report import sensitivity_report as writers

    warn_untraced(report.model)
    if machine_output:
        sys.stdout.write(writers.payload_json(report.to_dict()))
    with output_set():  # all of them or none
        if json_path is not None and not machine_output:
            writers.write_sensitivity_json(report, Path(json_path))
        if csv_path is not None:
            writers.write_sensitivity_csv(report, csv_path)
        if plot_path is not None:
            writers.write_sensitivity_plot(report, plot_path)
        if html_path is not None or junit_path is not None:
            from ftaudit.report import sensitivity_html

            if html_path is not None:
                sensitivity_html.write_sensitivity_html(report, html_path)
            if junit_path is not None:
                sensitivity_html.write_sensitivity_junit(report, junit_path)
    if not quiet and not machine_output:
        from rich.console import Console

        Console().print(writers.sensitivity_renderable(report))


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit code (what ``main`` exits with)."""
    set_run_argv(argv)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main else None
    try:
        app(args=optional_ray_value(sys.argv[1:] if argv is None else argv), prog_name="ftaudit")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except Exception:  # a bug, not bad input: keep the traceback, but never exit 1 (a gate)
        traceback.print_exc()
        print(
            "ftaudit: internal error (a bug in ftaudit, not in your input); please report it "
            "with the traceback above",
            file=sys.stderr,
        )
        return 3
    finally:
        set_run_argv(None)
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return 0


def optional_ray_value(argv: list[str]) -> list[str]:
    """``--ray`` with no address (last, or followed by another option or by the model file)
    means a local cluster: typer options cannot have optional values, so it is rewritten."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        bare = i + 1 == len(out) or out[i + 1].startswith("-") or Path(out[i + 1]).is_file()
        if arg == "--ray" and bare:
            out[i] = "--ray=local"
    return out


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
