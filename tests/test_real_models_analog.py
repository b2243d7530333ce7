"""The acceptance matrix with the analog forward pipeline on (issue 16 on real exporters).

The same cells as tests/test_real_models.py (tests/real_models.py builds them). Each checks:
``eval`` with an 8-bit chip, read noise, 32x32 tiles and column scaling runs, or exits 2 with
one line where the README lists the cell as unsupported; with 16-bit converters and no read
noise the per-sample accuracies are the weights-only ones; every crossbar layer is rewritten
(made coarse alone, each layer's 1-bit ADC moves the logits); ``harden --epochs 1`` runs
through the pipeline; and the numbers do not depend on the batch size or the worker count.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from real_models import FLOAT_FORMATS, FORMATS, Matrix, cells  # noqa: E402  (imports torch)

#: cells the analog pipeline refuses with one line (README: the analog pipeline's support)
ANALOG_UNSUPPORTED: set[str] = set()
#: harden through the pipeline refuses with one line (README: harden's unsupported cells)
HARDEN_ANALOG_UNSUPPORTED: set[str] = set()
CHIP = (
    "--dac-bits", "8", "--adc-bits", "8", "--read-noise", "0.05", "--weight-read-noise", "0.02",
    "--tile-size", "32x32", "--weight-scaling", "column",
)  # fmt: skip
#: cells that also program differential pairs
MULTIPLIES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
DIFFERENTIAL = {"legacy", "export", "qdq"}


def _one_line_refusal(code: int, stderr: str) -> None:
    assert code == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr


@pytest.mark.torch
@pytest.mark.parametrize(("arch", "fmt"), cells(FORMATS))
def test_eval_on_an_8_bit_chip_runs_or_refuses(matrix: Matrix, arch: str, fmt: str, run_cli):
    extra = ("--differential",) if fmt in DIFFERENTIAL else ()
    code, out, err = run_cli(
        "eval", matrix.file(arch, fmt), "--data", matrix.dataset(arch), "--sigma", "0.1",
        "--samples", "2", "--json", "-", "-q", *CHIP, *extra,
    )  # fmt: skip
    if fmt in ANALOG_UNSUPPORTED:
        _one_line_refusal(code, err)
        assert out == ""
        return
    assert code == 0, err
    report = json.loads(out)
    assert report["analog"]["dac_bits"] == 8 and report["analog"]["calibration"]["tiles"] > 0
    assert report["results"][0]["samples"] == 2


@pytest.mark.torch
@pytest.mark.parametrize(("arch", "fmt"), cells(f for f in FORMATS if f not in ANALOG_UNSUPPORTED))
def test_16_bit_converters_give_the_weights_only_accuracies(matrix: Matrix, arch: str, fmt: str):
    """Issue 16's check: 16-bit DAC/ADC, no read noise: each sample's accuracy is the
    weights-only one within 0.5 points."""
    import ftaudit
    from ftaudit.analog import ForwardPipeline

    ideal = ForwardPipeline(dac_bits=16, adc_bits=16, tile_size=(32, 32), weight_scaling="column")
    args = dict(sigmas=[0.3], samples=3, seed=3)
    plain = ftaudit.audit(matrix.file(arch, fmt), matrix.dataset(arch), **args)
    analog = ftaudit.audit(matrix.file(arch, fmt), matrix.dataset(arch), pipeline=ideal, **args)
    assert analog.analog is not None and analog.analog["adc_bits"] == 16
    np.testing.assert_allclose(
        analog.results[0].accuracies, plain.results[0].accuracies, rtol=0, atol=0.005
    )


@pytest.mark.torch
@pytest.mark.parametrize(("arch", "fmt"), cells(f for f in FORMATS if f not in ANALOG_UNSUPPORTED))
def test_every_crossbar_layer_is_rewritten(matrix: Matrix, arch: str, fmt: str):
    """No layer escapes the pipeline: a 1-bit ADC on any one layer alone moves the logits, and
    no op of the rewritten graph reads a crossbar weight but the rewrite's own."""
    from ftaudit.analog import ForwardPipeline
    from ftaudit.analog.runner import analog_runner, as_onnx
    from ftaudit.models import load_model

    model = load_model(matrix.file(arch, fmt))
    data = np.load(matrix.dataset(arch))
    x = model.fit_input(data["x"] if model.integer_input else data["x"].astype(np.float32))
    ideal = model.runner(model.layers, device="cpu")
    ideal.bind_data(x, data["y"], batch_size=64)
    clean = ideal.logits()
    coarse = ForwardPipeline(adc_bits=1)
    for layer in model.layers:
        runner, _ = analog_runner(model, [layer], x, pipeline=coarse, seed=0, device="cpu")
        runner.bind_data(x, data["y"], batch_size=64)
        assert not np.allclose(runner.logits(), clean), layer.name
    exported = as_onnx(model, x)
    runner, _ = analog_runner(model, model.layers, x, pipeline=coarse, seed=0, device="cpu")
    while hasattr(runner, "inner"):  # the TransposedRunner / FoldedRunner wrappers
        runner = runner.inner
    graph = runner.model.proto.graph
    weights = {exported.feed_names[layer.name] for layer in model.layers}
    for node in graph.node:
        if node.op_type in MULTIPLIES and any(v in weights for v in node.input):
            assert node.output[0].startswith("ftaudit_analog_"), (node.op_type, node.name)


