"""``ftaudit.compare``: two models on the same Monte Carlo draws, and their paired difference.

Both models go through ``audit`` with the same seed, sigmas and noise model. Sample i's base
draws for crossbar layer l come from ``SeedSequence(seed, spawn_key=(i, l))`` whatever the model,
so once the crossbar layers are checked to match (count and canonical shapes) sample i perturbs
both models with the same numbers and the per-sample accuracy differences are paired. Drift
exponents and stuck-at masks (``times``, ``stuck_at``) are keyed by (sample, layer index) too, so
they pair the same way; rows are paired by (sigma, time, compensation).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ftaudit import __version__
from ftaudit.analog.options import ForwardPipeline
from ftaudit.data import Dataset
from ftaudit.errors import UserError
from ftaudit.evaluation import (
    audit,
    ensure_checked,
    exact_name_glob,  # noqa: F401 (re-exported)
    prepare_run,
    resolve_data,
    resolve_noise,
    resolved_options,
)
from ftaudit.execution import execution_session
from ftaudit.models import AuditModel, load_model
from ftaudit.noise import NoiseModel
from ftaudit.options import (
    CheckedOptions,
    DeviceEffectOptions,
    MonteCarloOptions,
    PerturbOptions,
    ScaleOutOptions,
)
from ftaudit.results import Interval, SigmaResult, row_key
from ftaudit.results.compare import (
    DEFAULT_GATE_CORRECTION,
    GATE_ALPHA,
    GATE_CORRECTIONS,
    CompareReport,
    PairedSigmaResult,
    WorseGate,
)
from ftaudit.stats import holm_rejections, mean_interval, paired_kpp_difference_interval, t_cdf

#: SeedSequence key of the paired KPP bootstrap (apart from the samples' (i, l) keys)
BOOTSTRAP_KEY = 1_000_010

#: ``progress(stage, done, total)``: samples done of ``total`` in the named stage
StageProgress = Callable[[str, int, int], None]


def validate_fraction(value: float | None, flag: str, example: str) -> None:
    """A threshold option that is an accuracy (fraction) in [0, 1]."""
    if value is not None and not (0 <= value <= 1):
        raise UserError(
            f"{flag} is a fraction in [0, 1], got {value:g}", hint=f"e.g. {flag} {example}"
        )


def check_matching_layers(baseline: AuditModel, candidate: AuditModel) -> None:
    """Layer l must be the same crossbar in both models: same count and canonical shapes."""
    base, cand = baseline.layers, candidate.layers
    for b, c in zip(base, cand, strict=False):
        if b.canonical_shape != c.canonical_shape:
            raise UserError(
                f"crossbar layer {b.index} differs: baseline '{b.name}' has shape "
                f"{b.canonical_shape} but candidate '{c.name}' has {c.canonical_shape}",
                hint="compare two versions of the same architecture (ftaudit inspect lists them)",
            )
    if len(base) != len(cand):
        longer, name = (base, "baseline") if len(base) > len(cand) else (cand, "candidate")
        extra = longer[min(len(base), len(cand))]
        raise UserError(
            f"the baseline has {len(base)} crossbar layers and the candidate {len(cand)}; "
            f"the first unmatched one is the {name}'s '{extra.name}'",
            hint="compare two versions of the same architecture (ftaudit inspect lists them)",
        )


def stage_progress(progress: StageProgress | None, stage: str) -> Callable[[int, int], None] | None:
    """An ``audit`` progress callback reporting under ``stage``."""
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


def paired_result(
    baseline: SigmaResult,
    candidate: SigmaResult,
    *,
    k: float,
    rng: np.random.Generator,
    random_effects: bool = False,
) -> PairedSigmaResult:
    """Mean difference with its Student t interval, KPP difference with a paired bootstrap.

    ``random_effects``: stuck-at faults or drift were drawn, so sigma 0 is random too.
    """
    if row_key(baseline) != row_key(candidate):
        raise AssertionError(f"unpaired rows {row_key(baseline)} and {row_key(candidate)}")
    differences = candidate.accuracies - baseline.accuracies
    interval = mean_interval(differences, bounds=(-1.0, 1.0))
    # identical differences (identical models, sigma = 0): their value exactly, not a rounded sum
    constant = bool(np.all(differences == differences[0]))
    center = float(differences[0]) if constant else float(differences.mean())
    if baseline.sigma == 0 and not random_effects:  # nothing random: the difference is exact
        interval = Interval(interval.low, interval.high, interval.confidence, "exact")
    return PairedSigmaResult(
        sigma=baseline.sigma,
        baseline=baseline,
        candidate=candidate,
        mean_difference=center,
        mean_difference_interval=interval,
        kpp_difference=candidate.summary.kpp - baseline.summary.kpp,
        kpp_difference_interval=paired_kpp_difference_interval(
            baseline.accuracies, candidate.accuracies, k, rng=rng
        ),
        time_s=baseline.time_s,
        compensation=baseline.compensation,
    )


def worse_p_value(result: PairedSigmaResult, tolerance: float) -> float:
    """One-sided p-value of H0 'candidate - baseline >= -tolerance' from the paired
    differences: P(T_{n-1} <= (mean + tolerance) / (s / sqrt(n))). Rejecting at 2.5% is the
    per-row rule 'the 95% interval's upper end is below -tolerance'. An exact difference
    (nothing random) gives 0 when it is below -tolerance, else 1."""
    differences = result.candidate.accuracies - result.baseline.accuracies
    excess = result.mean_difference + tolerance
    n = differences.size
    std = float(differences.std(ddof=1)) if n > 1 else 0.0
    if result.mean_difference_interval.method == "exact" or std == 0.0 or n < 2:
        return 0.0 if excess < 0 else 1.0
    return t_cdf(excess / (std / math.sqrt(n)), n - 1)


def evaluate_worse_gates(
    results: Sequence[PairedSigmaResult],
    tolerance: float | None,
    correction: str = DEFAULT_GATE_CORRECTION,
) -> list[WorseGate]:
    """Fail a row when the candidate is worse by more than ``tolerance`` with confidence:
    one-sided tests at 2.5%, Holm-corrected over the rows unless ``correction`` is per-row."""
    if tolerance is None:
        return []
    p_values = [worse_p_value(r, tolerance) for r in results]
    if correction == "holm":
        failed = holm_rejections(p_values, GATE_ALPHA)
    else:
        failed = [r.mean_difference_interval.high < -tolerance for r in results]
    return [
        WorseGate(
            sigma=r.sigma,
            tolerance=tolerance,
            mean_difference=r.mean_difference,
            interval=r.mean_difference_interval,
            passed=not fail,
            time_s=r.time_s,
            compensation=r.compensation,
            p_value=p,
            correction=correction,
        )
        for r, p, fail in zip(results, p_values, failed, strict=True)
    ]


def validate_gate_correction(correction: str) -> None:
    if correction not in GATE_CORRECTIONS:
        raise UserError(
            f"--gate-correction must be one of {', '.join(GATE_CORRECTIONS)}, got '{correction}'",
            hint="holm (the default) bounds the chance that any row fails wrongly; per-row "
            "tests each row at 2.5%",
        )


def compare(
    baseline: Path | str | AuditModel,
    candidate: Path | str | AuditModel,
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
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    limit: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    output: str | None = None,
    fail_if_worse: float | None = None,
    gate_correction: str = DEFAULT_GATE_CORRECTION,
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
) -> CompareReport:
    """Audit ``baseline`` and ``candidate`` on the same draws; gates are evaluated, not raised.

    ``layers``/``exclude`` globs are matched against the baseline's layer names; the candidate's
    layers at the same positions are perturbed. ``sigmas`` defaults to the noise profile's;
    ``times``, the drift options and ``stuck_at`` are ``audit``'s, applied to both models, and
    give one paired row per (sigma, time, compensation). ``pipeline`` (the analog forward
    pass) applies to both models; their read noise is paired like their weight draws.
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
    validate_fraction(fail_if_worse, "--fail-if-worse", "0.01 for one percentage point")
    validate_gate_correction(gate_correction)
    base_model = (
        baseline if isinstance(baseline, AuditModel) else load_model(baseline, output=output)
    )
    cand_model = (
        candidate if isinstance(candidate, AuditModel) else load_model(candidate, output=output)
    )
    check_matching_layers(base_model, cand_model)
    dataset = resolve_data(data, limit=limit, mean=mean, std=std)
    selected = base_model.select_layers(layers, exclude)
    positions = {layer.index for layer in selected}
    cand_selected = [layer for layer in cand_model.layers if layer.index in positions]
    # The baseline's audit checks the data against the baseline before its Monte Carlo; check
    # the candidate now too, so a misfit never surfaces after the baseline's samples have run.
    prepare_run(
        cand_model,
        dataset,
        layers=cand_selected,
        exclude=None,
        noise=noise_model,
        batch_size=batch_size,
        device=device,
    )
    common = {
        "sigmas": sigmas,
        "noise": noise_model,
        "samples": samples,
        "k": k,
        "seed": seed,
        "rng": rng,
        "batch_size": batch_size,
        "device": device,
        "mean": mean,
        "std": std,
        "output": output,
        "command": command,
        "config_file": config_file,
        "workers": workers,
        "ray": ray,
        "pipeline": pipeline,
        "checked": checked,  # both audits: checked above, once
        **effect_options.as_kwargs(),
    }
    reports = {}
    with execution_session(workers, ray):  # one pool (or Ray connection) for both
        for role, model, chosen in (
            ("baseline", base_model, selected),
            ("candidate", cand_model, cand_selected),
        ):
            reports[role] = audit(
                model,
                dataset,
                layers=chosen,
                progress=stage_progress(progress, role),
                **common,
            )
    results = [
        paired_result(
            b,
            c,
            k=k,
            rng=np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(BOOTSTRAP_KEY, j))),
            random_effects=effects is not None or reports["baseline"].analog_random,
        )
        for j, (b, c) in enumerate(
            zip(reports["baseline"].results, reports["candidate"].results, strict=True)
        )
    ]
    layer_pairs = [
        {
            "index": b.index,
            "baseline": b.name,
            "candidate": c.name,
            "op": b.op,
            "shape": list(b.canonical_shape),
            "params": b.params,
            "selected": b.index in positions,
        }
        for b, c in zip(base_model.layers, cand_model.layers, strict=True)
    ]
    return CompareReport(
        ftaudit_version=__version__,
        command=list(command or []),
        baseline=reports["baseline"],
        candidate=reports["candidate"],
        layers=layer_pairs,
        results=results,
        fail_if_worse=fail_if_worse,
        gates=evaluate_worse_gates(results, fail_if_worse, gate_correction),
        gate_correction=gate_correction,
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
            "config_file": config_file,
            "analog": reports["baseline"].analog,
        },
    )
