"""Static shape inference without the weights: the same shapes as ONNX's own inference on
the whole model, for graphs whose shapes depend on integer initializers."""

from __future__ import annotations

import numpy as np
import pytest

from ftaudit.models.onnx_shapes import infer_static_shapes

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def reference_shapes(model) -> dict[str, tuple[int, ...]]:
    """ONNX shape inference on the model as it is, weights included, for a batch of one."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    return {
        v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
        for v in [*inferred.graph.value_info, *inferred.graph.output]
    }


def test_shapes_without_weights_equal_onnx_inference_with_them() -> None:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "conv.w"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),  # read as a value
        numpy_helper.from_array(rng.normal(size=(8 * 6 * 6, 10)).astype(np.float32), "fc.w"),
        numpy_helper.from_array(rng.normal(size=10).astype(np.float16), "fc.b16"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w"], ["c"]),
        helper.make_node("Shape", ["conv.w"], ["wshape"]),  # a weight's shape, as a value
        helper.make_node("Reshape", ["c", "flat"], ["f"]),
        helper.make_node("MatMul", ["f", "fc.w"], ["m"]),
        helper.make_node("Cast", ["fc.b16"], ["b"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["m", "b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    shapes = infer_static_shapes(model)
    expected = reference_shapes(model)
    assert expected["f"] == (1, 288) and expected["logits"] == (1, 10)
    for name in ("c", "wshape", "f", "m", "b", "logits"):
        assert shapes[name] == expected[name], name
    assert len(model.graph.initializer) == 4  # the model itself is not changed
