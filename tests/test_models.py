"""Model loading: crossbar layer detection, MAC counts, format sniffing, bad and unsafe files.

Hand-built ONNX graphs (onnx.helper) cover layouts the torch exporter does not produce: MatMul
weights, weights behind Identity or Constant nodes, several outputs, external data. Where a model
is evaluated, the expected accuracies come from a plain numpy forward pass.
"""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import export_onnx, export_torchscript, keyed_normals

import ftaudit
from ftaudit.errors import UserError
from ftaudit.models import load_model

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SEED = 99

# --- helpers ----------------------------------------------------------------------------------


def save_graph(
    path: Path,
    nodes: Sequence,
    *,
    initializers: Sequence = (),
    input_name: str = "x",
    input_shape: Sequence[int | str] = ("batch", 1, 8, 8),
    outputs: Sequence[tuple[str, Sequence[int | str]]] = (("logits", ("batch", 4)),),
) -> Path:
    """A checked opset-17 ONNX model with one float input, written to ``path``."""
    graph = helper.make_graph(
        list(nodes),
        "hand_built",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in outputs],
        list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def random_weight(shape: Sequence[int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.3, shape).astype(np.float32)


def reference_draws(seed: int, sample: int, layer_index: int, shape: Sequence[int]) -> np.ndarray:
    """Base draws as docs/methods.md defines them (SFC64, SeedSequence(seed, (sample, layer)))."""
    return keyed_normals(seed, (sample, layer_index), (1, *shape))[0]


def lognormal_weights(
    weights: dict[str, np.ndarray], order: list[str], sample: int, sigma: float
) -> dict[str, np.ndarray]:
    """w * exp(sigma z) for every weight stored as (in, out): draws are made as (out, in)."""
    perturbed = {}
    for name, w in weights.items():
        z = reference_draws(SEED, sample, order.index(name), w.T.shape).T
        perturbed[name] = w * np.exp(np.float32(sigma) * z)
    return perturbed


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(logits.argmax(axis=1) == y))


def flat_inputs(blobs) -> tuple[np.ndarray, np.ndarray]:
    x, y = blobs
    return x.reshape(len(x), -1).astype(np.float64) / 255, y


def relu(a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0)


def assert_user_error(call: Callable[[], object], *fragments: str) -> UserError:
    with pytest.raises(UserError) as info:
        call()
    text = str(info.value)
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return info.value


def torch_params(module) -> dict[str, np.ndarray]:
    return {name: p.detach().numpy() for name, p in module.named_parameters()}


# --- layer detection on exported models -------------------------------------------------------


def test_exported_convnet_layers(convnet_onnx: Path, trained_convnet) -> None:
    model = load_model(convnet_onnx)
    params = torch_params(trained_convnet)
    assert model.format == "onnx"
    assert [layer.name for layer in model.layers] == ["0.weight", "3.weight", "5.weight"]
    assert [layer.op for layer in model.layers] == ["Conv", "Gemm", "Gemm"]
    assert [layer.index for layer in model.layers] == [0, 1, 2]
    for layer in model.layers:
        assert layer.shape == params[layer.name].shape
        assert layer.canonical_shape == layer.shape and not layer.transposed
        assert layer.params == params[layer.name].size
        assert np.array_equal(model.clean_weights()[layer.name], params[layer.name])
    assert (model.input.name, model.input.shape) == ("input", (None, 1, 8, 8))
    assert model.output.name == "logits"


def test_batchnorm_folded_into_the_conv(tmp_path: Path, trained_convnet_bn) -> None:
    path = export_onnx(trained_convnet_bn, tmp_path / "bn.onnx")
    model = load_model(path)
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    assert [layer.op for layer in model.layers] == ["Conv", "Gemm", "Gemm"]
    conv, bn = trained_convnet_bn[0], trained_convnet_bn[1]
    scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().numpy()
    folded = conv.weight.detach().numpy() * scale[:, None, None, None]
    stored = model.clean_weights()[model.layers[0].name]
    np.testing.assert_allclose(stored, folded, rtol=1e-5, atol=1e-6)


