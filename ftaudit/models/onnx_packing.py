"""The in-memory ONNX rewrite behind ``ftaudit.models.packed_inputs``: one packed data input
(N, k, *row) whose slice ``[:, i]`` (a Gather, then a Cast back to the input's type) stands for
the model's i-th input."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ftaudit.errors import UserError
from ftaudit.models.onnx_io import tensor_spec
from ftaudit.models.packed_inputs import PACKED_NAME, flat_rows, packed_spec
from ftaudit.models.tensor_spec import TensorSpec


def pack_onnx_inputs(model: Any, inputs: Sequence[Any], path: Any) -> TensorSpec:
    """Rewrite ``model`` (in memory) to take one packed input in place of ``inputs`` (graph
    value infos); returns the packed input's spec."""
    import onnx

    specs = [tensor_spec(value) for value in inputs]
    packed = packed_spec(specs, path)
    graph = model.graph
    taken = {v.name for v in [*graph.input, *graph.initializer]} | {
        out for node in graph.node for out in node.output
    }
    if PACKED_NAME in taken:
        raise UserError(
            f"{path} already has a value named {PACKED_NAME}",
            hint="rename it; ftaudit uses that name for the packed inputs",
        )
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(packed.dtype))
    flat = flat_rows(specs)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if flat is not None and opset < 10:
        raise UserError(
            f"{path} has data inputs of different shapes and opset {opset}; ftaudit packs "
            "them with Slice, which takes its bounds as inputs from opset 10",
            hint="export the model with opset 10 or later",
        )
    nodes, start = [], 0
    for index, value in enumerate(inputs):
        position = f"{PACKED_NAME}/{index}"
        target = value.type.tensor_type.elem_type
        taken_out = value.name if target == elem else f"{position}/packed"
        constants: dict[str, np.ndarray] = {}
        if flat is None:  # stacked: packed[:, index]
            constants["index"] = np.array(index, np.int64)
            nodes.append(
                onnx.helper.make_node(
                    "Gather",
                    [PACKED_NAME, f"{position}/index"],
                    [taken_out],
                    axis=1,
                    name=position,
                )
            )
        else:  # flat: this input's slice of each sample's row, in its own shape
            size = math.prod(flat[index])
            constants |= {
                "starts": np.array([start], np.int64),
                "ends": np.array([start + size], np.int64),
                "axes": np.array([1], np.int64),
                "shape": np.array([-1, *flat[index]], np.int64),
            }
            start += size
            bounds = [f"{position}/{k}" for k in ("starts", "ends", "axes")]
            nodes += [
                onnx.helper.make_node(
                    "Slice", [PACKED_NAME, *bounds], [f"{position}/slice"], name=position
                ),
                onnx.helper.make_node(
                    "Reshape", [f"{position}/slice", f"{position}/shape"], [taken_out]
                ),
            ]
        graph.initializer.extend(
            onnx.numpy_helper.from_array(array, f"{position}/{key}")
            for key, array in constants.items()
        )
        if target != elem:
            nodes.append(
                onnx.helper.make_node(
                    "Cast", [taken_out], [value.name], to=target, name=f"{position}/cast"
                )
            )
    data_names = {value.name for value in inputs}
    kept = [v for v in graph.input if v.name not in data_names]
    first = inputs[0]
    new_input = onnx.helper.make_tensor_value_info(
        PACKED_NAME,
        elem,
        [_dim_param(first, 0), *[d if d else None for d in (packed.shape or ())[1:]]],
    )
    del graph.input[:]
    graph.input.extend([new_input, *kept])
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *old])
    return packed


def _dim_param(value: Any, axis: int) -> str | int:
    dims = value.type.tensor_type.shape.dim
    if len(dims) > axis and dims[axis].HasField("dim_value"):
        return int(dims[axis].dim_value)
    return dims[axis].dim_param if len(dims) > axis and dims[axis].dim_param else "batch"
