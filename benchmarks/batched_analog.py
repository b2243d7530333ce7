"""--batch-samples with the analog forward pipeline: agreement with one sample per pass, and cost.

Agreement: for LeNet and the MLP under two pipeline settings it audits the 2,000 shipped test
images at sigma 0 and 0.2 one sample per pass (ONNX Runtime) and with ``--batch-samples 8``
(the vmapped torch twin), and counts the (sample, sigma) cells whose correct counts differ; for
LeNet it also compares one sample's logits (clean weights, read noise of sample 5) element by
element. Cost (``--time``): milliseconds per Monte Carlo sample of LeNet, DAC 8 + ADC 8 + read
noise 0.06, sigma 0.1, ``ChunkEvaluator.evaluate`` after a warm-up, both ways, alternating.

    python benchmarks/batched_analog.py --samples 20 --time
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import ftaudit
from ftaudit.analog import ForwardPipeline
from ftaudit.batched import build_runner
from ftaudit.data import Dataset
from ftaudit.evaluation import prepare_run
from ftaudit.models import load_model
from ftaudit.montecarlo import ChunkEvaluator
from ftaudit.noise import get_noise_model

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {
    "DAC 8 + ADC 8 + read noise 0.06": ForwardPipeline(dac_bits=8, adc_bits=8, read_noise=0.06),
    "DAC 6 + ADC 6, tiles 60x50, column scaling, read noise 0.05, weight read noise 0.03": (
        ForwardPipeline(
            dac_bits=6,
            adc_bits=6,
            read_noise=0.05,
            weight_read_noise=0.03,
            tile_size=(60, 50),
            weight_scaling="column",
        )
    ),
}


def fmnist() -> Dataset:
    with np.load(REPO / "sample_models" / "fmnist_test_2000.npz") as data:
        return Dataset(x=data["x"].astype(np.float32) / 255, y=data["y"], source={})


def differing_cells(name: str, pipeline: ForwardPipeline, data: Dataset, samples: int) -> str:
    options = dict(sigmas=[0.0, 0.2], samples=samples, seed=3, pipeline=pipeline)
    path = REPO / "sample_models" / f"{name}.onnx"
    counts = [
        np.rint(np.stack([r.accuracies for r in report.results]) * len(data.y))
        for report in (
            ftaudit.audit(path, data, **options),
            ftaudit.audit(path, data, batch_samples=8, **options),
        )
    ]
    diff = np.abs(counts[0] - counts[1])
    return f"{int((diff > 0).sum())} of {diff.size} cells differ (largest: {int(diff.max())})"


def logit_agreement(pipeline: ForwardPipeline, data: Dataset) -> str:
    model = load_model(REPO / "sample_models" / "lenet.onnx")
    x = model.input_array(data)
    one, many = (
        build_runner(model, model.layers, device="cpu", batch_samples=s, pipeline=pipeline, x=x)
        for s in (1, 2)
    )
    for runner in (one, many):
        runner.bind_data(x, data.y, batch_size=512)
    weights = model.crossbar_weights()
    one.set_sample(0, 5)
    one.set_weights(weights)
    many.set_samples(0, [5, 5])
    diff = np.abs(one.logits() - many.logits_many([weights, weights])[0])
    return f"logits differing > 1e-4: {(diff > 1e-4).mean():.2%} (largest {diff.max():.3g})"


def ms_per_sample(batch_samples: int, samples: int, data: Dataset) -> float:
    pipeline = ForwardPipeline(dac_bits=8, adc_bits=8, read_noise=0.06)
    model = load_model(REPO / "sample_models" / "lenet.onnx")
    _, runner, crossbar, _ = prepare_run(
        model,
        data,
        layers=None,
        exclude=None,
        noise=get_noise_model("lognormal"),
        batch_size=512,
        device="cpu",
        batch_samples=batch_samples,
        pipeline=pipeline,
    )
    evaluator = ChunkEvaluator(runner, crossbar, [0.1], 0, batch_samples=batch_samples)
    evaluator.evaluate(0, batch_samples, [0])  # warm-up
    start = time.perf_counter()
    evaluator.evaluate(batch_samples, batch_samples + samples, [0])
    evaluator.close()
    return (time.perf_counter() - start) / samples * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--time", action="store_true", help="also time LeNet both ways")
    args = parser.parse_args()
    data = fmnist()
    for label, pipeline in SETTINGS.items():
        for name in ("lenet", "mlp"):
            print(f"{name}, {label}: {differing_cells(name, pipeline, data, args.samples)}")
        print(f"lenet, {label}: {logit_agreement(pipeline, data)}")
    if args.time:
        timed: dict[int, list[float]] = {1: [], 8: []}
        for _ in range(2):
            for batch_samples in timed:
                timed[batch_samples].append(ms_per_sample(batch_samples, 32, data))
        for batch_samples, values in timed.items():
            runs = ", ".join(f"{v:.0f}" for v in values)
            print(
                f"lenet, DAC 8 + ADC 8 + read noise 0.06, batch samples {batch_samples}: {runs} ms"
            )


if __name__ == "__main__":
    main()
