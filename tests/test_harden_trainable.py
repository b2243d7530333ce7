"""Trainable copies of ONNX / TorchScript models and the export of their trained weights.

The reference for every conversion is a second implementation: ONNX Runtime on the exported file
(or torch.jit.load for TorchScript). Exports are compared with the input structurally: with the
initializer values blanked out, the two protos must serialise identically.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import export_onnx, make_blobs, tiny_convnet

torch = pytest.importorskip("torch")
pytest.importorskip("onnx2torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from ftaudit.errors import UserError  # noqa: E402
from ftaudit.harden.trainable import (  # noqa: E402
    TrainableModel,
    export_hardened,
    make_trainable,
)
from ftaudit.models import load_model  # noqa: E402

pytestmark = pytest.mark.torch


# --- helpers ----------------------------------------------------------------------------------


def images(n: int = 16) -> np.ndarray:
    x, _ = make_blobs(n, seed=3)
    return x.astype(np.float32) / 255


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: x})[0]


def torch_logits(trainable: TrainableModel, x: np.ndarray) -> np.ndarray:
    trainable.module.eval()
    with torch.no_grad():
        return trainable.module(torch.from_numpy(x)).numpy()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def without_values(model: Any) -> bytes:
    """The model with initializer / Constant values and metadata_props cleared, serialised."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    tensors = list(copy.graph.initializer) + [
        a.t
        for n in copy.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
    ]
    for tensor in tensors:
        for field in ("raw_data", "float_data", "double_data", "int32_data", "int64_data"):
            tensor.ClearField(field)
    del copy.metadata_props[:]
    return copy.SerializeToString()


def modify(trainable: TrainableModel) -> dict[str, np.ndarray]:
    """Halve every crossbar weight and shift every other parameter; returns the new weights."""
    halved = {name: array * 0.5 for name, array in trainable.crossbar_arrays().items()}
    trainable.set_crossbar_arrays(halved)
    crossbar_ids = {id(t) for t in trainable.crossbar.values()}
    with torch.no_grad():
        for param in trainable.module.parameters():
            if id(param) not in crossbar_ids:
                param.add_(0.25)
    return halved


def build_onnx(path: Path, nodes: list[Any], initializers: list[Any]) -> Path:
    """A checked opset-17 model from input x (n, 8) to output y (n, 8)."""
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def bn_onnx(trained_convnet_bn, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("harden_bn")
    return export_onnx(trained_convnet_bn, folder / "convnet_bn.onnx", keep_batchnorm=True)


@pytest.fixture(params=["convnet", "mlp_matmul", "convnet_bn", "mlp_gemm"])
def onnx_path(request, convnet_onnx, mlp_matmul_onnx, bn_onnx, mlp_onnx) -> Path:
    return {
        "convnet": convnet_onnx,
        "mlp_matmul": mlp_matmul_onnx,
        "convnet_bn": bn_onnx,
        "mlp_gemm": mlp_onnx,
    }[request.param]


@pytest.fixture
def weight() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(8, 8)).astype(np.float32)


# --- conversion ---------------------------------------------------------------------------------


def test_onnx_conversion_reproduces_onnx_runtime(onnx_path: Path) -> None:
    source = load_model(onnx_path)
    trainable = make_trainable(source)
    x = images()
    np.testing.assert_allclose(torch_logits(trainable, x), ort_logits(onnx_path, x), atol=1e-4)
    clean = source.clean_weights()
    arrays = trainable.crossbar_arrays()
    assert arrays.keys() == clean.keys() == {layer.name for layer in source.layers}
    for name, array in clean.items():
        assert arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(arrays[name], array)
    # every crossbar weight is a trainable parameter of the module
    parameters = {id(p) for p in trainable.module.parameters()}
    assert all(id(t) in parameters and t.requires_grad for t in trainable.crossbar.values())


def test_matmul_weights_and_their_biases_become_parameters(mlp_matmul_onnx: Path) -> None:
    trainable = make_trainable(load_model(mlp_matmul_onnx))
    # onnx2torch leaves MatMul/Add constants as buffers; weights and the biases added to them
    # must be trained like the Linear layers of a Gemm export
    names = {trainable.slots[name].target for name in ("fc1_w", "fc1_b", "fc2_w", "fc2_b")}
    assert names == {n for n, _ in trainable.module.named_parameters()}
    assert not any(t.is_floating_point() for _, t in trainable.module.named_buffers())


