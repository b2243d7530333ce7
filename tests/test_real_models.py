"""The acceptance matrix of issue 13: real exporters in, real models out.

Tiny stand-ins for the architectures users bring (a ResNet-style CNN with BatchNorm, a
MobileNet-style depthwise CNN, a ViT, a BERT-like text encoder with int64 token ids; built in
plain torch, random init, labelled with the clean model's own argmax), each written by every
exporter (torch.onnx legacy and dynamo with and without optimisation, TorchScript, torch.export,
float16, QDQ int8), plus a scikit-learn MLP through skl2onnx with and without ZipMap. Each cell
checks: ``inspect`` finds exactly the torch module's Conv/Linear layers; eval at sigma 0 equals
the clean accuracy; float32 formats give identical per-sample accuracies under the same lognormal
draws; ``harden --epochs 1`` exits 0 with the graph unchanged, or exits 2 with one line where the
README lists the cell as unsupported. And no weight is silently left exact: every layer's fed
weight changes the output, and every multiply op with a constant operand is a layer or listed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
nn = torch.nn

from real_models import (  # noqa: E402  (after the importorskips: it imports torch)
    FLOAT_FORMATS,
    FORMATS,
    HARDEN_UNSUPPORTED,
    QUANTISED,
    Matrix,
    cells,
    crossbar_module_count,
)


@pytest.mark.torch
@pytest.mark.parametrize(("arch", "fmt"), cells(FORMATS))
def test_inspect_finds_every_conv_and_linear(matrix: Matrix, arch: str, fmt: str):
    from ftaudit.models import load_model

    model = load_model(matrix.file(arch, fmt))
    assert len(model.layers) == crossbar_module_count(matrix.model(arch))
    # only embedding tables are listed as not perturbed (looked up, not multiplied)
    embeddings = sum(isinstance(m, torch.nn.Embedding) for m in matrix.model(arch).modules())
    assert len(model.untraced) == embeddings
    assert all("looked up by index" in op.reason for op in model.untraced)


@pytest.mark.torch
@pytest.mark.parametrize(("arch", "fmt"), cells(FORMATS))
def test_sigma_zero_is_the_clean_accuracy(matrix: Matrix, arch: str, fmt: str):
    import ftaudit

    report = ftaudit.audit(
        matrix.file(arch, fmt), matrix.dataset(arch), sigmas=[0.0, 0.2], samples=2, seed=1
    )
    assert report.results[0].summary.mean == report.clean_accuracy
    if fmt in FLOAT_FORMATS:  # labels are the float model's own argmax
        assert report.clean_accuracy == 1.0
    if fmt in QUANTISED:  # the quantised model's accuracy, as ONNX Runtime computes it alone
        assert report.clean_accuracy == pytest.approx(_ort_accuracy(matrix, arch, fmt), abs=0.04)


def _ort_accuracy(matrix: Matrix, arch: str, fmt: str) -> float:
    import onnxruntime

    data = np.load(matrix.dataset(arch))
    session = onnxruntime.InferenceSession(str(matrix.file(arch, fmt)))
    logits = session.run(None, {"x": data["x"]})[0]
    return float(np.mean(logits.argmax(1) == data["y"]))


@pytest.mark.torch
@pytest.mark.parametrize(("arch", "fmt"), cells(f for f in FLOAT_FORMATS if f != "legacy"))
def test_formats_agree_under_the_same_lognormal_draws(matrix: Matrix, arch: str, fmt: str):
    from ftaudit.compare import compare

    report = compare(
        matrix.file(arch, "legacy"),
        matrix.file(arch, fmt),
        matrix.dataset(arch),
        sigmas=[1.0],
        noise="lognormal",
        samples=4,
        seed=2,
    )
    base, cand = report.baseline.results[0], report.candidate.results[0]
    np.testing.assert_array_equal(base.accuracies, cand.accuracies)
    assert base.summary.mean < 1.0  # the noise does move the accuracy


@pytest.mark.torch
@pytest.mark.parametrize(("arch", "fmt"), cells(FORMATS))
def test_every_layer_is_perturbed(matrix: Matrix, arch: str, fmt: str):
    """No silent skips: scaling any one layer's fed weight changes the logits."""
    from ftaudit.models import load_model

    model = load_model(matrix.file(arch, fmt))
    dataset = np.load(matrix.dataset(arch))
    runner = model.runner(model.layers, device="cpu")
    x = dataset["x"] if model.integer_input else dataset["x"].astype(np.float32)
    runner.bind_data(model.fit_input(x), dataset["y"], batch_size=64)
    clean_weights = model.clean_weights()
    clean = runner.logits()
    for layer in model.layers:
        changed = dict(clean_weights)
        changed[layer.name] = clean_weights[layer.name] * np.float32(-1.0)
        runner.set_weights(changed)
        assert not np.allclose(runner.logits(), clean), layer.name
    if model.format == "onnx":
        products = [op for op in model.untraced if op.op != "Gather"]  # not lookups
        assert _constant_multiplies(model.proto.graph) == len(model.layers) + len(products)


