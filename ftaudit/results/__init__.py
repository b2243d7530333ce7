"""Typed result objects returned by the library and serialised by the report writers: eval's
here with the row key (sigma, time, compensation); compare's, sensitivity's, inspect's and
harden's in the modules beside it. They import nothing above ``stats``/``units``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ftaudit.units import format_time

REPORT_SCHEMA_VERSION = "1.0"


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval [low, high] at ``confidence`` (e.g. 0.95).

    A side is None when the samples cannot reach it at this level (the KPP interval with fewer
    samples than ``stats.kpp_min_samples`` asks for): unavailable, not a bound at 0 or 1."""

    low: float | None
    high: float | None
    confidence: float
    method: str

    def width(self) -> float:
        """high - low; +inf while a side is unavailable."""
        if self.low is None or self.high is None:
            return math.inf
        return self.high - self.low

    def two_sided(self) -> bool:
        return self.low is not None and self.high is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Summary:
    """Statistics of one Monte Carlo accuracy distribution (one sigma)."""

    n: int
    mean: float
    std: float
    mean_interval: Interval
    kpp: float
    kpp_interval: Interval
    min: float
    max: float


@dataclass(frozen=True)
class SigmaResult:
    """Monte Carlo result at one noise level: its summary and the raw per-sample accuracies."""

    sigma: float
    summary: Summary
    accuracies: np.ndarray  # shape (n,), sample i's accuracy at index i
    reference_accuracy: float  # the unperturbed accuracy drops are measured from
    stopped_early: bool = False
    time_s: float | None = None  # seconds after programming (drift), None without --time
    compensation: str | None = None  # "none" or "global" drift compensation, with time_s

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        return row_fields(self.sigma, self.time_s, self.compensation) | {
            "samples": s.n,
            "stopped_early": self.stopped_early,
            "mean": s.mean,
            "std": s.std,
            "mean_interval": s.mean_interval.to_dict(),
            "kpp": s.kpp,
            "kpp_interval": s.kpp_interval.to_dict(),
            "min": s.min,
            "max": s.max,
            "drop_mean": self.reference_accuracy - s.mean,
            "drop_kpp": self.reference_accuracy - s.kpp,
        }


@dataclass(frozen=True)
class LayerInfo:
    """One crossbar weight tensor of a model, as reported by ``inspect`` and ``eval``."""

    name: str
    op: str
    shape: tuple[int, ...]
    params: int
    max_abs: float
    selected: bool
    macs: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass(frozen=True)