def test_gemm_without_transb_is_a_transposed_parameter(tmp_path: Path, weight) -> None:
    bias = np.arange(8, dtype=np.float32)
    path = build_onnx(
        tmp_path / "gemm.onnx",
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    source = load_model(path)
    assert source.layers[0].transposed
    trainable = make_trainable(source)
    assert trainable.slots["w"].transposed
    np.testing.assert_array_equal(trainable.crossbar["w"].detach().numpy(), weight.T)
    np.testing.assert_array_equal(trainable.crossbar_arrays()["w"], weight)
    changed = weight + np.triu(np.ones((8, 8), np.float32))  # not symmetric: catches a transpose
    trainable.set_crossbar_arrays({"w": changed})
    np.testing.assert_array_equal(trainable.crossbar_arrays()["w"], changed)
    out = tmp_path / "gemm_hard.onnx"
    export_hardened(trainable, out, metadata={})
    exported = onnx.load(str(out))
    np.testing.assert_array_equal(numpy_helper.to_array(exported.graph.initializer[0]), changed)
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    np.testing.assert_allclose(ort_logits(out, x), torch_logits(trainable, x), atol=1e-4)


def test_float16_model_with_float32_io_trains_in_float32(tmp_path: Path, weight) -> None:
    """onnxconverter-common's keep_io_types: Cast(x) to float16, a float16 Gemm, Cast back. The
    trainable runs in float32 (the Cast into float16 retargeted) and agrees with ONNX Runtime
    on the file; its export keeps the float16 initializer and the float32 inputs/outputs."""
    bias = np.arange(8, dtype=np.float16)
    path = build_onnx(
        tmp_path / "keep_io.onnx",
        [
            helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
            helper.make_node("Gemm", ["x16", "w", "b"], ["y16"], transB=1),
            helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT),
        ],
        [
            numpy_helper.from_array(weight.astype(np.float16), "w"),
            numpy_helper.from_array(bias, "b"),
        ],
    )
    trainable = make_trainable(load_model(path))
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    np.testing.assert_allclose(torch_logits(trainable, x), ort_logits(path, x), atol=2e-2)
    out = tmp_path / "keep_io_hard.onnx"
    export_hardened(trainable, out, metadata={})
    assert without_values(onnx.load(str(out))) == without_values(onnx.load(str(path)))
    np.testing.assert_allclose(ort_logits(out, x), ort_logits(path, x), atol=2e-2)


def test_equal_batchnorm_values_are_mapped_by_provenance(bn_onnx: Path, tmp_path: Path) -> None:
    # weight == running_var and bias == running_mean, as in a fresh BatchNorm: equality alone
    # cannot tell them apart
    model = onnx.load(str(bn_onnx))
    for tensor in model.graph.initializer:
        if tensor.name.startswith("1."):
            fill = 1.0 if tensor.name in ("1.weight", "1.running_var") else 0.0
            array = np.full(tuple(tensor.dims), fill, np.float32)
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    path = tmp_path / "equal_bn.onnx"
    onnx.save(model, str(path))
    trainable = make_trainable(load_model(path))
    for attr in ("weight", "bias", "running_mean", "running_var"):
        assert trainable.slots[f"1.{attr}"].target.endswith(f"BatchNormalization.{attr}")
    x = images()
    np.testing.assert_allclose(torch_logits(trainable, x), ort_logits(path, x), atol=1e-4)


def test_merged_batchnorm_initializers_are_refused(tmp_path: Path) -> None:
    # torch's exporter stores an untrained BatchNorm's running_var as Identity(weight): one
    # stored tensor for a parameter and a running statistic cannot hold both after training
    model = tiny_convnet(batchnorm=True)
    path = export_onnx(model, tmp_path / "fresh_bn.onnx", keep_batchnorm=True)
    if not any(n.op_type == "Identity" for n in onnx.load(str(path)).graph.node):
        pytest.skip("this torch version's exporter does not merge equal initializers")
    with pytest.raises(UserError, match=r"shared .* by tensors that train differently"):
        make_trainable(load_model(path))


