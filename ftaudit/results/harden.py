"""The result of ``harden``: what it did and the paired before/after evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftaudit.results import AuditReport

#: a clean-accuracy loss after hardening above this (3 points) is called out in the summary
CLEAN_DROP_NOTICE = 0.03


@dataclass
class HardenReport:
    """What ``harden`` did and the paired evaluation of the input and the hardened model."""

    ftaudit_version: str
    command: list[str]
    method: str
    input_model: str
    output_model: str
    settings: dict[str, Any]
    validation: dict[str, Any]
    details: dict[str, Any]
    history: list[dict[str, Any]]
    before: AuditReport
    after: AuditReport
    elapsed_s: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ftaudit_version": self.ftaudit_version,
            "command": self.command,
            "method": self.method,
            "input_model": self.input_model,
            "output_model": self.output_model,
            "settings": self.settings,
            "validation": self.validation,
            "details": self.details,
            "history": self.history,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "paired_differences": self.paired_differences(),
            "elapsed_s": self.elapsed_s,
            "notes": self.notes,
        }

    def paired_differences(self) -> list[dict[str, float]]:
        """After minus before, per sigma: mean of the per-sample differences (same draws)."""
        rows = []
        for b, a in zip(self.before.results, self.after.results, strict=True):
            n = min(len(a.accuracies), len(b.accuracies))
            diff = a.accuracies[:n] - b.accuracies[:n]
            rows.append(
                {
                    "sigma": a.sigma,
                    "mean_difference": float(diff.mean()),
                    "kpp_difference": a.summary.kpp - b.summary.kpp,
                }
            )
        return rows


def trice_summary(details: dict[str, Any]) -> str:
    """One line on what TRICE exported, true to the search's state (the table's caption)."""
    status, sigma_t = details.get("search_status"), details.get("sigma_t")
    trained = "no epoch ran" if sigma_t is None else f"trained at sigma_t = {sigma_t:.4g}"
    th = f"th = {details['threshold']:g}"
    if status == "converged":
        return f"TRICE chose sigma_t = {sigma_t:.4g} ({th}; the search converged)"
    search = details.get("search", {})
    if status == "not run":
        return (
            f"TRICE's search never ran (epochs <= warm-up {search.get('warmup', '?')}): the "
            f"exported model is the mid copy, {trained} in its last epoch ({th})"
        )
    return (
        f"TRICE's search did not converge (interval [{search.get('start', 0):.4g}, "
        f"{search.get('end', 0):.4g}] after {len(search.get('trace', []))} update(s)): the "
        f"exported model {trained} in its last epoch ({th})"
    )
