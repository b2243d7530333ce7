"""A tied embedding table (a lookup and, through a Transpose, the output projection): every
reader sees the same perturbed matrix on every route, checked against a numpy forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ftaudit.models import load_model

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

VOCAB, DIM, LENGTH = 12, 6, 5


def tied_model(path: Path, table: np.ndarray) -> Path:
    """ids -> Gather(E) -> mean over positions -> MatMul(h, Transpose(E)): logits per token."""
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["emb"]),
        helper.make_node("ReduceMean", ["emb"], ["h"], axes=[1], keepdims=0),
        helper.make_node("Transpose", ["E"], ["Et"], perm=[1, 0]),
        helper.make_node("MatMul", ["h", "Et"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", LENGTH])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", VOCAB])],
        [numpy_helper.from_array(table, "E")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def numpy_logits(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    return table[ids].mean(axis=1) @ table.T


def test_lookup_and_projection_read_the_same_perturbed_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    table = rng.normal(0, 1, (VOCAB, DIM)).astype(np.float32)
    model = load_model(tied_model(tmp_path / "tied.onnx", table))
    (layer,) = model.layers  # the table is a crossbar layer (a product reads it)
    assert layer.shape == (DIM, VOCAB)  # the product's weight: the table transposed
    ids = rng.integers(0, VOCAB, (30, LENGTH))
    perturbed = table * np.exp(0.5 * rng.standard_normal(table.shape)).astype(np.float32)
    runner = model.runner(model.layers, device="cpu")
    runner.bind_data(ids, np.zeros(30, np.int64), batch_size=8)
    runner.set_weights({layer.name: np.ascontiguousarray(perturbed.T)})
    expected = numpy_logits(ids, perturbed)
    np.testing.assert_allclose(runner.logits(), expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(expected, numpy_logits(ids, table), atol=1e-3)  # the lookup counts
    # the next sample's table replaces this one's (the transposed copy is a reused buffer)
    again = table * np.exp(0.5 * rng.standard_normal(table.shape)).astype(np.float32)
    runner.set_weights({layer.name: again.T})  # a strided view is taken as well
    np.testing.assert_allclose(runner.logits(), numpy_logits(ids, again), rtol=1e-5, atol=1e-5)