class GateResult:
    """One CI gate checked at one sigma."""

    metric: str  # "kpp" or "mean"
    sigma: float
    value: float
    threshold: float
    passed: bool
    time_s: float | None = None  # the row's time and compensation, when the report has drift
    compensation: str | None = None

    def message(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        where = f"sigma={self.sigma:g}"
        if self.time_s is not None:
            from ftaudit.units import format_time

            where += f", t={format_time(self.time_s)}, compensation={self.compensation}"
        return (
            f"gate {verdict}: {self.metric} at {where} is {self.value:.4f}, "
            f"threshold {self.threshold:.4f}"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.time_s is None:
            del d["time_s"], d["compensation"]
        return d


@dataclass
class AuditReport:
    """Everything ``ftaudit eval`` measured, with the provenance needed to reproduce it."""

    ftaudit_version: str
    command: list[str]
    model: dict[str, Any]  # path, sha256, format, input, output
    layers: list[LayerInfo]
    data: dict[str, Any]  # path, sha256, n
    noise: dict[str, Any]  # name + parameters
    seed: int
    samples: int
    k: float
    device: str
    clean_accuracy: float
    quantized_accuracy: float | None
    results: list[SigmaResult]
    elapsed_s: float
    target_ci: float | None = None
    gates: list[GateResult] = field(default_factory=list)
    #: resolved options not recorded elsewhere (batch size, globs, normalisation, config file)
    options: dict[str, Any] = field(default_factory=dict)
    #: stuck-at faults and drift (``DeviceEffects.to_dict()``), None when neither was applied
    device_effects: dict[str, Any] | None = None
    #: the analog forward pipeline in force (``ftaudit.analog``), None for an ideal crossbar
    analog: dict[str, Any] | None = None

    @property
    def analog_random(self) -> bool:
        """Whether the analog pipeline drew read noise (so sigma 0 rows are random too)."""
        return self.analog is not None and self.analog.get("read_noise", 0) > 0

    #: what the user is probably wrong about (the CLI prints them on stderr; not in the JSON)
    warnings: list[str] = field(default_factory=list)
    #: the intervals also cover the test set's sampling error (--test-set-error)
    test_set_error: bool = False

    def interval_scope(self) -> dict[str, Any]:
        """What the intervals cover, with the size of the test-set error they may leave out."""
        n = int(self.data.get("n") or 0)
        half = test_set_half_width(self.reference_accuracy, n) if n else None
        covers = "monte-carlo and test-set sampling" if self.test_set_error else "monte-carlo"
        return {
            "covers": covers,
            "test_images": n,
            "test_set_half_width": half,
            "statement": interval_statement(self.test_set_error, n, half),
        }

    @property
    def reference_accuracy(self) -> float:
        """Unperturbed accuracy on the chip: the quantised model's for device models."""
        return self.clean_accuracy if self.quantized_accuracy is None else self.quantized_accuracy

    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": REPORT_SCHEMA_VERSION,
            "ftaudit_version": self.ftaudit_version,
            "command": self.command,
            "model": self.model,
            "layers": [layer.to_dict() for layer in self.layers],
            "data": self.data,
            "noise": self.noise,
            "seed": self.seed,
            "samples": self.samples,
            "k": self.k,
            "target_ci": self.target_ci,
            "interval_scope": self.interval_scope(),
            "device": self.device,
            "clean_accuracy": self.clean_accuracy,
            "quantized_accuracy": self.quantized_accuracy,
            "reference_accuracy": self.reference_accuracy,
            "results": [r.to_dict() for r in self.results],
            "gates": [g.to_dict() for g in self.gates],
            "options": self.options,
            "elapsed_s": self.elapsed_s,
            "device_effects": self.device_effects,
            "analog": self.analog,
        }


def interval_statement(test_set_error: bool, n: int, half_width: float | None) -> str:
    """One sentence on what the intervals cover (the table footer, the HTML and the JSON)."""
    size = "" if half_width is None else f" (about ±{100 * half_width:.2f} points here)"
    if test_set_error:
        return (
            f"intervals cover the Monte Carlo error and the sampling of the {n} test images"
            f"{size}, widened by a binomial bound (conservative)"
        )
    return (
        f"intervals cover the Monte Carlo error only, for these {n} test images; the test "
        f"set's own sampling error{size} is not included (--test-set-error adds it)"
    )


def test_set_half_width(accuracy: float, n_images: int, confidence: float = 0.95) -> float:
    """z * sqrt(a (1 - a) / N): the sampling error of an accuracy a measured on N test images
    drawn from a larger population (a(1-a)/N bounds the variance over images of each image's
    chance of being right, whatever the noise does to it). z from ``statistics.NormalDist``."""
    from statistics import NormalDist

    a = min(max(float(accuracy), 0.0), 1.0)
    z = NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)
    return z * math.sqrt(a * (1.0 - a) / n_images)


def row_key(result: SigmaResult) -> tuple[float, float | None, str | None]:
    """What identifies a report row: its sigma, and with drift its time and compensation."""
    return result.sigma, result.time_s, result.compensation


def row_fields(sigma: float, time_s: float | None, compensation: str | None) -> dict[str, Any]:
    """A report row's key as JSON fields: its sigma, and with drift its time and compensation."""
    if time_s is None:
        return {"sigma": sigma}
    return {"sigma": sigma, "time_s": time_s, "compensation": compensation}


def row_label(sigma: float, time_s: float | None, compensation: str | None) -> str:
    """'sigma=0.3', or 'sigma=0.3, t=1y, compensation=global' for a drift row."""
    label = f"sigma={sigma:g}"
    if time_s is not None:
        label += f", t={format_time(time_s)}, compensation={compensation}"
    return label
