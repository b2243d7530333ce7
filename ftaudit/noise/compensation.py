"""Global drift compensation (aihwkit's GlobalDriftCompensation): rescale a drifted layer by
the ratio of its calibration read-outs before and after drift.

One job: a fixed seeded batch of input vectors per crossbar layer (its own keyed stream
``(0, layer, CALIBRATION_STREAM)``), the read-out sum |W u| over it, and the gain
alpha = sum|W_0 u| / sum|W_t u|: folded into W_t, or applied to the layer's output after the
ADC where the analog pipeline runs (as aihwkit and a chip do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ftaudit.draws import DEFAULT_RNG, normals
from ftaudit.errors import UserError
from ftaudit.models.base import CrossbarLayer

#: spawn-key tail of the calibration inputs (3-element keys never meet the engine's 2-element)
CALIBRATION_STREAM = 0xCA1B
#: calibration input vectors per layer for global drift compensation
CALIBRATION_VECTORS = 64

COMPENSATIONS = ("none", "global")
COMPENSATION_CHOICES = ("none", "global", "both")
#: other spellings accepted for a compensation mode (reports always say "global")
COMPENSATION_ALIASES = {"gdc": "global"}


def compensation_modes(choice: str | None) -> tuple[str, ...]:
    """The report's compensation rows for ``--compensation`` (None: both)."""
    choice = "both" if choice is None else choice
    choice = COMPENSATION_ALIASES.get(choice, choice)
    if choice not in COMPENSATION_CHOICES:
        raise UserError(
            f"unknown compensation '{choice}'",
            hint="use --compensation none, global (alias gdc) or both",
        )
    return COMPENSATIONS if choice == "both" else (choice,)


def rows_are_inputs(layer: CrossbarLayer) -> bool:
    """True when the stored tensor's first axis is the crossbar's input (MatMul, ConvT)."""
    return layer.transposed or "ConvTranspose" in layer.op


class GlobalDriftCompensation:
    """The calibration read-out of a run's crossbar layers, and the rescaling it gives."""

    def __init__(self, layers: Sequence[CrossbarLayer], seed: int, rng: str = DEFAULT_RNG):
        self.layers = list(layers)
        self._blas: Any = None  # the BLAS thread controller of ``readout``, made on first use
        self.calibration = [self._calibration(layer, seed, rng) for layer in self.layers]

    @staticmethod
    def _calibration(layer: CrossbarLayer, seed: int, rng: str) -> np.ndarray:
        """A fixed seeded batch of standard-normal input vectors for the layer's crossbar.

        Shaped for ``readout``: (vectors, inputs) when the stored tensor's rows are the
        inputs, else (inputs, vectors).
        """
        by_rows = rows_are_inputs(layer)
        fan_in = layer.shape[0] if by_rows else int(np.prod(layer.shape[1:], dtype=np.int64))
        key = (0, layer.index, CALIBRATION_STREAM)
        batch = normals(seed, key, (CALIBRATION_VECTORS, fan_in), rng)
        return batch if by_rows else np.ascontiguousarray(batch.T)

    def readout(self, index: int, weights: np.ndarray) -> float:
        """sum |W u| over the layer's calibration batch u (the outputs' absolute sum)."""
        matrix = weights.reshape(weights.shape[0], -1)
        batch = self.calibration[index]
        # float32 BLAS on one thread: a BLAS thread pool fights the model runtime's threads and
        # the draw thread for the cores (measured on 2 loaded cores: 2-15x slower than one
        # thread), and numpy's einsum does not use BLAS (2-5x slower than one BLAS thread)
        with self._one_blas_thread():
            if rows_are_inputs(self.layers[index]):
                product = np.matmul(batch, matrix)
            else:
                product = np.matmul(matrix, batch)
        return float(np.abs(product).sum(dtype=np.float64))

    def baseline(self, weights: Sequence[np.ndarray]) -> list[float]:
        """The read-outs of the programmed (not yet drifted) weights, one per layer."""
        return [self.readout(i, w) for i, w in enumerate(weights)]

    def gains(self, weights: Sequence[np.ndarray], baseline: Sequence[float]) -> list[float]:
        """alpha = sum|W_0 u| / sum|W_t u| per layer (1 where the drifted read-out is 0): the
        digital gain on each layer's output (the analog pipeline applies it after the ADC)."""
        result = []
        for i, (w, ref) in enumerate(zip(weights, baseline, strict=True)):
            now = self.readout(i, w)
            result.append(ref / now if now > 0 else 1.0)
        return result

    @staticmethod
    def apply(
        weights: Sequence[np.ndarray], gains: Sequence[float], out: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """alpha * W_t per layer into ``out``: the gains folded into the weights, the same
        output as a digital gain where the product is linear (no ADC, no read noise)."""
        return [
            np.multiply(w, np.float32(alpha), out=target)
            for w, alpha, target in zip(weights, gains, out, strict=True)
        ]

    def _one_blas_thread(self) -> Any:
        """A context in which BLAS runs on the calling thread only (threadpoolctl)."""
        if self._blas is None:
            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController()
        return self._blas.limit(limits=1, user_api="blas")
