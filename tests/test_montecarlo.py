"""The Monte Carlo engine: draws keyed by (seed, sample, layer), common random numbers, early stop.

The unit tests drive ``run_monte_carlo`` with a fake runner that records every weight set it is
given; the end-to-end tests run ``ftaudit.audit`` on the conftest models and compare formats,
batch sizes and seeds, and one independent re-implementation of the draws in plain torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
from conftest import keyed_normals

import ftaudit
from ftaudit.models.base import CrossbarLayer, ModelRunner
from ftaudit.montecarlo import (
    CHECK_EVERY,
    ChunkEvaluator,
    Crossbar,
    draws_for_sample,
    run_monte_carlo,
)
from ftaudit.noise import LayerNoise, get_noise_model

SEED = 1234


def reference_draws(
    seed: int,
    sample: int,
    layer_index: int,
    shape: tuple[int, ...],
    d: int = 1,
    rng: str = "fast",
):
    """Sample ``sample``'s draws for layer ``layer_index``, from the keying in docs/methods.md:
    float32 standard normals of the keyed stream SeedSequence(seed, (sample, layer))."""
    return keyed_normals(seed, (sample, layer_index), (d, *shape), rng)


def make_layers() -> tuple[list[CrossbarLayer], dict[str, np.ndarray]]:
    """Three layers with gaps in their indices; the middle one is stored transposed (in, out)."""
    rng = np.random.default_rng(0)
    layers = [
        CrossbarLayer("conv", "Conv", 0, (4, 2, 3, 3), "float32"),
        CrossbarLayer("fc1", "MatMul", 2, (18, 6), "float32", transposed=True),
        CrossbarLayer("fc2", "Gemm", 5, (3, 6), "float32"),
    ]
    weights = {layer.name: rng.normal(0, 1, layer.shape).astype(np.float32) for layer in layers}
    return layers, weights


class RecordingRunner(ModelRunner):
    """A fake runner: remembers each weight set and scores it with ``score``."""

    def __init__(self, score: Callable[[Mapping[str, np.ndarray]], int]) -> None:
        self.score = score
        self.calls: list[dict[str, np.ndarray]] = []

    def bind_data(self, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> None:
        raise NotImplementedError

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        self.calls.append({name: np.array(w, copy=True) for name, w in weights.items()})

    def logits(self) -> np.ndarray:
        raise NotImplementedError

    def count_correct(self) -> int:
        return self.score(self.calls[-1])


def positive_weights(weights: Mapping[str, np.ndarray]) -> int:
    return int(sum(np.count_nonzero(w > 0.5) for w in weights.values()))


# --- draws ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rng", ["fast", "ziggurat"])
def test_draws_follow_the_documented_keying(rng: str) -> None:
    layers, _ = make_layers()
    draws = draws_for_sample(SEED, 7, layers, 2, rng=rng)
    for layer, z in zip(layers, draws, strict=True):
        assert z.shape == (2, *layer.canonical_shape) and z.dtype == np.float32
        expected = reference_draws(SEED, 7, layer.index, layer.canonical_shape, 2, rng)
        assert np.array_equal(z, expected)
    assert draws[1].shape == (2, 6, 18)  # canonical: output features first


def test_draws_are_reproducible_and_independent_of_the_selection() -> None:
    layers, _ = make_layers()
    first = draws_for_sample(SEED, 3, layers, 1)
    again = draws_for_sample(SEED, 3, layers, 1)
    subset = draws_for_sample(SEED, 3, [layers[2], layers[0]], 1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert np.array_equal(subset[0], first[2]) and np.array_equal(subset[1], first[0])
    # written into caller buffers, the numbers are the same
    buffers = [np.empty((1, *layer.canonical_shape), np.float32) for layer in layers]
    into = draws_for_sample(SEED, 3, layers, 1, out=buffers)
    assert all(a is b for a, b in zip(into, buffers, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(first, into, strict=True))


def test_draws_differ_between_seeds_samples_and_layers() -> None:
    layer = CrossbarLayer("w", "Gemm", 0, (8, 8), "float32")
    other = CrossbarLayer("w", "Gemm", 1, (8, 8), "float32")
    base = draws_for_sample(SEED, 0, [layer], 1)[0]
    assert not np.array_equal(base, draws_for_sample(SEED + 1, 0, [layer], 1)[0])
    assert not np.array_equal(base, draws_for_sample(SEED, 1, [layer], 1)[0])
    assert not np.array_equal(base, draws_for_sample(SEED, 0, [other], 1)[0])


# --- run_monte_carlo with a fake runner ---------------------------------------------------------


def test_common_random_numbers_across_sigma() -> None:
    """Sample i at every sigma is w * exp(sigma * z_i) with the same z_i (lognormal)."""
    layers, weights = make_layers()
    crossbar = Crossbar.prepare(layers, weights, get_noise_model("lognormal"))
    runner = RecordingRunner(positive_weights)
    sigmas = [0.1, 0.5]
    samples = 4
    result = run_monte_carlo(runner, crossbar, sigmas, samples=samples, seed=SEED, n_data=100, k=1)
    assert len(runner.calls) == samples * len(sigmas)
    for i in range(samples):
        for j, sigma in enumerate(sigmas):
            seen = runner.calls[i * len(sigmas) + j]
            for layer in layers:
                z = reference_draws(SEED, i, layer.index, layer.canonical_shape)[0]
                native = z.T if layer.transposed else z
                expected = weights[layer.name] * np.exp(np.float32(sigma) * native)
                np.testing.assert_allclose(seen[layer.name], expected, rtol=1e-6)
            assert result.counts[j, i] == positive_weights(seen)
    assert list(result.used) == [samples, samples] and not result.stopped_early.any()


def test_device_noise_draws_one_number_per_cell() -> None:
    layers, weights = make_layers()
    noise = get_noise_model("rram", bits=4, cell_bits=2, clamp=False)  # linear in sigma
    crossbar = Crossbar.prepare(layers, weights, noise)
    runner = RecordingRunner(positive_weights)
    run_monte_carlo(runner, crossbar, [0.2, 0.4], samples=2, seed=SEED, n_data=1000, k=1)
    quantised = crossbar.unperturbed()
    for i in range(2):
        low, high = runner.calls[2 * i], runner.calls[2 * i + 1]
        for layer in layers:
            z = reference_draws(SEED, i, layer.index, layer.canonical_shape, d=2)
            assert not np.array_equal(z[0], z[1])
            # same draws at both sigma: the deviation from the quantised weights doubles
            np.testing.assert_allclose(
                high[layer.name] - quantised[layer.name],
                2 * (low[layer.name] - quantised[layer.name]),
                rtol=1e-4,
                atol=1e-6,
            )


def test_sigma_zero_runs_once_without_perturbation() -> None:
    layers, weights = make_layers()
    crossbar = Crossbar.prepare(layers, weights, get_noise_model("lognormal"))

    class NoPerturbation(LayerNoise):
        def __init__(self, state: LayerNoise) -> None:
            self.state = state

        def unperturbed(self) -> np.ndarray:
            return self.state.unperturbed()

        def perturb(self, draws: np.ndarray, sigma: float, out: np.ndarray) -> np.ndarray:
            raise AssertionError("sigma = 0 must not perturb anything")

    crossbar.states = [NoPerturbation(state) for state in crossbar.states]
    runner = RecordingRunner(positive_weights)
    result = run_monte_carlo(runner, crossbar, [0.0], samples=30, seed=SEED, n_data=500, k=1)
    assert len(runner.calls) == 1
    for name, w in weights.items():
        assert runner.calls[0][name].tobytes() == w.tobytes()
    assert np.all(result.counts == positive_weights(weights))
    assert list(result.used) == [30] and not result.stopped_early.any()


@pytest.mark.parametrize("noise_name", ["lognormal", "fefet1"])
def test_sigma_zero_between_noisy_sigmas(noise_name: str) -> None:
    layers, weights = make_layers()
    noise = get_noise_model(noise_name)
    crossbar = Crossbar.prepare(layers, weights, noise)
    runner = RecordingRunner(positive_weights)
    sigmas = [0.0, 0.3, 0.0]
    result = run_monte_carlo(runner, crossbar, sigmas, samples=5, seed=SEED, n_data=500, k=1)
    unperturbed = runner.calls[0]
    for layer in layers:
        if noise.quantizes:
            expected = crossbar.unperturbed()[layer.name]
            assert not np.array_equal(expected, weights[layer.name])
        else:
            expected = weights[layer.name]
        assert unperturbed[layer.name].tobytes() == expected.tobytes()
    assert len(runner.calls) == 1 + 5  # one clean pass, then one pass per sample at sigma 0.3
    clean = positive_weights(unperturbed)
    assert np.all(result.counts[[0, 2]] == clean)
    noisy = [positive_weights(call) for call in runner.calls[1:]]
    assert list(result.counts[1]) == noisy


def early_stop_run(samples: int, target_ci: float | None) -> tuple[RecordingRunner, object]:
    """sigma 1e-12 leaves float32 weights unchanged (constant counts); sigma 1 does not."""
    layers, weights = make_layers()
    crossbar = Crossbar.prepare(layers, weights, get_noise_model("lognormal"))
    runner = RecordingRunner(positive_weights)
    n_data = sum(w.size for w in weights.values())
    # k = 5: the KPP interval's lower end needs 59+ samples, so the first finite width is at 100
    result = run_monte_carlo(
        runner, crossbar, [1e-12, 1.0], samples=samples, seed=SEED, n_data=n_data, k=5,
        target_ci=target_ci,
    )  # fmt: skip
    return runner, result


def test_target_ci_stops_early_at_a_check_point() -> None:
    runner, result = early_stop_run(samples=130, target_ci=1e-6)
    assert CHECK_EVERY == 50
    assert list(result.used) == [100, 130]
    assert list(result.stopped_early) == [True, False]
    assert len(runner.calls) == 2 * 100 + 30
    assert np.all(result.counts[0, 100:] == 0)
    assert np.unique(result.counts[0, :100]).size == 1
    assert np.unique(result.counts[1]).size > 1
    assert result.accuracies(0, 10).shape == (100,)
    # deterministic: the same run stops at the same sample with the same counts
    _, again = early_stop_run(samples=130, target_ci=1e-6)
    assert np.array_equal(again.counts, result.counts) and list(again.used) == [100, 130]
    # without a target every sample runs, with the same numbers up to the stopping point
    _, full = early_stop_run(samples=130, target_ci=None)
    assert list(full.used) == [130, 130] and not full.stopped_early.any()
    assert np.array_equal(full.counts[:, :100], result.counts[:, :100])


@pytest.mark.parametrize("samples", [100, 60, 30])
def test_target_ci_never_exceeds_samples(samples: int) -> None:
    """A check that would fall on the last sample, or after it, stops nothing."""
    runner, result = early_stop_run(samples=samples, target_ci=1e-6)
    assert list(result.used) == [samples, samples]
    assert not result.stopped_early.any()
    assert len(runner.calls) == 2 * samples


def test_progress_reports_every_sample() -> None:
    layers, weights = make_layers()
    crossbar = Crossbar.prepare(layers, weights, get_noise_model("gaussian"))
    seen: list[tuple[int, int]] = []
    run_monte_carlo(
        RecordingRunner(positive_weights), crossbar, [0.1], samples=3, seed=0, n_data=500, k=1,
        progress=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    assert seen == [(1, 3), (2, 3), (3, 3)]


# --- end to end through ftaudit.audit -----------------------------------------------------------


def torch_accuracy(module, x: np.ndarray, y: np.ndarray) -> float:
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        logits = module(torch.from_numpy(x.astype(np.float32) / 255)).numpy()
    return float(np.mean(logits.argmax(axis=1) == y))


def accuracies(report) -> list[np.ndarray]:
    return [result.accuracies for result in report.results]


def test_sigma_zero_equals_clean_accuracy(
    convnet_onnx: Path, blobs_npz: Path, blobs, trained_convnet
):
    report = ftaudit.audit(convnet_onnx, blobs_npz, sigmas=[0.0, 0.5], samples=12, seed=SEED)
    assert report.clean_accuracy == torch_accuracy(trained_convnet, *blobs)
    zero = report.results[0]
    assert zero.accuracies.shape == (12,)
    assert np.all(zero.accuracies == report.clean_accuracy)
    assert zero.summary.kpp_interval.method == "exact"
    assert report.quantized_accuracy is None


def test_sigma_zero_on_a_device_is_the_quantised_accuracy(
    convnet_ts: Path, blobs_npz: Path, blobs, trained_convnet
) -> None:
    torch = pytest.importorskip("torch")
    import copy

    report = ftaudit.audit(
        convnet_ts, blobs_npz, sigmas=[0.0], noise="rram", bits=2, cell_bits=1, samples=3
    )
    quantised = copy.deepcopy(trained_convnet)
    with torch.no_grad():
        for name in ("0.weight", "3.weight", "5.weight"):
            param = dict(quantised.named_parameters())[name]
            w = param.numpy().astype(np.float64)
            levels = np.rint(np.abs(w) / np.abs(w).max() * 3)
            stored = np.where(w < 0, -1, 1) * np.abs(w).max() / 3 * levels
            param.copy_(torch.from_numpy(stored.astype(np.float32)))
    expected = torch_accuracy(quantised, *blobs)
    assert report.quantized_accuracy == expected
    assert np.all(report.results[0].accuracies == expected)


# TorchScript runs batch by batch in Python: a smaller data set keeps batch size 1 quick
@pytest.mark.parametrize(("model", "limit"), [("convnet_onnx", 90), ("convnet_ts", 30)])
def test_batch_size_does_not_change_results(
    model: str, limit: int, blobs_npz: Path, request
) -> None:
    path = request.getfixturevalue(model)
    runs = [
        ftaudit.audit(
            path, blobs_npz, sigmas=[1.0], samples=8, seed=SEED, batch_size=b, limit=limit
        )
        .results[0]
        .accuracies
        for b in (1, 7, 512)
    ]
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])
    assert np.unique(runs[0]).size > 1  # the noise does move the accuracy


def test_same_seed_is_bit_identical_and_seeds_differ(convnet_onnx: Path, blobs_npz: Path) -> None:
    def run(seed: int) -> list[np.ndarray]:
        return accuracies(
            ftaudit.audit(convnet_onnx, blobs_npz, sigmas=[0.4, 0.8], samples=15, seed=seed)
        )

    first, second, other = run(SEED), run(SEED), run(SEED + 1)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first, second, strict=True))
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize(("noise", "sigma"), [("lognormal", 0.8), ("rram", 1.0)])
def test_onnx_and_torchscript_agree(
    convnet_onnx: Path, convnet_ts: Path, blobs_npz: Path, noise: str, sigma: float
) -> None:
    onnx_report, ts_report = (
        ftaudit.audit(path, blobs_npz, sigmas=[sigma], noise=noise, samples=15, seed=SEED)
        for path in (convnet_onnx, convnet_ts)
    )
    assert [layer.shape for layer in onnx_report.layers] == [
        layer.shape for layer in ts_report.layers
    ]
    assert np.array_equal(onnx_report.results[0].accuracies, ts_report.results[0].accuracies)
    assert np.unique(onnx_report.results[0].accuracies).size > 1


@pytest.mark.parametrize(("noise", "sigma"), [("lognormal", 0.8), ("rram", 1.5)])
def test_gemm_and_matmul_exports_agree(
    mlp_onnx: Path, mlp_matmul_onnx: Path, blobs_npz: Path, noise: str, sigma: float
) -> None:
    """Same network, weights stored (out, in) for Gemm and (in, out) for MatMul: same draws."""
    gemm, matmul = (
        ftaudit.audit(path, blobs_npz, sigmas=[sigma], noise=noise, samples=15, seed=SEED)
        for path in (mlp_onnx, mlp_matmul_onnx)
    )
    assert np.array_equal(gemm.results[0].accuracies, matmul.results[0].accuracies)
    assert np.unique(gemm.results[0].accuracies).size > 1


def test_accuracy_falls_with_sigma(convnet_onnx: Path, blobs_npz: Path) -> None:
    report = ftaudit.audit(convnet_onnx, blobs_npz, sigmas=[0.1, 1.0], samples=20, seed=SEED)
    low, high = report.results
    assert high.summary.mean < low.summary.mean
    assert high.summary.mean < report.clean_accuracy


@pytest.mark.parametrize(
    ("layers", "rng"),
    [(None, "fast"), (["3.weight", "5.weight"], "fast"), (None, "ziggurat")],
)
def test_audit_matches_an_independent_monte_carlo(
    convnet_ts: Path, blobs_npz: Path, blobs, trained_convnet, layers: list[str] | None, rng: str
) -> None:
    """Per-sample accuracies equal a plain-torch re-run of the documented draws; under
    rng="ziggurat" the draws are numpy's own SFC64 ziggurat (the generator of earlier
    reports), so those reports are reproduced bit for bit."""
    torch = pytest.importorskip("torch")
    import copy

    sigma, samples = 1.0, 6
    report = ftaudit.audit(
        convnet_ts, blobs_npz, sigmas=[sigma], samples=samples, seed=SEED, layers=layers, rng=rng
    )
    assert report.options["rng"] == rng
    order = ["0.weight", "3.weight", "5.weight"]  # crossbar layer index = execution order
    chosen = layers or order
    expected = []
    for i in range(samples):
        model = copy.deepcopy(trained_convnet)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in chosen:
                w = params[name].numpy()
                z = reference_draws(SEED, i, order.index(name), w.shape, rng=rng)[0]
                params[name].copy_(torch.from_numpy(w * np.exp(np.float32(sigma) * z)))
        expected.append(torch_accuracy(model, *blobs))
    assert report.results[0].accuracies.tolist() == expected
    assert len(set(expected)) > 1  # the perturbation does reach the accuracy


class MeanWeight:
    """A float metric for the loop (a stand-in for BayesFT's loss): the mean of every weight
    the runner was given last."""

    dtype = np.float64

    def one(self, runner: RecordingRunner) -> float:
        return float(np.mean(np.concatenate([w.ravel() for w in runner.calls[-1].values()])))

    def many(self, runner: RecordingRunner, weight_sets: list) -> list[float]:
        values = []
        for weights in weight_sets:
            runner.set_weights(weights)
            values.append(self.one(runner))
        return values


def test_a_pluggable_metric_runs_in_the_same_loop() -> None:
    """run_monte_carlo and ChunkEvaluator measure what the metric says, per sample and row,
    with the same draws as the counts (w exp(sigma z) recomputed here)."""
    layers, weights = make_layers()
    crossbar = Crossbar.prepare(layers, weights, get_noise_model("lognormal"))
    result = run_monte_carlo(
        RecordingRunner(positive_weights), crossbar, [0.0, 0.3], samples=6, seed=SEED,
        n_data=1, k=1, metric=MeanWeight(),
    )  # fmt: skip
    assert result.counts.dtype == np.float64
    clean = float(np.mean(np.concatenate([weights[layer.name].ravel() for layer in layers])))
    assert np.all(result.counts[0] == clean)
    expected = []
    for i in range(6):
        draws = draws_for_sample(SEED, i, layers, 1)
        perturbed = [
            weights[layer.name] * np.exp(np.float32(0.3) * layer.to_native(z)[0])
            for layer, z in zip(layers, draws, strict=True)
        ]
        expected.append(float(np.mean(np.concatenate([w.ravel() for w in perturbed]))))
    np.testing.assert_allclose(result.counts[1], expected, rtol=1e-6)
    assert len(set(result.counts[1].tolist())) == 6
    batched = ChunkEvaluator(
        RecordingRunner(positive_weights), crossbar, [0.3], SEED, batch_samples=4,
        metric=MeanWeight(),
    )  # fmt: skip
    assert np.array_equal(batched.evaluate(0, 6, [0])[0], result.counts[1])
    batched.close()
    counts = run_monte_carlo(
        RecordingRunner(positive_weights), crossbar, [0.3], samples=6, seed=SEED, n_data=1, k=1
    )
    assert counts.counts.dtype == np.int64  # the default metric: correct counts
