"""Pre-packed ONNX runner: the optimiser's blocked weights fed through a decoded gather map.

Every check compares the pre-packed runner with the plain weights-as-inputs graph (the path
that existed before) or with a numpy forward pass, on perturbed weights the optimiser never saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ftaudit.models import load_model
from ftaudit.models import onnx as onnx_models
from ftaudit.models.onnx_prepack import build_prepacked_graph

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def conv_bn_model(path: Path) -> Path:
    """Conv(5->6, not a multiple of any block) -> BatchNorm -> Relu -> Conv(6->10) -> BN ->
    global pool -> Gemm(10->3): channel padding, reordering and BatchNorm folding at once."""
    rng = np.random.default_rng(3)

    def bn(prefix: str, c: int) -> list:
        return [
            numpy_helper.from_array(rng.uniform(0.5, 2, c).astype(np.float32), f"{prefix}.g"),
            numpy_helper.from_array(rng.normal(0, 0.1, c).astype(np.float32), f"{prefix}.b"),
            numpy_helper.from_array(rng.normal(0, 0.1, c).astype(np.float32), f"{prefix}.m"),
            numpy_helper.from_array(rng.uniform(0.5, 2, c).astype(np.float32), f"{prefix}.v"),
        ]

    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (6, 5, 3, 3)).astype(np.float32), "c1.w"),
        *bn("bn1", 6),
        numpy_helper.from_array(rng.normal(0, 0.3, (10, 6, 3, 3)).astype(np.float32), "c2.w"),
        numpy_helper.from_array(rng.normal(0, 0.1, 10).astype(np.float32), "c2.b"),
        *bn("bn2", 10),
        numpy_helper.from_array(rng.normal(0, 0.3, (3, 10)).astype(np.float32), "fc.w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c1.w"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn1.g", "bn1.b", "bn1.m", "bn1.v"], ["b1"]),
        helper.make_node("Relu", ["b1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "bn2.g", "bn2.b", "bn2.m", "bn2.v"], ["b2"]),
        helper.make_node("Relu", ["b2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.w"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def plain_runner(model, monkeypatch):
    """The weights-as-inputs runner on the original graph (the pre-packing disabled)."""
    with monkeypatch.context() as patch:
        patch.setattr(onnx_models, "build_prepacked_graph", lambda *a, **k: None)
        runner = model.runner(model.layers, device="cpu")
    assert not runner.prepacked
    return runner


def perturbed(weights: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: (w * np.exp(0.4 * rng.standard_normal(w.shape))).astype(np.float32)
        for name, w in weights.items()
    }


def test_conv_batchnorm_model_matches_plain_graph(tmp_path, monkeypatch):
    model = load_model(conv_bn_model(tmp_path / "convbn.onnx"))
    x = np.random.default_rng(0).normal(0, 1, (64, 5, 12, 12)).astype(np.float32)
    y = np.zeros(64, dtype=np.int64)
    fast = model.runner(model.layers, device="cpu")
    assert fast.prepacked
    slow = plain_runner(model, monkeypatch)
    for runner in (fast, slow):
        runner.bind_data(x, y, batch_size=32)
    for seed in range(4):
        weights = perturbed(model.clean_weights(), seed)
        fast.set_weights(weights)
        slow.set_weights(weights)
        np.testing.assert_allclose(fast.logits(), slow.logits(), rtol=1e-4, atol=1e-4)
    # the folded BatchNorm shows as a scale in the decoded maps of both convolutions
    maps = {d.source: d for derived in fast._derived.values() for d in derived}
    assert maps["c1.w"].scale is not None and maps["c2.w"].scale is not None


def test_maps_reproduce_the_optimiser_on_new_values(tmp_path):
    """Decoded maps applied to weights the optimiser never saw equal what it makes of them."""
    path = conv_bn_model(tmp_path / "convbn.onnx")
    model = load_model(path)
    clean = model.clean_weights()
    plan = build_prepacked_graph(model.proto, clean)
    assert plan is not None
    other = perturbed(clean, 9)
    again = build_prepacked_graph(model.proto, other)
    assert again is not None
    optimised = {
        t.name: numpy_helper.to_array(t)
        for t in onnx.load_model_from_string(plan.model_bytes).graph.initializer
    }
    assert not {d.name for d in plan.inputs} & set(optimised)  # derived tensors are inputs now
    # the second plan was built from `other`: its own check compared the map with the optimiser
    for first, second in zip(plan.inputs, again.inputs, strict=True):
        assert first.name == second.name and first.source == second.source
        out = np.empty(first.shape, np.float32)
        np.testing.assert_array_equal(
            first.compute(other[first.source], out),
            second.compute(other[second.source], np.empty(second.shape, np.float32)),
        )


def test_sample_lenet_counts_match_plain_graph(monkeypatch):
    model = load_model(REPO / "sample_models" / "lenet.onnx")
    data = np.load(REPO / "sample_models" / "fmnist_test_2000.npz")
    x = model.fit_input(data["x"][:500].astype(np.float32) / 255.0)
    y = data["y"][:500]
    fast = model.runner(model.layers, device="cpu")
    slow = plain_runner(model, monkeypatch)
    for runner in (fast, slow):
        runner.bind_data(x, y, batch_size=128)
    for seed in range(3):
        weights = perturbed(model.clean_weights(), seed)
        fast.set_weights(weights)
        slow.set_weights(weights)
        np.testing.assert_allclose(fast.logits(), slow.logits(), rtol=1e-4, atol=1e-4)
        assert fast.count_correct() == slow.count_correct()


def test_weight_mixed_with_another_constant_keeps_plain_graph(tmp_path):
    """A crossbar weight also used in a constant-folded sum cannot be a gather: plain graph."""
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.5, (4, 3)).astype(np.float32)
    c = rng.normal(0, 0.5, (4, 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("Add", ["w", "c"], ["wc"]),
        helper.make_node("MatMul", ["x", "wc"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(c, "c")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(tmp_path / "mixed.onnx"))
    model = load_model(tmp_path / "mixed.onnx")
    assert build_prepacked_graph(model.proto, model.clean_weights()) is None
    runner = model.runner(model.layers, device="cpu")
    assert not runner.prepacked
    x = rng.normal(0, 1, (8, 4)).astype(np.float32)
    runner.bind_data(x, np.zeros(8, dtype=np.int64), batch_size=8)
    noisy = {"w": w * 1.5}
    runner.set_weights(noisy)
    np.testing.assert_allclose(runner.logits(), x @ (1.5 * w) + x @ (1.5 * w + c), rtol=1e-5)


def test_non_float32_weights_keep_plain_graph():
    weights = {"w": np.ones((2, 2), np.float16)}
    assert build_prepacked_graph(None, weights) is None


def test_a_pure_reorder_is_a_strided_copy_equal_to_the_gather():
    """A blocked layout without padding, (O/8, I/8, kh, kw, i8, o8) of (O, I, kh, kw), is
    found as strides and computed by a strided copy with the gather's numbers; an index with
    padding (a repeated element) or a non-affine one keeps the gather."""
    from ftaudit.models.onnx_prepack import DerivedInput, affine_strides

    o, i, k = 16, 24, 3
    ids = np.arange(o * i * k * k).reshape(o, i, k, k)
    blocked = ids.reshape(o // 8, 8, i // 8, 8, k, k).transpose(0, 2, 4, 5, 3, 1)
    shape = blocked.shape
    index = blocked.reshape(-1).astype(np.intp)
    strides = affine_strides(index)
    # read off innermost first; kh and kw, contiguous in both layouts, merge into one axis
    assert strides == ((2, 3, 9, 8, 8), (8 * i * k * k, 8 * k * k, 1, k * k, i * k * k))
    weight = np.random.default_rng(1).normal(size=(o, i, k, k)).astype(np.float32)
    fast = DerivedInput("d", "w", shape, index, None, strides)
    slow = DerivedInput("d", "w", shape, index, None, None)
    got = fast.compute(weight, np.empty(shape, np.float32))
    assert np.array_equal(got, slow.compute(weight, np.empty(shape, np.float32)))
    assert np.array_equal(got.reshape(-1), weight.reshape(-1)[index])
    padded = index.copy()
    padded[-5:] = 0
    assert affine_strides(padded) is None
    shuffled = np.random.default_rng(0).permutation(index)
    assert affine_strides(shuffled) is None


def test_convolutions_without_padding_feed_through_strided_copies(tmp_path, monkeypatch):
    """Conv 8 -> 16 -> 16 channels (multiples of the block): the optimiser's reorders are
    found as strides, and the runner's logits equal the plain graph's on perturbed weights."""
    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32), "c1.w"),
        numpy_helper.from_array(rng.normal(0, 0.3, (16, 16, 3, 3)).astype(np.float32), "c2.w"),
        numpy_helper.from_array(rng.normal(0, 0.3, (3, 16)).astype(np.float32), "fc.w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c1.w"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2.w"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.w"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 10, 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(tmp_path / "conv16.onnx"))
    model = load_model(tmp_path / "conv16.onnx")
    fast = model.runner(model.layers, device="cpu")
    assert fast.prepacked
    derived = [d for ds in fast._derived.values() for d in ds]
    if not any(d.strides is not None for d in derived):
        pytest.skip("this CPU's ONNX Runtime pads or does not block these convolutions")
    slow = plain_runner(model, monkeypatch)
    x = np.random.default_rng(0).normal(0, 1, (16, 8, 10, 10)).astype(np.float32)
    for runner in (fast, slow):
        runner.bind_data(x, np.zeros(16, dtype=np.int64), batch_size=8)
    for seed in range(3):
        weights = perturbed(model.clean_weights(), seed)
        fast.set_weights(weights)
        slow.set_weights(weights)
        np.testing.assert_allclose(fast.logits(), slow.logits(), rtol=1e-4, atol=1e-4)


def test_graph_without_convolutions_skips_the_prepacking_and_matches_onnx_runtime(tmp_path):
    """A MatMul/Gemm graph (nothing for the NCHWc layouts to gain) is not optimised for them;
    its runner's logits on perturbed weights equal ONNX Runtime on a file holding them."""
    import onnxruntime as ort

    rng = np.random.default_rng(8)
    w1 = rng.normal(0, 0.3, (6, 16)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (4, 16)).astype(np.float32)  # Gemm transB
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2"], ["logits"], transB=1),
    ]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(tmp_path / "mlp.onnx"))
    model = load_model(tmp_path / "mlp.onnx")
    runner = model.runner(model.layers, device="cpu")
    assert not runner.prepacked
    x = rng.normal(0, 1, (40, 6)).astype(np.float32)
    runner.bind_data(x, np.zeros(40, np.int64), batch_size=16)
    weights = perturbed(model.clean_weights(), 1)
    runner.set_weights(weights)
    by_name = {model.feed_names[name]: value for name, value in weights.items()}
    for tensor in proto.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(by_name[tensor.name], tensor.name))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(runner.logits(), session.run(None, {"x": x})[0], rtol=1e-6)
