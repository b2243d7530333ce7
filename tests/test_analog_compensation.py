"""Global drift compensation with the analog forward pipeline: alpha is a digital gain on each
layer's summed tile outputs after the ADC, before the bias (aihwkit's InferenceTile), so the
ADC and the read noise see the drifted conductances W_t, never alpha * W_t.

Checked against explicit float64 numpy (``analog_reference.reference_gemm``, draws from the
documented keys) and alpha recomputed from its definition (docs/methods.md); without the
pipeline the gains stay folded into the weights (tests/golden keeps those numbers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from analog_reference import one_gemm_model, one_matmul_model, reference_gemm
from conftest import keyed_normals
from test_drift_faults import make_layers  # a conv and a transposed MatMul layer

import ftaudit
from ftaudit.analog import ForwardPipeline
from ftaudit.models.base import CrossbarLayer, ModelRunner
from ftaudit.models.folding import FoldedRunner
from ftaudit.montecarlo import ChunkEvaluator, Crossbar
from ftaudit.noise import get_noise_model
from ftaudit.noise.compensation import CALIBRATION_STREAM, CALIBRATION_VECTORS
from ftaudit.noise.drift import DriftModel
from ftaudit.noise.effects import DeviceEffects

pytest.importorskip("onnxruntime")

SEED = 13
SIGMA = 0.1
YEAR = 365 * 86400.0
#: one year of drift with a nu spread: alpha is about 2 and differs per layer and sample
EFFECTS = DeviceEffects(
    times=(YEAR,), compensations=("none", "global"), drift=DriftModel(20, 0.05, 0.03)
)
#: converters and both kinds of read noise, three row tiles of a 12-input layer
PIPELINE = ForwardPipeline(
    dac_bits=5,
    adc_bits=6,
    read_noise=0.1,
    weight_read_noise=0.05,
    tile_size=(5, 2),
    weight_scaling="column",
)
#: the pipeline on the conftest MLP (64 inputs): row and column tiles, both read noises
PIPELINE_MLP = ForwardPipeline(
    dac_bits=6, adc_bits=6, read_noise=0.05, weight_read_noise=0.03, tile_size=(24, 16)
)


def programmed(layer: CrossbarLayer, clean: np.ndarray, sample: int) -> np.ndarray:
    """W_0 = W exp(sigma z) (lognormal), z from the documented key (seed, (sample, layer))."""
    z = keyed_normals(SEED, (sample, layer.index), layer.canonical_shape).astype(np.float64)
    return clean.astype(np.float64) * np.exp(SIGMA * (z.T if layer.transposed else z))


def alpha(layer: CrossbarLayer, w_0: np.ndarray, w_t: np.ndarray) -> float:
    """sum|W_0 u| / sum|W_t u| over the 64 calibration vectors u of key (0, layer, 0xCA1B)."""
    fan_in = layer.shape[0] if layer.transposed else int(np.prod(layer.shape[1:]))
    u = keyed_normals(SEED, (0, layer.index, CALIBRATION_STREAM), (CALIBRATION_VECTORS, fan_in))
    u = u.astype(np.float64)
    if layer.transposed:  # stored (in, out): the crossbar computes u @ W
        return float(np.abs(u @ w_0).sum() / np.abs(u @ w_t.astype(np.float64)).sum())
    flat = lambda w: w.reshape(w.shape[0], -1)  # noqa: E731
    return float(np.abs(flat(w_0) @ u.T).sum() / np.abs(flat(w_t).astype(np.float64) @ u.T).sum())


class GainRunner(ModelRunner):
    """A fake runner applying digital gains: keeps every weight set and the gains it read."""

    digital_gains = True

    def __init__(self) -> None:
        self.gains: Mapping[str, float] | None = None
        self.calls: list[tuple[dict[str, np.ndarray], dict[str, float] | None]] = []

    def bind_data(self, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> None:
        raise NotImplementedError

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        self.weights = {name: np.array(w, copy=True) for name, w in weights.items()}

    def set_gains(self, gains: Mapping[str, float] | None) -> None:
        self.gains = gains

    def logits(self) -> np.ndarray:
        raise NotImplementedError

    def count_correct(self) -> int:
        self.calls.append((self.weights, None if self.gains is None else dict(self.gains)))
        return 0


@pytest.mark.parametrize("batch_samples", [1, 3])
def test_engine_feeds_the_drifted_weights_and_alpha_as_gains(batch_samples: int) -> None:
    """A runner with digital gains gets W_t on both rows and, on the compensated one, alpha per
    layer (one weight set per pass, and staged sets alike); the row without gets none."""
    layers, weights = make_layers()
    crossbar = Crossbar.prepare(layers, weights, get_noise_model("lognormal"))
    runner = GainRunner()
    evaluator = ChunkEvaluator(
        runner, crossbar, [SIGMA], SEED, EFFECTS, batch_samples=batch_samples
    )
    evaluator.evaluate(0, 2, [0, 1])
    assert len(runner.calls) == 4 and runner.gains is None  # reset after the chunk
    for sample in range(2):
        (drifted, none_gains), (compensated, gains) = runner.calls[2 * sample : 2 * sample + 2]
        assert none_gains is None and gains is not None
        for layer in layers:
            np.testing.assert_array_equal(compensated[layer.name], drifted[layer.name])
            w_0 = programmed(layer, weights[layer.name], sample)
            want = alpha(layer, w_0, drifted[layer.name])
            assert 1.2 < want < 2.5
            assert gains[layer.name] == pytest.approx(want, rel=1e-5)


def test_a_runner_without_digital_gains_refuses_them() -> None:
    class Plain(GainRunner):
        digital_gains = False
        set_gains = ModelRunner.set_gains

    with pytest.raises(NotImplementedError):
        Plain().set_gains({"fc": 2.0})
    Plain().set_gains(None)  # every gain 1: nothing to apply


class Recording(FoldedRunner):
    """The runner as the engine drives it (scales {}: nothing unfolded), remembering the last
    weights and gains it was given."""

    def __init__(self, inner: ModelRunner) -> None:
        super().__init__(inner, {})
        self.weights: dict[str, np.ndarray] = {}
        self.gains: dict[str, float] | None = None

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        self.weights = {name: np.array(w, copy=True) for name, w in weights.items()}
        super().set_weights(weights)

    def set_gains(self, gains: Mapping[str, float] | None) -> None:
        self.gains = None if gains is None else dict(gains)
        super().set_gains(gains)


class RecordLogits:
    """A metric keeping each evaluation's logits with the weights and gains behind them."""

    dtype = np.float64

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, np.ndarray], dict[str, float] | None, np.ndarray]] = []

    def one(self, runner: Recording) -> float:
        self.seen.append((runner.weights, runner.gains, runner.logits().astype(np.float64)))
        return 0.0

    def many(self, runner: Any, weight_sets: Sequence[Any]) -> list[float]:
        raise AssertionError("one weight set per pass here")


