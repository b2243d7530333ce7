"""The signed N-bit quantiser of the DAC and the ADC: its scales, and a numpy twin of the
graph's quantiser (``onnx_graph._Builder.quantise``) for tests."""

from __future__ import annotations

import numpy as np


def quantiser_scales(bits: int, full_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale_in, scale_out) of an N-bit signed quantiser over [-full_scale, full_scale]."""
    full_scale = np.asarray(full_scale, np.float32)
    if bits == 1:
        return np.ones_like(full_scale), full_scale
    steps = np.float32(2 ** (bits - 1) - 1)
    return (steps / full_scale).astype(np.float32), (full_scale / steps).astype(np.float32)


def quantise_reference(x: np.ndarray, bits: int, full_scale: np.ndarray) -> np.ndarray:
    """The numpy twin of ``_Builder.quantise`` (tests compare the two)."""
    scale_in, scale_out = quantiser_scales(bits, full_scale)
    scaled = np.asarray(x, np.float32) * scale_in
    if bits == 1:
        return np.sign(scaled) * scale_out
    steps = np.float32(2 ** (bits - 1) - 1)
    return np.round(np.clip(scaled, -steps, steps)) * scale_out
