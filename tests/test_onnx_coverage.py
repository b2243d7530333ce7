"""Every stored matrix an ONNX model multiplies by is a crossbar layer or reported untraced:
ONNX Runtime's fused operators (models saved after its optimisations), LSTM/GRU, Einsum,
integer kernels, the nchwc layout, control-flow bodies and operators nobody maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES

from ftaudit.models import load_model


def _ort_saved(tmp_path: Path, level: str) -> Path:
    """The sample LeNet as ONNX Runtime saves it after optimising at ``level``."""
    import onnxruntime as ort

    path = tmp_path / f"lenet_{level}.onnx"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(str(SAMPLES / "lenet.onnx"), options, ["CPUExecutionProvider"])
    return path


def _images(n: int = 128) -> tuple[np.ndarray, np.ndarray]:
    with np.load(SAMPLES / "fmnist_test_2000.npz") as data:
        return data["x"][:n].astype(np.float32) / 255, data["y"][:n]


def _replaced_logits(path: Path, values: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Plain ONNX Runtime on a copy of the file whose initializers hold ``values`` (by
    initializer name): the independent twin of the runner's fed weights."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    for tensor in model.graph.initializer:
        if tensor.name in values:
            tensor.CopyFrom(onnx.numpy_helper.from_array(values[tensor.name], tensor.name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _check_fed_weights_reach_the_ops(
    path: Path, x: np.ndarray, y: np.ndarray, *, stored: bool = True
) -> None:
    """Each layer with its sign flipped changes the logits, and (``stored``: the layers are
    initializers as stored) all layers scaled together give the plain session's logits on the
    file with those initializers."""
    model = load_model(path)
    runner = model.runner(model.layers, device="cpu")
    runner.bind_data(model.fit_input(x), y, batch_size=32)
    clean_weights = model.clean_weights()
    clean = runner.logits()
    for layer in model.layers:
        flipped = dict(clean_weights)
        flipped[layer.name] = -clean_weights[layer.name]
        runner.set_weights(flipped)
        assert not np.allclose(runner.logits(), clean, atol=1e-5), layer.name
    if not stored:
        return
    rng = np.random.default_rng(3)
    scaled = {
        name: (w * (1 + 0.3 * rng.standard_normal(w.shape))).astype(w.dtype)
        for name, w in clean_weights.items()
    }
    runner.set_weights(scaled)
    expected = _replaced_logits(path, {model.roots[n]: w for n, w in scaled.items()}, x)
    np.testing.assert_allclose(runner.logits(), expected, rtol=1e-4, atol=1e-4)


def test_ort_fused_models_keep_every_layer(tmp_path, run_cli):
    """Saved after ORT_ENABLE_EXTENDED (FusedConv, FusedGemm): read as the standard ops they
    fuse, the same five layers (names, shapes, MACs); Monte Carlo runs, weights only and with
    the analog pipeline, give the exported model's numbers under the same draws; harden
    trains it and writes the fused file back."""
    import onnx

    fused = _ort_saved(tmp_path, "EXTENDED")
    assert {n.op_type for n in onnx.load(str(fused)).graph.node} >= {"FusedConv", "FusedGemm"}
    original, optimised = load_model(SAMPLES / "lenet.onnx"), load_model(fused)
    assert [(la.name, la.op, la.shape, la.macs) for la in optimised.layers] == [
        (la.name, la.op, la.shape, la.macs) for la in original.layers
    ]
    assert not optimised.untraced
    x, y = _images()
    _check_fed_weights_reach_the_ops(fused, x, y)
    npz = tmp_path / "d.npz"
    np.savez(npz, x=x, y=y)
    for analog in ([], ["--dac-bits", "6", "--adc-bits", "6", "--read-noise", "0.05"]):
        results = []
        for model in (SAMPLES / "lenet.onnx", fused):
            out = tmp_path / f"{model.stem}.json"
            code, _, err = run_cli(
                "eval", model, "--data", npz, "--sigma", "0.3", "--samples", "6", "--json", out,
                *analog,
            )  # fmt: skip
            assert code == 0, err
            result = json.loads(out.read_text())["results"][0]
            results.append([result[k] for k in ("mean", "min", "max")])
        assert results[0] == results[1]
    hardened = tmp_path / "hardened.onnx"
    code, _, err = run_cli(
        "harden", fused, "--data", npz, "--method", "erm", "--epochs", "1", "--sigma", "0.1",
        "--output", hardened,
    )  # fmt: skip
    assert code == 0, err
    ops = {n.op_type for n in onnx.load(str(hardened)).graph.node}
    assert {"FusedConv", "FusedGemm"} <= ops


def test_nchwc_layouts_are_reported_not_skipped(tmp_path, run_cli):
    """Saved after ORT_ENABLE_ALL: the blocked convolutions are untraced with the fix, and eval
    warns about each on stderr."""
    path = _ort_saved(tmp_path, "ALL")
    model = load_model(path)
    convs = [op for op in model.untraced if op.op == "Conv"]
    assert len(convs) == 2 and all("ORT_ENABLE_ALL" in op.reason for op in convs)
    assert [la.name for la in model.layers] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    x, y = _images(32)
    npz = tmp_path / "d.npz"
    np.savez(npz, x=x, y=y)
    code, _, err = run_cli("eval", path, "--data", npz, "--sigma", "0.1", "--samples", "2")
    assert code == 0
    assert err.count("is not perturbed") == 2


def _graph_model(tmp_path: Path, nodes, inits, name: str, extra_opsets=()) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in extra_opsets)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def test_einsum_weights_are_layers(tmp_path):
    from onnx import helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 3)).astype(np.float32)
    path = _graph_model(
        tmp_path,
        [helper.make_node("Einsum", ["x", "w"], ["y"], equation="bi,io->bo")],
        {"w": w},
        "einsum",
    )
    model = load_model(path)
    assert [(la.name, la.op, la.shape) for la in model.layers] == [("w", "Einsum", (6, 3))]
    x = rng.standard_normal((16, 6)).astype(np.float32)
    _check_fed_weights_reach_the_ops(path, x, np.zeros(16, np.int64))


@pytest.mark.parametrize(
    ("node", "domain", "reason"),
    [
        (("MatMulNBits", ["x", "q", "s"], {"K": 6, "N": 3, "bits": 4, "block_size": 16}),
         "com.microsoft", "integer kernel"),
        (("MyProjection", ["x", "w"], {}), "example.org", "does not know how it multiplies"),
    ],
)  # fmt: skip
def test_kernels_nobody_maps_are_reported(tmp_path, node, domain, reason):
    """An integer kernel and an unknown operator reading a stored matrix are untraced with the
    reason; the Gemm beside them is a layer."""
    from onnx import helper

    op, inputs, attrs = node
    inits = {
        "w": np.ones((6, 4), np.float32),
        "q": np.ones((3, 1, 8), np.uint8),
        "s": np.ones(3, np.float32),
        "head": np.ones((3, 6), np.float32),
    }
    nodes = [
        helper.make_node(op, inputs, ["h"], domain=domain, **attrs),
        helper.make_node("Gemm", ["x", "head"], ["g"], transB=1),
        helper.make_node("Identity", ["g"], ["y"]),
    ]
    model = load_model(_graph_model(tmp_path, nodes, inits, "k", [domain]))
    assert [la.name for la in model.layers] == ["head"]
    assert [op_.op for op_ in model.untraced] == [op]
    assert reason in model.untraced[0].reason


def test_products_inside_control_flow_are_reported(tmp_path):
    from onnx import TensorProto, helper

    w = np.ones((6, 3), np.float32)
    branch = [helper.make_node("MatMul", ["x", "w"], ["b"])]
    then = helper.make_graph(branch, "then", [], [helper.make_tensor_value_info("b", 1, None)])
    other = helper.make_graph(
        [helper.make_node("Slice", ["x", "zero", "three", "one"], ["c"])],
        "else",
        [],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero_f"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
    ]
    inits = {
        "w": w,
        "zero": np.array([0]),
        "three": np.array([3]),
        "one": np.array([1]),
        "zero_f": np.array(0, np.float32),
    }
    model = load_model(_graph_model(tmp_path, nodes, inits, "branch"))
    assert not model.layers
    assert [(op.node, op.op) for op in model.untraced] == [("If#2", "If")]
    assert "control flow" in model.untraced[0].reason


def _recurrent_net(classes: int):
    """A seeded 2-layer bidirectional LSTM, a GRU and a Linear head over (N, 7, 5) sequences."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(5, 8, num_layers=2, bidirectional=True, batch_first=True)
            self.gru = nn.GRU(16, 6, batch_first=True)
            self.head = nn.Linear(6, classes)

        def forward(self, x):
            h, _ = self.lstm(x)
            h, _ = self.gru(h)
            return self.head(h[:, -1])

    torch.manual_seed(11)
    return Recurrent().eval()


