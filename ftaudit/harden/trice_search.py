"""TRICE's adaptive quartile search for the training noise scale sigma_t (Algorithm 3, III-E).

Three copies of the model train side by side, at the quartiles left, mid and right of
[start, end]. After each epoch from ``warmup`` on, the caller measures each copy's k-th
percentile performance (KPP) under the evaluation noise at sigma_d and calls ``update``: the
interval shrinks towards the best candidate and the caller copies the winner's weights to the
other two. Once end - start < tolerance the three copies are merged and one model trains at
``start`` (Alg. 3 lines 4-6). The search relies on the KPP being unimodal in sigma_t (TRICE
Fig. 4). It is pure state, with no torch and no I/O, so the trainer, checkpoints and the report
share it.

Defaults (TRICE IV-B, used for every experiment in the paper): start = 0, end = 2 * sigma_d,
threshold th = 2, warm-up 5 epochs, 100 epochs, N_train = 300 Monte Carlo samples per KPP
estimate. The paper searches sigma_t only and fixes th by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: lower end of the initial sigma_t interval (TRICE IV-B)
DEFAULT_START = 0.0
#: upper end of the initial sigma_t interval, as a multiple of the device sigma_d (TRICE IV-B)
DEFAULT_END_FACTOR = 2.0
#: RC-Gaussian censoring threshold th, in units of sigma_t (TRICE IV-B)
DEFAULT_THRESHOLD = 2.0
#: epochs trained before the first update of the interval (TRICE IV-B: warm = 5)
DEFAULT_WARMUP = 5
#: training epochs (TRICE IV-B: ep = 100)
DEFAULT_EPOCHS = 100
#: Monte Carlo samples per KPP estimate during training (TRICE IV-B: N_train = 300)
DEFAULT_EVAL_SAMPLES = 300
#: the search stops once end - start falls below this (Alg. 3 line 4)
DEFAULT_TOLERANCE = 1e-4

#: index of each candidate in ``candidates()`` and in the ``kpps`` passed to ``update``
LEFT, MID, RIGHT = 0, 1, 2


@dataclass
class TriceSearch:
    """The interval [start, end] searched for sigma_t, plus one trace entry per update.

    Each trace entry holds the epoch, the interval ``start``/``end`` the candidates came from,
    the ``candidates`` (left, mid, right), their ``kpps`` and the ``winner`` index.
    """

    start: float
    end: float
    warmup: int
    tolerance: float = DEFAULT_TOLERANCE
    trace: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.start, self.end = float(self.start), float(self.end)
        self.tolerance = float(self.tolerance)
        if not (math.isfinite(self.start) and math.isfinite(self.end)):
            raise ValueError(f"search bounds must be finite, got [{self.start}, {self.end}]")
        if self.start < 0.0 or self.end < self.start:
            raise ValueError(
                f"search bounds need 0 <= start <= end, got [{self.start}, {self.end}]"
            )
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warm-up must be a whole number of epochs >= 0, got {self.warmup!r}")
        if not (math.isfinite(self.tolerance) and self.tolerance > 0.0):
            raise ValueError(f"search tolerance must be finite and > 0, got {self.tolerance}")

    @classmethod
    def for_sigma(
        cls,
        sigma_d: float,
        *,
        warmup: int = DEFAULT_WARMUP,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> TriceSearch:
        """The paper's initial search for device sigma_d: [0, 2 * sigma_d] (TRICE IV-B)."""
        return cls(
            start=DEFAULT_START,
            end=DEFAULT_END_FACTOR * float(sigma_d),
            warmup=warmup,
            tolerance=tolerance,
        )

    def converged(self) -> bool:
        """True once end - start < tolerance: one merged model trains at ``start`` (Alg. 3 l. 4)."""
        return self.end - self.start < self.tolerance

    @property
    def scale(self) -> float:
        """The single training scale after convergence: ``start``, as in Alg. 3 line 6."""
        return self.start

    def candidates(self) -> tuple[float, float, float]:
        """The quartiles (left, mid, right) of [start, end]: the three copies' sigma_t."""
        width = self.end - self.start
        return (
            self.start + 0.25 * width,
            self.start + 0.5 * width,
            self.start + 0.75 * width,
        )

    def should_update(self, epoch: int) -> bool:
        """Whether to evaluate the copies and call ``update`` after ``epoch`` (0-based)."""
        return epoch >= self.warmup and not self.converged()

    def update(self, epoch: int, kpps: tuple[float, float, float]) -> int:
        """Shrink [start, end] towards the best of (left, mid, right); return the winner's index.

        Alg. 3 lines 20-27: mid best -> start, end = left, right; left best -> end = right;
        right best -> start = left. Ties follow the paper's if-order: mid, then left, then right.
        The caller copies the winner's weights to the other two copies.
        """
        if not self.should_update(epoch):
            state = "converged" if self.converged() else f"in warm-up (until epoch {self.warmup})"
            raise ValueError(f"no update at epoch {epoch}: the search is {state}")
        if len(kpps) != 3:
            raise ValueError(f"update needs 3 KPP values (left, mid, right), got {len(kpps)}")
        values = [float(k) for k in kpps]
        if any(math.isnan(k) for k in values):
            raise ValueError(f"KPP values must be numbers, got {values}")

        left, mid, right = self.candidates()
        best = max(values)
        if values[MID] == best:
            winner = MID
            new_start, new_end = left, right
        elif values[LEFT] == best:
            winner = LEFT
            new_start, new_end = self.start, right
        else:
            winner = RIGHT
            new_start, new_end = left, self.end

        self.trace.append(
            {
                "epoch": int(epoch),
                "start": self.start,
                "end": self.end,
                "candidates": [left, mid, right],
                "kpps": values,
                "winner": winner,
            }
        )
        self.start, self.end = new_start, new_end
        return winner

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot, for checkpoints and the harden report."""
        return {
            "start": self.start,
            "end": self.end,
            "warmup": self.warmup,
            "tolerance": self.tolerance,
            "converged": self.converged(),
            "trace": [
                {**entry, "candidates": list(entry["candidates"]), "kpps": list(entry["kpps"])}
                for entry in self.trace
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TriceSearch:
        """Rebuild a search from ``to_dict`` output (``converged`` is derived, so ignored)."""
        return cls(
            start=data["start"],
            end=data["end"],
            warmup=data["warmup"],
            tolerance=data.get("tolerance", DEFAULT_TOLERANCE),
            trace=[
                {**entry, "candidates": list(entry["candidates"]), "kpps": list(entry["kpps"])}
                for entry in data.get("trace", [])
            ],
        )


def exported_sigma_t(history: list[dict[str, Any]]) -> float | None:
    """The sigma_t at which the exported copy trained in the last epoch (None: no epoch ran).

    Read from the last epoch's record, not from the search interval, which an update has
    already shrunk: after an update it is the winner's candidate (its weights went to every
    copy, and the merged model of a converged search starts from them); in a converged epoch the
    one model's scale; before any update (warm-up) the mid copy's, the one exported.
    """
    if not history:
        return None
    last = history[-1]
    candidates = last["candidates"]
    if len(candidates) == 1:
        return float(candidates[0])
    return float(candidates[int(last.get("winner", 1))])


def search_status(search: TriceSearch) -> str:
    """'converged', 'not converged' (updates ran, the interval is still wider than the
    tolerance) or 'not run' (no update: every epoch was in the warm-up)."""
    if search.converged():
        return "converged"
    return "not converged" if search.trace else "not run"
