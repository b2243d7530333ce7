"""Several samples per forward pass (--batch-samples): same counts as one sample at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ftaudit
from ftaudit.data import load_dataset
from ftaudit.errors import UserError
from ftaudit.evaluation import prepare_run
from ftaudit.models import load_model
from ftaudit.montecarlo import ChunkEvaluator
from ftaudit.noise import get_noise_model

pytestmark = pytest.mark.torch
SIGMAS = [0.0, 0.3, 0.7]


def accuracies(report) -> np.ndarray:
    return np.stack([r.accuracies for r in report.results])


@pytest.mark.parametrize("batch_samples", [2, 3, 7])
def test_staging_weight_sets_changes_no_count(convnet_onnx: Path, blobs_npz: Path, batch_samples):
    """The stage-and-flush logic with ONNX Runtime's one-at-a-time count_correct_many: exact."""
    model = load_model(convnet_onnx)
    noise = get_noise_model("rram")
    data = load_dataset(blobs_npz)
    _, runner, crossbar, _ = prepare_run(
        model, data, layers=None, exclude=None, noise=noise, batch_size=64, device="cpu"
    )
    one = ChunkEvaluator(runner, crossbar, [0.2, 0.5], seed=1).evaluate(3, 13, [0, 1])
    many = ChunkEvaluator(runner, crossbar, [0.2, 0.5], 1, batch_samples=batch_samples)
    assert np.array_equal(many.evaluate(3, 13, [0, 1]), one)
    assert np.array_equal(many.evaluate(3, 13, [1])[1], one[1])


@pytest.mark.parametrize("fixture", ["convnet_onnx", "mlp_matmul_onnx"])
def test_vmapped_torch_runner_matches_the_onnx_runtime_counts(
    fixture: str, blobs_npz: Path, request
) -> None:
    """Conv (grouped under vmap) and MatMul (weights stored transposed) models."""
    model = request.getfixturevalue(fixture)
    options = dict(sigmas=SIGMAS, samples=24, seed=2)
    one = ftaudit.audit(model, blobs_npz, **options)
    batched = ftaudit.audit(model, blobs_npz, batch_samples=5, **options)
    assert batched.options["execution"]["batch_samples"] == 5
    assert one.options["execution"]["batch_samples"] == 1
    # torch and ONNX Runtime round differently: at most a rare tie flips one of 400 predictions
    diff = np.abs(accuracies(batched) - accuracies(one))
    assert diff.max() <= 1 / 400 + 1e-12
    assert (diff > 0).mean() <= 0.05


def test_batched_samples_on_workers_match_in_process(convnet_onnx: Path, blobs_npz: Path):
    options = dict(sigmas=[0.4], samples=12, seed=3, batch_samples=4)
    one = ftaudit.audit(convnet_onnx, blobs_npz, **options)
    two = ftaudit.audit(convnet_onnx, blobs_npz, workers=2, **options)
    assert np.array_equal(accuracies(one), accuracies(two))


def test_drift_rows_fall_back_to_one_sample_per_pass(convnet_onnx: Path, blobs_npz: Path):
    options = dict(sigmas=[0.3], samples=6, seed=3, times=[86400.0], compensation="none")
    one = ftaudit.audit(convnet_onnx, blobs_npz, **options)
    batched = ftaudit.audit(convnet_onnx, blobs_npz, batch_samples=3, **options)
    assert np.abs(accuracies(batched) - accuracies(one)).max() <= 1 / 400 + 1e-12


@pytest.mark.parametrize("fixture", ["convnet_ts", "lenet_pt2"])
def test_torch_formats_batch_as_their_onnx_export(fixture: str, blobs_npz: Path, request):
    """TorchScript and torch.export models run several weight sets per pass through their
    in-memory ONNX export: the same per-sample accuracies as one sample per pass."""
    from conftest import SAMPLES

    model = request.getfixturevalue(fixture)
    lenet = fixture == "lenet_pt2"
    data = SAMPLES / "fmnist_test_2000.npz" if lenet else blobs_npz
    options = dict(sigmas=[0.4], samples=6, seed=3, limit=200 if lenet else None)
    one = ftaudit.audit(model, data, **options)
    batched = ftaudit.audit(model, data, batch_samples=3, **options)
    assert np.array_equal(accuracies(one), accuracies(batched))


def test_bad_batch_samples(convnet_onnx: Path, blobs_npz: Path, run_cli):
    code, _, err = run_cli(
        "eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0.3", "--batch-samples", "0"
    )
    assert code == 2 and "--batch-samples must be at least 1" in err


