"""Weight read noise (``--weight-read-noise``): fresh Gaussian noise on every weight per read.

Checked against independent numpy: the per-output form ``S * max|W| * ||x_tile||_2 * z``
with the runner's own keyed draws (Conv patches cut by hand), and the distribution of an
explicit per-read noisy weight matrix, ``(W + S max|W| N) x``, drawn fresh for every read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ftaudit.analog import ForwardPipeline
from ftaudit.analog.read_noise import TAG, WEIGHT_TAG, read_noise

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _single_op_model(path: Path, op: str, weight: np.ndarray, x_shape, y_shape, **attrs) -> Path:
    """An ONNX graph of one crossbar op (Conv, Gemm or MatMul) with a stored weight."""
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node(op, ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "one_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *x_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", *y_shape])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _runner(path: Path, x: np.ndarray, pipeline: ForwardPipeline, batch_size: int = 64):
    from ftaudit.analog.runner import analog_runner
    from ftaudit.models import load_model

    model = load_model(path)
    runner, _ = analog_runner(model, model.layers, x, pipeline=pipeline, seed=7, device="cpu")
    runner.bind_data(x, np.zeros(len(x), np.int64), batch_size=batch_size)
    return runner


def _reads(runner, sample: int | None) -> np.ndarray:
    runner.set_sample(7, sample)
    return runner.logits().astype(np.float64)


def _conv_patch_norms(x, kernel, stride, pad, groups, out_channels):
    """||patch||_2 of every Conv output (n, out, oh, ow), by explicit loops over positions."""
    n, c, h, w = x.shape
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - kernel) // stride + 1
    ow = (w + 2 * pad - kernel) // stride + 1
    per_group = c // groups
    norms = np.empty((n, out_channels, oh, ow))
    for o in range(out_channels):
        g = o // (out_channels // groups)
        channels = slice(g * per_group, (g + 1) * per_group)
        for i in range(oh):
            for j in range(ow):
                patch = padded[
                    :, channels, i * stride : i * stride + kernel, j * stride : j * stride + kernel
                ]
                norms[:, o, i, j] = np.sqrt((patch**2).sum(axis=(1, 2, 3)))
    return norms


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_weight_read_noise_is_s_times_each_tiles_patch_norm(tmp_path, groups):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 4 // groups, 3, 3)).astype(np.float32)
    x = rng.standard_normal((70, 4, 6, 6)).astype(np.float32)
    path = _single_op_model(
        tmp_path / "conv.onnx", "Conv", weight, (4, 6, 6), (4, 3, 3),
        strides=[2, 2], pads=[1, 1, 1, 1], group=groups,
    )  # fmt: skip
    s = 0.2
    # 18 rows a tile = two input channels of 3x3 (grouped convs stay one tile)
    runner = _runner(path, x, ForwardPipeline(weight_read_noise=s, tile_size=(18, 4)), 32)
    got = _reads(runner, 3) - _reads(runner, None)
    scale = np.abs(weight).max()
    want = np.zeros_like(got)
    tiles = [(0, 2), (2, 4)] if groups == 1 else [(0, 4)]
    for t, (c0, c1) in enumerate(tiles):
        if groups == 1:
            norms = _conv_patch_norms(x[:, c0:c1], 3, 2, 1, 1, 1)
        else:
            norms = _conv_patch_norms(x, 3, 2, 1, groups, 4)
        z = read_noise(7, 3, 0, t, 0, len(x), (4, 3, 3), tag=WEIGHT_TAG)
        want += s * scale * norms * z
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_dense_weight_read_noise_is_s_times_each_tiles_input_norm(tmp_path, op):
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((10, 3)).astype(np.float32)  # (in, out) for both ops
    x = rng.standard_normal((90, 10)).astype(np.float32)
    path = _single_op_model(tmp_path / "dense.onnx", op, weight, (10,), (3,))
    s = 0.05
    pipeline = ForwardPipeline(weight_read_noise=s, tile_size=(4, 2), weight_scaling="column")
    runner = _runner(path, x, pipeline, 40)
    got = _reads(runner, 5) - _reads(runner, None)
    want = np.zeros_like(got)
    for t, r0 in enumerate(range(0, 10, 4)):
        scale = np.abs(weight).max(axis=0)  # per column
        norm = np.linalg.norm(x[:, r0 : r0 + 4].astype(np.float64), axis=1, keepdims=True)
        want += s * scale * norm * read_noise(7, 5, 0, t, 0, len(x), (3,), tag=WEIGHT_TAG)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_weight_read_noise_matches_an_explicit_noisy_weight_matrix_per_read(tmp_path):
    """One image read 4000 times: each output's mean and variance equal those of
    (W + S max|W| N_k) x with a fresh N_k per read (numpy Monte Carlo, own generator)."""
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((12, 5)).astype(np.float32)
    image = rng.standard_normal(12).astype(np.float32)
    reads = 4000
    x = np.repeat(image[np.newaxis], reads, axis=0)
    path = _single_op_model(tmp_path / "mm.onnx", "MatMul", weight, (12,), (5,))
    s = 0.1
    got = _reads(_runner(path, x, ForwardPipeline(weight_read_noise=s), 500), 0)
    scale = np.abs(weight).max()
    noisy = weight[np.newaxis] + s * scale * rng.standard_normal((reads, 12, 5))
    explicit = np.einsum("i,kio->ko", image.astype(np.float64), noisy)
    clean = image.astype(np.float64) @ weight
    var_formula = (s * scale) ** 2 * float(image.astype(np.float64) @ image)
    se_var = var_formula * np.sqrt(2 / (reads - 1))
    for sample in (got, explicit):
        np.testing.assert_allclose(sample.mean(0), clean, atol=5 * np.sqrt(var_formula / reads))
        assert np.all(np.abs(sample.var(0, ddof=1) - var_formula) < 5 * se_var)
    # the two Monte Carlos agree with each other as distributions (quantiles per output)
    qs = np.linspace(0.05, 0.95, 19)
    for o in range(5):
        gap = np.abs(np.quantile(got[:, o], qs) - np.quantile(explicit[:, o], qs))
        assert gap.max() < 0.12 * np.sqrt(var_formula)
    # and every read is fresh: no two images share their noise
    assert len(np.unique(got[:, 0])) == reads


def test_weight_read_noise_leaves_output_read_noise_draws_and_is_batch_free(tmp_path):
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((8, 4)).astype(np.float32)
    x = rng.standard_normal((130, 8)).astype(np.float32)
    path = _single_op_model(tmp_path / "mm.onnx", "MatMul", weight, (8,), (4,))
    tiles = (3, 4)
    clean = _reads(_runner(path, x, ForwardPipeline(tile_size=tiles, adc_bits=24)), None)
    output_only = _reads(_runner(path, x, ForwardPipeline(read_noise=0.1, tile_size=tiles)), 2)
    weight_only = _reads(
        _runner(path, x, ForwardPipeline(weight_read_noise=0.1, tile_size=tiles)), 2
    )
    both = ForwardPipeline(read_noise=0.1, weight_read_noise=0.1, tile_size=tiles)
    small, large = (_reads(_runner(path, x, both, size), 2) for size in (17, 130))
    np.testing.assert_array_equal(small, large)
    np.testing.assert_allclose(
        small - clean, (output_only - clean) + (weight_only - clean), rtol=1e-5, atol=1e-5
    )
    assert TAG != WEIGHT_TAG


def test_zero_weight_read_noise_gives_exactly_todays_numbers(tmp_path):
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((8, 4)).astype(np.float32)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    path = _single_op_model(tmp_path / "mm.onnx", "MatMul", weight, (8,), (4,))
    today = ForwardPipeline(read_noise=0.1, adc_bits=6, tile_size=(3, 4))
    zero = ForwardPipeline(read_noise=0.1, adc_bits=6, tile_size=(3, 4), weight_read_noise=0.0)
    np.testing.assert_array_equal(
        _reads(_runner(path, x, today), 4), _reads(_runner(path, x, zero), 4)
    )
    assert not ForwardPipeline(weight_read_noise=0.0).active
    assert ForwardPipeline(weight_read_noise=0.01).active


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
def test_bad_weight_read_noise_is_a_user_error(value):
    from ftaudit.errors import UserError

    with pytest.raises(UserError, match="--weight-read-noise"):
        ForwardPipeline(weight_read_noise=value)


@pytest.mark.parametrize("fixture", ["convnet_onnx", "mlp_onnx"])
def test_training_weight_read_noise_is_s_times_the_input_norm_on_its_own_stream(
    request, blobs, fixture
):
    """harden's torch pipeline: the first crossbar layer's train-mode output minus its eval
    output is S * max|W| * ||x (patch)||_2 * z, z from the weight-noise generator alone."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    from ftaudit.analog.torch_pipeline import (
        TRAINING_NOISE_KEY,
        TRAINING_WEIGHT_NOISE_KEY,
        AnalogTraining,
        training_generator,
    )
    from ftaudit.harden.trainable import make_trainable
    from ftaudit.models import load_model

    model = load_model(request.getfixturevalue(fixture))
    x = (blobs[0][:40].astype(np.float32) / 255).reshape(40, 1, 8, 8)
    s = 0.3
    pipeline = ForwardPipeline(weight_read_noise=s, read_noise=0.05)
    trainable = make_trainable(model)
    AnalogTraining(model, model.layers, x, pipeline, seed=9).attach(trainable)
    first = next(
        m for m in trainable.module.modules() if hasattr(m, "_ftaudit_analog")
    )  # the first crossbar layer runs first
    seen = []
    first.register_forward_hook(lambda _m, inputs, out: seen.append((inputs[0], out)))
    with torch.no_grad():
        trainable.module.eval()
        trainable.module(torch.from_numpy(x))
        trainable.module.train()
        trainable.module(torch.from_numpy(x))
    (x_in, clean), (_, noisy) = seen
    x_in = x_in.double().numpy()
    weight = first.weight.detach().double().numpy()
    if fixture == "convnet_onnx":
        norms = _conv_patch_norms(x_in, 3, 1, 0, 1, 1)
    else:
        norms = np.linalg.norm(x_in.reshape(len(x_in), -1), axis=1, keepdims=True)
    z = torch.randn(clean.shape, generator=training_generator(9, TRAINING_WEIGHT_NOISE_KEY))
    read = torch.randn(clean.shape, generator=training_generator(9, TRAINING_NOISE_KEY))
    unit = np.abs(weight).max()
    r = float(np.abs(x).max())  # the calibrated input range: every image calibrates
    want = s * unit * norms * z.double().numpy() + 0.05 * unit * r * read.double().numpy()
    np.testing.assert_allclose((noisy - clean).double().numpy(), want, rtol=1e-3, atol=1e-4)
