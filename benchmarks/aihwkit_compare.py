"""The sample LeNet under IBM aihwkit's inference simulator: cost per Monte Carlo sample.

Run with a Python that has aihwkit 1.2.0 and torch (a benchmark dependency only, never a runtime
one; build steps in docs/benchmarks.md). It rebuilds the sample LeNet as an nn.Module, loads the
weights of ``sample_models/lenet.pt``, converts every Conv/Linear to aihwkit's analog layers with
an ideal forward pass (``forward.is_perfect``: no DAC/ADC, no read noise) and a programming-noise
model that multiplies each conductance by exp(sigma z) (ftaudit's ``lognormal``; with a single
differential pair per weight, one device carries each weight, so it is the same weight noise).
Each Monte Carlo sample reprograms the analog weights and runs the 2,000 shipped test images.
Prints one JSON line: milliseconds per sample, mean accuracy and its standard error.

    /path/to/aihwkit-venv/bin/python benchmarks/aihwkit_compare.py --samples 50
"""

from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent


def lenet() -> nn.Module:
    """The sample LeNet's architecture (sample_models/build.py), module names included."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 6, 5),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(6, 16, 5),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(16 * 4 * 4, 120),
            relu3=nn.ReLU(),
            fc2=nn.Linear(120, 84),
            relu4=nn.ReLU(),
            fc3=nn.Linear(84, 10),
        )
    )


def analog_lenet(sigma: float):
    from aihwkit.inference.noise.base import BaseNoiseModel
    from aihwkit.nn.conversion import convert_to_analog
    from aihwkit.simulator.configs import InferenceRPUConfig

    class LognormalProgramming(BaseNoiseModel):
        """g_prog = g_target * exp(sigma z); no drift."""

        def __init__(self, scale: float) -> None:
            super().__init__()
            self.scale = scale

        def apply_programming_noise_to_conductance(self, g_target):
            return g_target * torch.exp(self.scale * torch.randn_like(g_target))

        def generate_drift_coefficients(self, g_target):
            return None

        def apply_drift_noise_to_conductance(self, g_prog, drift_noise_param, t_inference):
            return g_prog

    model = lenet()
    scripted = torch.jit.load(str(REPO / "sample_models" / "lenet.pt"), map_location="cpu")
    model.load_state_dict(scripted.state_dict())
    config = InferenceRPUConfig()
    config.forward.is_perfect = True
    config.noise_model = LognormalProgramming(sigma)
    config.drift_compensation = None
    return convert_to_analog(model, config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--sigma", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = np.load(REPO / "sample_models" / "fmnist_test_2000.npz")
    x = torch.from_numpy(data["x"].astype(np.float32).reshape(-1, 1, 28, 28) / 255.0)
    y = torch.from_numpy(data["y"].astype(np.int64))
    model = analog_lenet(args.sigma)
    batches = [(x[s : s + 512], y[s : s + 512]) for s in range(0, len(x), 512)]

    def one_sample() -> float:
        model.program_analog_weights()
        correct = 0
        with torch.no_grad():
            for xb, yb in batches:
                correct += int((model(xb).argmax(1) == yb).sum())
        return correct / len(x)

    one_sample()  # warm-up
    accuracies = []
    start = time.perf_counter()
    for _ in range(args.samples):
        accuracies.append(one_sample())
    seconds = (time.perf_counter() - start) / args.samples
    result = {
        "ms_per_sample": seconds * 1e3,
        "mean_accuracy": float(np.mean(accuracies)),
        "standard_error": float(np.std(accuracies, ddof=1) / np.sqrt(len(accuracies))),
        "samples": args.samples,
        "sigma": args.sigma,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