@pytest.mark.torch
@pytest.mark.parametrize("dynamo", [False, True])
def test_recurrent_matrices_are_layers(tmp_path, dynamo, run_cli):
    """LSTM (2 layers, bidirectional) and GRU: W and R of every layer, named as torch names
    them, with MACs = steps x matrix size; the analog pipeline refuses them in one line."""
    from real_models import _export

    x = np.random.default_rng(1).standard_normal((24, 7, 5)).astype(np.float32)
    path = _export(_recurrent_net(3), x, "dynamo" if dynamo else "legacy", tmp_path / "r.onnx", x)
    model = load_model(path)
    names = [f"lstm.weight_{m}_l{k}" for k in range(2) for m in ("ih", "hh")]
    names += ["gru.weight_ih_l0", "gru.weight_hh_l0", "head.weight"]
    assert [la.name for la in model.layers] == names
    shapes = [(2, 32, 5), (2, 32, 8), (2, 32, 16), (2, 32, 8), (1, 18, 16), (1, 18, 6), (3, 6)]
    assert [la.shape for la in model.layers] == shapes
    assert [la.macs for la in model.layers[:6]] == [7 * int(np.prod(s)) for s in shapes[:6]]
    assert not model.untraced
    _check_fed_weights_reach_the_ops(path, x, np.zeros(24, np.int64))
    npz = tmp_path / "seq.npz"
    np.savez(npz, x=x, y=np.arange(24) % 3)
    code, _, err = run_cli("eval", path, "--data", npz, "--sigma", "0.1", "--adc-bits", "8")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "lstm.weight_ih_l0" in err and "LSTM" in err
    code, _, err = run_cli(
        "eval", path, "--data", npz, "--sigma", "0.1", "--samples", "2", "--adc-bits", "8",
        "--layers", "head.weight",
    )  # fmt: skip
    assert code == 0, err


