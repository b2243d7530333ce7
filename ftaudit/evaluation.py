"""``ftaudit.audit``: Monte Carlo accuracy of a model under device variation, with provenance."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ftaudit import __version__
from ftaudit.analog.options import ForwardPipeline, resolve_pipeline
from ftaudit.batched import BatchedTorchRunner, build_runner, resolve_batch_samples
from ftaudit.coverage import sequential_summary, with_test_set_error
from ftaudit.data import Dataset, load_dataset, validate_labels
from ftaudit.draws import check_rng
from ftaudit.errors import UserError
from ftaudit.eval_checkpoint import CheckpointWriter, check_checkpoint_dir, load_progress
from ftaudit.execution import backend_for, release
from ftaudit.models import AuditModel, CrossbarLayer, load_model
from ftaudit.models.fingerprint import model_bytes, model_sha256
from ftaudit.montecarlo import (
    ChunkEvaluator,
    Crossbar,
    Progress,
    ProgressCallback,
    run_monte_carlo,
)
from ftaudit.noise import NoiseModel, get_noise_model
from ftaudit.noise.effects import Condition
from ftaudit.options import (
    CheckedOptions,
    DeviceEffectOptions,
    MonteCarloOptions,
    PerturbOptions,
    ScaleOutOptions,
)
from ftaudit.parallel import WorkerSpec, threads_per_worker
from ftaudit.results import AuditReport, GateResult, Interval, LayerInfo, SigmaResult
from ftaudit.stats import summarize

DEVICES = ("cpu", "cuda")


#: the most Monte Carlo samples per sigma a run accepts (the counts stay in memory)
MAX_SAMPLES = 100_000_000


def ensure_checked(checked: CheckedOptions | None, **options: Any) -> CheckedOptions:
    """``checked`` when a ``validate_options`` call accepted these very ``options``, else
    their check now: the options of one command are checked once, however many audits run."""
    if checked is not None and checked == CheckedOptions.of(**options):
        return checked
    return validate_options(**options)


def validate_options(
    *,
    sigmas: Sequence[float],
    samples: int,
    k: float,
    seed: int,
    batch_size: int,
    device: str,
    target_ci: float | None = None,
    fail_under_kpp: float | None = None,
    fail_under_mean: float | None = None,
    rng: str = MonteCarloOptions.rng,
) -> CheckedOptions:
    """Reject impossible options before any file is read or any sample runs; what passed."""
    check_rng(rng)
    if not sigmas:
        raise UserError(
            "no sigma given", hint="pass --sigma 0.3, a list 0.1,0.2 or a range 0:0.4:0.1"
        )
    for sigma in sigmas:
        if not math.isfinite(sigma) or sigma < 0:
            raise UserError(
                f"sigma must be a finite number >= 0, got {sigma:g}",
                hint="device variation is a standard deviation, e.g. --sigma 0.3",
            )
    if not (0 < k < 100):
        raise UserError(f"k must lie strictly between 0 and 100, got {k:g}", hint="e.g. --k 1")
    if samples < 1:
        raise UserError(f"--samples must be at least 1, got {samples}", hint="e.g. --samples 1000")
    if samples > MAX_SAMPLES:
        raise UserError(
            f"--samples {samples} is more than ftaudit runs ({MAX_SAMPLES:,} per sigma)",
            hint="KPP intervals are tight after 10^4 samples; e.g. --samples 10000 "
            "or --target-ci 0.005",
        )
    from ftaudit.limits import check_memory

    # the run keeps one count and one flag per (sigma, sample)
    check_memory(
        9 * samples * len(sigmas),
        f"--samples {samples} with {len(sigmas)} sigmas",
        hint="pass fewer --samples",
    )
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if device not in DEVICES:
        raise UserError(f"unknown device '{device}'", hint="use --device cpu or --device cuda")
    if target_ci is not None and not (0 < target_ci <= 1):
        raise UserError(
            f"--target-ci must be a width in (0, 1], got {target_ci:g}",
            hint="e.g. --target-ci 0.01",
        )
    for flag, value in (
        ("--fail-under-kpp", fail_under_kpp),
        ("--fail-under-mean", fail_under_mean),
    ):
        if value is not None and not (0 <= value <= 1):
            raise UserError(
                f"{flag} is a fraction in [0, 1], got {value:g}", hint=f"e.g. {flag} 0.8 for 80%"
            )
    run = dict(sigmas=sigmas, samples=samples, k=k, seed=seed, batch_size=batch_size)
    run.update(device=device, target_ci=target_ci, fail_under_kpp=fail_under_kpp)
    return CheckedOptions.of(**run, fail_under_mean=fail_under_mean, rng=rng)


def layer_infos(model: AuditModel, selected: Sequence[str]) -> list[LayerInfo]:
    """Report rows for every crossbar layer of ``model``."""
    weights = model.crossbar_weights()
    return [
        LayerInfo(
            name=layer.name,
            op=layer.op,
            shape=layer.shape,
            params=layer.params,
            max_abs=float(np.max(np.abs(weights[layer.name]))) if layer.params else 0.0,
            selected=layer.name in selected,
            macs=layer.macs,
        )
        for layer in model.layers
    ]


def model_provenance(model: AuditModel) -> dict[str, object]:
    """The report's ``model`` block: path, hash, format and interface."""
    return {
        "path": str(model.path),
        "sha256": model_sha256(model),
        "format": model.format,
        "input": model.input_dict(),
        "output": model.output_dict(),
        "producer": model.metadata.get("producer"),
        "opset": model.metadata.get("opset"),
        # operators whose stored weight is NOT perturbed, with why (never skipped silently)
        "untraced": [op.to_dict() for op in model.untraced],
        # conv layers perturbed with their BatchNorm folded in (ftaudit.models.folding)
        "batchnorm_folded": sorted(model.fold_scales),
    }


