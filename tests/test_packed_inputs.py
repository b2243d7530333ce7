"""Models with several data inputs (a transformer's input_ids, attention_mask, token_type_ids):
ONNX exports run through one packed input, the data file holds one array per input, and
transformers' defaults stand in for a missing mask or segment ids, with a warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from multi_input_models import (
    INPUTS,
    check_scaled_weights_reach_every_product,
    encoder,
    export_encoder_onnx,
    harden_once,
    token_data,
    torch_logits,
)

from ftaudit import audit
from ftaudit.data import load_dataset
from ftaudit.errors import UserError
from ftaudit.models import load_model
from ftaudit.models.base import TensorSpec
from ftaudit.models.packed_inputs import packed_array, packed_spec, unpacked


@pytest.fixture(scope="module")
def network():
    return encoder()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, network) -> Path:
    """The legacy export, and .npz files with every input, with the ids alone, and labels that
    are the model's own predictions with its mask (so the clean accuracy is 100%)."""
    root = tmp_path_factory.mktemp("multi_input")
    export_encoder_onnx(network, root / "encoder.onnx")
    data = token_data()
    labels = torch_logits(network, data).argmax(1)
    np.savez(root / "all.npz", x=data["input_ids"], y=labels, **{k: data[k] for k in INPUTS[1:]})
    np.savez(root / "ids_only.npz", x=data["input_ids"], y=labels)
    np.savez(root / "named.npz", y=labels, **{name: data[name] for name in INPUTS})  # no x
    return root


def test_the_inputs_are_packed_in_memory_and_the_file_is_unchanged(data_dir: Path) -> None:
    import onnx

    before = (data_dir / "encoder.onnx").read_bytes()
    model = load_model(data_dir / "encoder.onnx")
    assert [spec.name for spec in model.data_inputs] == list(INPUTS)
    assert model.input.shape == (None, 3, None) and model.input.dtype == "int64"
    names = ["q.weight", "k.weight", "v.weight", "ff.weight", "head.weight"]
    assert [layer.name for layer in model.layers] == names  # every Linear, in order
    assert (data_dir / "encoder.onnx").read_bytes() == before
    assert [i.name for i in onnx.load(str(data_dir / "encoder.onnx")).graph.input] == list(INPUTS)


def test_logits_equal_torch_with_the_mask_and_with_transformers_defaults(
    data_dir: Path, network
) -> None:
    model = load_model(data_dir / "encoder.onnx")
    runner = model.runner(model.layers, device="cpu")
    data = token_data()
    for file, fed in (("all.npz", data), ("ids_only.npz", {"input_ids": data["input_ids"]})):
        dataset = load_dataset(data_dir / file)
        x = model.input_array(dataset)
        runner.bind_data(x, dataset.y, batch_size=37)
        np.testing.assert_allclose(runner.logits(), torch_logits(network, fed), atol=1e-5)


def test_weights_fed_by_the_runner_reach_every_product(data_dir: Path, network) -> None:
    """All crossbar weights scaled by 1.1 give the torch model's logits with its Linear weights
    scaled by 1.1 (a layout-free twin of the fed weights)."""
    check_scaled_weights_reach_every_product(data_dir / "encoder.onnx", data_dir / "all.npz")


def test_audit_uses_the_mask_and_warns_about_each_default(data_dir: Path, network) -> None:
    full = audit(data_dir / "encoder.onnx", data_dir / "all.npz", sigmas=[0.2], samples=6)
    assert full.clean_accuracy == 1.0 and full.warnings == []
    alone = audit(data_dir / "encoder.onnx", data_dir / "ids_only.npz", sigmas=[0.2], samples=6)
    data = token_data()
    defaults = torch_logits(network, {"input_ids": data["input_ids"]}).argmax(1)
    expected = np.mean(defaults == torch_logits(network, data).argmax(1))
    assert alone.clean_accuracy == pytest.approx(expected)
    assert expected < 1.0  # the mask matters for this data
    assert [w.split("'")[1] for w in alone.warnings] == ["attention_mask", "token_type_ids"]
    assert full.results[0].summary.mean < 1.0
    assert full.model["input"]["packed_inputs"][1]["name"] == "attention_mask"


def test_arrays_named_after_every_input_are_used_over_x(data_dir: Path) -> None:
    named = audit(data_dir / "encoder.onnx", data_dir / "named.npz", sigmas=[0.1], samples=3)
    full = audit(data_dir / "encoder.onnx", data_dir / "all.npz", sigmas=[0.1], samples=3)
    assert named.clean_accuracy == 1.0
    np.testing.assert_array_equal(named.results[0].accuracies, full.results[0].accuracies)