@pytest.mark.torch
@pytest.mark.parametrize(("arch", "fmt"), cells(("legacy", "dynamo_noopt")))
def test_the_training_pipeline_computes_the_onnx_rewrite(matrix: Matrix, arch: str, fmt: str):
    """harden's torch twin of the rewrite (Conv, Linear and onnx2torch's MatMul modules, the
    weight as a Transpose output or as stored) gives the ONNX graph's logits, and every
    crossbar weight gets a gradient through the straight-through quantisers."""
    pytest.importorskip("onnx2torch")
    from ftaudit.analog import ForwardPipeline
    from ftaudit.analog.runner import analog_runner
    from ftaudit.analog.torch_pipeline import AnalogTraining
    from ftaudit.harden.trainable import make_trainable
    from ftaudit.models import load_model

    model = load_model(matrix.file(arch, fmt))
    data = np.load(matrix.dataset(arch))
    x = model.fit_input(data["x"] if model.integer_input else data["x"].astype(np.float32))
    pipeline = ForwardPipeline(dac_bits=6, adc_bits=6, tile_size=(4, 4), weight_scaling="column")
    runner, _ = analog_runner(model, model.layers, x, pipeline=pipeline, seed=2, device="cpu")
    runner.bind_data(x, data["y"], batch_size=64)
    want = runner.logits()
    trainable = make_trainable(model)
    assert AnalogTraining(model, model.layers, x, pipeline, seed=2).attach(trainable) >= len(
        model.layers
    )
    trainable.module.eval()
    with torch.no_grad():
        got = trainable.module(torch.from_numpy(x)).numpy()
    assert np.isclose(got, want, rtol=1e-3, atol=1e-3).mean() > 0.99
    trainable.module.train()
    trainable.module(torch.from_numpy(x[:8])).sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in trainable.crossbar.values())


@pytest.mark.torch
@pytest.mark.parametrize(("arch", "fmt"), cells((*FLOAT_FORMATS, "float16")))
def test_harden_one_epoch_through_the_pipeline(
    matrix: Matrix, arch: str, fmt: str, run_cli, tmp_path
):
    source = matrix.file(arch, fmt)
    out = tmp_path / f"hardened{source.suffix}"
    code, _stdout, stderr = run_cli(
        "harden", source, "--data", matrix.dataset(arch), "-o", out, "--method", "noise",
        "--sigma", "0.1", "--epochs", "1", "--eval-samples", "2", "--eval-sigmas", "0.1", "-q",
        *CHIP,
    )  # fmt: skip
    if fmt in HARDEN_ANALOG_UNSUPPORTED:
        _one_line_refusal(code, stderr)
        assert not out.exists()
        return
    assert code == 0, stderr
    assert out.exists()


@pytest.mark.torch
@pytest.mark.parametrize(
    ("arch", "fmt"), [("vit", "legacy"), ("text", "dynamo_noopt"), ("mobilenet", "qdq")]
)
def test_numbers_do_not_depend_on_batch_size_or_workers(matrix: Matrix, arch: str, fmt: str):
    """Read noise is keyed by image: batches of 7 or 32 and two worker processes agree."""
    import ftaudit
    from ftaudit.analog import ForwardPipeline

    chip = ForwardPipeline(
        dac_bits=8, adc_bits=8, read_noise=0.05, weight_read_noise=0.02, tile_size=(32, 32),
        weight_scaling="column",
    )  # fmt: skip
    runs = [
        ftaudit.audit(
            matrix.file(arch, fmt), matrix.dataset(arch), sigmas=[0.2], samples=4, seed=5,
            pipeline=chip, **extra,
        ).results[0].accuracies
        for extra in ({"batch_size": 7}, {"batch_size": 32}, {"workers": 2})
    ]  # fmt: skip
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])