def evaluate_gates(
    results: Sequence[SigmaResult], *, fail_under_kpp: float | None, fail_under_mean: float | None
) -> list[GateResult]:
    """Check every gate at every evaluated sigma (point estimates against thresholds)."""
    gates = []
    for result in results:
        for metric, threshold, value in (
            ("kpp", fail_under_kpp, result.summary.kpp),
            ("mean", fail_under_mean, result.summary.mean),
        ):
            if threshold is not None:
                gates.append(
                    GateResult(
                        metric,
                        result.sigma,
                        value,
                        threshold,
                        value >= threshold,
                        time_s=result.time_s,
                        compensation=result.compensation,
                    )
                )
    return gates


def exact_name_glob(name: str) -> str:
    """A glob that matches exactly ``name``: ``*``, ``?`` and ``[`` are bracket-escaped."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


#: ``layers`` of audit: name globs, or crossbar layers already resolved (compare, sensitivity)
LayerChoice = str | CrossbarLayer


def choose_layers(
    model: AuditModel, layers: Sequence[LayerChoice] | None, exclude: Sequence[str] | None
) -> list[CrossbarLayer]:
    """The crossbar layers to perturb: resolved layers are taken as they are (in the model's
    order), globs matched against the model's layer names."""
    if layers and all(isinstance(layer, CrossbarLayer) for layer in layers):
        names = {layer.name for layer in layers if isinstance(layer, CrossbarLayer)}
        chosen = [layer for layer in model.select_layers(None, exclude) if layer.name in names]
        if chosen:
            return chosen
        # all of them excluded: the globs' error names the model's layers
        return model.select_layers([exact_name_glob(name) for name in sorted(names)], exclude)
    return model.select_layers(layer_globs(layers), exclude)


def layer_globs(layers: Sequence[LayerChoice] | None) -> list[str] | None:
    """``layers`` as the globs a report records (a resolved layer: its exact-name glob)."""
    if layers is None:
        return None
    return [
        exact_name_glob(layer.name) if isinstance(layer, CrossbarLayer) else layer
        for layer in layers
    ]


def prepare_run(
    model: AuditModel,
    dataset: Dataset,
    *,
    layers: Sequence[LayerChoice] | None,
    exclude: Sequence[str] | None,
    noise: NoiseModel,
    batch_size: int,
    device: str,
    batch_samples: int = 1,
    batch_required: bool = True,
    pipeline: ForwardPipeline | None = None,
    seed: int = 0,
    rng: str = MonteCarloOptions.rng,
):
    """Select layers, bind data to a runner and check the data fits the model's output."""
    selected = choose_layers(model, layers, exclude)
    check_finite_weights(model)
    x = model.input_array(dataset)
    runner = build_runner(
        model,
        selected,
        device=device,
        batch_samples=batch_samples,
        batch_required=batch_required,
        pipeline=pipeline,
        x=x,
        seed=seed,
        rng=rng,
    )
    runner.bind_data(x, dataset.y, batch_size=batch_size)
    weights = model.crossbar_weights()
    if model.fold_scales:  # the clean pass runs the folded weights too (same rounding as sigma 0)
        runner.set_weights({layer.name: weights[layer.name] for layer in selected})
    logits = runner.checked_logits(x.shape)
    validate_labels(dataset.y, logits.shape[1])
    crossbar = Crossbar.prepare(selected, weights, noise)
    clean_correct = int(np.count_nonzero(logits.argmax(axis=1) == dataset.y))
    return selected, runner, crossbar, clean_correct


