"""Crossbar weights reached through weight-only subgraphs (models/onnx_graph.py), checked against
numpy forward passes written independently of ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ftaudit.models import load_model

RNG = np.random.default_rng(7)
W1 = RNG.normal(size=(6, 5)).astype(np.float32)  # stored (out, in), read through Transpose
W2 = RNG.normal(size=(4, 6)).astype(np.float32)  # float16, read through Cast
W3_LEVELS = RNG.integers(-127, 128, size=(4, 3)).astype(np.int8)  # QDQ int8, (in, out)
W3_SCALE = np.float32(0.02)
W4 = RNG.normal(size=(3, 3)).astype(np.float32)  # scaled by Mul: not a weight-only path


def _model(path: Path) -> Path:
    """x (N, 5) -> MatMul(Transpose(W1)) -> MatMul(Cast(W2 fp16)^T via Transpose) ->
    MatMul(DequantizeLinear(W3)) -> MatMul(W4 * 2)."""
    inits = [
        numpy_helper.from_array(W1, "w1"),
        numpy_helper.from_array(W2.astype(np.float16), "w2"),
        numpy_helper.from_array(W3_LEVELS, "w3_q"),
        numpy_helper.from_array(np.array(W3_SCALE, np.float32), "w3_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w3_zp"),
        numpy_helper.from_array(W4, "w4"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    ]
    nodes = [
        helper.make_node("Transpose", ["w1"], ["w1_t"], perm=[1, 0], name="t1"),
        helper.make_node("MatMul", ["x", "w1_t"], ["h1"], name="mm1"),
        helper.make_node("Cast", ["w2"], ["w2_f"], to=TensorProto.FLOAT, name="c2"),
        helper.make_node("Transpose", ["w2_f"], ["w2_t"], perm=[1, 0], name="t2"),
        helper.make_node("Identity", ["w2_t"], ["w2_id"], name="id2"),
        helper.make_node("MatMul", ["h1", "w2_id"], ["h2"], name="mm2"),
        helper.make_node("DequantizeLinear", ["w3_q", "w3_scale", "w3_zp"], ["w3"], name="dq3"),
        helper.make_node("MatMul", ["h2", "w3"], ["h3"], name="mm3"),
        helper.make_node("Mul", ["w4", "two"], ["w4x2"], name="scale4"),
        helper.make_node("MatMul", ["h3", "w4x2"], ["y"], name="mm4"),
    ]
    graph = helper.make_graph(
        nodes,
        "chains",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _reference(x: np.ndarray, w1t: np.ndarray, w2t: np.ndarray, w3: np.ndarray) -> np.ndarray:
    return ((x @ w1t) @ w2t) @ w3 @ (W4 * 2)


@pytest.fixture
def chains(tmp_path: Path) -> Path:
    return _model(tmp_path / "chains.onnx")


def test_weights_behind_weight_only_subgraphs_are_crossbar_layers(chains):
    model = load_model(chains)
    by_name = {layer.name: layer for layer in model.layers}
    assert list(by_name) == ["w1", "w2", "w3_q"]  # named by the initializer they come from
    assert by_name["w1"].shape == (5, 6) and by_name["w1"].transposed  # as MatMul reads it
    assert by_name["w2"].dtype == "float32"  # after the Cast, as the operator computes
    clean = model.clean_weights()
    np.testing.assert_array_equal(clean["w1"], W1.T)
    np.testing.assert_array_equal(clean["w2"], W2.astype(np.float16).astype(np.float32).T)
    np.testing.assert_allclose(clean["w3_q"], W3_LEVELS.astype(np.float32) * W3_SCALE)
    # the Mul-scaled weight is not silently skipped: it is listed with the reason
    assert [(u.node, u.op) for u in model.untraced] == [("mm4", "MatMul")]
    assert "Mul 'scale4'" in model.untraced[0].reason


def test_runner_feeds_each_traced_weight_where_the_operator_reads_it(chains):
    model = load_model(chains)
    x = RNG.normal(size=(7, 5)).astype(np.float32)
    runner = model.runner(model.layers, device="cpu")
    runner.bind_data(x, np.zeros(7, np.int64), batch_size=4)
    clean = model.clean_weights()
    np.testing.assert_allclose(
        runner.logits(), _reference(x, clean["w1"], clean["w2"], clean["w3_q"]), rtol=1e-5
    )
    # every layer's fed value changes the output exactly as the numpy model predicts
    for name in clean:
        changed = dict(clean)
        changed[name] = clean[name] * np.float32(1.5) + np.float32(0.1)
        runner.set_weights(changed)
        expected = _reference(x, changed["w1"], changed["w2"], changed["w3_q"])
        np.testing.assert_allclose(runner.logits(), expected, rtol=1e-4, atol=1e-5)
        runner.set_weights(clean)


def test_qoperator_kernels_become_dequantised_crossbar_weights(tmp_path: Path):
    """A QLinearMatMul is rewritten as DequantizeLinear -> MatMul -> QuantizeLinear in memory:
    its int8 levels (times their scale) are the crossbar weight, and the predictions at sigma 0
    are ONNX Runtime's on the file itself."""
    import onnxruntime

    scale = np.float32(0.05)
    inits = [
        numpy_helper.from_array(W3_LEVELS, "w_q"),
        numpy_helper.from_array(np.array(0, np.int8), "zp"),
        numpy_helper.from_array(np.array(scale, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "uzp"),
        numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "uzp"], ["xq"]),
        helper.make_node(
            "QLinearMatMul", ["xq", "xs", "uzp", "w_q", "s", "zp", "s", "uzp"], ["yq"], name="qmm"
        ),
        helper.make_node("DequantizeLinear", ["yq", "s", "uzp"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "qop.onnx")
    loaded = load_model(tmp_path / "qop.onnx")
    assert [(layer.name, layer.op) for layer in loaded.layers] == [("w_q", "MatMul")]
    assert loaded.untraced == []
    np.testing.assert_array_equal(loaded.clean_weights()["w_q"], W3_LEVELS * scale)
    x = RNG.normal(size=(16, 4)).astype(np.float32)
    expected = onnxruntime.InferenceSession(str(tmp_path / "qop.onnx")).run(None, {"x": x})[0]
    runner = loaded.runner(loaded.layers, device="cpu")
    runner.bind_data(x, np.zeros(16, np.int64), batch_size=16)
    np.testing.assert_allclose(runner.logits(), expected, atol=float(scale) + 1e-6)
    runner.set_weights({"w_q": -loaded.clean_weights()["w_q"]})
    assert not np.allclose(runner.logits(), expected)


def test_inspect_lists_untraced_ops_and_eval_warns(chains, tmp_path: Path, run_cli):
    code, out, err = run_cli("inspect", chains, "--json")
    assert code == 0, err
    import json

    summary = json.loads(out)
    assert [layer["name"] for layer in summary["layers"]] == ["w1", "w2", "w3_q"]
    assert [u["node"] for u in summary["model"]["untraced"]] == ["mm4"]
    code, out, err = run_cli("inspect", chains)
    assert code == 0 and "NOT perturbed" in out and "mm4" in out
    x = RNG.normal(size=(20, 5)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(20, np.int64))
    code, out, err = run_cli(
        "eval", chains, "--data", tmp_path / "d.npz", "--sigma", "0.1", "--samples", "2"
    )
    assert code == 0, err
    assert "warning: MatMul 'mm4' is not perturbed" in err


TABLE = RNG.normal(size=(10, 4)).astype(np.float32)  # an embedding table: 10 tokens, 4 features
HEAD = RNG.normal(size=(4, 3)).astype(np.float32)  # (in, out): the classifier read by MatMul


def _lookup_model(path: Path, *, tied: bool) -> Path:
    """ids (N, 5) int64 -> Gather(table) -> ReduceMean over tokens -> MatMul: by a head of its
    own, or (tied) by the table itself, transposed (scores over the 10 tokens)."""
    head = ["table_t"] if tied else ["head"]
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0, name="lookup"),
        helper.make_node("ReduceMean", ["emb", "axis"], ["pooled"], keepdims=0, name="pool"),
        helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0], name="t"),
        helper.make_node("MatMul", ["pooled", head[0]], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes if tied else [n for n in nodes if n.name != "t"],
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10 if tied else 3])],
        initializer=[
            numpy_helper.from_array(TABLE, "table"),
            numpy_helper.from_array(np.array([1], np.int64), "axis"),
            *([] if tied else [numpy_helper.from_array(HEAD, "head")]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_an_embedding_table_is_listed_as_looked_up_and_left_exact(tmp_path: Path, run_cli):
    """The table a Gather reads is no crossbar layer, and is never left out silently: inspect
    and the JSON report list it with the reason; the head is the one layer, and the clean
    accuracy is numpy's forward pass's."""
    import ftaudit

    path = _lookup_model(tmp_path / "lookup.onnx", tied=False)
    model = load_model(path)
    assert [layer.name for layer in model.layers] == ["head"]
    (entry,) = model.untraced
    assert (entry.node, entry.op) == ("lookup", "Gather")
    assert "'table' (10, 4) is looked up by index" in entry.reason
    code, out, _ = run_cli("inspect", path)
    assert code == 0 and "NOT perturbed" in out and "lookup" in out
    ids = np.random.default_rng(3).integers(0, 10, size=(40, 5))
    scores = TABLE[ids].mean(axis=1) @ HEAD  # numpy's own forward pass
    y = np.where(np.arange(40) % 4 == 0, (scores.argmax(1) + 1) % 3, scores.argmax(1))
    np.savez(tmp_path / "ids.npz", x=ids, y=y)
    report = ftaudit.audit(path, tmp_path / "ids.npz", sigmas=[0.0], samples=1)
    assert report.clean_accuracy == pytest.approx(np.mean(scores.argmax(1) == y))
    assert [u["node"] for u in report.to_dict()["model"]["untraced"]] == ["lookup"]


def test_a_table_that_is_also_multiplied_is_a_layer_not_a_lookup(tmp_path: Path):
    """Tied weights (an embedding table reused, transposed, as the output layer): the product
    makes it a crossbar layer, so the lookup of the same table is not listed."""
    model = load_model(_lookup_model(tmp_path / "tied.onnx", tied=True))
    assert [(layer.name, layer.shape) for layer in model.layers] == [("table", (4, 10))]
    assert model.untraced == []