def test_batchnorm_kept_as_a_node(tmp_path: Path, trained_convnet_bn, blobs, blobs_npz) -> None:
    torch = pytest.importorskip("torch")
    path = export_onnx(trained_convnet_bn, tmp_path / "bn_kept.onnx", keep_batchnorm=True)
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(path)).graph.node}
    model = load_model(path)
    assert [layer.op for layer in model.layers] == ["Conv", "Gemm", "Gemm"]
    conv = model.layers[0]
    assert conv.name == "0.weight"
    assert np.array_equal(
        model.clean_weights()[conv.name], torch_params(trained_convnet_bn)["0.weight"]
    )
    x, y = blobs
    with torch.no_grad():
        logits = trained_convnet_bn(torch.from_numpy(x.astype(np.float32) / 255)).numpy()
    report = ftaudit.audit(path, blobs_npz, sigmas=[0.0, 0.5], samples=5, seed=SEED)
    assert report.clean_accuracy == accuracy(logits, y)
    assert np.all(report.results[0].accuracies == report.clean_accuracy)


def test_matmul_weights_are_transposed(mlp_matmul_onnx: Path, trained_mlp) -> None:
    model = load_model(mlp_matmul_onnx)
    params = torch_params(trained_mlp)
    assert [(layer.name, layer.op) for layer in model.layers] == [
        ("fc1_w", "MatMul"),
        ("fc2_w", "MatMul"),
    ]
    first = model.layers[0]
    assert first.transposed and first.shape == (64, 16) and first.canonical_shape == (16, 64)
    assert np.array_equal(model.clean_weights()["fc1_w"], params["1.weight"].T)
    draws = np.arange(2 * 16 * 64, dtype=np.float32).reshape(2, 16, 64)
    native = first.to_native(draws)
    assert native.shape == (2, 64, 16) and native[1, 5, 3] == draws[1, 3, 5]


def test_gemm_without_trans_b_is_transposed(tmp_path: Path) -> None:
    w = random_weight((64, 4), 1)
    path = save_graph(
        tmp_path / "gemm.onnx",
        [
            helper.make_node("Flatten", ["x"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "w"], ["logits"]),
        ],
        initializers=[numpy_helper.from_array(w, "w")],
    )
    (layer,) = load_model(path).layers
    assert (layer.op, layer.shape, layer.transposed, layer.canonical_shape) == (
        "Gemm",
        (64, 4),
        True,
        (4, 64),
    )
    assert layer.macs == 64 * 4


