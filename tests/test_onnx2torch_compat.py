"""ftaudit's onnx2torch converters (what harden and --batch-samples run) against ONNX Runtime on
one-operator graphs: Flatten at every axis, the comparisons and tests transformers exports use."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

pytest.importorskip("onnx2torch")


def _one_node(
    op: str, inputs: dict[str, np.ndarray], opset: int, out: int, domain: str = "", **attrs
):
    """A graph of one ``op`` node over ``inputs`` (float32), output element type ``out``."""
    node = helper.make_node(op, list(inputs), ["y"], domain=domain, **attrs)
    graph = helper.make_graph(
        [node],
        op,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in inputs.items()],
        [helper.make_tensor_value_info("y", out, None)],
    )
    opsets = [helper.make_opsetid("", opset)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    return helper.make_model(graph, opset_imports=opsets)


def _check(model, inputs: dict[str, np.ndarray]) -> None:
    import onnx2torch
    import onnxruntime as ort
    import torch

    from ftaudit.harden.onnx2torch_compat import register_converters

    register_converters()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, inputs)[0]
    module = onnx2torch.convert(model)
    with torch.no_grad():
        actual = module(*(torch.from_numpy(a) for a in inputs.values())).numpy()
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4)])
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("opset", [13, 21])
def test_flatten_matches_onnx_runtime_at_every_axis(shape, axis, opset) -> None:
    if axis > len(shape):
        pytest.skip("axis beyond the rank")
    x = {"x": np.arange(np.prod(shape), dtype=np.float32).reshape(shape)}
    _check(_one_node("Flatten", x, opset, TensorProto.FLOAT, axis=axis), x)


@pytest.mark.parametrize("op", ["GreaterOrEqual", "LessOrEqual"])
@pytest.mark.parametrize("opset", [12, 16])
def test_comparisons_match_onnx_runtime(op, opset) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(-2, 3, size=(4, 5)).astype(np.float32)
    b = rng.integers(-2, 3, size=(5,)).astype(np.float32)  # broadcast
    inputs = {"a": a, "b": b}
    _check(_one_node(op, inputs, opset, TensorProto.BOOL), inputs)


@pytest.mark.parametrize(
    ("attrs", "opset"),
    [({}, 20), ({"detect_negative": 0}, 10), ({"detect_positive": 0}, 20)],
)
def test_is_inf_honours_its_attributes(attrs, opset) -> None:
    x = {"x": np.array([[-np.inf, 1.0, np.inf, np.nan]], np.float32)}
    _check(_one_node("IsInf", x, opset, TensorProto.BOOL, **attrs), x)


def test_is_nan_matches_onnx_runtime() -> None:
    x = {"x": np.array([[-np.inf, 1.0, np.nan, 0.0]], np.float32)}
    _check(_one_node("IsNaN", x, 13, TensorProto.BOOL), x)


@pytest.mark.parametrize("norm", ["MAX", "L1", "L2"])
def test_normalizer_matches_onnx_runtime(norm) -> None:
    """scikit-learn's row normalisation (skl2onnx's multi-class probabilities)."""
    x = {"x": np.array([[0.2, 0.5, 0.3], [1.0, -2.0, 4.0]], np.float32)}
    model = _one_node("Normalizer", x, 17, TensorProto.FLOAT, domain="ai.onnx.ml", norm=norm)
    import onnx2torch
    import onnxruntime as ort
    import torch

    from ftaudit.harden.onnx2torch_compat import register_converters

    register_converters()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        actual = onnx2torch.convert(model)(torch.from_numpy(x["x"])).numpy()
    np.testing.assert_allclose(actual, session.run(None, x)[0], rtol=1e-6)


@pytest.mark.parametrize("opset", [19, 22])
def test_average_pool_of_torch_default_exporter_matches_onnx_runtime(opset) -> None:
    """AveragePool-19/22 (torch's dynamo exporter writes AdaptiveAvgPool2d / AvgPool2d so)."""
    x = {"x": np.random.default_rng(0).normal(size=(2, 3, 7, 7)).astype(np.float32)}
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    model = _one_node("AveragePool", x, opset, TensorProto.FLOAT, **attrs, count_include_pad=0)
    import onnx2torch
    import onnxruntime as ort
    import torch

    from ftaudit.harden.onnx2torch_compat import register_converters

    register_converters()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        actual = onnx2torch.convert(model)(torch.from_numpy(x["x"])).numpy()
    np.testing.assert_allclose(actual, session.run(None, x)[0], rtol=1e-6, atol=1e-7)


def test_average_pool_with_dilations_is_refused() -> None:
    import onnx2torch

    from ftaudit.harden.onnx2torch_compat import register_converters

    register_converters()
    x = {"x": np.zeros((1, 1, 7, 7), np.float32)}
    model = _one_node(
        "AveragePool", x, 19, TensorProto.FLOAT, kernel_shape=[2, 2], dilations=[2, 2]
    )
    with pytest.raises(NotImplementedError, match="dilations"):
        onnx2torch.convert(model)


@pytest.mark.parametrize(("length", "count"), [(6, 2), (7, 3)])
def test_split_18_matches_onnx_runtime(length, count) -> None:
    """Split-18 with num_outputs (torch's dynamo exporter, ShuffleNet), even and uneven."""
    import onnx2torch
    import onnxruntime as ort
    import torch

    from ftaudit.harden.onnx2torch_compat import register_converters

    register_converters()
    x = np.arange(2 * length, dtype=np.float32).reshape(2, length)
    outputs = [f"y{i}" for i in range(count)]
    node = helper.make_node("Split", ["x"], outputs, axis=1, num_outputs=count)
    graph = helper.make_graph(
        [node],
        "split",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})
    with torch.no_grad():
        actual = onnx2torch.convert(model)(torch.from_numpy(x))
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a.numpy(), e)
