"""``ftaudit.harden``: retrain a model to survive device variation and export it.

The result is written in the input's format (ONNX: only initializer values change) and both
models are evaluated with the same Monte Carlo draws for a paired before/after report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from ftaudit import __version__
from ftaudit.analog.options import ForwardPipeline
from ftaudit.data import Dataset, load_dataset, validate_labels
from ftaudit.draws import check_rng
from ftaudit.errors import UserError
from ftaudit.eval_checkpoint import check_checkpoint_dir
from ftaudit.evaluation import audit
from ftaudit.execution import execution_session
from ftaudit.fileio import check_output_path
from ftaudit.harden.analog_trainable import export_graph
from ftaudit.harden.checkpoint import load_checkpoint
from ftaudit.harden.methods import (
    EpochCallback,
    HardenContext,
    StageProgress,
    check_method_options,
    get_method,
    method_option_names,
)
from ftaudit.harden.parallel_eval import open_workers
from ftaudit.harden.settings import HARDEN_DEFAULTS as DEFAULTS
from ftaudit.harden.trainable import export_hardened
from ftaudit.harden.training import TrainingData
from ftaudit.models import load_model
from ftaudit.models.fingerprint import model_sha256
from ftaudit.models.packed_inputs import unpacked
from ftaudit.noise import get_noise_model
from ftaudit.results import AuditReport
from ftaudit.results.harden import CLEAN_DROP_NOTICE, HardenReport

VAL_FRACTION = 0.1
VAL_MAX = 5000
VAL_KEY = 1_000_004


def _split_validation(x: np.ndarray, y: np.ndarray, seed: int):
    """A fixed, seeded hold-out of the training data when no --val-data is given."""
    n_val = max(1, min(VAL_MAX, round(len(y) * VAL_FRACTION)))
    if len(y) - n_val < 1:
        raise UserError(
            "the training data is too small to hold out validation data", hint="pass --val-data"
        )
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(VAL_KEY,)))
    order = rng.permutation(len(y))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return TrainingData(x[train], y[train]), TrainingData(x[val], y[val])


def default_eval_sigmas(sigma: float) -> list[float]:
    """The report's grid around the target sigma."""
    return sorted({0.0, round(sigma / 2, 6), round(sigma, 6), round(sigma * 1.5, 6)})


def validate_harden_options(
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    sigma: float,
    eval_samples: int,
    k: float,
) -> None:
    """Reject impossible training options before anything is loaded."""
    if epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if not (lr > 0 and math.isfinite(lr)):
        raise UserError(f"--lr must be a positive number, got {lr:g}")
    if not (math.isfinite(sigma) and sigma >= 0):
        raise UserError(f"sigma must be a finite number >= 0, got {sigma:g}")
    if eval_samples < 1:
        raise UserError(f"--eval-samples must be at least 1, got {eval_samples}")
    if not (0 < k < 100):
        raise UserError(f"k must lie strictly between 0 and 100, got {k:g}")


def validate_eval_sigmas(eval_sigmas: Sequence[float] | None) -> None:
    """The report's grid is checked before training, not after the model is written."""
    if eval_sigmas is None:
        return
    if len(eval_sigmas) == 0:
        raise UserError("--eval-sigmas is empty", hint="e.g. --eval-sigmas 0,0.2,0.4")
    for value in eval_sigmas:
        if not (math.isfinite(value) and value >= 0):
            raise UserError(
                f"--eval-sigmas values must be finite numbers >= 0, got {value:g}",
                hint="e.g. --eval-sigmas 0,0.2,0.4",
            )


def validate_harden_workers(*, workers: int, ray: str | None) -> None:
    """Reject bad --workers/--ray before anything is loaded or trained."""
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}", hint="e.g. --workers 2")
    if ray is not None:
        from ftaudit.parallel import check_ray_address, require_ray

        check_ray_address(ray)
        require_ray()


def _training_data(model, dataset: Dataset) -> TrainingData:
    x = model.input_array(dataset)
    dtype = x.dtype if model.integer_input else np.float32
    return TrainingData(np.ascontiguousarray(x, dtype=dtype), dataset.y.astype(np.int64))


