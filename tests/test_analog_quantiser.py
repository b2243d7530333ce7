"""The DAC/ADC quantiser's ONNX forms (QuantizeLinear/DequantizeLinear, Round, expanded
scales) against an independent float32 numpy quantiser, through an optimised ORT session."""

from __future__ import annotations

import numpy as np
import pytest

from ftaudit.analog.onnx_graph import _Builder
from ftaudit.analog.quantiser import quantise_nodes


def _expected(x, bits, full, gain):
    """round-half-even(clip(x * (s / full), -s, s)) * (full / s) * gain in float32 (s = steps);
    1 bit: sign(x) * full * gain."""
    full = np.asarray(full, np.float32)
    if bits == 1:
        return np.sign(x * np.float32(1)) * (full * np.float32(gain))
    steps = np.float32(2 ** (bits - 1) - 1)
    level = np.round(np.clip(x * (steps / full), -steps, steps))
    return level * ((full / steps) * np.float32(gain))


def _run(x, bits, full, *, gain, shape, opset=17, qdq=True):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    b = _Builder("q_", opset)
    out = quantise_nodes(b, "x", bits, full, gain="g", shape=shape, qdq=qdq)
    b.nodes.append(helper.make_node("Identity", [out], ["y"]))
    graph = helper.make_graph(
        b.nodes,
        "q",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape)),
            helper.make_tensor_value_info("g", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        b.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    y = session.run(None, {"x": x, "g": np.array(gain, np.float32)})[0]
    return y, {n.op_type for n in b.nodes}


def _inputs(shape, full, bits, seed=0):
    """Values over twice the range, plus exact rounding ties (full / steps is a power of 2)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 * np.max(full)).astype(np.float32)
    if bits > 1:
        steps = 2 ** (bits - 1) - 1
        step = np.max(full) / steps
        ties = (np.arange(-steps - 2, steps + 2) + 0.5) * step
        flat = x.reshape(-1)
        flat[: ties.size] = ties[: flat.size].astype(np.float32)
    return x


CASES = [
    # (image shape, per-channel?, bits, op that must carry the rounding)
    ((6, 8, 8), True, 8, "QuantizeLinear"),  # per-channel blocks of 64: DequantizeLinear axis 1
    ((6, 4, 4), True, 4, "Round"),  # small blocks: Round, scales expanded over the image
    ((16,), True, 6, "Round"),  # Gemm columns: one value per block
    ((3, 9, 9), False, 8, "QuantizeLinear"),  # one scale (the DAC's range)
    ((6, 8, 8), True, 12, "Round"),  # beyond int8
    ((6, 8, 8), True, 1, "Sign"),
]


@pytest.mark.parametrize(("shape", "per_channel", "bits", "rounding"), CASES)
@pytest.mark.parametrize("gain", [1.0, 1.37])
def test_every_form_equals_the_float32_quantiser(shape, per_channel, bits, rounding, gain):
    steps = 2 ** (bits - 1) - 1 if bits > 1 else 1
    if per_channel:  # full ranges whose steps are powers of two, so ties are exact
        full = (steps * 0.25 * 2.0 ** (np.arange(shape[0]) % 3)).astype(np.float32)
        full = full.reshape((shape[0],) + (1,) * (len(shape) - 1))
    else:
        full = np.float32(steps * 0.5)
    x = _inputs((5, *shape), full, bits)
    y, ops = _run(x, bits, full, gain=gain, shape=shape)
    assert rounding in ops
    np.testing.assert_array_equal(y, _expected(x, bits, full, gain))


def test_old_opsets_and_the_dac_keep_round():
    shape, bits = (6, 8, 8), 8
    full = np.full((6, 1, 1), 127 * 0.25, np.float32)
    x = _inputs((4, *shape), full, bits, seed=1)
    for kwargs in ({"opset": 11}, {"qdq": False}):
        y, ops = _run(x, bits, full, gain=1.0, shape=shape, **kwargs)
        assert "QuantizeLinear" not in ops and "Round" in ops
        np.testing.assert_array_equal(y, _expected(x, bits, full, 1.0))
