"""Cost per Monte Carlo sample with the analog forward pipeline, against weights-only.

For each sample model and pipeline setting it builds the runner ``ftaudit eval`` uses, binds the
2,000 shipped test images and times ``ChunkEvaluator.evaluate`` (draws, perturbation, forward
passes, read noise) over ``--samples`` samples at one sigma, after one warm-up sample, in
``--rounds`` rounds that time every setting once each (the VM's speed drifts between minutes;
settings timed side by side share it). Prints a markdown table: milliseconds per sample
(median over the rounds), and the ratio to the weights-only row of the model, paired per round
(median and interquartile range). A second table gives the read-noise row's draws alone: standard
normals per sample and their cost on one core.

    python benchmarks/analog_cost.py --samples 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from ftaudit.analog import ForwardPipeline
from ftaudit.analog.read_noise import read_noise
from ftaudit.analog.runner import analog_runner
from ftaudit.models import load_model
from ftaudit.montecarlo import ChunkEvaluator, Crossbar
from ftaudit.noise import get_noise_model

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {
    "weights only": None,
    "DAC 8 + ADC 8": ForwardPipeline(dac_bits=8, adc_bits=8),
    "DAC 8 + ADC 8, tiles 64x64": ForwardPipeline(dac_bits=8, adc_bits=8, tile_size=(64, 64)),
    "DAC 8 + ADC 8 + read noise 0.06": ForwardPipeline(dac_bits=8, adc_bits=8, read_noise=0.06),
    "DAC 8 + ADC 8 + weight read noise 0.02": ForwardPipeline(
        dac_bits=8, adc_bits=8, weight_read_noise=0.02
    ),
}


def sample_timer(model_name: str, pipeline: ForwardPipeline | None, noise_name: str):
    """The Monte Carlo set up once for one setting; the returned function times ``n`` samples
    (the next ones: every call draws new samples) and gives milliseconds per sample."""
    model = load_model(REPO / "sample_models" / model_name)
    with np.load(REPO / "sample_models" / "fmnist_test_2000.npz") as data:
        x = model.fit_input(data["x"].astype(np.float32) / 255)
        y = data["y"]
    selected = model.select_layers()
    if pipeline is None:
        runner = model.runner(selected, device="cpu")
    else:
        runner, _ = analog_runner(model, selected, x, pipeline=pipeline, seed=0, device="cpu")
    runner.bind_data(x, y, batch_size=512)
    name, _, pair = noise_name.partition(",")
    noise = get_noise_model(name, differential=pair == "differential")
    crossbar = Crossbar.prepare(selected, model.clean_weights(), noise)
    evaluator = ChunkEvaluator(runner, crossbar, [0.1], seed=0)
    evaluator.evaluate(0, 1, [0])  # warm-up
    done = [1]

    def timed(n: int) -> float:
        time.sleep(0.05)  # the previous setting's threads idle
        start = time.perf_counter()
        evaluator.evaluate(done[0], done[0] + n, [0])
        done[0] += n
        return (time.perf_counter() - start) / n * 1e3

    return timed


def read_noise_draws(model_name: str, repeats: int = 5) -> tuple[int, float]:
    """(standard normals per Monte Carlo sample, milliseconds to draw them on one core, the
    median of ``repeats``) for the read-noise row: the keyed draws alone, as the runner makes
    them (``ftaudit.analog.read_noise``), without the forward pass."""
    model = load_model(REPO / "sample_models" / model_name)
    with np.load(REPO / "sample_models" / "fmnist_test_2000.npz") as data:
        x = model.fit_input(data["x"].astype(np.float32) / 255)
    selected = model.select_layers()
    runner, _ = analog_runner(
        model, selected, x, pipeline=SETTINGS["DAC 8 + ADC 8 + read noise 0.06"], seed=0,
        device="cpu",
    )  # fmt: skip
    streams = [(layer, tile, runner.tile_shapes[(layer, tile)]) for _, layer, tile, _ in
               runner.noise_inputs]  # fmt: skip
    count = sum(int(np.prod(shape)) for *_, shape in streams) * len(x)
    times = []
    for sample in range(repeats):
        start = time.perf_counter()
        for layer, tile, shape in streams:
            for first in range(0, len(x), 512):
                read_noise(0, sample, layer, tile, first, min(first + 512, len(x)), shape)
        times.append((time.perf_counter() - start) * 1e3)
    return count, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds (median)")
    parser.add_argument("--models", default="lenet.onnx,mlp.onnx")
    parser.add_argument(
        "--noise", default="lognormal", help="e.g. 'rram' (add ',differential' for pairs)"
    )
    args = parser.parse_args()
    print("| model | setting | ms / sample | vs weights only, paired (IQR) |")
    print("| --- | --- | ---: | ---: |")
    per_round = max(1, args.samples // args.rounds)
    for model_name in args.models.split(","):
        timers = {label: sample_timer(model_name, p, args.noise) for label, p in SETTINGS.items()}
        times: dict[str, list[float]] = {label: [] for label in timers}
        for _ in range(args.rounds):  # every setting once per round: neighbours share the speed
            for label, timed in timers.items():
                times[label].append(timed(per_round))
        base = times["weights only"]
        for label, values in times.items():
            ratios = [v / b for v, b in zip(values, base, strict=True)]
            q1, median, q3 = np.percentile(ratios, [25, 50, 75])
            print(
                f"| {model_name} | {label} | {statistics.median(values):.1f} "
                f"| {median:.2f}x ({q1:.2f}-{q3:.2f}) |",
                flush=True,
            )
    print("\n| model | read-noise normals per sample | ms on one core | ns per normal |")
    print("| --- | ---: | ---: | ---: |")
    for model_name in args.models.split(","):
        count, ms = read_noise_draws(model_name)
        print(f"| {model_name} | {count:,} | {ms:.1f} | {ms * 1e6 / count:.2f} |", flush=True)


if __name__ == "__main__":
    main()