def _constant_multiplies(graph) -> int:
    """Conv/ConvTranspose/Gemm/MatMul nodes with an operand computed from initializers only
    (an independent count: any op between them counts, not just weight-only ones)."""
    constant = {t.name for t in graph.initializer}
    count = 0
    for node in graph.node:
        if node.input and all(v in constant for v in node.input if v):
            constant.update(node.output)
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and any(
            v in constant for v in node.input[:2]
        ):
            count += 1
    return count


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "fmt"),
    [("resnet", f) for f in FORMATS]
    + [("text", f) for f in ("legacy", "dynamo_noopt", "torchscript", "export")]
    + [("vit", "dynamo_noopt")],
)
def test_harden_one_epoch_keeps_the_graph(matrix: Matrix, arch: str, fmt: str, run_cli, tmp_path):
    source = matrix.file(arch, fmt)
    out = tmp_path / f"hardened{source.suffix}"
    code, _stdout, stderr = run_cli(
        "harden",
        source,
        "--data",
        matrix.dataset(arch),
        "-o",
        out,
        "--method",
        "noise",
        "--sigma",
        "0.1",
        "--epochs",
        "1",
        "--eval-samples",
        "2",
        "--eval-sigmas",
        "0.1",
        "-q",
    )
    if fmt in HARDEN_UNSUPPORTED:
        assert code == 2 and not out.exists()
        assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
        return
    assert code == 0, stderr
    assert _graph(source, fmt) == _graph(out, fmt)


def _graph(path: Path, fmt: str) -> str:
    if fmt == "torchscript":
        return str(torch.jit.load(str(path)).code)
    if fmt == "export":
        return str(torch.export.load(str(path)).graph)
    model = onnx.load(str(path))
    return str([(n.op_type, list(n.input), list(n.output)) for n in model.graph.node])


@pytest.mark.parametrize("zipmap", [True, False])
def test_sklearn_mlp_loads_with_and_without_zipmap(sklearn_mlp, zipmap: bool, run_cli):
    import ftaudit
    from ftaudit.models import load_model

    clf, x, y, data, paths = sklearn_mlp
    model = load_model(paths[zipmap])
    assert len(model.layers) == len(clf.coefs_)  # one MatMul per weight matrix
    assert model.output.dtype == "float32" and model.untraced == []
    report = ftaudit.audit(paths[zipmap], data, sigmas=[0.0, 0.3], samples=3)
    assert report.clean_accuracy == pytest.approx(float(np.mean(clf.predict(x) == y)))
    assert report.results[0].summary.mean == report.clean_accuracy
    named = "output_probability" if zipmap else "probabilities"
    assert load_model(paths[zipmap], output=named).output == model.output  # --output NAME
    code, out, err = run_cli("inspect", paths[zipmap])
    assert "ZipMap" not in out and str(len(clf.coefs_)) in out
    assert code == 0, err


# --- BatchNorm folded for device models ------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("fmt", ["torchscript", "export", "dynamo_noopt"])
def test_device_models_agree_across_batchnorm_folding(matrix: Matrix, fmt: str):
    """A quantising device model sees the folded weights in every format: TorchScript,
    torch.export and dynamo keep BatchNorm, the legacy ONNX export folds it; the numbers agree."""
    from ftaudit.compare import compare
    from ftaudit.models import load_model

    folded = load_model(matrix.file("resnet", "legacy"))
    unfused = load_model(matrix.file("resnet", fmt))
    assert folded.fold_scales == {}  # the exporter already folded it
    assert len(unfused.fold_scales) == 3  # every conv of the ResNet stand-in has a BatchNorm
    ours, theirs = unfused.crossbar_weights(), folded.crossbar_weights()
    for a, b in zip(unfused.layers, folded.layers, strict=True):
        np.testing.assert_allclose(ours[a.name], theirs[b.name], rtol=1e-5, atol=1e-6)
    report = compare(
        folded, unfused, matrix.dataset("resnet"), sigmas=[0.0, 0.3], noise="rram", samples=3
    )
    assert report.baseline.quantized_accuracy == report.candidate.quantized_accuracy
    for base, cand in zip(report.baseline.results, report.candidate.results, strict=True):
        np.testing.assert_array_equal(base.accuracies, cand.accuracies)