def test_cuda_defaults_to_batches() -> None:
    from ftaudit.batched import DEFAULT_CUDA_BATCH_SAMPLES, resolve_batch_samples

    assert resolve_batch_samples(None, device="cuda") == DEFAULT_CUDA_BATCH_SAMPLES
    assert resolve_batch_samples(None, device="cpu") == 1
    assert resolve_batch_samples(4, device="cpu") == 4


def test_an_op_torch_cannot_vmap_falls_back_to_one_set_per_pass(
    monkeypatch, convnet_onnx: Path, blobs_npz: Path
) -> None:
    from ftaudit.batched import BatchedTorchRunner

    def no_batching_rule(self, weights, normals, gains, x):
        raise NotImplementedError("no batching rule for OnnxSomething")

    options = dict(sigmas=[0.3], samples=6, seed=1)
    one = ftaudit.audit(convnet_onnx, blobs_npz, **options)
    monkeypatch.setattr(BatchedTorchRunner, "_forward", no_batching_rule)
    batched = ftaudit.audit(convnet_onnx, blobs_npz, batch_samples=3, **options)
    assert np.abs(accuracies(batched) - accuracies(one)).max() <= 1 / 400 + 1e-12
    assert "no batching rule for OnnxSomething" in batched.options["execution"]["batch_fallback"]


def test_a_default_batch_falls_back_when_torch_cannot_take_the_model(
    monkeypatch, convnet_onnx: Path
) -> None:
    import ftaudit.batched
    from ftaudit.batched import build_runner
    from ftaudit.models.onnx import OnnxRunner

    def unsupported(*args, **kwargs):
        raise UserError("onnx2torch cannot convert op Foo")

    monkeypatch.setattr(ftaudit.batched, "BatchedTorchRunner", unsupported)
    model = load_model(convnet_onnx)
    runner = build_runner(model, model.layers, device="cpu", batch_samples=16, batch_required=False)
    assert isinstance(runner, OnnxRunner)
    with pytest.raises(UserError, match="cannot convert op Foo"):
        build_runner(model, model.layers, device="cpu", batch_samples=16, batch_required=True)


@pytest.mark.parametrize("batch_samples", [2, 5])
def test_drift_and_stuck_rows_are_staged_like_plain_rows(
    convnet_onnx: Path, blobs_npz: Path, batch_samples
):
    """Device effects no longer switch batching off: staged sets give the one-at-a-time counts."""
    from ftaudit.noise.drift import DriftModel
    from ftaudit.noise.effects import DeviceEffects
    from ftaudit.noise.stuck import StuckAt

    model = load_model(convnet_onnx)
    data = load_dataset(blobs_npz)
    _, runner, crossbar, _ = prepare_run(
        model,
        data,
        layers=None,
        exclude=None,
        noise=get_noise_model("rram"),
        batch_size=64,
        device="cpu",
    )
    effects = DeviceEffects(
        times=(1.0, 3600.0, 3.0e7),
        compensations=("none", "global"),
        drift=DriftModel(20.0, 0.05, 0.02),
        stuck_at=StuckAt(0.01, 0.02),
    )
    one = ChunkEvaluator(runner, crossbar, [0.1, 0.4], 2, effects)
    many = ChunkEvaluator(runner, crossbar, [0.1, 0.4], 2, effects, batch_samples=batch_samples)
    assert many.batch_samples == batch_samples
    rows = list(range(one.rows))
    expected = one.evaluate(0, 6, rows)
    assert expected.shape == (2 * 3 * 2, 6)
    assert np.array_equal(many.evaluate(0, 6, rows), expected)
    assert np.array_equal(many.evaluate(0, 6, [1, 7])[[1, 7]], expected[[1, 7]])


def test_vmapped_runner_with_drift_matches_onnx_runtime(convnet_onnx: Path, blobs_npz: Path):
    options = dict(sigmas=[0.3], samples=12, seed=4, times=[3600.0], compensation="both")
    one = ftaudit.audit(convnet_onnx, blobs_npz, **options)
    batched = ftaudit.audit(convnet_onnx, blobs_npz, batch_samples=4, **options)
    assert batched.options["execution"]["batch_samples"] == 4
    diff = np.abs(accuracies(batched) - accuracies(one))
    assert len(one.results) == 2
    assert diff.max() <= 1 / 400 + 1e-12
