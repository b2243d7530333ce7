"""``ftaudit harden``: retrain a model to survive device variation."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from ftaudit.cli.common import (
    check_output_paths,
    external_data,
    noise_of,
    print_table,
    run_with_stages,
    show_progress,
    stderr_console,
    warn_workers,
)
from ftaudit.cli.exit_codes import exit_codes, run_argv
from ftaudit.cli.groups import ANALOG, DEVICE_PHYSICS, AnalogFlags, ParsedFlags, uses_groups
from ftaudit.cli.options import ConfigOpt, HardenRngOpt, ModelArg
from ftaudit.errors import UserError
from ftaudit.harden.settings import HARDEN_DEFAULTS as _HARDEN


@exit_codes
@uses_groups
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
    device_physics: ParsedFlags = DEVICE_PHYSICS,
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
    rng: HardenRngOpt = None,
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
    analog: AnalogFlags = ANALOG,
) -> None:
    """Retrain MODEL to survive device variation; write it in the input's format."""
    from ftaudit.config import merge, parse_sigmas
    from ftaudit.harden.settings import load_harden_settings

    flags = {
        "data": data,
        "sigma": sigma,
        "method": method,
        "noise": noise,
        **device_physics,
        "val_data": val_data,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "rng": rng,
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
    }
    settings = merge(load_harden_settings(config, Path.cwd()), flags)
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
    inputs = (model, *external_data((model,)), settings.data, settings.val_data, noise_file)
    check_output_paths(
        (*inputs, settings.config_file),
        {"hardened model": output, "harden report": report_path, "study database": study},
    )
    warn_workers(settings.workers, ray)
    from ftaudit.config import load_settings

    # the analog keys are shared: ftaudit.toml's top level (eval's settings) holds them
    pipeline = analog.pipeline(noise_of(settings), load_settings(config, Path.cwd()))
    from ftaudit.harden.api import harden

    err = stderr_console()
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
    from ftaudit.harden.methods import foreign_options

    # another method's keys in the config file stay there (a [harden] table may serve several
    # methods); given as flags they reach harden, which refuses them
    for name in foreign_options(settings.method) - {k for k, v in flags.items() if v is not None}:
        options.pop(name, None)
    training_data = options.pop("data")
    report = run_with_stages(
        harden,
        show and show_progress(False),
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
        from ftaudit.report.harden_table import harden_table

        print_table(harden_table(report))