def identity_shared_model(path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """flat @ A -> relu -> @ W -> relu -> @ Identity(W) -> relu -> @ B: W is one stored tensor."""
    weights = {
        "A": random_weight((64, 16), 2),
        "W": random_weight((16, 16), 3) * 3,
        "B": random_weight((16, 4), 4) * 3,
    }
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "A"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["r0"]),
        helper.make_node("MatMul", ["r0", "W"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Identity", ["W"], ["W_alias"]),
        helper.make_node("MatMul", ["r1", "W_alias"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("MatMul", ["r2", "B"], ["logits"]),
    ]
    inits = [numpy_helper.from_array(w, name) for name, w in weights.items()]
    return save_graph(path, nodes, initializers=inits), weights


def identity_forward(flat: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    h = relu(flat @ w["A"])
    h = relu(h @ w["W"])
    h = relu(h @ w["W"])
    return h @ w["B"]


def test_weight_shared_through_identity(tmp_path: Path, blobs, blobs_npz: Path) -> None:
    path, weights = identity_shared_model(tmp_path / "shared.onnx")
    model = load_model(path)
    assert [layer.name for layer in model.layers] == ["A", "W", "B"]
    assert model.layers[1].macs == 2 * 16 * 16  # both uses of W counted once each
    flat, y = flat_inputs(blobs)
    report = ftaudit.audit(path, blobs_npz, sigmas=[0.0, 0.6], samples=5, seed=SEED)
    assert report.clean_accuracy == accuracy(identity_forward(flat, weights), y)
    order = ["A", "W", "B"]
    expected = [
        accuracy(identity_forward(flat, lognormal_weights(weights, order, i, 0.6)), y)
        for i in range(5)
    ]
    assert report.results[1].accuracies.tolist() == expected
    assert len(set(expected)) > 1


def test_weight_from_a_constant_node(tmp_path: Path, blobs, blobs_npz: Path) -> None:
    w = random_weight((64, 4), 5)
    nodes = [
        helper.make_node("Constant", [], ["w_const"], value=numpy_helper.from_array(w, "c")),
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w_const"], ["logits"]),
    ]
    path = save_graph(tmp_path / "const.onnx", nodes)
    model = load_model(path)
    (layer,) = model.layers
    assert (layer.name, layer.op, layer.transposed) == ("w_const", "MatMul", True)
    assert np.array_equal(model.clean_weights()["w_const"], w)
    flat, y = flat_inputs(blobs)
    report = ftaudit.audit(path, blobs_npz, sigmas=[0.0, 0.8], samples=4, seed=SEED)
    assert report.clean_accuracy == accuracy(flat @ w, y)
    expected = [
        accuracy(flat @ lognormal_weights({"w_const": w}, ["w_const"], i, 0.8)["w_const"], y)
        for i in range(4)
    ]
    assert report.results[1].accuracies.tolist() == expected
    # the file on disk still holds the Constant node: loading never rewrites it
    assert "Constant" in {n.op_type for n in onnx.load(str(path)).graph.node}


def test_other_input_and_output_names(tmp_path: Path, trained_convnet, convnet_onnx, blobs_npz):
    path = export_onnx(
        trained_convnet, tmp_path / "named.onnx", input_name="image", output_name="scores"
    )
    model = load_model(path)
    assert (model.input.name, model.output.name) == ("image", "scores")
    named, default = (
        ftaudit.audit(p, blobs_npz, sigmas=[0.7], samples=8, seed=SEED)
        for p in (path, convnet_onnx)
    )
    assert np.array_equal(named.results[0].accuracies, default.results[0].accuracies)
    assert named.model["input"]["name"] == "image"


def test_fixed_batch_axis(tmp_path: Path, trained_convnet, convnet_onnx: Path, blobs_npz: Path):
    path = export_onnx(trained_convnet, tmp_path / "fixed.onnx", dynamic=False, batch=5)
    model = load_model(path)
    assert model.input.shape == (5, 1, 8, 8)
    # MACs are per example whatever the batch axis says
    assert [layer.macs for layer in model.layers] == [
        layer.macs for layer in load_model(convnet_onnx).layers
    ]
    fixed, dynamic = (
        ftaudit.audit(p, blobs_npz, sigmas=[0.0, 0.8], samples=8, seed=SEED, limit=13, batch_size=4)
        for p in (path, convnet_onnx)
    )  # 13 samples: two full batches of 5 and a padded one
    assert fixed.data["n"] == 13
    assert fixed.clean_accuracy == dynamic.clean_accuracy
    for a, b in zip(fixed.results, dynamic.results, strict=True):
        assert np.array_equal(a.accuracies, b.accuracies)


def two_output_model(path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    wa, wb = random_weight((64, 4), 6), random_weight((64, 4), 7)
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "wa"], ["first"]),
        helper.make_node("MatMul", ["flat", "wb"], ["second"]),
    ]
    path = save_graph(
        path,
        nodes,
        initializers=[numpy_helper.from_array(wa, "wa"), numpy_helper.from_array(wb, "wb")],
        outputs=[("first", ("batch", 4)), ("second", ("batch", 4))],
    )
    return path, wa, wb


def test_output_chooses_among_several(tmp_path: Path, blobs, blobs_npz: Path) -> None:
    path, wa, wb = two_output_model(tmp_path / "two.onnx")
    flat, y = flat_inputs(blobs)
    assert accuracy(flat @ wa, y) != accuracy(flat @ wb, y)
    assert load_model(path).output.name == "first"
    model = load_model(path, output="second")
    assert model.output.name == "second"
    report = ftaudit.audit(path, blobs_npz, sigmas=[0.0], samples=2, output="second")
    assert report.clean_accuracy == accuracy(flat @ wb, y)
    default = ftaudit.audit(path, blobs_npz, sigmas=[0.0], samples=2)
    assert default.clean_accuracy == accuracy(flat @ wa, y)


def test_unknown_output_name(tmp_path: Path) -> None:
    path, _, _ = two_output_model(tmp_path / "two.onnx")
    error = assert_user_error(lambda: load_model(path, output="third"), "no output named 'third'")
    assert error.hint == "its outputs are: first, second"


def test_output_option_is_refused_for_torchscript(convnet_ts: Path) -> None:
    assert_user_error(lambda: load_model(convnet_ts, output="logits"), "--output")


# --- MAC counts -------------------------------------------------------------------------------


def test_mac_counts_match_hand_computation(convnet_onnx: Path, mlp_matmul_onnx: Path) -> None:
    conv, fc1, fc2 = load_model(convnet_onnx).layers
    assert conv.macs == (4 * 6 * 6) * (1 * 3 * 3)  # output elements x kernel volume
    assert fc1.macs == 144 * 16
    assert fc2.macs == 16 * 4
    assert [layer.macs for layer in load_model(mlp_matmul_onnx).layers] == [64 * 16, 16 * 4]


def test_mac_count_of_a_weight_on_the_left_of_matmul(tmp_path: Path) -> None:
    """W (3, 8) @ x (N, 1, 8, 8): 3 x 8 outputs per example, each a dot product over 8."""
    path = save_graph(
        tmp_path / "left.onnx",
        [helper.make_node("MatMul", ["w", "x"], ["y"])],
        initializers=[numpy_helper.from_array(random_weight((3, 8), 8), "w")],
        outputs=[("y", ("batch", 1, 3, 8))],
    )
    (layer,) = load_model(path).layers
    assert (layer.op, layer.transposed) == ("MatMul", False)
    assert layer.macs == 3 * 8 * 8


def test_grouped_conv_macs(tmp_path: Path) -> None:
    w = random_weight((4, 1, 3, 3), 9)  # 4 output channels, groups = 2 over 2 input channels
    path = save_graph(
        tmp_path / "grouped.onnx",
        [helper.make_node("Conv", ["x", "w"], ["y"], group=2, pads=[1, 1, 1, 1])],
        initializers=[numpy_helper.from_array(w, "w")],
        input_shape=("batch", 2, 8, 8),
        outputs=[("y", ("batch", 4, 8, 8))],
    )
    (layer,) = load_model(path).layers
    assert layer.macs == (4 * 8 * 8) * (1 * 3 * 3)


# --- TorchScript and format sniffing ----------------------------------------------------------


def test_torchscript_layer_names(tmp_path: Path, trained_mlp, convnet_ts: Path) -> None:
    mlp = load_model(export_torchscript(trained_mlp, tmp_path / "mlp.pt"))
    assert mlp.format == "torchscript"
    assert [(layer.name, layer.op) for layer in mlp.layers] == [
        ("1.weight", "Linear"),
        ("3.weight", "Linear"),
    ]
    params = torch_params(trained_mlp)
    for layer in mlp.layers:
        assert layer.shape == params[layer.name].shape
        assert np.array_equal(mlp.clean_weights()[layer.name], params[layer.name])
    conv = load_model(convnet_ts)
    assert [(layer.name, layer.op) for layer in conv.layers] == [
        ("0.weight", "Conv2d"),
        ("3.weight", "Linear"),
        ("5.weight", "Linear"),
    ]


def test_format_is_sniffed_from_content(tmp_path: Path, convnet_onnx: Path, convnet_ts: Path):
    onnx_as_pt = tmp_path / "model.pt"
    ts_as_onnx = tmp_path / "model.onnx"
    shutil.copyfile(convnet_onnx, onnx_as_pt)
    shutil.copyfile(convnet_ts, ts_as_onnx)
    assert load_model(onnx_as_pt).format == "onnx"
    assert load_model(ts_as_onnx).format == "torchscript"
    assert [layer.op for layer in load_model(ts_as_onnx).layers] == ["Conv2d", "Linear", "Linear"]


# --- bad files --------------------------------------------------------------------------------


def test_missing_empty_and_folder(tmp_path: Path) -> None:
    assert_user_error(lambda: load_model(tmp_path / "nope.onnx"), "does not exist")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert_user_error(lambda: load_model(empty), f"model file {empty} is empty")
    assert_user_error(lambda: load_model(tmp_path), "is a folder")


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    error = assert_user_error(lambda: load_model(path), str(path))
    assert "ONNX" in error.message


def test_truncated_onnx(tmp_path: Path, convnet_onnx: Path) -> None:
    raw = convnet_onnx.read_bytes()
    path = tmp_path / "half.onnx"
    path.write_bytes(raw[: len(raw) // 2])
    assert_user_error(lambda: load_model(path), str(path), "ONNX")


def test_truncated_torchscript(tmp_path: Path, convnet_ts: Path) -> None:
    raw = convnet_ts.read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(raw[: len(raw) // 2])
    assert_user_error(lambda: load_model(path), str(path), "corrupt or truncated")


def test_state_dict_checkpoint(tmp_path: Path, trained_convnet) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "weights.pt"
    torch.save(trained_convnet.state_dict(), path)
    error = assert_user_error(
        lambda: load_model(path), "is a torch.save checkpoint, not a TorchScript"
    )
    assert "torch.jit.save" in (error.hint or "")


def test_zip_that_is_neither(tmp_path: Path) -> None:
    path = tmp_path / "archive.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "hi")
    assert_user_error(lambda: load_model(path), "zip archive that is neither TorchScript nor ONNX")


def test_model_without_crossbar_layers(tmp_path: Path, blobs_npz: Path) -> None:
    path = save_graph(
        tmp_path / "relu.onnx",
        [helper.make_node("Relu", ["x"], ["logits"])],
        input_shape=("batch", 4),
        outputs=[("logits", ("batch", 4))],
    )
    model = load_model(path)
    assert model.layers == []
    assert_user_error(model.select_layers, "has no crossbar layer")
    assert_user_error(
        lambda: ftaudit.audit(path, blobs_npz, sigmas=[0.1], samples=2), "has no crossbar layer"
    )


# --- external data ----------------------------------------------------------------------------

#: paths opened by Python while ``_OPEN_LOG`` is active (audit hooks cannot be removed, so the
#: hook below stays installed and only records while a test asks it to)
_OPEN_LOG: list[str] = []
_RECORDING = [False]


def _record_open(event: str, args: tuple) -> None:
    if _RECORDING[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPEN_LOG.append(os.fsdecode(args[0]))


sys.addaudithook(_record_open)


def opened_while(call: Callable[[], object]) -> list[str]:
    """Run ``call``; return every path Python opened meanwhile (exceptions propagate)."""
    _OPEN_LOG.clear()
    _RECORDING[0] = True
    try:
        call()
    finally:
        _RECORDING[0] = False
    return list(_OPEN_LOG)


def external_data_model(folder: Path) -> Path:
    """An MLP whose weights live in ``weights.bin`` next to ``model.onnx``."""
    folder.mkdir(parents=True, exist_ok=True)
    w1, w2 = random_weight((64, 16), 10), random_weight((16, 4), 11)
    path = save_graph(
        folder / "tmp.onnx",
        [
            helper.make_node("Flatten", ["x"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w1"], ["h"]),
            helper.make_node("MatMul", ["h", "w2"], ["logits"]),
        ],
        initializers=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = onnx.load(str(path))
    path.unlink()
    target = folder / "model.onnx"
    onnx.save(
        model,
        str(target),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (folder / "weights.bin").is_file()
    return target


def relocate_external_data(path: Path, location: str) -> None:
    """Rewrite every external-data location in ``path`` (the data itself is not touched)."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())


def test_external_data_next_to_the_model_loads(tmp_path: Path, blobs_npz: Path) -> None:
    path = external_data_model(tmp_path / "ok")
    model = load_model(path)
    assert [layer.name for layer in model.layers] == ["w1", "w2"]
    assert model.clean_weights()["w1"].shape == (64, 16)
    report = ftaudit.audit(path, blobs_npz, sigmas=[0.3], samples=2)
    assert report.results[0].accuracies.shape == (2,)


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_external_data_outside_the_folder_is_refused_unread(tmp_path: Path, where: str) -> None:
    path = external_data_model(tmp_path / "models")
    secret = tmp_path / "secret.bin"
    shutil.move(tmp_path / "models" / "weights.bin", secret)  # a readable file of the right size
    location = "../secret.bin" if where == "parent" else str(secret.resolve())
    relocate_external_data(path, location)
    errors: list[UserError] = []

    def load() -> None:
        with pytest.raises(UserError) as info:
            load_model(path)
        errors.append(info.value)

    opened = opened_while(load)
    assert f"external data '{location}' outside the model's folder" in errors[0].message
    assert not any("secret" in p for p in opened), opened
    assert any(p.endswith("model.onnx") for p in opened)  # the hook does see opens


def test_missing_external_data_file(tmp_path: Path) -> None:
    path = external_data_model(tmp_path / "m")
    (tmp_path / "m" / "weights.bin").unlink()
    assert_user_error(lambda: load_model(path), "needs its external data file 'weights.bin'")


# --- layer selection --------------------------------------------------------------------------


def test_layer_globs(convnet_onnx: Path, blobs_npz: Path) -> None:
    model = load_model(convnet_onnx)
    error = assert_user_error(lambda: model.select_layers(["fc*"]), "no crossbar layer is selected")
    assert error.hint == "the model's crossbar weights are: 0.weight, 3.weight, 5.weight"
    assert_user_error(lambda: model.select_layers(None, ["*"]), "0.weight, 3.weight, 5.weight")
    names = lambda chosen: [layer.name for layer in chosen]  # noqa: E731
    assert names(model.select_layers()) == ["0.weight", "3.weight", "5.weight"]
    assert names(model.select_layers(None, ["0.*"])) == ["3.weight", "5.weight"]
    assert names(model.select_layers(["*.weight"], ["5.weight"])) == ["0.weight", "3.weight"]
    assert names(model.select_layers(["5.weight", "0.*"])) == ["0.weight", "5.weight"]
    report = ftaudit.audit(convnet_onnx, blobs_npz, sigmas=[0.5], samples=2, exclude=["0.*"])
    assert [layer.selected for layer in report.layers] == [False, True, True]


def test_excluded_layers_keep_their_clean_weights(convnet_onnx: Path, blobs_npz: Path) -> None:
    """Excluding every layer but one equals selecting that one (same draws, same accuracies)."""
    kept, chosen = (
        ftaudit.audit(convnet_onnx, blobs_npz, sigmas=[1.0], samples=8, seed=SEED, **kwargs)
        for kwargs in ({"exclude": ["0.weight", "5.weight"]}, {"layers": ["3.weight"]})
    )
    assert np.array_equal(kept.results[0].accuracies, chosen.results[0].accuracies)
    everything = ftaudit.audit(convnet_onnx, blobs_npz, sigmas=[1.0], samples=8, seed=SEED)
    assert not np.array_equal(kept.results[0].accuracies, everything.results[0].accuracies)


# --- the model file is read-only ----------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["convnet_onnx", "convnet_ts"])
def test_audit_leaves_the_model_file_alone(
    fixture: str, tmp_path: Path, blobs_npz: Path, request
) -> None:
    path = tmp_path / request.getfixturevalue(fixture).name
    shutil.copy2(request.getfixturevalue(fixture), path)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    ftaudit.audit(path, blobs_npz, sigmas=[0.0, 0.5], noise="rram", samples=3)
    ftaudit.inspect_model(path)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize(("value", "forced"), [(None, None), ("0", False), ("1", True)])
def test_ort_spinning_follows_the_environment(value, forced) -> None:
    """FTAUDIT_ORT_SPINNING=1/0 forces spinning on/off; unset leaves it to the load average."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "FTAUDIT_ORT_SPINNING"}
    if value is not None:
        env["FTAUDIT_ORT_SPINNING"] = value
    code = "import ftaudit.models.ort_spinning as m; print(m.SPIN_BETWEEN_RUNS)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(forced)


@pytest.mark.parametrize(
    ("forced", "others", "load", "cores", "spins"),
    [
        (None, 0.1, 9.0, 2, True),  # others idle: spin, whatever the load average remembers
        (None, 0.6, 0.0, 2, False),  # other processes keep more than a quarter core per core
        (None, 1.5, 0.0, 8, True),
        (None, 2.5, 0.0, 8, False),
        (None, None, 0.1, 2, True),  # no /proc/stat: the 1-minute load average decides
        (None, None, 0.6, 2, False),
        (True, 9.0, 9.0, 2, True),
        (False, 0.0, 0.0, 2, False),
    ],
)
def test_ort_spinning_only_when_other_processes_leave_the_cores_idle(
    monkeypatch, forced, others, load, cores, spins
) -> None:
    import os

    from ftaudit.models import ort_spinning

    monkeypatch.setattr(ort_spinning, "SPIN_BETWEEN_RUNS", forced)
    monkeypatch.setattr(ort_spinning, "_decided", None)
    monkeypatch.setattr(ort_spinning, "other_processes_cores", lambda window: others)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert ort_spinning.spin_between_runs() is spins


def test_ort_spinning_decides_once_per_reuse_period(monkeypatch) -> None:
    from ftaudit.models import ort_spinning

    calls = []
    monkeypatch.setattr(ort_spinning, "SPIN_BETWEEN_RUNS", None)
    monkeypatch.setattr(ort_spinning, "_decided", None)
    monkeypatch.setattr(ort_spinning, "other_processes_cores", lambda w: calls.append(w) or 0.0)
    assert ort_spinning.spin_between_runs() and ort_spinning.spin_between_runs()
    assert calls == [ort_spinning.WINDOW_S]
    monkeypatch.setattr(ort_spinning, "REUSE_S", 0.0)
    ort_spinning.spin_between_runs()
    assert len(calls) == 2


def test_other_processes_cores_subtracts_this_process(monkeypatch) -> None:
    """Busy seconds of the machine minus this process's own, per second of the window."""
    from ftaudit.models import ort_spinning

    counters = iter([(100.0, 10.0, 5.0), (100.9, 10.6, 5.5)])  # 0.9 s busy, 0.6 s our own
    monkeypatch.setattr(ort_spinning, "cpu_counters", lambda: next(counters))
    monkeypatch.setattr(ort_spinning.time, "sleep", lambda s: None)
    assert ort_spinning.other_processes_cores(0.5) == pytest.approx(0.6)
    monkeypatch.setattr(ort_spinning, "cpu_counters", lambda: (_ for _ in ()).throw(OSError()))
    assert ort_spinning.other_processes_cores(0.5) is None


@pytest.mark.parametrize("spins", [True, False])
def test_monte_carlo_sessions_follow_the_spinning_decision(monkeypatch, spins) -> None:
    """The runner's ONNX Runtime session is built with spinning off exactly when the policy
    says not to spin (ONNX Runtime's own default, spinning, otherwise)."""
    from conftest import SAMPLES

    from ftaudit.models import load_model, ort_spinning

    monkeypatch.setattr(ort_spinning, "SPIN_BETWEEN_RUNS", spins)
    model = load_model(SAMPLES / "mlp.onnx")
    runner = model.runner(model.layers, device="cpu")
    options = runner.session.get_session_options()
    try:  # no entry: ONNX Runtime's default, spinning
        entry = options.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:
        entry = None
    assert (entry != "0") is spins


def test_read_noise_sessions_never_spin_unless_forced(monkeypatch) -> None:
    """The analog pipeline's read-noise draws run on a helper thread during the session's runs:
    its session sleeps between parallel sections on an idle machine too; forcing still wins."""
    import numpy as np
    from conftest import SAMPLES

    from ftaudit.analog import ForwardPipeline
    from ftaudit.analog.runner import analog_runner
    from ftaudit.models import load_model, ort_spinning

    model = load_model(SAMPLES / "mlp.onnx")
    with np.load(SAMPLES / "fmnist_test_2000.npz") as data:
        x = model.fit_input(data["x"][:64].astype(np.float32) / 255)
    monkeypatch.setattr(ort_spinning, "_decided", None)
    monkeypatch.setattr(ort_spinning, "other_processes_cores", lambda window: 0.0)

    def allows_spinning(forced, pipeline) -> bool:
        monkeypatch.setattr(ort_spinning, "SPIN_BETWEEN_RUNS", forced)
        runner, _ = analog_runner(model, model.layers, x, pipeline=pipeline, seed=0, device="cpu")
        options = runner.session.get_session_options()
        try:
            return options.get_session_config_entry("session.intra_op.allow_spinning") != "0"
        except RuntimeError:  # no entry: ONNX Runtime's default, spinning
            return True

    noisy, quiet = ForwardPipeline(adc_bits=8, read_noise=0.05), ForwardPipeline(adc_bits=8)
    assert not allows_spinning(None, noisy)
    assert allows_spinning(None, quiet)
    assert allows_spinning(True, noisy)


def test_float16_torchscript_reads_float16_data(tmp_path: Path, run_cli) -> None:
    """A model.half() archive: the runner feeds float16 data, so its clean and perturbed logits
    are torch's own forward on x.half() with those weights; harden refuses in one line."""
    torch = pytest.importorskip("torch")
    from test_cli import assert_one_line_error

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    net = net.half().eval()
    x = np.random.default_rng(0).normal(size=(9, 6)).astype(np.float32)
    path = tmp_path / "half.pt"
    torch.jit.save(torch.jit.trace(net, torch.from_numpy(x[:2]).half()), str(path))
    model = load_model(path)
    assert model.input.dtype == "float16"
    assert [layer.dtype for layer in model.layers] == ["float16", "float16"]
    runner = model.runner(model.layers, device="cpu")
    runner.bind_data(x, np.zeros(len(x)), batch_size=4)
    doubled = {name: 2 * w for name, w in model.clean_weights().items()}
    runner.set_weights(doubled)
    with torch.no_grad():
        net[0].weight.mul_(2)
        net[2].weight.mul_(2)
        expected = net(torch.from_numpy(x).half()).float().numpy()
    np.testing.assert_array_equal(runner.logits(), expected)
    data = tmp_path / "d.npz"
    np.savez(data, x=x, y=expected.argmax(1))
    out = tmp_path / "hard.pt"
    line = assert_one_line_error(
        *run_cli("harden", path, "--data", data, "--sigma", "0.1", "-o", out)
    )
    assert "float16 TorchScript" in line and not out.exists()