def layer_model(tmp_path: Path, build: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """A one-layer model (Gemm with its bias, or MatMul then Add), its clean (out, in) weight,
    its bias and 40 inputs."""
    from ftaudit.models import load_model

    rng = np.random.default_rng(0)
    clean = rng.normal(size=(5, 12)).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    x = rng.normal(size=(40, 12)).astype(np.float32)
    return load_model(build(tmp_path / "layer.onnx", clean, bias)), clean, bias, x


@pytest.mark.parametrize("build", [one_gemm_model, one_matmul_model], ids=["gemm", "matmul"])
def test_compensated_row_is_alpha_times_the_drifted_read_plus_the_bias(tmp_path, build):
    """ONNX runner, one layer, DAC + tiles + read noise + ADC: the compensated row's logits
    are alpha * (pipeline of W_t) + b, not the pipeline of alpha * W_t; the row without
    compensation is the pipeline of the same W_t."""
    from ftaudit.analog.onnx_graph import gain_input
    from ftaudit.analog.runner import analog_runner

    model, clean, bias, x = layer_model(tmp_path, build)
    (layer,) = model.layers
    inner, _ = analog_runner(model, model.layers, x, pipeline=PIPELINE, seed=SEED, device="cpu")
    assert inner.digital_gains
    assert gain_input(layer.index) in {i.name for i in inner.session.get_inputs()}
    runner = Recording(inner)
    runner.bind_data(x, np.zeros(len(x), np.int64), batch_size=16)  # 3 batches, one short
    noise = get_noise_model("lognormal")
    crossbar = Crossbar.prepare(model.layers, model.crossbar_weights(), noise)
    metric = RecordLogits()
    ChunkEvaluator(runner, crossbar, [SIGMA], SEED, EFFECTS, metric=metric).evaluate(0, 2, [0, 1])
    canonical = (lambda w: w.T) if layer.transposed else (lambda w: w)
    for sample in range(2):
        (w_none, g_none, got_none), (w_comp, gains, got) = metric.seen[2 * sample : 2 * sample + 2]
        assert g_none is None and gains is not None
        w_t = w_none[layer.name]
        np.testing.assert_array_equal(w_comp[layer.name], w_t)  # the drifted conductances
        w_0 = programmed(layer, clean.T if layer.transposed else clean, sample)
        a = alpha(layer, w_0, w_t)
        assert gains[layer.name] == pytest.approx(a, rel=1e-5)
        options = dict(seed=SEED, sample=sample)
        plain = reference_gemm(x, clean, canonical(w_t), bias, PIPELINE, **options)
        want = reference_gemm(x, clean, canonical(w_t), bias, PIPELINE, gain=a, **options)
        folded = reference_gemm(x, clean, a * canonical(w_t), bias, PIPELINE, **options)
        # float32 sums may land on the other side of a rounding edge for a rare element
        assert np.isclose(got_none, plain, rtol=1e-4, atol=1e-4).mean() > 0.99
        assert np.isclose(got, want, rtol=1e-4, atol=1e-4).mean() > 0.99
        assert np.isclose(got, folded, rtol=1e-4, atol=1e-4).mean() < 0.5  # the old numbers


def test_a_dac_alone_keeps_alpha_in_the_weights(tmp_path):
    """Without a per-tile read (no ADC, no read noise) the product after the DAC is linear:
    alpha * W_t gives alpha (W_t x_q), and the graph takes no gain input."""
    from ftaudit.analog.runner import analog_runner

    model, _, _, x = layer_model(tmp_path, one_gemm_model)
    runner, _ = analog_runner(
        model, model.layers, x, pipeline=ForwardPipeline(dac_bits=4), seed=SEED, device="cpu"
    )
    assert not runner.digital_gains
    assert not [i.name for i in runner.session.get_inputs() if i.name.startswith("ftaudit_gain")]


@pytest.mark.torch
@pytest.mark.parametrize("build", [one_gemm_model, one_matmul_model], ids=["gemm", "matmul"])
def test_batched_gain_sets_match_the_numpy_pipeline(tmp_path, build):
    """--batch-samples: each stacked weight set reads its own gains (set_gain_sets) after
    its ADC, before the bias; one set per pass (set_gains) reads the same."""
    pytest.importorskip("onnx2torch")
    from ftaudit.batched import BatchedTorchRunner, build_runner

    model, clean, bias, x = layer_model(tmp_path, build)
    stored = (lambda w: np.ascontiguousarray(w.T)) if model.layers[0].transposed else (lambda w: w)
    runner = build_runner(
        model, model.layers, device="cpu", batch_samples=3, pipeline=PIPELINE, x=x, seed=4
    )
    assert isinstance(runner, BatchedTorchRunner) and runner.digital_gains
    runner.bind_data(x, np.zeros(len(x), np.int64), batch_size=16)
    drifted = clean * np.float32(0.6)
    runner.set_samples(4, [3, 7, 7])
    runner.set_gain_sets([{"w": 1.7}, None, {"w": 0.8}])
    got = runner.logits_many([{"w": stored(drifted)}] * 3)
    for k, (sample, gain) in enumerate(((3, 1.7), (7, 1.0), (7, 0.8))):
        want = reference_gemm(x, clean, drifted, bias, PIPELINE, seed=4, sample=sample, gain=gain)
        assert np.isclose(got[k], want, rtol=1e-4, atol=1e-4).mean() > 0.99
    runner.set_sample(4, 3)
    runner.set_gains({"w": 1.7})
    runner.set_weights({"w": stored(drifted)})
    np.testing.assert_allclose(runner.logits(), got[0], rtol=1e-5, atol=1e-5)
    runner.set_gains(None)
    runner.set_sample(4, 7)
    np.testing.assert_allclose(runner.logits(), got[1], rtol=1e-5, atol=1e-5)


def counts(report: Any, n: int) -> np.ndarray:
    return np.rint(np.stack([r.accuracies for r in report.results]) * n)


DRIFT = dict(sigmas=[0.1], times=[YEAR], compensation="both", drift_nu_std=0.03, seed=2)


@pytest.mark.torch
def test_compensated_pipeline_rows_batched_equal_one_sample_per_pass(mlp_onnx, blobs_npz):
    pytest.importorskip("onnx2torch")
    options = dict(samples=5, pipeline=PIPELINE_MLP, **DRIFT)
    one = ftaudit.audit(mlp_onnx, blobs_npz, **options)
    batched = ftaudit.audit(mlp_onnx, blobs_npz, batch_samples=3, **options)
    assert [r.compensation for r in one.results] == ["none", "global"]
    assert "batch_fallback" not in batched.options["execution"]
    # torch and ONNX Runtime sum in other orders: a rare exact tie may round the other way
    diff = np.abs(counts(batched, 400) - counts(one, 400))
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.2


def test_compensated_pipeline_rows_on_workers_equal_one_process(mlp_onnx, blobs_npz):
    options = dict(samples=4, pipeline=PIPELINE_MLP, **DRIFT)
    here = ftaudit.audit(mlp_onnx, blobs_npz, **options)
    spread = ftaudit.audit(mlp_onnx, blobs_npz, workers=2, **options)
    assert spread.options["execution"]["workers"] == 2
    for a, b in zip(here.results, spread.results, strict=True):
        np.testing.assert_array_equal(a.accuracies, b.accuracies)