def test_numbers_do_not_depend_on_batch_size_or_batching_samples(data_dir: Path) -> None:
    runs = [
        audit(data_dir / "encoder.onnx", data_dir / "all.npz", sigmas=[0.3], samples=4, **kw)
        for kw in ({"batch_size": 160}, {"batch_size": 17}, {"batch_samples": 2})
    ]
    for run in runs[1:]:
        np.testing.assert_array_equal(run.results[0].accuracies, runs[0].results[0].accuracies)


def test_the_dynamo_export_reads_the_same_layers_and_accuracy(data_dir: Path, network) -> None:
    path = export_encoder_onnx(network, data_dir / "encoder_dynamo.onnx", dynamo=True)
    model = load_model(path)
    assert [spec.name for spec in model.data_inputs] == list(INPUTS)
    assert sorted(la.params for la in model.layers) == sorted(
        la.params for la in load_model(data_dir / "encoder.onnx").layers
    )
    report = audit(path, data_dir / "all.npz", sigmas=[0.0], samples=2)
    assert report.clean_accuracy == 1.0


def test_harden_writes_the_original_inputs_back(data_dir: Path, tmp_path: Path) -> None:
    """The legacy export holds a -inf mask constant: not a diverged weight."""
    import onnx

    out = tmp_path / "hardened.onnx"
    harden_once(data_dir / "encoder.onnx", data_dir / "all.npz", out)
    assert [i.name for i in onnx.load(str(out)).graph.input] == list(INPUTS)


def test_cli_eval_and_inspect(data_dir: Path, run_cli, tmp_path: Path) -> None:
    code, out, err = run_cli(
        "eval",
        data_dir / "encoder.onnx",
        "--data",
        data_dir / "ids_only.npz",
        "--sigma",
        "0.1",
        "--samples",
        "3",
        "--json",
        tmp_path / "r.json",
    )
    assert code == 0, err
    assert "'attention_mask' has no array" in err and "fed ones" in err
    report = json.loads((tmp_path / "r.json").read_text())
    assert [s["name"] for s in report["model"]["input"]["packed_inputs"]] == list(INPUTS)
    code, out, err = run_cli("inspect", data_dir / "encoder.onnx")
    assert code == 0 and "attention_mask (N, ?) int64" in out and "packed" in out