def test_shared_weight_stays_one_parameter(tmp_path: Path, weight) -> None:
    zeros = np.zeros(8, np.float32)  # two equal biases: told apart by provenance
    path = build_onnx(
        tmp_path / "shared.onnx",
        [
            helper.make_node("MatMul", ["x", "w"], ["h0"]),
            helper.make_node("Add", ["h0", "b0"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["h2"]),
            helper.make_node("MatMul", ["h2", "w"], ["h3"]),
            helper.make_node("Add", ["h3", "b1"], ["y"]),
        ],
        [
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(zeros, "b0"),
            numpy_helper.from_array(zeros, "b1"),
        ],
    )
    trainable = make_trainable(load_model(path))
    assert len(list(trainable.module.parameters())) == 3
    assert trainable.slots["b0"].target != trainable.slots["b1"].target
    x = np.random.default_rng(1).normal(size=(6, 8)).astype(np.float32)
    optimizer = torch.optim.SGD(trainable.module.parameters(), lr=0.1)
    trainable.module.train()
    trainable.module(torch.from_numpy(x)).square().mean().backward()
    optimizer.step()
    out = tmp_path / "shared_hard.onnx"
    export_hardened(trainable, out, metadata={})
    assert not np.array_equal(load_model(out).clean_weights()["w"], weight)
    np.testing.assert_allclose(ort_logits(out, x), torch_logits(trainable, x), atol=1e-4)


def test_identity_shared_gemm_weight_is_tied(tmp_path: Path, weight) -> None:
    bias = np.zeros(8, np.float32)
    path = build_onnx(
        tmp_path / "identity.onnx",
        [
            helper.make_node("Identity", ["w"], ["w_copy"]),
            helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),
            helper.make_node("Gemm", ["h", "w_copy", "b"], ["y"], transB=1),
        ],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    trainable = make_trainable(load_model(path))
    assert len(list(trainable.module.parameters())) == 2  # one weight, one bias
    trainable.set_crossbar_arrays({"w": weight * 0.5})
    out = tmp_path / "identity_hard.onnx"
    export_hardened(trainable, out, metadata={})
    exported = onnx.load(str(out))
    assert [n.op_type for n in exported.graph.node] == ["Identity", "Gemm", "Gemm"]
    x = np.random.default_rng(2).normal(size=(3, 8)).astype(np.float32)
    np.testing.assert_allclose(ort_logits(out, x), torch_logits(trainable, x), atol=1e-4)


# --- export -------------------------------------------------------------------------------------


def test_onnx_export_changes_only_initializer_values(onnx_path: Path, tmp_path: Path) -> None:
    before = sha256(onnx_path)
    source = load_model(onnx_path)
    trainable = make_trainable(source)
    trainable.module.train()  # moves BatchNorm running statistics, which are exported too
    with torch.no_grad():
        trainable.module(torch.from_numpy(images(32)))
    halved = modify(trainable)
    out = tmp_path / "hardened.onnx"
    metadata = {"method": "noise", "sigma": 0.1, "layers": ["a", "b"]}
    export_hardened(trainable, out, metadata=metadata)

    assert sha256(onnx_path) == before
    original, exported = onnx.load(str(onnx_path)), onnx.load(str(out))
    onnx.checker.check_model(exported)
    assert without_values(exported) == without_values(original)
    props = {p.key: p.value for p in exported.metadata_props}
    assert json.loads(props["ftaudit.hardening"]) == metadata

    x = images()
    np.testing.assert_allclose(ort_logits(out, x), torch_logits(trainable, x), atol=1e-4)
    reloaded = load_model(out)
    for name, array in reloaded.clean_weights().items():
        np.testing.assert_array_equal(array, halved[name])
    # every float initializer was traced and now holds the module's value
    module = trainable.module
    stored = {t.name: numpy_helper.to_array(t) for t in exported.graph.initializer}
    tensors = {**dict(module.named_buffers()), **dict(module.named_parameters())}
    for name, slot in trainable.slots.items():
        value = tensors[slot.target].detach().numpy()
        np.testing.assert_array_equal(stored[name], value.T if slot.transposed else value)
    float_initializers = {
        t.name for t in original.graph.initializer if t.data_type == TensorProto.FLOAT
    }
    assert float_initializers == set(trainable.slots)
    changed = {
        t.name
        for t in original.graph.initializer
        if not np.array_equal(numpy_helper.to_array(t), stored[t.name])
    }
    assert changed == float_initializers  # weights halved, biases and BN parameters shifted


def test_onnx_export_replaces_previous_ftaudit_metadata(tmp_path: Path, mlp_onnx: Path) -> None:
    first = tmp_path / "first.onnx"
    export_hardened(make_trainable(load_model(mlp_onnx)), first, metadata={"round": 1})
    second = tmp_path / "second.onnx"
    export_hardened(make_trainable(load_model(first)), second, metadata={"round": 2})
    props = [(p.key, p.value) for p in onnx.load(str(second)).metadata_props]
    assert props == [("ftaudit.hardening", '{"round": 2}')]


def test_constant_node_weight_is_written_back_into_the_node(tmp_path: Path, weight) -> None:
    path = build_onnx(
        tmp_path / "constant.onnx",
        [
            helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight, "w")),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        [],
    )
    trainable = make_trainable(load_model(path))
    trainable.set_crossbar_arrays({"w": weight * 0.5})
    out = tmp_path / "constant_hard.onnx"
    export_hardened(trainable, out, metadata={})
    exported = onnx.load(str(out))
    assert not exported.graph.initializer
    assert [n.op_type for n in exported.graph.node] == ["Constant", "MatMul"]
    value = numpy_helper.to_array(exported.graph.node[0].attribute[0].t)
    np.testing.assert_array_equal(value, weight * 0.5)
    assert without_values(exported) == without_values(onnx.load(str(path)))


