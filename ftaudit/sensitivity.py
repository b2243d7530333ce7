"""``ftaudit.sensitivity``: which crossbar layers lose the most accuracy under device variation.

For every analog layer L (those selected by ``layers``/``exclude``; the rest stay exact) the model
is audited with only L perturbed and with every analog layer but L perturbed, plus once with all
analog layers perturbed. Draws are keyed by (sample, layer index) whatever the selection, so all
these audits share their random numbers: layer L sees the same perturbation in every run, and
differences between runs are paired, not two independent noisy estimates.

With drift or stuck-at faults (``times``, ``stuck_at``; audit's options) every audit has one row
per (sigma, time, compensation); drift exponents and fault masks are keyed by (sample, layer
index) too, so the pairing holds per row. Layers outside the perturbed set get no drift and no
faults, so "every layer digital" is still the clean model, exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from ftaudit import __version__
from ftaudit.analog.options import ForwardPipeline
from ftaudit.compare import StageProgress, stage_progress, validate_fraction
from ftaudit.data import Dataset
from ftaudit.evaluation import (
    audit,
    ensure_checked,
    model_provenance,
    resolve_data,
    resolve_noise,
    resolved_options,
)
from ftaudit.execution import execution_session
from ftaudit.models import AuditModel, CrossbarLayer, load_model
from ftaudit.noise import NoiseModel
from ftaudit.noise.effects import Condition
from ftaudit.options import (
    CheckedOptions,
    DeviceEffectOptions,
    MonteCarloOptions,
    PerturbOptions,
    ScaleOutOptions,
)
from ftaudit.results import AuditReport
from ftaudit.results.sensitivity import (
    OUT_OF_REACH,
    LayerSensitivity,
    SensitivityReport,
    SigmaPoint,
    TargetSelection,
    TargetStep,
    points_of,
)

#: samples per sigma per audit when none are given: a sensitivity run is 2L + 1 audits
DEFAULT_SENSITIVITY_SAMPLES = 200


def meets_target(points: Sequence[SigmaPoint], target_kpp: float) -> bool:
    return all(point.kpp >= target_kpp for point in points)


def rank_layers(
    layers: Sequence[CrossbarLayer],
    only: Sequence[list[SigmaPoint]],
    all_but: Sequence[list[SigmaPoint]],
    all_layers: Sequence[SigmaPoint],
    clean_accuracy: float,
) -> list[LayerSensitivity]:
    """Score every layer and sort them, most sensitive first (see ``RANKING``)."""
    unranked = [
        LayerSensitivity(
            name=layer.name,
            index=layer.index,
            op=layer.op,
            params=layer.params,
            rank=0,
            only=list(alone),
            all_but=list(rest),
            kpp_drop=[clean_accuracy - p.kpp for p in alone],
            kpp_recovered=[p.kpp - a.kpp for p, a in zip(rest, all_layers, strict=True)],
        )
        for layer, alone, rest in zip(layers, only, all_but, strict=True)
    ]
    ordered = sorted(unranked, key=lambda s: (-s.score, -s.recovered_score, s.index))
    return [replace(s, rank=rank) for rank, s in enumerate(ordered, start=1)]


def sensitivity(
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
    samples: int = DEFAULT_SENSITIVITY_SAMPLES,
    k: float = MonteCarloOptions.k,
    seed: int = MonteCarloOptions.seed,
    rng: str = MonteCarloOptions.rng,
    batch_size: int = MonteCarloOptions.batch_size,
    device: str = MonteCarloOptions.device,
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    limit: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    output: str | None = None,
    target_kpp: float | None = None,
    progress: StageProgress | None = None,
    command: Sequence[str] | None = None,
    config_file: str | None = None,
    workers: int = ScaleOutOptions.workers,
    ray: str | None = None,
    times: Sequence[float] | None = None,
    drift_nu: float | None = None,
    drift_nu_std: float | None = None,
    drift_t0: float | None = None,
    compensation: str | None = None,
    stuck_at: tuple[float, float] | None = None,
    pipeline: ForwardPipeline | None = None,
    checked: CheckedOptions | None = None,
) -> SensitivityReport:
    """Rank the analog layers by KPP drop; with ``target_kpp``, pick layers to keep digital.

    ``layers``/``exclude`` choose the analog layers (all by default); the others stay exact in
    every run (no noise, drift or faults) and are not ranked. ``sigmas`` defaults to the noise
    profile's; ``times``, the drift options and ``stuck_at`` are ``audit``'s and give one row
    per (sigma, time, compensation); the ranking averages over the rows and ``target_kpp`` must
    hold at every row. The keep-digital choice is greedy in rank order, and every step is
    evaluated by Monte Carlo, not estimated.

    ``pipeline`` (the analog forward pass) applies to the analog layers of each run; a digital
    layer is ideal, so "every layer digital" is the ideal model's clean accuracy.
    ``checked``: ``validate_options``' result for these options (not checked again).
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
    effect_options = DeviceEffectOptions(
        times=times,
        drift_nu=drift_nu,
        drift_nu_std=drift_nu_std,
        drift_t0=drift_t0,
        compensation=compensation,
        stuck_at=stuck_at,
    )
    effects = effect_options.resolve(noise_model.profile)
    run_options = dict(sigmas=sigmas, samples=samples, k=k, seed=seed, batch_size=batch_size)
    checked = ensure_checked(checked, **run_options, device=device, rng=rng)
    validate_fraction(target_kpp, "--target-kpp", "0.9 for 90%")
    rows = [Condition(s) for s in sigmas] if effects is None else effects.conditions(sigmas)
    loaded = model if isinstance(model, AuditModel) else load_model(model, output=output)
    dataset = resolve_data(data, limit=limit, mean=mean, std=std)
    analog = loaded.select_layers(layers, exclude)
    n_runs = 1 + (2 * len(analog) if len(analog) > 1 else 0)
    run_number = 0

    def run(perturbed: Sequence[CrossbarLayer], label: str) -> AuditReport:
        nonlocal run_number
        run_number += 1
        counter = f"{run_number}/{n_runs}" if run_number <= n_runs else f"{run_number}"
        return audit(
            loaded,
            dataset,
            sigmas=sigmas,
            noise=noise_model,
            samples=samples,
            k=k,
            seed=seed,
            rng=rng,
            batch_size=batch_size,
            device=device,
            layers=perturbed,
            progress=stage_progress(progress, f"[{counter}] {label}"),
            workers=workers,
            ray=ray,
            pipeline=pipeline,
            checked=checked,  # every run: checked above, once
            **effect_options.as_kwargs(),
        )

    with execution_session(workers, ray):  # one pool (or Ray connection) for every run
        everything = run(analog, "all analog layers")
        clean = everything.clean_accuracy
        if everything.analog is not None:  # the analog-clean accuracy is not the digital one
            clean = ideal_accuracy(loaded, dataset, batch_size=batch_size, device=device)
        all_points = points_of(everything)
        row_keys = [(p.sigma, p.time_s, p.compensation) for p in all_points]
        if row_keys != [(r.sigma, r.time_s, r.compensation) for r in rows]:
            raise AssertionError(f"audit rows {row_keys} are not the expected {rows}")
        # every layer digital: no noise, drift or faults anywhere, the clean model at every row
        nothing = [SigmaPoint.exact(row, clean) for row in rows]
        only: list[list[SigmaPoint]] = []
        all_but: list[list[SigmaPoint]] = []
        for layer in analog:
            if len(analog) == 1:  # only L is all layers; all but L perturbs nothing
                only.append(all_points)
                all_but.append(nothing)
                continue
            only.append(points_of(run([layer], f"only {layer.name}")))
            rest = [other for other in analog if other is not layer]
            all_but.append(points_of(run(rest, f"all but {layer.name}")))
        ranked = rank_layers(analog, only, all_but, all_points, clean)

        target = None
        if target_kpp is not None:
            target = select_digital(
                ranked,
                analog,
                all_points=all_points,
                nothing=nothing,
                clean_accuracy=clean,
                target_kpp=target_kpp,
                rows="sigma, time and compensation" if effects and effects.times else "sigma",
                evaluate=lambda perturbed, n: points_of(run(perturbed, f"target: {n} digital")),
            )
    analog_names = {layer.name for layer in analog}
    return SensitivityReport(
        ftaudit_version=__version__,
        command=list(command or []),
        model=model_provenance(loaded),
        data=dict(dataset.source),
        noise=noise_model.parameters(),
        seed=seed,
        samples=samples,
        k=k,
        device=device,
        sigmas=sigmas,
        clean_accuracy=clean,
        quantized_accuracy=everything.quantized_accuracy,
        all_layers=all_points,
        layers=ranked,
        always_digital=[la.name for la in loaded.layers if la.name not in analog_names],
        warnings=[
            *loaded.data_warnings(dataset),
            *([target.message()] if target is not None and target.status in OUT_OF_REACH else []),
        ],
        target=target,
        elapsed_s=time.perf_counter() - started,
        options={
            **resolved_options(
                batch_size=batch_size,
                layers=layers,
                exclude=exclude,
                mean=mean,
                std=std,
                output=output,
                rng=rng,
            ),
            "target_kpp": target_kpp,
            "config_file": config_file,
            "analog": everything.analog,
        },
        device_effects=everything.device_effects,
    )