def _two_input_onnx(path: Path, second: tuple[str, list, int]) -> Path:
    """x (N, 4) float times W, plus a second input of the given name, shape and type."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    name, shape, elem = second
    w = numpy_helper.from_array(np.eye(4, 3, dtype=np.float32), "W")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["p"]),
        helper.make_node("Cast", [name], ["c"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["c", "axes"], ["s"], keepdims=1),
        helper.make_node("Add", ["p", "s"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info(name, elem, shape),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])],
        [w, numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def test_refusals_are_one_line(tmp_path: Path, run_cli) -> None:
    dynamic = _two_input_onnx(tmp_path / "dynamic.onnx", ("extra", ["n", "L", 2], 7))
    code, _, err = run_cli("inspect", dynamic)
    assert code == 2 and "fixed per-sample" in err and len(err.strip().splitlines()) == 1
    unknown = _two_input_onnx(tmp_path / "unknown.onnx", ("extra", ["n", 4], 7))
    x = np.ones((6, 4), np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(6, np.int64))
    code, _, err = run_cli("eval", unknown, "--data", tmp_path / "d.npz", "--sigma", "0.1")
    assert code == 2 and "'extra' has no array" in err and "np.savez" in err
    np.savez(tmp_path / "e.npz", x=x, y=np.zeros(6, np.int64), extra=np.full((6, 4), 0.5))
    code, _, err = run_cli("eval", unknown, "--data", tmp_path / "e.npz", "--sigma", "0.1")
    assert code == 2 and "not whole numbers" in err
    np.savez(tmp_path / "f.npz", x=x, y=np.zeros(6, np.int64), extra=np.ones((5, 4), np.int64))
    code, _, err = run_cli("eval", unknown, "--data", tmp_path / "f.npz", "--sigma", "0.1")
    assert code == 2 and "extra" in err and "has 5 rows, not one per label (6)" in err


def test_mixed_real_and_integer_inputs_pack_as_float32_and_come_back_exact(tmp_path) -> None:
    """x float and an int64 input: the packed graph casts the integers back; the model's
    output equals a numpy evaluation of x @ W + sum(extra)."""
    path = _two_input_onnx(tmp_path / "mixed.onnx", ("extra", ["n", 4], 7))
    model = load_model(path)
    assert model.input.dtype == "float32" and model.input.shape == (None, 2, 4)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 4)).astype(np.float32)
    extra = rng.integers(-(2**20), 2**20, size=(9, 4))
    np.savez(tmp_path / "m.npz", x=x, extra=extra, y=np.zeros(9, np.int64))
    dataset = load_dataset(tmp_path / "m.npz")
    runner = model.runner(model.layers, device="cpu")
    runner.bind_data(model.input_array(dataset), dataset.y, batch_size=4)
    expected = x @ np.eye(4, 3) + extra.sum(1, keepdims=True)
    np.testing.assert_allclose(runner.logits(), expected, rtol=1e-6)
    np.savez(tmp_path / "big.npz", x=x, extra=extra * 64, y=np.zeros(9, np.int64))
    with pytest.raises(UserError, match="16777216"):
        model.input_array(load_dataset(tmp_path / "big.npz"))


def test_inputs_of_different_shapes_pack_flat(tmp_path: Path) -> None:
    """x (N, 4) float beside extra (N, 5) int64: each sample's values one after the other
    (N, 9), sliced and reshaped back in the graph; the output equals numpy's."""
    path = _two_input_onnx(tmp_path / "widths.onnx", ("extra", ["n", 5], 7))
    model = load_model(path)
    assert model.input.shape == (None, 9) and model.input.dtype == "float32"
    rng = np.random.default_rng(2)
    x = rng.normal(size=(7, 4)).astype(np.float32)
    extra = rng.integers(-50, 50, size=(7, 5))
    np.savez(tmp_path / "w.npz", x=x, extra=extra, y=np.zeros(7, np.int64))
    dataset = load_dataset(tmp_path / "w.npz")
    packed = model.input_array(dataset)
    np.testing.assert_array_equal(packed, np.concatenate([x, extra], axis=1))
    np.testing.assert_array_equal(unpacked(model.data_inputs, packed)["extra"], extra)
    runner = model.runner(model.layers, device="cpu")
    runner.bind_data(packed, dataset.y, batch_size=3)
    expected = x @ np.eye(4, 3) + extra.sum(1, keepdims=True)
    np.testing.assert_allclose(runner.logits(), expected, rtol=1e-6)
    np.savez(tmp_path / "bad.npz", x=x, extra=extra[:, :4], y=np.zeros(7, np.int64))
    with pytest.raises(UserError, match="extra"):
        model.input_array(load_dataset(tmp_path / "bad.npz"))


def test_packed_array_rules() -> None:
    inputs = (
        TensorSpec("input_ids", (None, None), "int64"),
        TensorSpec("attention_mask", (None, None), "bool"),
        TensorSpec("position_ids", (None, None), "int64"),
    )
    packed = packed_spec(inputs, "m.onnx")
    assert packed.shape == (None, 3, None) and packed.dtype == "int64"
    from ftaudit.data import Dataset

    ids = np.arange(12).reshape(3, 4)
    mask = np.array([[1, 1, 0, 0]] * 3, bool)
    dataset = Dataset(
        x=ids.astype(np.float32),
        y=np.zeros(3, np.int64),
        source={},
        x_raw=ids,
        inputs={"attention_mask": mask},
    )
    out = packed_array(inputs, packed, dataset)
    np.testing.assert_array_equal(out[:, 0], ids)
    np.testing.assert_array_equal(out[:, 1], mask.astype(np.int64))
    np.testing.assert_array_equal(out[:, 2], np.tile(np.arange(4), (3, 1)))
    again = Dataset(x=out, y=dataset.y, source={}, inputs=unpacked(inputs, out))
    np.testing.assert_array_equal(packed_array(inputs, packed, again), out)
    bad = Dataset(x=ids, y=dataset.y, source={}, x_raw=ids, inputs={"attention_mask": ids})
    with pytest.raises(UserError, match="attention_mask"):
        packed_array(inputs, packed, bad)


def test_npz_keeps_other_per_sample_arrays_with_the_limit(tmp_path: Path) -> None:
    x = np.arange(20).reshape(10, 2)
    np.savez(
        tmp_path / "d.npz",
        x=x,
        y=np.zeros(10, np.int64),
        mask=x * 2,
        meta=np.arange(3),
        names=np.array(["a"] * 10, dtype=object),
    )
    dataset = load_dataset(tmp_path / "d.npz", limit=4)
    assert sorted(dataset.inputs) == ["mask"]  # meta has 3 rows; the object array is skipped
    np.testing.assert_array_equal(dataset.inputs["mask"], x[:4] * 2)
