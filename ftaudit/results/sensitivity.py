"""The result of ``ftaudit.sensitivity``: the per-layer ranking and the keep-digital selection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ftaudit.results import AuditReport, Interval, SigmaResult, row_fields, row_label

SENSITIVITY_SCHEMA_VERSION = "1.0"
RANKING = (
    "mean over the report rows (each sigma; with --time each sigma, time and compensation) of "
    "the KPP drop from the clean accuracy when only the layer is perturbed; ties broken by the "
    "KPP recovered by keeping the layer exact, then by layer position"
)


@dataclass(frozen=True)
class SigmaPoint:
    """Mean and KPP of one configuration (a set of perturbed layers) at one report row: a
    sigma, and with drift also a time and a compensation."""

    sigma: float
    samples: int
    mean: float
    mean_interval: Interval
    kpp: float
    kpp_interval: Interval
    time_s: float | None = None  # seconds after programming (drift), None without times
    compensation: str | None = None  # "none" or "global", with time_s

    @classmethod
    def from_result(cls, result: SigmaResult) -> SigmaPoint:
        s = result.summary
        return cls(
            result.sigma,
            s.n,
            s.mean,
            s.mean_interval,
            s.kpp,
            s.kpp_interval,
            result.time_s,
            result.compensation,
        )

    @classmethod
    def exact(cls, row: Any, accuracy: float) -> SigmaPoint:
        """Nothing perturbed at ``row`` (a ``device_effects.Condition``: sigma, time_s,
        compensation): the clean accuracy, known exactly (no sample was needed). Exact with
        drift and faults too: layers that are not perturbed get neither."""
        point = Interval(accuracy, accuracy, 0.95, "exact")
        return cls(row.sigma, 0, accuracy, point, accuracy, point, row.time_s, row.compensation)

    @property
    def label(self) -> str:
        """'sigma=0.3', or 'sigma=0.3, t=1y, compensation=global' with drift."""
        return row_label(self.sigma, self.time_s, self.compensation)

    def to_dict(self) -> dict[str, Any]:
        return row_fields(self.sigma, self.time_s, self.compensation) | {
            "samples": self.samples,
            "mean": self.mean,
            "mean_interval": self.mean_interval.to_dict(),
            "kpp": self.kpp,
            "kpp_interval": self.kpp_interval.to_dict(),
        }


def points_of(report: AuditReport) -> list[SigmaPoint]:
    return [SigmaPoint.from_result(result) for result in report.results]


@dataclass(frozen=True)
class LayerSensitivity:
    """One analog layer: only it perturbed, all but it perturbed, and what follows per row."""

    name: str
    index: int
    op: str
    params: int
    rank: int  # 1 = most sensitive
    only: list[SigmaPoint]
    all_but: list[SigmaPoint]
    kpp_drop: list[float]  # clean accuracy - KPP with only this layer perturbed
    kpp_recovered: list[float]  # KPP with all but this layer - KPP with all perturbed

    @property
    def score(self) -> float:
        """The ranking metric: the KPP drop averaged over the rows (sigma, time, compensation)."""
        return float(np.mean(self.kpp_drop))

    @property
    def recovered_score(self) -> float:
        return float(np.mean(self.kpp_recovered))

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "name": self.name,
            "index": self.index,
            "op": self.op,
            "params": self.params,
            "score": self.score,
            "recovered_score": self.recovered_score,
            "kpp_drop": self.kpp_drop,
            "kpp_recovered": self.kpp_recovered,
            "only": [p.to_dict() for p in self.only],
            "all_but": [p.to_dict() for p in self.all_but],
        }


@dataclass(frozen=True)
class TargetStep:
    """One evaluated configuration of the greedy search: these layers digital, the rest analog."""

    digital: list[str]
    points: list[SigmaPoint]
    meets: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "digital": self.digital,
            "kpp": [p.kpp for p in self.points],
            "mean": [p.mean for p in self.points],
            "meets": self.meets,
        }


#: target statuses that leave no analog layer (a warning: the user likely asked for too much)
OUT_OF_REACH = ("all_digital", "unreachable")


@dataclass(frozen=True)
class TargetSelection:
    """The layers to keep digital so the KPP reaches ``target_kpp`` at every row."""

    target_kpp: float
    status: str  # "already_met", "met", "all_digital" or "unreachable"
    digital: list[str]
    steps: list[TargetStep]
    clean_accuracy: float
    rows: str = "sigma"  # what the rows are, in words: "sigma" or "sigma, time and compensation"

    def message(self) -> str:
        target = f"{100 * self.target_kpp:.2f}%"
        if self.status == "already_met":
            return (
                f"KPP >= {target} at every {self.rows} with all layers analog: none need be digital"
            )
        if self.status == "unreachable":
            return (
                f"KPP {target} is out of reach: even with every layer digital the accuracy is "
                f"the clean {100 * self.clean_accuracy:.2f}%"
            )
        if self.status == "all_digital":
            return (
                f"KPP {target} is out of reach with any layer analog: only keeping all "
                f"{len(self.digital)} analog layer(s) digital reaches it (no analog compute left);"
                f" lower --target-kpp or harden the model"
            )
        names = ", ".join(self.digital)
        return f"keep {len(self.digital)} layer(s) digital for KPP >= {target}: {names}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_kpp": self.target_kpp,
            "status": self.status,
            "digital": self.digital,
            "message": self.message(),
            "steps": [step.to_dict() for step in self.steps],
        }


@dataclass
class SensitivityReport:
    """Per-layer sensitivity ranking of one model, with the optional keep-digital selection."""

    ftaudit_version: str
    command: list[str]
    model: dict[str, Any]
    data: dict[str, Any]
    noise: dict[str, Any]
    seed: int
    samples: int
    k: float
    device: str
    sigmas: list[float]  # with drift, every row's sigma is one of these (see all_layers)
    clean_accuracy: float
    quantized_accuracy: float | None  # all analog layers quantised (device models)
    all_layers: list[SigmaPoint]  # every analog layer perturbed, one point per row
    layers: list[LayerSensitivity]  # in rank order, most sensitive first
    always_digital: list[str]  # layers outside --layers/--exclude: never perturbed
    target: TargetSelection | None
    elapsed_s: float
    options: dict[str, Any] = field(default_factory=dict)
    device_effects: dict[str, Any] | None = None  # drift and stuck-at faults, as in audit
    warnings: list[str] = field(default_factory=list)  # printed by the CLI; not in the JSON

    @property
    def rows(self) -> list[SigmaPoint]:
        """The report rows in audit's order (sigma-major, then time, then compensation)."""
        return self.all_layers

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SENSITIVITY_SCHEMA_VERSION,
            "ftaudit_version": self.ftaudit_version,
            "command": self.command,
            "model": self.model,
            "data": self.data,
            "noise": self.noise,
            "seed": self.seed,
            "samples": self.samples,
            "k": self.k,
            "device": self.device,
            "sigmas": self.sigmas,
            "clean_accuracy": self.clean_accuracy,
            "quantized_accuracy": self.quantized_accuracy,
            "ranking": RANKING,
            "all_layers": [p.to_dict() for p in self.all_layers],
            "layers": [layer.to_dict() for layer in self.layers],
            "always_digital": self.always_digital,
            "target": None if self.target is None else self.target.to_dict(),
            "options": self.options,
            "elapsed_s": self.elapsed_s,
            "device_effects": self.device_effects,
        }
