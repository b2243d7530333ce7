"""Static shapes of an ONNX graph's values (for MAC counts), inferred without copying its
weights."""

from __future__ import annotations

import math
from typing import Any

from ftaudit.models.onnx_io import tensor_spec


def _onnx():
    import onnx

    return onnx


#: initializers that shape inference may read as values (shapes, axes, sizes) are kept
_SHAPE_TENSOR_TYPES = (6, 7)  # INT32, INT64
_SMALL_TENSOR = 64


def _without_weights(model: Any) -> Any:
    """A copy of ``model`` whose large non-integer initializers are declared graph inputs of
    the same type and shape: shape inference gets the same answer without copying the
    weights (twice: it returns another copy)."""
    onnx = _onnx()
    probe = onnx.ModelProto()
    graph = model.graph
    weights = [
        t
        for t in graph.initializer
        if t.data_type not in _SHAPE_TENSOR_TYPES and math.prod(t.dims) > _SMALL_TENSOR
    ]
    if not weights:
        probe.CopyFrom(model)
        return probe
    skipped = {id(t) for t in weights}
    kept = [t for t in graph.initializer if id(t) not in skipped]
    declared = {i.name for i in graph.input}
    inputs = list(graph.input) + [
        onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in weights
        if t.name not in declared
    ]
    probe.graph.CopyFrom(
        onnx.helper.make_graph(
            list(graph.node),
            graph.name,
            inputs,
            list(graph.output),
            kept,
            value_info=list(graph.value_info),
        )
    )
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(probe, field, getattr(model, field))
    probe.opset_import.extend(model.opset_import)
    probe.functions.extend(model.functions)
    probe.graph.sparse_initializer.extend(graph.sparse_initializer)
    return probe


def infer_static_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Static shapes of every value for a batch of one (for MAC counts); {} when unknown."""
    onnx = _onnx()
    probe = _without_weights(model)
    for value in probe.graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    except Exception:
        return {}
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        if value.type.WhichOneof("value") != "tensor_type" or not value.type.tensor_type.elem_type:
            continue  # sequences and maps (a ZipMap's output) have no shape
        spec = tensor_spec(value)
        if spec.shape is not None and all(d is not None and d > 0 for d in spec.shape):
            shapes[value.name] = tuple(int(d) for d in spec.shape)  # type: ignore[arg-type]
    return shapes