@pytest.mark.parametrize("zipmap", [True, False])
def test_sklearn_mlp_through_the_pipeline(sklearn_mlp, zipmap: bool, run_cli):
    _clf, _x, _y, data, paths = sklearn_mlp
    code, out, err = run_cli(
        "eval", paths[zipmap], "--data", data, "--sigma", "0.1", "--samples", "2",
        "--json", "-", "-q", *CHIP,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["analog"]["calibration"]["tiles"] == 2


@pytest.mark.torch
def test_conv1d_runs_through_the_pipeline(tmp_path, run_cli):
    """Conv1d (audio, sequence models): tiled over channels x kernel, like Conv2d."""
    import ftaudit
    from ftaudit.analog import ForwardPipeline

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv1d(3, 6, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(36, 4)
    ).eval()
    x = np.random.default_rng(0).normal(size=(24, 3, 8)).astype(np.float32)
    path, data = tmp_path / "conv1d.onnx", tmp_path / "data.npz"
    torch.onnx.export(
        net, (torch.from_numpy(x[:1]),), str(path), dynamo=False, input_names=["x"],
        dynamic_axes={"x": {0: "n"}}, opset_version=17,
    )  # fmt: skip
    np.savez(data, x=x, y=net(torch.from_numpy(x)).argmax(1).numpy())
    code, _out, err = run_cli("eval", path, "--data", data, "--sigma", "0.1", "-q", *CHIP)
    assert code == 0, err
    # 4x4 tiles: one input channel (3 rows) per tile, three tiles; sigma small enough that no
    # noisy partial sum passes a small tile's calibrated (saturating) ADC bound
    ideal = ForwardPipeline(dac_bits=16, adc_bits=16, tile_size=(4, 4))
    args = dict(sigmas=[0.1], samples=3, seed=1)
    plain = ftaudit.audit(path, data, **args).results[0].accuracies
    analog = ftaudit.audit(path, data, pipeline=ideal, **args).results[0].accuracies
    np.testing.assert_allclose(analog, plain, rtol=0, atol=0.005)


def test_a_weight_on_the_left_of_matmul_is_refused(tmp_path, run_cli):
    """W @ x (the weight as MatMul's first operand) has no tile mapping: one line, exit 2,
    never an ideal layer."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["w", "x"], ["h"]),  # (4, 5) @ (n?, 5, 1)
            helper.make_node("Flatten", ["h"], ["logits"]),
        ],
        "left",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4])],
        [weight],
    )
    path, data = tmp_path / "left.onnx", tmp_path / "data.npz"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    np.savez(data, x=rng.normal(size=(8, 5, 1)).astype(np.float32), y=np.zeros(8, np.int64))
    code, out, err = run_cli("eval", path, "--data", data, "--sigma", "0.1", *CHIP)
    _one_line_refusal(code, err)
    assert "left operand" in err and out == ""


@pytest.mark.torch
def test_a_conv_transpose_layer_is_refused(tmp_path, run_cli):
    """ConvTranspose (decoders, U-Nets) has no tile mapping: one line naming the layer."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.ConvTranspose2d(1, 2, 2, stride=2), torch.nn.Flatten(), torch.nn.Linear(32, 3)
    ).eval()
    x = np.random.default_rng(0).normal(size=(6, 1, 2, 2)).astype(np.float32)
    path, data = tmp_path / "deconv.onnx", tmp_path / "data.npz"
    torch.onnx.export(
        net, (torch.from_numpy(x[:1]),), str(path), dynamo=False, input_names=["x"],
        dynamic_axes={"x": {0: "n"}}, opset_version=17,
    )  # fmt: skip
    np.savez(data, x=x, y=np.zeros(6, np.int64))
    code, out, err = run_cli("eval", path, "--data", data, "--sigma", "0.1", *CHIP)
    _one_line_refusal(code, err)
    assert "ConvTranspose" in err and "0.weight" in err and out == ""