@pytest.mark.torch
def test_fold_batchnorm_off_perturbs_the_stored_weights(matrix: Matrix):
    import ftaudit

    path, data = matrix.file("resnet", "torchscript"), matrix.dataset("resnet")
    on = ftaudit.audit(path, data, sigmas=[0.0], noise="rram", samples=1)
    off = ftaudit.audit(path, data, sigmas=[0.0], noise="rram", samples=1, fold_batchnorm=False)
    assert on.model["batchnorm_folded"] == ["0.weight", "3.conv1.weight", "3.conv2.weight"]
    assert off.model["batchnorm_folded"] == [] and off.options["fold_batchnorm"] is False
    # quantising W instead of W * s changes the quantised model (the 0.242 vs 0.395)
    assert [layer.max_abs for layer in on.layers] != [layer.max_abs for layer in off.layers]


@pytest.mark.torch
def test_no_fold_batchnorm_flag(matrix: Matrix, run_cli):
    import json

    path, data = matrix.file("resnet", "export"), matrix.dataset("resnet")
    args = ("eval", path, "--data", data, "--sigma", "0", "--samples", "1", "--json", "-")
    code, out, err = run_cli(*args, "--no-fold-batchnorm")
    assert code == 0, err
    report = json.loads(out)
    assert (
        report["options"]["fold_batchnorm"] is False and report["model"]["batchnorm_folded"] == []
    )
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert len(json.loads(out)["model"]["batchnorm_folded"]) == 3


@pytest.mark.torch
@pytest.mark.parametrize(("arch", "fmt"), cells(FLOAT_FORMATS))
def test_layer_names_are_the_torch_module_paths(matrix: Matrix, arch: str, fmt: str):
    """Made-up stored names (dynamo's val_31, legacy's onnx::MatMul_12) are replaced by the
    module path the exporter recorded, so --layers globs and sensitivity tables read like the
    PyTorch model."""
    from ftaudit.models import load_model

    expected = [
        f"{name}.weight"
        for name, module in matrix.model(arch).named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
    names = [layer.name for layer in load_model(matrix.file(arch, fmt)).layers]
    assert sorted(names) == sorted(expected)


@pytest.mark.torch
def test_frozen_torchscript_names_the_cause_and_the_fix(matrix: Matrix, tmp_path, run_cli):
    path = tmp_path / "frozen.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = torch.jit.freeze(torch.jit.script(matrix.model("mobilenet")))
        torch.jit.save(frozen, str(path))
    code, out, err = run_cli("eval", path, "--data", matrix.dataset("mobilenet"), "--sigma", "0.1")
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "torch.jit.freeze" in err and "save the scripted module before freezing" in err


@pytest.mark.torch
@pytest.mark.parametrize("arch", ["vit", "text"])
def test_batched_samples_see_weights_behind_transposes(matrix: Matrix, arch: str):
    """--batch-samples runs the onnx2torch module: weights the dynamo exporter reads through
    Transpose(W) are written there transposed, so both paths give the same accuracies."""
    import ftaudit

    path, data = matrix.file(arch, "dynamo_noopt"), matrix.dataset(arch)
    one = ftaudit.audit(path, data, sigmas=[0.5], samples=8, seed=4, batch_samples=1)
    many = ftaudit.audit(path, data, sigmas=[0.5], samples=8, seed=4, batch_samples=4)
    assert many.options["execution"]["batch_samples"] == 4
    np.testing.assert_array_equal(one.results[0].accuracies, many.results[0].accuracies)
    assert one.results[0].summary.mean < 1.0


@pytest.mark.torch
@pytest.mark.parametrize("fmt", ["export", "dynamo_noopt"])
def test_sensitivity_ranks_the_transformer_layers_by_module_path(matrix: Matrix, fmt: str):
    """sensitivity on a ViT from torch.export or dynamo: one row per Linear/Conv, named by its
    module path, and --layers globs over those names select the attention projections."""
    from ftaudit.sensitivity import sensitivity

    report = sensitivity(
        matrix.file("vit", fmt),
        matrix.dataset("vit"),
        sigmas=[0.5],
        samples=3,
        layers=["attn.*"],
    )
    assert sorted(row.name for row in report.layers) == [
        f"attn.{p}.weight" for p in ("k", "o", "q", "v")
    ]
    assert "patch.weight" in report.always_digital and "head.weight" in report.always_digital
