"""PCM weight read noise (``--weight-read-noise-type pcm``, aihwkit's PCM_READ).

Every read sees each normalised weight ``W / w`` (w: max|W| of the clean weights, the
conductance range) plus ``S sqrt(|W| / w) N``, so each output of a tile gets
``S sqrt(w) sqrt(sum_j |W_j| x_j^2) z`` in weight units. Checked against independent numpy:
the per-output form with the runner's own keyed draws (Conv patches cut by hand, |W| of the
perturbed weights fed), and the distribution of an explicit per-read noisy weight matrix.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_analog_weight_read_noise import _reads, _runner, _single_op_model

from ftaudit.analog import ForwardPipeline
from ftaudit.analog.read_noise import WEIGHT_TAG, read_noise
from ftaudit.errors import UserError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

PCM = "pcm"


def _conv_abs_weighted_squares(x, weight, stride, pad, dilation, groups):
    """sum_j |W_oj| x_j^2 over every Conv output's patch (n, out, oh, ow), explicit loops."""
    n, _, h, w = x.shape
    out, per_group, k, _ = weight.shape
    padded = np.pad(x.astype(np.float64) ** 2, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    span = dilation * (k - 1) + 1
    oh = (h + 2 * pad - span) // stride + 1
    ow = (w + 2 * pad - span) // stride + 1
    magnitude = np.abs(weight.astype(np.float64))
    sums = np.zeros((n, out, oh, ow))
    for o in range(out):
        g = o // (out // groups)
        for i in range(oh):
            for j in range(ow):
                for ci in range(per_group):
                    for a in range(k):
                        for b in range(k):
                            row, col = i * stride + a * dilation, j * stride + b * dilation
                            value = padded[:, g * per_group + ci, row, col]
                            sums[:, o, i, j] += magnitude[o, ci, a, b] * value
    return sums


@pytest.mark.parametrize(("groups", "dilation"), [(1, 1), (2, 2)])
def test_conv_pcm_read_noise_is_s_sqrt_w_times_each_patchs_abs_weighted_norm(
    tmp_path, groups, dilation
):
    rng = np.random.default_rng(10)
    weight = rng.standard_normal((4, 4 // groups, 3, 3)).astype(np.float32)
    x = rng.standard_normal((70, 4, 7, 7)).astype(np.float32)
    oh = (7 + 2 - dilation * 2 - 1) // 2 + 1
    path = _single_op_model(
        tmp_path / "conv.onnx", "Conv", weight, (4, 7, 7), (4, oh, oh),
        strides=[2, 2], pads=[1, 1, 1, 1], group=groups, dilations=[dilation, dilation],
    )  # fmt: skip
    s = 0.2
    # 18 rows a tile = two input channels of 3x3 (grouped convs stay one tile)
    pipeline = ForwardPipeline(weight_read_noise=s, weight_read_noise_type=PCM, tile_size=(18, 4))
    runner = _runner(path, x, pipeline, 32)
    # the read noise acts on the programmed (perturbed) weights: fed here by hand
    perturbed = weight * np.exp(0.3 * rng.standard_normal(weight.shape)).astype(np.float32)
    runner.set_weights({"w": perturbed})
    got = _reads(runner, 3) - _reads(runner, None)
    scale = np.abs(weight).max()  # the clean weights set the conductance range
    want = np.zeros_like(got)
    tiles = [(0, 2), (2, 4)] if groups == 1 else [(0, 4)]
    for t, (c0, c1) in enumerate(tiles):
        if groups == 1:
            sums = _conv_abs_weighted_squares(x[:, c0:c1], perturbed[:, c0:c1], 2, 1, dilation, 1)
        else:
            sums = _conv_abs_weighted_squares(x, perturbed, 2, 1, dilation, groups)
        z = read_noise(7, 3, 0, t, 0, len(x), got.shape[1:], tag=WEIGHT_TAG)
        want += s * np.sqrt(scale) * np.sqrt(sums) * z
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
@pytest.mark.parametrize("scaling", ["layer", "column", "tile"])
def test_dense_pcm_read_noise_is_s_sqrt_w_times_each_tiles_abs_weighted_norm(tmp_path, op, scaling):
    rng = np.random.default_rng(11)
    weight = rng.standard_normal((10, 3)).astype(np.float32)  # (in, out) for both ops
    x = rng.standard_normal((90, 10)).astype(np.float32)
    path = _single_op_model(tmp_path / "dense.onnx", op, weight, (10,), (3,))
    s = 0.05
    pipeline = ForwardPipeline(
        weight_read_noise=s, weight_read_noise_type=PCM, tile_size=(4, 2), weight_scaling=scaling
    )
    runner = _runner(path, x, pipeline, 40)
    perturbed = weight + np.float32(0.1) * rng.standard_normal(weight.shape).astype(np.float32)
    runner.set_weights({"w": perturbed})
    got = _reads(runner, 5) - _reads(runner, None)
    want = np.zeros_like(got)
    magnitude = np.abs(weight)
    for t, r0 in enumerate(range(0, 10, 4)):
        rows = slice(r0, r0 + 4)
        if scaling == "layer":
            scale = np.full(3, magnitude.max())
        elif scaling == "column":
            scale = magnitude.max(axis=0)
        else:  # one range per (row tile, column tile): columns [0, 2) and [2, 3)
            scale = np.array([magnitude[rows, :2].max()] * 2 + [magnitude[rows, 2].max()])
        sums = (x[:, rows].astype(np.float64) ** 2) @ np.abs(perturbed[rows].astype(np.float64))
        z = read_noise(7, 5, 0, t, 0, len(x), (3,), tag=WEIGHT_TAG)
        want += s * np.sqrt(scale) * np.sqrt(sums) * z
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_pcm_read_noise_matches_an_explicit_noisy_weight_matrix_per_read(tmp_path):
    """One image read 4000 times: each output's mean and variance equal those of
    ``x . (W + S sqrt(w |W|) N_k)`` (normalised: ``W / w + S sqrt(|W| / w) N_k``) with a fresh
    N_k per read (numpy Monte Carlo, own generator); quantiles agree between the two."""
    rng = np.random.default_rng(12)
    weight = rng.standard_normal((12, 5)).astype(np.float32)
    weight[3, 1] = 0.0  # a zero weight reads no noise at all
    image = rng.standard_normal(12).astype(np.float32)
    reads = 4000
    x = np.repeat(image[np.newaxis], reads, axis=0)
    path = _single_op_model(tmp_path / "mm.onnx", "MatMul", weight, (12,), (5,))
    s = 0.1
    pipeline = ForwardPipeline(weight_read_noise=s, weight_read_noise_type=PCM)
    got = _reads(_runner(path, x, pipeline, 500), 0)
    w = float(np.abs(weight).max())
    magnitude = np.abs(weight.astype(np.float64))
    per_weight_std = w * s * np.sqrt(magnitude / w)
    noisy = weight[np.newaxis] + per_weight_std * rng.standard_normal((reads, 12, 5))
    image64 = image.astype(np.float64)
    explicit = np.einsum("i,kio->ko", image64, noisy)
    clean = image64 @ weight
    var_formula = s**2 * w * (image64**2 @ magnitude)  # per output
    se_var = var_formula * np.sqrt(2 / (reads - 1))
    for sample in (got, explicit):
        assert np.all(np.abs(sample.mean(0) - clean) < 5 * np.sqrt(var_formula / reads))
        assert np.all(np.abs(sample.var(0, ddof=1) - var_formula) < 5 * se_var)
    qs = np.linspace(0.05, 0.95, 19)
    for o in range(5):
        gap = np.abs(np.quantile(got[:, o], qs) - np.quantile(explicit[:, o], qs))
        assert gap.max() < 0.12 * np.sqrt(var_formula[o])
    # the additive type's variance differs (S^2 w^2 ||x||^2): the type is not ignored
    additive = s**2 * w**2 * float(image64 @ image64)
    assert np.all(np.abs(var_formula - additive) > 10 * se_var)
    assert len(np.unique(got[:, 0])) == reads


def test_pcm_read_noise_is_batch_free_and_zero_noise_is_todays_graph(tmp_path):
    rng = np.random.default_rng(13)
    weight = rng.standard_normal((8, 4)).astype(np.float32)
    x = rng.standard_normal((130, 8)).astype(np.float32)
    path = _single_op_model(tmp_path / "mm.onnx", "MatMul", weight, (8,), (4,))
    pcm = ForwardPipeline(
        weight_read_noise=0.1, weight_read_noise_type=PCM, read_noise=0.05, tile_size=(3, 4)
    )
    small, large = (_reads(_runner(path, x, pcm, size), 2) for size in (17, 130))
    np.testing.assert_array_equal(small, large)
    today = ForwardPipeline(read_noise=0.1, adc_bits=6, tile_size=(3, 4))
    zero = ForwardPipeline(read_noise=0.1, adc_bits=6, tile_size=(3, 4), weight_read_noise_type=PCM)
    np.testing.assert_array_equal(
        _reads(_runner(path, x, today), 4), _reads(_runner(path, x, zero), 4)
    )
    assert not ForwardPipeline(weight_read_noise_type=PCM).active
    # the default is additive, and the report names the type
    assert ForwardPipeline().weight_read_noise_type == "additive"
    assert "PCM" in ForwardPipeline(weight_read_noise=0.1, weight_read_noise_type=PCM).describe()[0]


def test_unknown_weight_read_noise_type_is_a_user_error():
    with pytest.raises(UserError, match="unknown --weight-read-noise-type 'gauss'") as caught:
        ForwardPipeline(weight_read_noise=0.1, weight_read_noise_type="gauss")
    assert "additive, pcm" in (caught.value.hint or "")


@pytest.mark.parametrize("command", ["eval", "compare", "sensitivity"])
def test_bad_weight_read_noise_type_flag_exits_2_with_one_line(
    run_cli, mlp_onnx, blobs_npz, tmp_path, command
):
    models = [mlp_onnx, mlp_onnx] if command == "compare" else [mlp_onnx]
    out = tmp_path / "r.json"
    code, stdout, stderr = run_cli(
        command, *models, "--data", blobs_npz, "--sigma", "0.1", "--json", out,
        "--weight-read-noise", "0.02", "--weight-read-noise-type", "PCM_READ",
    )  # fmt: skip
    assert code == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert "--weight-read-noise-type" in stderr and stdout == ""
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("weight_read_noise_type = 'shot'", "unknown --weight-read-noise-type 'shot'"),
        ("weight_read_noise_type = 1", "'weight_read_noise_type' has the wrong type"),
    ],
)
def test_bad_config_weight_read_noise_type_exits_2(
    run_cli, mlp_onnx, blobs_npz, tmp_path, text, message
):
    config = tmp_path / "ftaudit.toml"
    config.write_text(f"weight_read_noise = 0.02\n{text}\n")
    out = tmp_path / "r.json"
    code, _, stderr = run_cli(
        "eval", mlp_onnx, "--data", blobs_npz, "--sigma", "0.1", "--samples", "2",
        "--config", config, "--json", out,
    )  # fmt: skip
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert message in stderr and not out.exists()


def test_device_file_and_flag_set_the_type_and_the_report_lists_it(
    run_cli, mlp_onnx, blobs_npz, tmp_path
):
    device = tmp_path / "chip.toml"
    device.write_text(
        'name = "chip"\nsigma_multipliers = [1.0, 1.0, 1.0, 1.0]\nbits = 4\ncell_bits = 2\n'
        "[analog]\nweight_read_noise = 0.03\nweight_read_noise_type = 'pcm'\n"
    )
    out = tmp_path / "r.json"
    code, stdout, stderr = run_cli(
        "eval", mlp_onnx, "--data", blobs_npz, "--sigma", "0.1", "--samples", "2",
        "--batch-size", "200", "--noise", device, "--json", out,
    )  # fmt: skip
    assert code == 0, stderr
    analog = json.loads(out.read_text())["analog"]
    assert (analog["weight_read_noise"], analog["weight_read_noise_type"]) == (0.03, "pcm")
    assert "weight read noise 0.03 (PCM" in stdout
    code, _, stderr = run_cli(
        "eval", mlp_onnx, "--data", blobs_npz, "--sigma", "0.1", "--samples", "2",
        "--batch-size", "200", "--noise", device, "--json", out,
        "--weight-read-noise-type", "additive",
    )  # fmt: skip
    assert code == 0, stderr
    assert json.loads(out.read_text())["analog"]["weight_read_noise_type"] == "additive"


@pytest.mark.parametrize("fixture", ["convnet_onnx", "mlp_onnx", "mlp_matmul_onnx"])
def test_training_pcm_read_noise_is_s_sqrt_w_times_the_abs_weighted_norm(request, blobs, fixture):
    """harden's torch pipeline: the first crossbar layer's train-mode output minus its eval
    output is S sqrt(max|W|) sqrt(sum_j |W_j| x_j^2) z, z from the weight-noise generator."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    from ftaudit.analog.torch_pipeline import (
        TRAINING_WEIGHT_NOISE_KEY,
        AnalogTraining,
        training_generator,
    )
    from ftaudit.harden.trainable import make_trainable
    from ftaudit.models import load_model

    model = load_model(request.getfixturevalue(fixture))
    x = (blobs[0][:40].astype(np.float32) / 255).reshape(40, 1, 8, 8)
    s = 0.3
    pipeline = ForwardPipeline(weight_read_noise=s, weight_read_noise_type=PCM)
    trainable = make_trainable(model)
    AnalogTraining(model, model.layers, x, pipeline, seed=9).attach(trainable)
    first = next(m for m in trainable.module.modules() if hasattr(m, "_ftaudit_analog"))
    seen = []
    first.register_forward_hook(lambda _m, inputs, out: seen.append((inputs, out)))
    with torch.no_grad():
        trainable.module.eval()
        trainable.module(torch.from_numpy(x))
        trainable.module.train()
        trainable.module(torch.from_numpy(x))
    (inputs, clean), (_, noisy) = seen
    x_in = inputs[0].double().numpy()
    if fixture == "mlp_matmul_onnx":  # onnx2torch's MatMul module: x @ weight, (in, out)
        weight = inputs[1].detach().double().numpy().T
    else:
        weight = first.weight.detach().double().numpy()
    if fixture == "convnet_onnx":
        sums = _conv_abs_weighted_squares(x_in, weight, 1, 0, 1, 1)
    else:
        sums = (x_in.reshape(len(x_in), -1) ** 2) @ np.abs(weight).T
    z = torch.randn(clean.shape, generator=training_generator(9, TRAINING_WEIGHT_NOISE_KEY))
    want = s * np.sqrt(np.abs(weight).max()) * np.sqrt(sums) * z.double().numpy()
    np.testing.assert_allclose((noisy - clean).double().numpy(), want, rtol=1e-3, atol=1e-4)
