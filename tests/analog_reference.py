"""Tiny one-layer ONNX models and an explicit float64 numpy twin of the analog forward pipeline
(docs/analog.md's formulas, draws from the documented keys), shared by the analog tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import keyed_normals


def save_graph(path: Path, nodes, input_shape: list, out: int, initializers) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", out])],
        [numpy_helper.from_array(array, name) for name, array in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def one_gemm_model(path: Path, weight: np.ndarray, bias: np.ndarray) -> Path:
    from onnx import helper

    out, features = weight.shape
    gemm = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    return save_graph(path, [gemm], ["n", features], out, {"w": weight, "b": bias})


def one_matmul_model(path: Path, weight: np.ndarray, bias: np.ndarray) -> Path:
    """``x @ W^T + b`` as MatMul and Add: the weight stored (in, out), as the graph reads it."""
    from onnx import helper

    out, features = weight.shape
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["y"]),
    ]
    return save_graph(
        path, nodes, ["n", features], out, {"w": np.ascontiguousarray(weight.T), "b": bias}
    )


def quantise(x: np.ndarray, bits: int, full: np.ndarray) -> np.ndarray:
    steps = 2 ** (bits - 1) - 1
    return np.round(np.clip(x / full * steps, -steps, steps)) * full / steps


def reference_gemm(x, clean, weight, bias, pipeline, *, seed, sample, gain=1.0):
    """One Gemm layer through the pipeline in float64 numpy, from docs/analog.md's formulas:
    ranges on the ideal layer over all of ``x`` (fewer than 256 images), column scaling,
    draws from the documented keys ((0x5EAD or 0x3EAD, sample, layer, tile, block)); the summed
    tiles times the digital ``gain`` (global drift compensation's alpha), then the bias."""
    x, clean, weight = (a.astype(np.float64) for a in (x, clean, weight))
    rows, cols = pipeline.tile_size
    r = np.abs(x).max()
    scale = np.abs(clean).max(axis=1)  # per column, over every row
    xq = quantise(x, pipeline.dac_bits, r)
    total = np.zeros((len(x), len(weight)))
    for t, r0 in enumerate(range(0, x.shape[1], rows)):
        r1 = min(r0 + rows, x.shape[1])
        ideal = np.abs(x[:, r0:r1] @ clean[:, r0:r1].T / scale).max(axis=0) / r
        bound = np.empty_like(ideal)
        for c0 in range(0, len(bound), cols):
            bound[c0 : c0 + cols] = ideal[c0 : c0 + cols].max()
        unit = scale * r
        z = keyed_normals(seed, (0x5EAD, sample, 0, t, 0), (64, len(weight)))[: len(x)]
        z_w = keyed_normals(seed, (0x3EAD, sample, 0, t, 0), (64, len(weight)))[: len(x)]
        p = xq[:, r0:r1] @ weight[:, r0:r1].T
        p = p + pipeline.read_noise * unit * z
        norm = np.sqrt((xq[:, r0:r1] ** 2).sum(axis=1, keepdims=True))
        p = p + pipeline.weight_read_noise * scale * norm * z_w
        total += quantise(p, pipeline.adc_bits, bound * unit)
    return gain * total + bias
