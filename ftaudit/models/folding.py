"""BatchNorm folded into the preceding convolution: the weights a chip stores.

A deployed network has no BatchNorm: the per-channel factor gamma / sqrt(var + eps) is
multiplied into the convolution's weights, so the crossbar stores ``W * s``. Device models that
quantise or add noise relative to a layer's range give different numbers for ``W`` and ``W * s``,
so a TorchScript model with BatchNorm unfused and its ONNX export with BatchNorm folded would
disagree. ftaudit therefore perturbs the folded weights in every format (``fold_scales``) and
runs the model with ``perturbed / s`` in place of ``W``, followed by the unchanged BatchNorm,
which computes exactly the folded layer with the perturbed weights. Per-weight multiplicative
noise (lognormal) gives the same numbers either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ftaudit.models.base import ModelRunner


def fold_scale(
    gamma: np.ndarray | None, var: np.ndarray, eps: float, weight_ndim: int
) -> np.ndarray | None:
    """gamma / sqrt(var + eps) shaped to broadcast over a conv weight's output channels, or
    None when it cannot be divided out again (a zero or non-finite factor)."""
    var = np.asarray(var, dtype=np.float32)
    g = np.ones_like(var) if gamma is None else np.asarray(gamma, dtype=np.float32)
    scale = g / np.sqrt(var + np.float32(eps))
    if scale.ndim != 1 or not np.all(np.isfinite(scale)) or np.any(scale == 0):
        return None
    return scale.reshape(-1, *([1] * (weight_ndim - 1)))


class FoldedRunner(ModelRunner):
    """A runner fed folded crossbar weights: each is divided by its BatchNorm factor before
    the wrapped runner (which still runs the BatchNorm) receives it."""

    def __init__(self, inner: ModelRunner, scales: Mapping[str, np.ndarray]) -> None:
        self.inner = inner
        self.scales = dict(scales)
        self.runtime_errors = inner.runtime_errors

    def __getattr__(self, name: str) -> Any:  # fallback, device, ... of the wrapped runner
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def unfold(self, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            name: (array / self.scales[name]).astype(array.dtype, copy=False)
            if name in self.scales
            else array
            for name, array in weights.items()
        }

    @property
    def random_reads(self) -> bool:  # type: ignore[override]
        return self.inner.random_reads

    def set_sample(self, seed: int, sample: int | None) -> None:
        self.inner.set_sample(seed, sample)

    def set_samples(self, seed: int, samples: Sequence[int]) -> None:
        self.inner.set_samples(seed, samples)

    @property
    def digital_gains(self) -> bool:  # type: ignore[override]
        return self.inner.digital_gains

    def set_gains(self, gains: Mapping[str, float] | None) -> None:
        self.inner.set_gains(gains)  # a gain scales the output: folding leaves it as it is

    def set_gain_sets(self, gains: Sequence[Mapping[str, float] | None]) -> None:
        self.inner.set_gain_sets(gains)

    def bind_data(self, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> None:
        self.inner.bind_data(x, y, batch_size=batch_size)
        self._labels = np.asarray(y)

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        self.inner.set_weights(self.unfold(weights))

    def logits(self) -> np.ndarray:
        return self.inner.logits()

    def count_correct(self) -> int:
        return self.inner.count_correct()

    def count_correct_many(self, weight_sets: Sequence[Mapping[str, np.ndarray]]) -> list[int]:
        return self.inner.count_correct_many([self.unfold(w) for w in weight_sets])
