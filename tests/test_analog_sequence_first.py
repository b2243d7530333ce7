"""Read noise is keyed by image: a crossbar layer whose outputs hold the images on another axis
than the first (a sequence-first projection, as nn.MultiheadAttention's) is refused in one
line, never fed draws of the wrong shape; left digital, the rest runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

RNG = np.random.default_rng(11)
W_SEQ = RNG.normal(size=(5, 6)).astype(np.float32)  # (in, out), read by a sequence-first MatMul
W_HEAD = RNG.normal(size=(3, 6)).astype(np.float32)  # (out, in), a Gemm on (N, 6)


def _model(path: Path) -> Path:
    """x (N, 4, 5) -> Transpose to (4, N, 5) -> MatMul(W_SEQ) -> mean over the 4 steps ->
    Gemm(W_HEAD, transB) -> scores (N, 3)."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["seq"], perm=[1, 0, 2]),
        helper.make_node("MatMul", ["seq", "w_seq"], ["h"], name="mm_seq"),
        helper.make_node("ReduceMean", ["h", "axis0"], ["pooled"], keepdims=0),
        helper.make_node("Gemm", ["pooled", "w_head"], ["y"], transB=1, name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "seq_first",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        initializer=[
            numpy_helper.from_array(W_SEQ, "w_seq"),
            numpy_helper.from_array(W_HEAD, "w_head"),
            numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture
def seq_first(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    x = RNG.normal(size=(30, 4, 5)).astype(np.float32)
    scores = (x @ W_SEQ).mean(axis=1) @ W_HEAD.T  # numpy's own forward pass
    y = scores.argmax(1)
    y[::3] = (y[::3] + 1) % 3  # 2/3 right by construction
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return _model(tmp_path / "m.onnx"), tmp_path / "d.npz", scores


@pytest.mark.parametrize("flag", ["--read-noise", "--weight-read-noise"])
def test_a_sequence_first_layer_is_refused_under_read_noise(seq_first, flag, run_cli):
    path, data, _ = seq_first
    report = path.parent / "r.json"
    code, out, err = run_cli(
        "eval", path, "--data", data, "--sigma", "0", "--samples", "1", flag, "0.02",
        "--json", report,
    )  # fmt: skip
    assert code == 2 and out == "" and not report.exists()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "w_seq" in err and "first axis" in err and "--exclude 'w_seq'" in err


def test_left_digital_or_without_read_noise_it_runs(seq_first, run_cli):
    """Excluding the layer, read noise runs on the head; with DAC/ADC only (no per-image draws)
    every layer runs. At sigma 0 with a read noise of 0 the accuracy is numpy's forward pass's."""
    path, data, scores = seq_first
    y = np.load(data)["y"]
    expected = float(np.mean(scores.argmax(1) == y))
    report = path.parent / "r.json"
    for flags in (["--read-noise", "0.02", "--exclude", "w_seq"], ["--adc-bits", "8"]):
        code, _, err = run_cli(
            "eval", path, "--data", data, "--sigma", "0", "--samples", "2", *flags,
            "--json", report, "-q",
        )  # fmt: skip
        assert code == 0, err
    code, _, err = run_cli(
        "eval", path, "--data", data, "--sigma", "0", "--samples", "1",
        "--read-noise", "0", "--dac-bits", "16", "--json", report, "-q",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(report.read_text())["results"][0]["mean"] == pytest.approx(expected)