def harden(
    model: Path | str,
    data: Path | str,
    *,
    output: Path | str,
    method: str = DEFAULTS.method,
    sigma: float,
    noise: str = DEFAULTS.noise,
    bits: int | None = DEFAULTS.bits,
    cell_bits: int | None = DEFAULTS.cell_bits,
    clamp: bool = DEFAULTS.clamp,
    cell_noise: str = DEFAULTS.cell_noise,
    differential: bool | None = DEFAULTS.differential,
    rc_negative: str = DEFAULTS.rc_negative,
    val_data: Path | str | None = DEFAULTS.val_data,
    epochs: int = DEFAULTS.epochs,
    batch_size: int = DEFAULTS.batch_size,
    lr: float = DEFAULTS.lr,
    seed: int = DEFAULTS.seed,
    rng: str = DEFAULTS.rng,
    device: str = DEFAULTS.device,
    k: float = DEFAULTS.k,
    trice_start: float = DEFAULTS.trice_start,
    trice_end: float | None = DEFAULTS.trice_end,
    threshold: float = DEFAULTS.threshold,
    warmup: int = DEFAULTS.warmup,
    search_samples: int = DEFAULTS.search_samples,
    eval_samples: int = DEFAULTS.eval_samples,
    eval_sigmas: Sequence[float] | None = DEFAULTS.eval_sigmas,
    max_dropout: float = DEFAULTS.max_dropout,
    trials: int = DEFAULTS.trials,
    epochs_per_trial: int = DEFAULTS.epochs_per_trial,
    objective_samples: int = DEFAULTS.objective_samples,
    train_draws: int = DEFAULTS.train_draws,
    study: Path | str | None = None,
    limit: int | None = DEFAULTS.limit,
    checkpoint_dir: Path | str | None = None,
    resume: bool = False,
    on_epoch: EpochCallback | None = None,
    progress: StageProgress | None = None,
    command: Sequence[str] | None = None,
    workers: int = DEFAULTS.workers,
    ray: str | None = None,
    config_file: str | None = None,
    pipeline: ForwardPipeline | None = None,
) -> HardenReport:
    """Train ``model`` with ``method`` against ``noise`` at ``sigma`` and write it to ``output``.

    ``workers`` > 1 runs the Monte Carlo evaluations (TRICE's validation KPPs, the before/after
    report) on that many local processes, ``ray`` on a Ray cluster ('local' starts one, 'auto' or
    host:port joins one); the trained model and every number are the same either way.
    ``config_file`` is recorded in the report's settings (the CLI passes the file it read).
    ``progress(stage, done, total)`` follows the training steps of each epoch and the Monte
    Carlo samples of the before/after report.
    ``pipeline`` (ftaudit.analog) trains, validates and audits with the analog
    forward pass: hardware-aware training, e.g. TRICE with 4-bit activations (``dac_bits=4``).
    ``rng`` (fast or ziggurat, ``ftaudit.draws.RNGS``) draws the validation Monte Carlo (TRICE's
    KPPs, BayesFT's objective) and the before/after audits; training noise is numpy's ziggurat
    under both. The defaults are those of ``HardenSettings`` (ftaudit/harden/settings.py)."""
    started = time.perf_counter()
    validate_harden_options(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        sigma=sigma,
        eval_samples=eval_samples,
        k=k,
    )
    validate_harden_workers(workers=workers, ray=ray)
    check_rng(rng)
    validate_eval_sigmas(eval_sigmas)
    method_impl = get_method(method)
    keywords = locals()  # harden's keywords name every method's options
    method_options = check_method_options(
        method_impl,
        {name: keywords[name] for name in method_option_names()},
        sigma=sigma,
        protect=(Path(model), Path(data), Path(output)),
    )
    model_path, output_path = Path(model), Path(output)
    if not model_path.exists():
        raise UserError(f"model file {model_path} does not exist", hint="check the path")
    check_output_path(output_path, what="hardened model", protect=(model_path,))
    if output_path.resolve() == model_path.resolve():
        raise UserError(
            "refusing to write the hardened model over the input model", hint="choose another -o"
        )
    if resume and checkpoint_dir is None:
        raise UserError(
            "--resume needs --checkpoint-dir", hint="point it at the interrupted run's folder"
        )
    if checkpoint_dir is not None and Path(checkpoint_dir).exists():
        check_checkpoint_dir(checkpoint_dir)  # a file in the way fails before any work
    noise_model = get_noise_model(
        noise,
        bits=bits,
        cell_bits=cell_bits,
        clamp=clamp,
        cell_noise=cell_noise,
        differential=differential,
    )
    if pipeline is None:
        pipeline = getattr(noise_model.profile, "analog", None)
    if pipeline is not None and not pipeline.active:
        pipeline = None
    source = load_model(model_path)
    layers = source.select_layers()
    train_set = load_dataset(Path(data), limit=limit)
    train = _training_data(source, train_set)
    notes = []
    if source.metadata.get("other_outputs"):  # trained on the first; never silently
        notes.append(
            f"the model also returns {', '.join(source.metadata['other_outputs'])}; harden "
            f"trains '{source.output.name}' (its first output) as the class scores; re-export "
            "the model with the class scores first to train another"
        )
    if val_data is not None:
        val_set = load_dataset(Path(val_data))
        val = _training_data(source, val_set)
        validation = {"source": "val-data", "path": str(val_data), "n": len(val)}
    else:
        train, val = _split_validation(train.x, train.y, seed)
        validation = {
            "source": "held out of the training data",
            "fraction": VAL_FRACTION,
            "n": len(val),
        }
        notes.append(
            f"no --val-data: {len(val)} training samples (seeded) were held out for validation"
        )
    # the data must fit before any epoch runs: one clean forward pass on a few samples
    from ftaudit.harden.trainable import make_trainable
    from ftaudit.harden.training import TrainableRunner
    from ftaudit.models.torchscript import resolve_torch_device

    probe_model = make_trainable(source)
    probe_model.module.to(resolve_torch_device(device))  # a clear error when CUDA is missing
    probe = TrainableRunner(probe_model, device)
    probe.bind_data(train.x[:8], train.y[:8], batch_size=8)
    try:
        logits = probe.checked_logits(train.x[:8].shape)
    except UserError as exc:
        batch = source.input.shape[0] if source.input.shape else None
        if not batch:
            raise
        raise UserError(  # e.g. a Reshape to (batch, -1) written with the batch size in it
            f"{source.path} was exported for batches of exactly {batch} and does not run on "
            f"a training mini-batch ({exc.message})",
            hint="export with a dynamic batch axis (torch.onnx.export: dynamic_axes or "
            "dynamic_shapes)",
        ) from exc
    validate_labels(train.y, logits.shape[1])
    validate_labels(val.y, logits.shape[1])

    fingerprint = {
        "model_sha256": model_sha256(source),
        "data_sha256": train_set.source["sha256"],
        "method": method,
        "noise": noise_model.parameters(),
        "sigma": sigma,
        "seed": seed,
        "rng": rng,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "k": k,
        "options": method_impl.fingerprint(method_options),
        "n_train": len(train),
        "n_val": len(val),
        **({"analog": pipeline.to_dict()} if pipeline is not None else {}),
    }
    resume_state = None
    if checkpoint_dir is not None:  # created when missing, as eval's is
        checkpoint_dir = check_checkpoint_dir(checkpoint_dir)
    if checkpoint_dir is not None and resume:
        resume_state = load_checkpoint(Path(checkpoint_dir), fingerprint)
        if resume_state is None:
            notes.append("--resume: no checkpoint found, started from the beginning")
    ctx = HardenContext(
        source=source,
        layers=layers,
        train=train,
        val=val,
        noise=noise_model,
        sigma=sigma,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        k=k,
        device=device,
        options=method_options,
        fingerprint=fingerprint,
        checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir),
        resume_state=resume_state,
        on_epoch=on_epoch,
        progress=progress,
        rng=rng,
    )
    if pipeline is not None:
        from ftaudit.analog.torch_pipeline import AnalogTraining

        ctx.analog = AnalogTraining(source, layers, train.x, pipeline, seed=seed)
    elif method_impl.edits_graph:  # BayesFT's dropout: torch.fx edits an onnx2torch module
        ctx.graph = export_graph(source, train.x)
    # one pool of workers (or Ray connection) for the whole command: training's evaluations
    # and the before/after audits run on the same processes, started at the first evaluation
    session = ExitStack()
    try:
        session.enter_context(execution_session(workers, ray))
        ctx.workers = open_workers(
            source,
            val,
            layers=layers,
            noise=noise_model,
            workers=workers,
            ray=ray,
            device=device,
            analog=ctx.analog,
            through_onnx=ctx.graph is not None,
        )
        result = method_impl.run(ctx)
        notes.extend(result.notes)
        metadata = {
            "ftaudit_version": __version__,
            "method": method,
            "noise": noise_model.parameters(),
            "sigma": sigma,
            "seed": seed,
            "epochs": epochs,
            **{k_: v for k_, v in result.details.items() if k_ != "search"},
        }
        export_hardened(result.trainable, output_path, metadata=metadata)

        grid = list(eval_sigmas) if eval_sigmas is not None else default_eval_sigmas(sigma)
        common = dict(
            sigmas=grid,
            noise=noise_model,
            samples=eval_samples,
            k=k,
            seed=seed,
            rng=rng,
            device=device,
            workers=workers,
            ray=ray,
            pipeline=pipeline,
        )
        eval_data = Dataset(
            val.x,
            val.y,
            {**val_set.source}
            if val_data is not None
            else {
                "path": f"{data} (held-out validation part)",
                "sha256": train_set.source["sha256"],
                "kind": train_set.source["kind"],
                "n": len(val),
                "limit": limit,
            },
            x_raw=val.x if source.integer_input else None,
            inputs=unpacked(source.data_inputs, val.x),
        )
        before = audit(
            source, eval_data, progress=_stage(progress, "evaluating the input model"), **common
        )
        after = audit(
            load_model(output_path),
            eval_data,
            progress=_stage(progress, "evaluating the hardened model"),
            **common,
        )
        notes.extend(collapse_warnings(before, after) or clean_drop_notes(before, after))
    finally:
        if ctx.workers is not None:
            ctx.workers.close()
        session.close()
    return HardenReport(
        ftaudit_version=__version__,
        command=list(command or []),
        method=method,
        input_model=str(model_path),
        output_model=str(output_path),
        settings={
            **fingerprint,
            "device": device,
            "eval_sigmas": grid,
            "eval_samples": eval_samples,
            "workers": workers,
            "ray": ray,
            "config_file": config_file,
        },
        validation=validation,
        details=result.details,
        history=result.history,
        before=before,
        after=after,
        elapsed_s=time.perf_counter() - started,
        notes=notes,
    )


