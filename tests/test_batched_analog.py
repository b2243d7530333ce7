"""--batch-samples with the analog forward pipeline: the vmapped torch twin of the pipeline,
each weight set reading its own sample's keyed read noise, gives the one-sample numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from analog_reference import one_gemm_model, one_matmul_model, reference_gemm, save_graph
from conftest import SAMPLES

import ftaudit
from ftaudit.analog import ForwardPipeline
from ftaudit.data import Dataset

pytestmark = pytest.mark.torch
pytest.importorskip("onnx2torch")

#: converters, read noise: the defaults of docs/analog.md's example
CONVERTERS = ForwardPipeline(dac_bits=8, adc_bits=8, read_noise=0.06)
#: everything at once: row and column tiles, column scaling, both kinds of read noise
TILED = ForwardPipeline(
    dac_bits=6,
    adc_bits=6,
    read_noise=0.05,
    weight_read_noise=0.03,
    tile_size=(60, 50),
    weight_scaling="column",
)
#: PCM weight read noise (variance S^2 |W| of each sample's own weights), tiled
PCM = ForwardPipeline(
    dac_bits=6,
    adc_bits=6,
    weight_read_noise=0.1,
    weight_read_noise_type="pcm",
    tile_size=(60, 50),
    weight_scaling="column",
)
N_IMAGES = 200


@pytest.fixture(scope="module")
def fmnist() -> Dataset:
    with np.load(SAMPLES / "fmnist_test_2000.npz") as data:
        x, y = data["x"][:N_IMAGES], data["y"][:N_IMAGES]
    return Dataset(x=x.astype(np.float32) / 255, y=y, source={})


def counts(report) -> np.ndarray:
    return np.rint(np.stack([r.accuracies for r in report.results]) * N_IMAGES)


def assert_same_up_to_ties(batched: np.ndarray, one: np.ndarray) -> None:
    """torch and ONNX Runtime sum in other orders: a quantiser may round an exact-tie element
    the other way, moving a rare prediction (at most one image per sample, few samples)."""
    diff = np.abs(batched - one)
    assert diff.max() <= 1
    assert (diff > 0).mean() <= 0.1


@pytest.mark.parametrize("name", ["lenet", "mlp"])
@pytest.mark.parametrize("pipeline", [CONVERTERS, TILED, PCM], ids=["converters", "tiled", "pcm"])
def test_batched_pipeline_gives_the_one_sample_accuracies(fmnist, name, pipeline):
    options = dict(sigmas=[0.0, 0.2], samples=6, seed=3, batch_size=128, pipeline=pipeline)
    one = ftaudit.audit(SAMPLES / f"{name}.onnx", fmnist, **options)
    batched = ftaudit.audit(SAMPLES / f"{name}.onnx", fmnist, batch_samples=4, **options)
    assert batched.options["execution"]["batch_samples"] == 4
    assert "batch_fallback" not in batched.options["execution"]
    assert batched.analog == one.analog  # same calibration, same settings
    assert batched.clean_accuracy == pytest.approx(one.clean_accuracy, abs=1 / N_IMAGES)
    assert np.std(counts(one)[0]) > 0  # read noise: sigma 0 is random too
    assert_same_up_to_ties(counts(batched), counts(one))


def test_batch_samples_1_3_8_give_the_same_numbers(fmnist):
    options = dict(sigmas=[0.1], samples=8, seed=5, batch_size=64, pipeline=TILED)
    reports = {
        s: ftaudit.audit(SAMPLES / "lenet.onnx", fmnist, batch_samples=s, **options)
        for s in (1, 3, 8)
    }
    # 3 and 8 are both torch: the same sums per sample, whatever their stack
    np.testing.assert_array_equal(counts(reports[3]), counts(reports[8]))
    assert_same_up_to_ties(counts(reports[3]), counts(reports[1]))


def test_drift_and_stuck_rows_read_their_samples_noise_batched(mlp_onnx: Path, blobs_npz: Path):
    options = dict(
        sigmas=[0.1], samples=5, seed=2, times=[3600.0], stuck_at=(0.02, 0.02), pipeline=TILED
    )
    one = ftaudit.audit(mlp_onnx, blobs_npz, **options)
    batched = ftaudit.audit(mlp_onnx, blobs_npz, batch_samples=3, **options)
    for a, b in zip(one.results, batched.results, strict=True):
        assert np.abs(a.accuracies - b.accuracies).max() <= 1 / 400 + 1e-12


def test_batched_pipeline_on_workers_matches_in_process(mlp_onnx: Path, blobs_npz: Path):
    options = dict(sigmas=[0.1], samples=6, seed=4, batch_samples=3, pipeline=TILED)
    here = ftaudit.audit(mlp_onnx, blobs_npz, **options)
    spread = ftaudit.audit(mlp_onnx, blobs_npz, workers=2, **options)
    assert spread.options["execution"]["batch_samples"] == 3
    np.testing.assert_array_equal(spread.results[0].accuracies, here.results[0].accuracies)


def _shared_gemm_model(path: Path) -> Path:
    """Two Gemm ops reading the same (64, 64) weight, then a head: an 8x8 image classifier."""
    from onnx import helper

    rng = np.random.default_rng(1)
    initializers = {
        "shape": np.array([-1, 64], np.int64),
        "w": (rng.normal(size=(64, 64)) / 8).astype(np.float32),
        "head": rng.normal(size=(4, 64)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w"], ["h1"], transB=1, alpha=1 / 255),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Gemm", ["r1", "w"], ["h2"], transB=1),
        helper.make_node("Gemm", ["h2", "head"], ["y"], transB=1),
    ]
    return save_graph(path, nodes, ["n", 1, 8, 8], 4, initializers)


@pytest.mark.parametrize("build", [one_gemm_model, one_matmul_model], ids=["gemm", "matmul"])
def test_batched_logits_match_an_independent_numpy_pipeline(tmp_path, build):
    """One Gemm layer, and the same layer as MatMul (its weight fed (in, out) as stored)."""
    from ftaudit.batched import BatchedTorchRunner, build_runner
    from ftaudit.models import load_model

    rng = np.random.default_rng(0)
    clean = rng.normal(size=(5, 12)).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    x = rng.normal(size=(40, 12)).astype(np.float32)
    model = load_model(build(tmp_path / "layer.onnx", clean, bias))
    stored = (lambda w: w) if build is one_gemm_model else (lambda w: np.ascontiguousarray(w.T))
    pipeline = ForwardPipeline(
        dac_bits=5,
        adc_bits=6,
        read_noise=0.1,
        weight_read_noise=0.05,
        tile_size=(5, 2),
        weight_scaling="column",
    )
    runner = build_runner(
        model, model.layers, device="cpu", batch_samples=2, pipeline=pipeline, x=x, seed=4
    )
    assert isinstance(runner, BatchedTorchRunner)
    runner.bind_data(x, np.zeros(len(x), np.int64), batch_size=16)  # 3 batches, one short
    perturbed = [clean * 1.1, clean + rng.normal(0, 0.1, clean.shape).astype(np.float32)]
    runner.set_samples(4, [3, 7])
    got = runner.logits_many([{"w": stored(w)} for w in perturbed])
    assert got.shape == (2, 40, 5)
    for k, sample in enumerate((3, 7)):
        want = reference_gemm(x, clean, perturbed[k], bias, pipeline, seed=4, sample=sample)
        # float32 sums may land on the other side of a rounding edge for a rare element
        assert np.isclose(got[k], want, rtol=1e-4, atol=1e-4).mean() > 0.99
    # one sample per pass (the torch module alone) reads the same draws
    runner.set_sample(4, 7)
    runner.set_weights({"w": stored(perturbed[1])})
    np.testing.assert_allclose(runner.logits(), got[1], rtol=1e-5, atol=1e-5)


def test_cli_accepts_batch_samples_with_the_pipeline(run_cli, mlp_onnx, blobs_npz, tmp_path):
    out = tmp_path / "r.json"
    code, _, err = run_cli(
        "eval", mlp_onnx, "--data", blobs_npz, "--sigma", "0.1", "--samples", "4",
        "--batch-samples", "4", "--dac-bits", "8", "--json", out, "-q",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["options"]["execution"]["batch_samples"] == 4
    assert report["analog"]["dac_bits"] == 8


@pytest.mark.parametrize("arch", ["vit", "text"])
def test_transformer_matmul_layers_batch_with_the_pipeline(matrix, arch):
    """A ViT and a text encoder (their Linear layers on 3-D inputs are MatMul ops): each
    MatMul module runs the pipeline under vmap, reading its own keyed draws."""
    from ftaudit.batched import build_runner
    from ftaudit.models import load_model

    path, data = matrix.file(arch, "legacy"), matrix.dataset(arch)
    pipeline = ForwardPipeline(
        dac_bits=6, adc_bits=6, read_noise=0.1, weight_read_noise=0.05, tile_size=(5, 4)
    )
    model = load_model(path)
    x = np.load(data)["x"]
    runner = build_runner(
        model, model.layers, device="cpu", batch_samples=3, pipeline=pipeline, x=x
    )
    kinds = [plan.kind for plan in runner.reads.plans]  # every layer runs the pipeline
    assert "matmul" in kinds and len(kinds) == len(model.layers)
    options = dict(sigmas=[0.0, 0.2], samples=6, seed=3, batch_size=8, pipeline=pipeline)
    one = ftaudit.audit(path, data, **options)
    batched = ftaudit.audit(path, data, batch_samples=4, **options)
    assert "batch_fallback" not in batched.options["execution"]
    n = len(x)
    one_counts = np.rint(np.stack([r.accuracies for r in one.results]) * n)
    batched_counts = np.rint(np.stack([r.accuracies for r in batched.results]) * n)
    assert np.std(one_counts[0]) > 0
    assert_same_up_to_ties(batched_counts, one_counts)


def test_cli_refuses_a_layer_the_batched_pipeline_cannot_run(run_cli, blobs_npz, tmp_path):
    """A Gemm weight read by two ops: one torch module holds it, so the twin cannot run it."""
    out = tmp_path / "r.json"
    model = _shared_gemm_model(tmp_path / "shared.onnx")
    code, _, err = run_cli(
        "eval", model, "--data", blobs_npz, "--sigma", "0.1", "--samples", "2",
        "--batch-samples", "4", "--read-noise", "0.1", "--json", out,
    )  # fmt: skip
    assert code == 2 and "--batch-samples" in err and len(err.strip().splitlines()) == 1
    assert "several ops read the same weight" in err
    assert "Traceback" not in err and not out.exists()


def test_the_cuda_default_batches_the_pipeline_or_says_why_not(
    monkeypatch, mlp_matmul_onnx, blobs_npz, tmp_path
):
    """--device cuda without --batch-samples asks for 16 weight sets per pass: the pipeline
    takes them (MatMul layers too); a model it cannot batch runs one sample per pass and the
    report says why."""
    import ftaudit.evaluation
    from ftaudit.batched import DEFAULT_CUDA_BATCH_SAMPLES

    shared = _shared_gemm_model(tmp_path / "shared.onnx")
    options = dict(sigmas=[0.1], samples=3, seed=1, pipeline=TILED)
    plain = {m: ftaudit.audit(m, blobs_npz, **options) for m in (mlp_matmul_onnx, shared)}
    monkeypatch.setattr(
        ftaudit.evaluation, "resolve_batch_samples", lambda *_, **__: DEFAULT_CUDA_BATCH_SAMPLES
    )
    batched = ftaudit.audit(mlp_matmul_onnx, blobs_npz, **options)
    assert batched.options["execution"]["batch_samples"] == DEFAULT_CUDA_BATCH_SAMPLES
    assert "batch_fallback" not in batched.options["execution"]
    diff = np.abs(batched.results[0].accuracies - plain[mlp_matmul_onnx].results[0].accuracies)
    assert diff.max() <= 1 / 400 + 1e-12
    fallback = ftaudit.audit(shared, blobs_npz, **options)
    execution = fallback.options["execution"]
    assert execution["batch_samples"] == 1
    assert "one sample per pass" in execution["batch_fallback"]
    np.testing.assert_array_equal(
        fallback.results[0].accuracies, plain[shared].results[0].accuracies
    )
