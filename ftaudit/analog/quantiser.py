"""The signed N-bit quantiser of the DAC and the ADC: its scales and its ONNX nodes
(``tests/test_analog_quantiser.py`` checks them against an independent numpy quantiser).

The quantiser is ``clip(round(x * scale_in), -s, s) * scale_out`` with ``s = 2**(bits-1) - 1``.
In the graph, up to 8 bits, the rounding is ``QuantizeLinear`` (scale 1, ties to even like
``Round``) to int8 and the output scale a ``DequantizeLinear``: the same numbers as
``Round`` then ``Mul``, in two vectorised passes where ``Round`` alone costs about two.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: per-channel DequantizeLinear only when each channel's block holds this many values per
#: image: ONNX Runtime converts block by block, so one-value blocks (Gemm, MatMul columns) run
#: at a fraction of a broadcast Mul's speed (measured: 29x slower on 512 x 256)
MIN_AXIS_BLOCK = 64


def quantiser_scales(bits: int, full_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale_in, scale_out) of an N-bit signed quantiser over [-full_scale, full_scale]."""
    full_scale = np.asarray(full_scale, np.float32)
    if bits == 1:
        return np.ones_like(full_scale), full_scale
    steps = np.float32(2 ** (bits - 1) - 1)
    return (steps / full_scale).astype(np.float32), (full_scale / steps).astype(np.float32)


def quantise_nodes(
    b: Any,
    x: str,
    bits: int,
    full_scale: np.ndarray,
    *,
    gain: str | None = None,
    shape: tuple[int, ...] | None = None,
    qdq: bool = True,
) -> str:
    """Append the quantiser of ``x`` over ``[-full_scale, full_scale]`` (a scalar, or one value
    per channel shaped to broadcast over one image, e.g. (C, 1, 1)) to the builder ``b``
    (``onnx_graph._Builder``); ``gain``: a scalar graph value multiplied into the output scale
    (the layer's digital gain, one pass fewer over the output); ``shape``: one image's shape
    of ``x`` (without the batch axis), which picks the fastest exact form. ``qdq=False`` keeps
    ``Round`` (the DAC: a DequantizeLinear feeding a Conv is a pattern ONNX Runtime's QDQ
    fusions rewrite, quantising constant weights, which breaks the pre-packed weight layout)."""
    scale_in, scale_out = quantiser_scales(bits, full_scale)
    scaled = b.op("Mul", [x, b.const(scale_in, "qin")])
    per_channel = scale_out.size > 1
    block = int(np.prod(shape[1:])) if shape is not None and len(shape) > 1 else 1
    if bits == 1:
        return b.op("Mul", [b.op("Sign", [scaled]), _output_scale(b, scale_out, gain)])
    steps = float(2 ** (bits - 1) - 1)
    lo = b.const(np.array(-steps, np.float32), "lo")
    hi = b.const(np.array(steps, np.float32), "hi")
    clipped = b.op("Clip", [scaled, lo, hi])
    channel_axis = (
        per_channel
        and shape is not None
        and scale_out.shape == (shape[0],) + (1,) * (len(shape) - 1)
    )
    if (
        qdq
        and bits <= 8
        and b.opset >= 13
        and (not per_channel or (channel_axis and block >= MIN_AXIS_BLOCK))
    ):
        one = b.const(np.array(1, np.float32), "one")
        level = b.op("QuantizeLinear", [clipped, one, b.const(np.array(0, np.int8), "zero")])
        if not per_channel:
            return b.op("DequantizeLinear", [level, _output_scale(b, scale_out.reshape(()), gain)])
        scale = _output_scale(b, scale_out.reshape(-1), gain)
        zeros = b.const(np.zeros(scale_out.size, np.int8), "zeros")  # ORT wants them explicit
        return b.op("DequantizeLinear", [level, scale, zeros], axis=1)
    if per_channel and shape is not None and 1 < block < MIN_AXIS_BLOCK and channel_axis:
        # one image's worth of scales: ONNX Runtime broadcasts it in one span per image
        scale_out = np.ascontiguousarray(np.broadcast_to(scale_out, shape))
    return b.op("Mul", [b.op("Round", [clipped]), _output_scale(b, scale_out, gain)])


def _output_scale(b: Any, scale_out: np.ndarray, gain: str | None) -> str:
    """The output scale as a constant, times the scalar ``gain`` value when given."""
    scale = b.const(np.asarray(scale_out, np.float32), "qout")
    return scale if gain is None else b.op("Mul", [scale, gain])