def _stage(progress: StageProgress | None, stage: str) -> Any:
    """``progress`` bound to one stage, as audit's (done, total) callback."""
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


#: a hardened model this far below the input's clean accuracy is reported as collapsed
COLLAPSE_DROP = 0.2


def clean_drop_notes(before: AuditReport, after: AuditReport) -> list[str]:
    """A note when hardening cost more than a few points of clean accuracy (not a collapse):
    the robustness may not be worth it, which the before/after rows show."""
    drop = before.clean_accuracy - after.clean_accuracy
    if drop <= CLEAN_DROP_NOTICE:
        return []
    return [
        f"the hardened model's clean accuracy is {100 * drop:.1f} points lower "
        f"({100 * before.clean_accuracy:.1f}% -> {100 * after.clean_accuracy:.1f}%): check the "
        "rows below that the robustness is worth it, or try fewer --epochs or a smaller --sigma"
    ]


def collapse_warnings(before: AuditReport, after: AuditReport) -> list[str]:
    """A note when training wrecked the clean accuracy (e.g. noise too strong to learn under)."""
    drop = before.clean_accuracy - after.clean_accuracy
    if drop < COLLAPSE_DROP:
        return []
    return [
        f"warning: the hardened model's clean accuracy is {100 * after.clean_accuracy:.1f}%, "
        f"{100 * drop:.1f} points below the input's ({100 * before.clean_accuracy:.1f}%): "
        "training did not cope with the noise; try a smaller --sigma or --lr"
    ]