def test_torchscript_round_trip(convnet_ts: Path, tmp_path: Path) -> None:
    before = sha256(convnet_ts)
    source = load_model(convnet_ts)
    trainable = make_trainable(source)
    clean = source.clean_weights()
    for name, array in trainable.crossbar_arrays().items():
        np.testing.assert_array_equal(array, clean[name])
    halved = modify(trainable)
    trainable.module.train()  # the export is saved in eval mode regardless
    out = tmp_path / "hardened.pt"
    export_hardened(trainable, out, metadata={"method": "erm"})
    assert sha256(convnet_ts) == before
    assert trainable.module.training  # the trainable module is left as it was

    extra = {"ftaudit.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["ftaudit.json"]) == {"method": "erm"}
    assert not loaded.training
    x = images()
    with torch.no_grad():
        np.testing.assert_allclose(
            loaded(torch.from_numpy(x)).numpy(), torch_logits(trainable, x), atol=1e-6
        )
    for name, array in load_model(out).clean_weights().items():
        np.testing.assert_array_equal(array, halved[name])


def test_state_dict_round_trip(convnet_onnx: Path) -> None:
    trainable = make_trainable(load_model(convnet_onnx))
    saved = {k: v.clone() for k, v in trainable.state_dict().items()}
    clean = trainable.crossbar_arrays()
    modify(trainable)
    trainable.load_state_dict(saved)
    for name, array in trainable.crossbar_arrays().items():
        np.testing.assert_array_equal(array, clean[name])


def test_set_crossbar_arrays_rejects_a_wrong_shape(convnet_onnx: Path) -> None:
    trainable = make_trainable(load_model(convnet_onnx))
    name = next(iter(trainable.crossbar))
    with pytest.raises(ValueError, match="does not fit"):
        trainable.set_crossbar_arrays({name: np.zeros(1, np.float32)})


@pytest.mark.parametrize("fixture", ["convnet_onnx", "convnet_ts"])
def test_refuses_to_write_over_the_input(fixture: str, request) -> None:
    path: Path = request.getfixturevalue(fixture)
    before = sha256(path)
    trainable = make_trainable(load_model(path))
    with pytest.raises(UserError, match="over the input file"):
        export_hardened(trainable, path, metadata={})
    assert sha256(path) == before


# --- models that cannot be trained this way -----------------------------------------------------


def test_unsupported_operator_is_named(tmp_path: Path, weight) -> None:
    path = build_onnx(
        tmp_path / "hardmax.onnx",
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Hardmax", ["h"], ["y"]),
        ],
        [numpy_helper.from_array(weight, "w")],
    )
    with pytest.raises(UserError, match=r"cannot convert.*: Hardmax \(opset 17\)"):
        make_trainable(load_model(path))


def test_unsupported_attributes_are_a_user_error(tmp_path: Path) -> None:
    kernel = np.ones((1, 1, 3, 3), np.float32)
    graph = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], pads=[0, 0, 1, 1])],
        "convt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 5, 5])],
        [numpy_helper.from_array(kernel, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "convt.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UserError, match=r"onnx2torch cannot convert.*non symmetrical padding"):
        make_trainable(load_model(path))


def test_scaled_gemm_weight_cannot_be_traced(tmp_path: Path, weight) -> None:
    path = build_onnx(
        tmp_path / "alpha.onnx",
        [helper.make_node("Gemm", ["x", "w"], ["y"], alpha=2.0, transB=1)],
        [numpy_helper.from_array(weight, "w")],
    )
    with pytest.raises(UserError, match=r"crossbar weight\(s\) w do not appear"):
        make_trainable(load_model(path))
