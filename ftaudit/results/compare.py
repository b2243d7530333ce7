"""The result of ``ftaudit.compare``: two audits on the same draws, paired per row, and the
``--fail-if-worse`` gate."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ftaudit.results import AuditReport, Interval, SigmaResult, row_fields, row_label

COMPARE_SCHEMA_VERSION = "1.0"


@dataclass(frozen=True)
class PairedSigmaResult:
    """Both models at one row (sigma; with drift also time and compensation), paired."""

    sigma: float
    baseline: SigmaResult
    candidate: SigmaResult
    mean_difference: float
    mean_difference_interval: Interval
    kpp_difference: float
    kpp_difference_interval: Interval | None  # None: too few samples below the KPP rank
    time_s: float | None = None  # seconds after programming (drift), None without times
    compensation: str | None = None  # "none" or "global", with time_s

    @property
    def differences(self) -> np.ndarray:
        """Per-sample accuracy differences, candidate - baseline (same draws)."""
        return self.candidate.accuracies - self.baseline.accuracies

    def to_dict(self) -> dict[str, Any]:
        def model(result: SigmaResult) -> dict[str, Any]:
            s = result.summary
            return {
                "mean": s.mean,
                "mean_interval": s.mean_interval.to_dict(),
                "kpp": s.kpp,
                "kpp_interval": s.kpp_interval.to_dict(),
            }

        interval = self.kpp_difference_interval
        return row_fields(self.sigma, self.time_s, self.compensation) | {
            "samples": self.baseline.summary.n,
            "baseline": model(self.baseline),
            "candidate": model(self.candidate),
            "mean_difference": self.mean_difference,
            "mean_difference_interval": self.mean_difference_interval.to_dict(),
            "kpp_difference": self.kpp_difference,
            "kpp_difference_interval": None if interval is None else interval.to_dict(),
        }


#: one-sided error rate of the --fail-if-worse gate: the upper end of the two-sided 95% interval
GATE_ALPHA = 0.025
#: --gate-correction choices: how the gate's error rate is shared over a compare's rows
GATE_CORRECTIONS = {
    "holm": "Holm: the chance that any row fails wrongly is at most 2.5% (family-wise)",
    "per-row": "each row tested at 2.5% one-sided on its own (no multiple-comparison correction)",
}
DEFAULT_GATE_CORRECTION = "holm"


def gate_rule(correction: str, rows: int) -> str:
    """One line stating the gate's decision rule, for the table, JSON and JUnit."""
    if correction == "holm":
        return (
            f"a row fails when its one-sided p-value for 'candidate worse by more than TOL' is "
            f"below Holm's step-down threshold (2.5%/{rows} for the smallest of {rows} rows, "
            f"family-wise error <= 2.5%)"
        )
    return (
        f"a row fails when its 95% interval lies below -TOL (2.5% one-sided per row, "
        f"{rows} rows, no multiple-comparison correction)"
    )


@dataclass(frozen=True)
class WorseGate:
    """``--fail-if-worse`` at one row: fails when the one-sided test of 'worse by more than TOL'
    rejects at the row's threshold (Holm's step-down by default, 2.5% per row otherwise)."""

    sigma: float
    tolerance: float
    mean_difference: float
    interval: Interval
    passed: bool
    time_s: float | None = None  # the row's time and compensation, when the report has drift
    compensation: str | None = None
    p_value: float = math.nan  # one-sided: P(a difference this low | worse by exactly TOL)
    correction: str = DEFAULT_GATE_CORRECTION

    def message(self) -> str:
        level = f"{100 * self.interval.confidence:g}%"
        verdict = "passed" if self.passed else "FAILED"
        rule = "Holm-corrected over the rows" if self.correction == "holm" else "per row"
        return (
            f"gate {verdict}: candidate - baseline mean accuracy at "
            f"{row_label(self.sigma, self.time_s, self.compensation)} is "
            f"{self.mean_difference:+.4f}, its {level} interval "
            f"[{self.interval.low:+.4f}, {self.interval.high:+.4f}], one-sided p = "
            f"{self.p_value:.3g} for worse by more than {self.tolerance:.4f} "
            f"(--fail-if-worse {self.tolerance:g}, {rule})"
        )

    def to_dict(self) -> dict[str, Any]:
        return row_fields(self.sigma, self.time_s, self.compensation) | {
            "tolerance": self.tolerance,
            "mean_difference": self.mean_difference,
            "interval_high": self.interval.high,
            "p_value": self.p_value,
            "correction": self.correction,
            "passed": self.passed,
        }


@dataclass
class CompareReport:
    """Two audits on the same draws, their paired differences per row, and the gate."""

    ftaudit_version: str
    command: list[str]
    baseline: AuditReport
    candidate: AuditReport
    layers: list[dict[str, Any]]  # index, both names, op, canonical shape, params, selected
    results: list[PairedSigmaResult]
    fail_if_worse: float | None
    gates: list[WorseGate]
    elapsed_s: float
    options: dict[str, Any] = field(default_factory=dict)
    gate_correction: str = DEFAULT_GATE_CORRECTION

    def gate_rule(self) -> str | None:
        """The gate's decision rule in one line (None without --fail-if-worse)."""
        if self.fail_if_worse is None:
            return None
        return gate_rule(self.gate_correction, len(self.results))

    def failed_gates(self) -> list[WorseGate]:
        return [gate for gate in self.gates if not gate.passed]

    def to_dict(self) -> dict[str, Any]:
        def model(report: AuditReport) -> dict[str, Any]:
            return {
                **report.model,
                "clean_accuracy": report.clean_accuracy,
                "quantized_accuracy": report.quantized_accuracy,
                "reference_accuracy": report.reference_accuracy,
            }

        base = self.baseline
        return {
            "schema_version": COMPARE_SCHEMA_VERSION,
            "ftaudit_version": self.ftaudit_version,
            "command": self.command,
            "baseline": model(base),
            "candidate": model(self.candidate),
            "layers": self.layers,
            "data": base.data,
            "noise": base.noise,
            "seed": base.seed,
            "samples": base.samples,
            "k": base.k,
            "device": base.device,
            "results": [result.to_dict() for result in self.results],
            "fail_if_worse": self.fail_if_worse,
            "gate_correction": self.gate_correction,
            "gate_rule": self.gate_rule(),
            "gates": [gate.to_dict() for gate in self.gates],
            "options": self.options,
            "elapsed_s": self.elapsed_s,
            "device_effects": base.device_effects,
        }