@pytest.mark.parametrize("op", ["Attention", "FusedMatMul"])
def test_ort_contrib_products_are_layers(tmp_path, op):
    """com.microsoft Attention (weights (in, 3 hidden)) and FusedMatMul with transB: layers in
    the canonical outputs-first layout, fed where the operator reads them."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(4)
    if op == "Attention":
        inits = {"w": rng.standard_normal((6, 18)), "b": rng.standard_normal(18)}
        product = helper.make_node(op, ["x", "w", "b"], ["h"], domain="com.microsoft", num_heads=2)
        expected = ("w", (6, 18), (18, 6))
    else:
        inits = {"w": rng.standard_normal((6, 6))}
        product = helper.make_node(op, ["x", "w"], ["h"], domain="com.microsoft", transB=1)
        expected = ("w", (6, 6), (6, 6))  # read as MatMul(x, Transpose(w))
    inits["head"] = rng.standard_normal((3, 6))
    nodes = [
        product,
        helper.make_node("ReduceMean", ["h"], ["m"], axes=[1], keepdims=0),
        helper.make_node("Gemm", ["m", "head"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        op,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model_proto = helper.make_model(graph, opset_imports=opsets)
    model_proto.ir_version = 8
    path = tmp_path / f"{op}.onnx"
    onnx.save(model_proto, str(path))
    model = load_model(path)
    layer = model.layers[0]
    assert (layer.name, layer.shape, layer.canonical_shape) == expected
    assert layer.op == ("MatMul" if op == "FusedMatMul" else op) and not model.untraced
    x = rng.standard_normal((16, 4, 6)).astype(np.float32)
    # the unfused MatMul reads Transpose(w): its fed layout is not the stored one
    _check_fed_weights_reach_the_ops(path, x, np.zeros(16, np.int64), stored=op == "Attention")
    runner = model.runner(model.layers, device="cpu")
    runner.bind_data(x, np.zeros(16, np.int64), batch_size=8)
    np.testing.assert_allclose(runner.logits(), _replaced_logits(path, {}, x), atol=1e-5)


def test_gemm_with_the_weight_on_the_left_is_a_layer(tmp_path):
    """Gemm(W, x, transB=1) = W x^T: W is the layer (outputs first), 18 MACs per example."""
    from onnx import helper

    rng = np.random.default_rng(6)
    w = rng.standard_normal((3, 6)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["w", "x"], ["yt"], transB=1),
        helper.make_node("Transpose", ["yt"], ["y"]),
    ]
    path = _graph_model(tmp_path, nodes, {"w": w}, "left")
    model = load_model(path)
    assert [(la.name, la.canonical_shape, la.macs) for la in model.layers] == [("w", (3, 6), 18)]
    x = rng.standard_normal((8, 6)).astype(np.float32)
    _check_fed_weights_reach_the_ops(path, x, np.zeros(8, np.int64))


def test_attribute_coefficients_are_named_not_skipped(tmp_path, run_cli):
    """skl2onnx's kernel SVC keeps its support vectors in SVMClassifier attributes: eval exits 2
    with one line saying so (a LinearClassifier is a layer: tests/test_onnx_sklearn.py)."""
    pytest.importorskip("skl2onnx")
    from skl2onnx import to_onnx
    from sklearn.svm import SVC

    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((60, 6)).astype(np.float32), rng.integers(0, 3, 60)
    model = to_onnx(SVC().fit(x, y), x[:1], target_opset=17)
    path, npz = tmp_path / "svc.onnx", tmp_path / "d.npz"
    path.write_bytes(model.SerializeToString())
    np.savez(npz, x=x, y=y)
    code, out, err = run_cli("eval", path, "--data", npz, "--sigma", "0.1", "--samples", "2")
    assert code == 2 and not out
    assert len(err.strip().splitlines()) == 1 and "SVMClassifier" in err
    assert "node attributes" in err


def test_products_inside_local_functions_are_layers(tmp_path):
    """A MatMul inside a model-local function, its weight passed in by the caller: inlined in
    memory, the weight is a layer fed where the MatMul reads it."""
    import onnx
    from onnx import TensorProto, helper

    w = np.random.default_rng(8).standard_normal((6, 3)).astype(np.float32)
    body = [helper.make_node("MatMul", ["a", "weight"], ["o"])]
    proj = helper.make_function(
        "local", "Proj", ["a", "weight"], ["o"], body, [helper.make_opsetid("", 17)]
    )
    graph = helper.make_graph(
        [helper.make_node("Proj", ["x", "w"], ["y"], domain="local")],
        "func",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    proto = helper.make_model(graph, opset_imports=opsets, functions=[proj])
    proto.ir_version = 8
    path = tmp_path / "func.onnx"
    onnx.save(proto, str(path))
    model = load_model(path)
    assert [(la.name, la.op, la.macs) for la in model.layers] == [("w", "MatMul", 18)]
    assert not model.untraced
    x = np.random.default_rng(9).standard_normal((8, 6)).astype(np.float32)
    _check_fed_weights_reach_the_ops(path, x, np.zeros(8, np.int64))


def test_weights_cut_with_data_shapes_are_reported(tmp_path):
    """MatMul(x, Slice(W, 0, shape(x)[1])): the weight is no constant only because its index
    comes from the data's shape (unfolded exports): listed with the stored matrix, not
    skipped, and the attention-like product of two activations beside it is not listed."""
    from onnx import helper

    w = np.ones((6, 3), np.float32)
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["features"]),
        helper.make_node("Slice", ["w", "zero", "features", "zero"], ["cut"]),
        helper.make_node("MatMul", ["x", "cut"], ["h"]),
        helper.make_node("MatMul", ["x", "xt"], ["scores"]),
        helper.make_node("Transpose", ["x"], ["xt"]),
        helper.make_node("MatMul", ["scores", "h"], ["y"]),
    ]
    nodes = [nodes[i] for i in (0, 1, 2, 3, 5, 4, 6)]  # topological order
    inits = {"w": w, "one": np.array([1]), "zero": np.array([0])}
    model = load_model(_graph_model(tmp_path, nodes, inits, "cut"))
    assert not model.layers
    assert [op.op for op in model.untraced] == ["MatMul"]
    assert "'w'" in model.untraced[0].reason and "shape" in model.untraced[0].reason


def test_fake_quantised_float_weights_are_their_dequantised_levels(tmp_path, run_cli):
    """W -> QuantizeLinear -> DequantizeLinear -> Gemm (QAT and explicit-quantisation exports):
    the layer is the dequantised level grid the Gemm reads; harden refuses in one line."""
    import onnx
    from onnx import helper

    rng = np.random.default_rng(10)
    w = rng.standard_normal((3, 6)).astype(np.float32)
    scale = np.float32(np.abs(w).max() / 127)
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"]),
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"]),
        helper.make_node("Gemm", ["x", "wd"], ["y"], transB=1),
    ]
    inits = {"w": w, "s": np.array(scale), "z": np.array(0, np.int8)}
    path = _graph_model(tmp_path, nodes, inits, "fq")
    model = load_model(path)
    assert [(la.name, la.op) for la in model.layers] == [("w", "Gemm")]
    levels = np.clip(np.round(w / scale), -128, 127) * scale  # round half to even, like ONNX
    np.testing.assert_allclose(model.clean_weights()["w"], levels, rtol=1e-6)
    x = rng.standard_normal((20, 6)).astype(np.float32)
    _check_fed_weights_reach_the_ops(path, x, np.zeros(20, np.int64), stored=False)
    runner = model.runner(model.layers, device="cpu")
    runner.bind_data(x, np.zeros(20, np.int64), batch_size=8)
    np.testing.assert_allclose(runner.logits(), x @ levels.T, rtol=1e-5, atol=1e-5)
    npz = tmp_path / "d.npz"
    np.savez(npz, x=x, y=rng.integers(0, 3, 20))
    out = tmp_path / "h.onnx"
    code, _, err = run_cli(
        "harden", path, "--data", npz, "--method", "erm", "--epochs", "1", "--sigma", "0.1",
        "--output", out,
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and not out.exists()
    assert onnx.load(str(path)).graph.node[0].op_type == "QuantizeLinear"  # input untouched


RECURRENT_LAYERS = [f"lstm.weight_{m}_l{k}" for k in range(2) for m in ("ih", "hh")]
RECURRENT_LAYERS += ["gru.weight_ih_l0", "gru.weight_hh_l0"]


@pytest.mark.torch
@pytest.mark.parametrize(
    ("fmt", "layers", "untraced"),
    [
        ("float16", [*RECURRENT_LAYERS, "head.weight"], []),
        ("qdq", [*RECURRENT_LAYERS, "head.weight_quantized"], []),
        ("qoperator", [*RECURRENT_LAYERS, "head.weight_quantized"], []),
        # quantize_dynamic packs LSTM weights into DynamicQuantizeLSTM (integer kernels)
        ("dynamic", ["gru.weight_ih_l0", "gru.weight_hh_l0", "head.weight_Transposed_quantized"],
         ["DynamicQuantizeLSTM", "DynamicQuantizeLSTM"]),
        # without constant folding the gates are re-ordered with indices from the data's shape
        ("dynamo_noopt", ["head.weight"], ["LSTM", "LSTM", "GRU"]),
    ],
)  # fmt: skip
def test_recurrent_models_in_every_onnx_form(tmp_path, fmt, layers, untraced):
    """The recurrent model as float16, int8 (QDQ, QOperator, dynamic) and unfolded exports:
    every matrix is a layer whose sign moves the logits, or listed with the reason."""
    from real_models import _export

    net = _recurrent_net(4)
    x = np.random.default_rng(5).standard_normal((32, 7, 5)).astype(np.float32)
    path = _export(net, x, fmt, tmp_path / f"rnn_{fmt}.onnx", x)
    model = load_model(path)
    assert [la.name for la in model.layers] == layers
    assert [op.op for op in model.untraced] == untraced
    runner = model.runner(model.layers, device="cpu")
    runner.bind_data(model.fit_input(x), np.zeros(len(x), np.int64), batch_size=16)
    clean_weights, clean = model.clean_weights(), runner.logits()
    for layer in model.layers:
        runner.set_weights({**clean_weights, layer.name: -clean_weights[layer.name]})
        assert not np.allclose(runner.logits(), clean, atol=1e-4), layer.name


def test_unfused_operators_compute_what_ort_fused(tmp_path):
    """FusedConv (sum input, Clip), FusedGemm (HardSigmoid) and FusedMatMul (transB, alpha):
    the standard ops ftaudit reads them as give ONNX Runtime's own fused outputs."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(12)
    inits = {
        "w": rng.standard_normal((4, 1, 3, 3)),
        "b": rng.standard_normal(4),
        "v": rng.standard_normal((4, 1, 3, 3)),
        "g": rng.standard_normal((5, 64)),
        "m": rng.standard_normal((3, 5)),
    }
    ms = "com.microsoft"
    nodes = [
        helper.make_node("Conv", ["x", "v"], ["z"]),  # the sum input: the output's own shape
        helper.make_node("FusedConv", ["x", "w", "b", "z"], ["c"], domain=ms,
                         activation="Clip", activation_params=[-0.5, 0.5]),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("FusedGemm", ["f", "g"], ["h"], domain=ms, transB=1,
                         activation="HardSigmoid", activation_alpha=0.3, activation_beta=0.4),
        helper.make_node("FusedMatMul", ["h", "m"], ["y"], domain=ms, transB=1, alpha=0.5),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "fused",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(ms, 1)]
    proto = helper.make_model(graph, opset_imports=opsets)
    proto.ir_version = 8
    path = tmp_path / "fused.onnx"
    onnx.save(proto, str(path))
    model = load_model(path)
    assert [(la.name, la.op) for la in model.layers] == [
        ("v", "Conv"), ("w", "Conv"), ("g", "Gemm"), ("m", "MatMul")
    ]  # fmt: skip
    assert all(n.domain != ms for n in model.proto.graph.node)
    x = rng.standard_normal((7, 1, 6, 6)).astype(np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    fused_out = ort.InferenceSession(str(path), options, ["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    unfused = ort.InferenceSession(
        model.proto.SerializeToString(), options, ["CPUExecutionProvider"]
    )
    np.testing.assert_allclose(unfused.run(None, {"x": x})[0], fused_out, rtol=1e-5, atol=1e-6)