def ideal_accuracy(model: AuditModel, dataset: Dataset, *, batch_size: int, device: str) -> float:
    """Accuracy of the unperturbed model with every layer digital (no analog pipeline)."""
    runner = model.runner(model.layers[:1], device=device)
    x = model.input_array(dataset)
    runner.bind_data(x, dataset.y, batch_size=batch_size)
    return runner.count_correct() / len(dataset.y)


def select_digital(
    ranked: Sequence[LayerSensitivity],
    analog: Sequence[CrossbarLayer],
    *,
    all_points: list[SigmaPoint],
    nothing: list[SigmaPoint],
    clean_accuracy: float,
    target_kpp: float,
    evaluate: Callable[[list[CrossbarLayer], int], list[SigmaPoint]],
    rows: str = "sigma",
) -> TargetSelection:
    """Greedy: make layers digital in rank order until the KPP reaches the target at every row
    (``rows`` names them in the message: "sigma", or "sigma, time and compensation").

    ``evaluate(perturbed_layers, n_digital)`` runs the Monte Carlo of one configuration. A
    single digital layer reuses that layer's all-but run; all layers digital is the clean model.
    Greedy in rank order is not guaranteed to find the smallest set, but every answer is measured.
    """
    first = TargetStep([], all_points, meets_target(all_points, target_kpp))
    if first.meets:
        return TargetSelection(target_kpp, "already_met", [], [first], clean_accuracy, rows)
    if clean_accuracy < target_kpp:
        return TargetSelection(target_kpp, "unreachable", [], [first], clean_accuracy, rows)
    by_name = {layer.name: layer for layer in analog}
    steps = [first]
    digital: list[str] = []
    for layer in ranked:
        digital.append(layer.name)
        perturbed = [by_name[name] for name in by_name if name not in digital]
        if not perturbed:
            points = nothing
        elif len(digital) == 1:
            points = layer.all_but
        else:
            points = evaluate(perturbed, len(digital))
        steps.append(TargetStep(list(digital), points, meets_target(points, target_kpp)))
        if steps[-1].meets:
            break
    if not steps[-1].meets:  # even the fully digital model misses it (e.g. quantised weights)
        return TargetSelection(target_kpp, "unreachable", [], steps, clean_accuracy, rows)
    status = "all_digital" if len(digital) == len(analog) else "met"
    return TargetSelection(target_kpp, status, list(digital), steps, clean_accuracy, rows)