def check_finite_weights(model: AuditModel) -> None:
    """NaN or infinite crossbar weights make every accuracy meaningless: refuse the model."""
    for name, weight in model.clean_weights().items():
        if not np.isfinite(weight).all():
            raise UserError(
                f"{model.path}: crossbar weight {name} holds NaN or infinite values",
                hint="the model is broken (diverged training?); export it again",
            )


def resolve_noise(
    noise: str | NoiseModel, sigmas: Sequence[float] | None, **physics: Any
) -> tuple[NoiseModel, list[float]]:
    """The noise model (a registered name, a profile, a device file, or a model) and the sigma
    grid, defaulting to the profile's; shared by audit, compare and sensitivity. ``physics``:
    ``get_noise_model``'s device choices (bits, cell_bits, clamp, cell_noise, differential)."""
    noise_model = noise if isinstance(noise, NoiseModel) else get_noise_model(noise, **physics)
    if sigmas is None:
        sigmas = getattr(noise_model.profile, "sigma", None)
        if sigmas is None:
            raise UserError("no sigma given", hint="pass --sigma 0.3 (or sigmas=[0.3])")
    return noise_model, [float(s) for s in sigmas]


def resolve_data(
    data: Path | str | Dataset,
    *,
    limit: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Dataset:
    """A loaded Dataset as is, else the file or folder loaded with the options."""
    if isinstance(data, Dataset):
        return data
    return load_dataset(Path(data), limit=limit, mean=mean, std=std)


def resolved_options(
    *,
    batch_size: int,
    layers: Sequence[str] | None,
    exclude: Sequence[str] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    output: str | None,
    rng: str,
) -> dict[str, Any]:
    """The report's ``options`` entries every command records (JSON-ready lists and floats)."""
    return {
        "batch_size": batch_size,
        "rng": rng,
        "layers": list(layers or []),
        "exclude": list(exclude or []),
        "mean": None if mean is None else [float(v) for v in mean],
        "std": None if std is None else [float(v) for v in std],
        "output": output,
    }


def audit(
    model: Path | str | AuditModel,
    data: Path | str | Dataset,
    *,
    sigmas: Sequence[float] | None = None,
    noise: str | NoiseModel = PerturbOptions.noise,
    bits: int | None = None,
    cell_bits: int | None = None,
    clamp: bool = PerturbOptions.clamp,
    cell_noise: str = PerturbOptions.cell_noise,
    differential: bool | None = PerturbOptions.differential,
    samples: int = MonteCarloOptions.samples,
    k: float = MonteCarloOptions.k,
    seed: int = MonteCarloOptions.seed,
    rng: str = MonteCarloOptions.rng,
    batch_size: int = MonteCarloOptions.batch_size,
    device: str = MonteCarloOptions.device,
    layers: Sequence[LayerChoice] | None = None,
    exclude: Sequence[str] | None = None,
    limit: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    output: str | None = None,
    target_ci: float | None = None,
    test_set_error: bool = False,
    fail_under_kpp: float | None = None,
    fail_under_mean: float | None = None,
    progress: ProgressCallback | None = None,
    command: Sequence[str] | None = None,
    config_file: str | None = None,
    times: Sequence[float] | None = None,
    drift_nu: float | None = None,
    drift_nu_std: float | None = None,
    drift_t0: float | None = None,
    compensation: str | None = None,
    stuck_at: tuple[float, float] | None = None,
    workers: int = ScaleOutOptions.workers,
    ray: str | None = None,
    checkpoint_dir: Path | str | None = None,
    resume: bool = False,
    batch_samples: int | None = None,
    fold_batchnorm: bool = True,
    pipeline: ForwardPipeline | None = None,
    checked: CheckedOptions | None = None,
) -> AuditReport:
    """Run the Monte Carlo audit and return the report; gates are evaluated, not raised.

    ``sigmas`` defaults to the noise profile's (``--noise pcm``). ``times`` (seconds after
    programming) adds conductance drift, one row per (sigma, time, compensation); ``stuck_at``
    (P_LOW, P_HIGH) adds stuck cells. Drift and stuck-at defaults come from the noise profile,
    else ``DriftModel()``; see ftaudit.noise.effects.

    ``workers`` > 1 spreads samples over local processes, ``ray`` over a Ray cluster ('local'
    starts one, 'auto' or an address joins one); the numbers are the same either way.
    ``checkpoint_dir`` keeps the counted samples so a killed run continues with ``resume``.
    ``batch_samples`` evaluates that many weight sets per forward pass (torch vmap; default 16
    for an ONNX model on CUDA, else 1). ``fold_batchnorm`` (default) perturbs convolution
    weights with their BatchNorm folded in, as a chip stores them (ftaudit.models.folding).
    ``pipeline``: the analog forward pass (ftaudit.analog), by default the profile's ``[analog]``.
    ``checked``: what ``validate_options`` returned for these options (not checked again).
    """
    started = time.perf_counter()
    noise_model, sigmas = resolve_noise(
        noise,
        sigmas,
        bits=bits,
        cell_bits=cell_bits,
        clamp=clamp,
        cell_noise=cell_noise,
        differential=differential,
    )
    effects = DeviceEffectOptions(
        times=times,
        drift_nu=drift_nu,
        drift_nu_std=drift_nu_std,
        drift_t0=drift_t0,
        compensation=compensation,
        stuck_at=stuck_at,
    ).resolve(noise_model.profile)
    run_options = dict(sigmas=sigmas, samples=samples, k=k, seed=seed, batch_size=batch_size)
    run_options.update(device=device, target_ci=target_ci, fail_under_kpp=fail_under_kpp)
    run_options.update(fail_under_mean=fail_under_mean, rng=rng)
    ensure_checked(checked, **run_options)
    validate_scale_out(workers=workers, checkpoint_dir=checkpoint_dir, resume=resume)
    pipeline = resolve_pipeline(pipeline, noise_model.profile)
    loaded = model if isinstance(model, AuditModel) else load_model(model, output=output)
    if not fold_batchnorm:
        loaded = replace(loaded, fold_scales={})
    dataset = resolve_data(data, limit=limit, mean=mean, std=std)
    samples_per_pass = resolve_batch_samples(batch_samples, device=device)
    selected, runner, crossbar, clean_correct = prepare_run(
        loaded,
        dataset,
        layers=layers,
        exclude=exclude,
        noise=noise_model,
        batch_size=batch_size,
        device=device,
        batch_samples=samples_per_pass,
        batch_required=batch_samples is not None,
        pipeline=pipeline,
        seed=seed,
        rng=rng,
    )
    if not isinstance(getattr(runner, "inner", runner), BatchedTorchRunner):
        samples_per_pass = 1  # batching was a default it could not use
    n = len(dataset.y)
    clean_accuracy = clean_correct / n
    quantized_accuracy = None
    if noise_model.quantizes:
        runner.set_weights(crossbar.unperturbed())
        quantized_accuracy = runner.count_correct() / n
    reference = clean_accuracy if quantized_accuracy is None else quantized_accuracy

    conditions = [Condition(s) for s in sigmas] if effects is None else effects.conditions(sigmas)
    fingerprint = {
        "model_sha256": model_sha256(loaded),
        "data": {key: dataset.source.get(key) for key in ("sha256", "n", "limit")},
        "normalisation": [None if v is None else [float(a) for a in v] for v in (mean, std)],
        "output": loaded.output.name,
        "layers": [layer.name for layer in selected],
        "noise": noise_model.parameters(),
        "sigmas": sigmas,
        "samples": samples,
        "seed": seed,
        "rng": rng,
        "k": k,
        "target_ci": target_ci,
        "device": device,
        "device_effects": None if effects is None else effects.to_dict(),
        "fold_batchnorm": sorted(loaded.fold_scales),
        **({"analog": pipeline.to_dict()} if pipeline is not None else {}),
    }
    restored, on_chunk, writer = None, None, None
    if checkpoint_dir is not None:
        directory = check_checkpoint_dir(checkpoint_dir)
        if resume:
            restored = load_progress(directory, fingerprint, (len(conditions), samples))
        writer = CheckpointWriter(directory, fingerprint)
        latest: list[Progress] = []

        def on_chunk(state: Progress) -> None:
            latest[:] = [state]
            writer(state)

    evaluator, spec = None, None
    if workers > 1 or ray is not None:
        spec = WorkerSpec(
            model_path=str(loaded.path),
            model_bytes=model_bytes(loaded),
            output=output,
            x=loaded.input_array(dataset),
            y=dataset.y,
            layer_names=tuple(layer.name for layer in selected),
            noise=noise_model,
            sigmas=tuple(sigmas),
            seed=seed,
            batch_size=batch_size,
            device=device,
            threads=1 if ray is not None else threads_per_worker(workers),
            effects=effects,
            batch_samples=samples_per_pass,
            fold_batchnorm=fold_batchnorm,
            pipeline=pipeline,
            rng=rng,
        )
    else:
        evaluator = ChunkEvaluator(
            runner, crossbar, sigmas, seed, effects, batch_samples=samples_per_pass, rng=rng
        )
    backend = backend_for(spec, evaluator, workers=workers, ray=ray)
    try:
        counts = run_monte_carlo(
            runner,
            crossbar,
            sigmas,
            samples=samples,
            seed=seed,
            n_data=n,
            k=k,
            target_ci=target_ci,
            progress=progress,
            backend=backend,
            restored=restored,
            on_chunk=on_chunk,
            effects=effects,
        )
    finally:
        if writer is not None and latest:
            writer(latest[0], force=True)  # also after Ctrl-C: nothing counted is lost
        release(backend)
        if evaluator is not None:
            evaluator.close()
    execution = backend.describe()
    execution["resumed_samples"] = 0 if restored is None else int(restored.done.sum())
    execution["batch_samples"] = samples_per_pass
    if getattr(runner, "fallback", None):
        execution["batch_fallback"] = runner.fallback
    results = []
    for j, condition in enumerate(conditions):
        accuracies = counts.accuracies(j, n)
        summary = (
            summarize(accuracies, k=k)
            if target_ci is None
            else sequential_summary(accuracies, k=k, samples=samples)
        )
        if condition.sigma == 0 and effects is None and not runner.random_reads:  # exact
            exact = Interval(summary.kpp, summary.kpp, summary.kpp_interval.confidence, "exact")
            summary = replace(summary, kpp_interval=exact, mean_interval=exact)
        if test_set_error:
            summary = with_test_set_error(summary, n)
        results.append(
            SigmaResult(
                sigma=condition.sigma,
                summary=summary,
                accuracies=accuracies,
                reference_accuracy=reference,
                stopped_early=bool(counts.stopped_early[j]),
                time_s=condition.time_s,
                compensation=condition.compensation,
            )
        )
    names = [layer.name for layer in selected]
    return AuditReport(
        ftaudit_version=__version__,
        command=list(command or []),
        model=model_provenance(loaded),
        layers=layer_infos(loaded, names),
        data=dict(dataset.source),
        noise=noise_model.parameters(),
        seed=seed,
        samples=samples,
        k=k,
        device=device,
        clean_accuracy=clean_accuracy,
        quantized_accuracy=quantized_accuracy,
        results=results,
        elapsed_s=time.perf_counter() - started,
        target_ci=target_ci,
        gates=evaluate_gates(
            results, fail_under_kpp=fail_under_kpp, fail_under_mean=fail_under_mean
        ),
        options={
            **resolved_options(
                batch_size=batch_size,
                layers=layer_globs(layers),
                exclude=exclude,
                mean=mean,
                std=std,
                output=output,
                rng=rng,
            ),
            "config_file": config_file,
            "execution": execution,
            "fold_batchnorm": fold_batchnorm,
        },
        device_effects=None if effects is None else effects.to_dict(),
        test_set_error=test_set_error,
        analog=pipeline.report_block(getattr(runner, "calibration", None)) if pipeline else None,
        warnings=loaded.data_warnings(dataset),
    )


def validate_scale_out(*, workers: int, checkpoint_dir: Path | str | None, resume: bool) -> None:
    """Reject impossible --workers/--resume combinations before any work (``ScaleOutOptions``)."""
    ScaleOutOptions(workers=workers, checkpoint_dir=checkpoint_dir, resume=resume).validate()
