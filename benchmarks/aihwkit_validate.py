"""The analog forward pipeline against IBM aihwkit 1.2.0: same LeNet, matched settings.

Two halves, one per Python (aihwkit is a benchmark dependency only, never a runtime one):

    python benchmarks/aihwkit_validate.py ftaudit --out /tmp/ftaudit_rows.json
    /path/to/aihwkit-venv/bin/python benchmarks/aihwkit_validate.py aihwkit \\
        --ranges /tmp/ftaudit_rows.json --out /tmp/aihwkit_rows.json
    python benchmarks/aihwkit_validate.py table /tmp/ftaudit_rows.json /tmp/aihwkit_rows.json

Both evaluate the sample LeNet on the first ``--images`` shipped test images with lognormal
programming noise (each weight times exp(sigma z)), fresh per Monte Carlo sample, under these
rows: weights only (aihwkit ``forward.is_perfect``); plus DAC and ADC bits (aihwkit ``inp_res``
/ ``out_res`` = 1 / (2**bits - 2), ``out_bound`` = ftaudit's ``--adc-bound``, static per-layer
input ranges = ftaudit's calibrated DAC ranges via aihwkit's ``pre_post.input_range``, noise and
bound management off, weights scaled to max|W| = 1 per layer: ``weight_scaling_omega`` = 1);
plus output noise (aihwkit ``out_noise`` = ftaudit's ``--read-noise``); weight read noise
(aihwkit ``w_noise`` with ``w_noise_type`` ADDITIVE_CONSTANT = ftaudit's
``--weight-read-noise``). ``--rows 5`` runs a subset (row numbers from 0). The random numbers
differ between the two simulators, so the means agree within Monte Carlo error, not exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
ROWS = [
    {"name": "weights only", "sigma": 0.3},
    {"name": "DAC 6 + ADC 6 (bound 12), no programming noise", "sigma": 0.0, "bits": 6},
    {"name": "DAC 6 + ADC 6 (bound 12)", "sigma": 0.3, "bits": 6},
    {
        "name": "DAC 8 + ADC 8 (bound 12) + output noise 0.06",
        "sigma": 0.3,
        "bits": 8,
        "noise": 0.06,
    },
    {"name": "output noise 0.2 only (DAC/ADC 16)", "sigma": 0.0, "bits": 16, "noise": 0.2},
    {
        "name": "weight read noise 0.05 only (DAC/ADC 16)",
        "sigma": 0.0,
        "bits": 16,
        "w_noise": 0.05,
    },
]
ADC_BOUND = 12.0


def load_data(images: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(REPO / "sample_models" / "fmnist_test_2000.npz") as data:
        return data["x"][:images].astype(np.float32) / 255, data["y"][:images]


def run_ftaudit(args: argparse.Namespace) -> None:
    from ftaudit.analog import ForwardPipeline
    from ftaudit.data import Dataset
    from ftaudit.evaluation import audit

    x, y = load_data(args.images)
    dataset = Dataset(x=x, y=y, source={})
    rows, ranges = [], None
    for row in chosen_rows(args):
        pipeline = None
        if "bits" in row:
            pipeline = ForwardPipeline(
                dac_bits=row["bits"],
                adc_bits=row["bits"],
                adc_bound=ADC_BOUND,
                read_noise=row.get("noise", 0.0),
                weight_read_noise=row.get("w_noise", 0.0),
            )
        start = time.perf_counter()
        report = audit(
            REPO / "sample_models" / "lenet.onnx",
            dataset,
            sigmas=[row["sigma"]],
            samples=args.samples,
            seed=args.seed,
            pipeline=pipeline,
        )
        accuracies = report.results[0].accuracies
        if report.analog is not None:
            ranges = report.analog["calibration"]["input_range"]
        rows.append(summary(row, accuracies, time.perf_counter() - start))
    Path(args.out).write_text(json.dumps({"rows": rows, "input_range": ranges}, indent=1))


def chosen_rows(args: argparse.Namespace) -> list[dict]:
    """The rows ``--rows`` names (all by default)."""
    if args.rows is None:
        return ROWS
    return [ROWS[int(i)] for i in args.rows.split(",")]


def summary(row: dict, accuracies, seconds: float) -> dict:
    accuracies = np.asarray(accuracies, dtype=float)
    n = len(accuracies)
    sem = float(accuracies.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return {**row, "mean": float(accuracies.mean()), "sem": sem, "samples": n, "s": seconds}


def run_aihwkit(args: argparse.Namespace) -> None:
    import torch
    from aihwkit.nn.conversion import convert_to_analog
    from aihwkit.simulator.configs import InferenceRPUConfig
    from aihwkit.simulator.parameters.enums import (
        BoundManagementType,
        NoiseManagementType,
        WeightNoiseType,
    )

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from aihwkit_compare import analog_lenet, lenet

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ranges = json.loads(Path(args.ranges).read_text())["input_range"]
    x, y = load_data(args.images)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    rows = []
    for row in chosen_rows(args):
        if "bits" not in row:
            model = analog_lenet(row["sigma"])
        else:
            base = analog_lenet(row["sigma"])  # its noise model, reused below
            config = InferenceRPUConfig()
            config.forward.is_perfect = False
            config.forward.inp_res = 1 / (2 ** row["bits"] - 2)
            config.forward.out_res = 1 / (2 ** row["bits"] - 2)
            config.forward.inp_bound = 1.0
            config.forward.out_bound = ADC_BOUND
            config.forward.out_noise = row.get("noise", 0.0)
            config.forward.w_noise = row.get("w_noise", 0.0)
            config.forward.w_noise_type = WeightNoiseType.ADDITIVE_CONSTANT
            config.forward.inp_noise = 0.0
            config.forward.noise_management = NoiseManagementType.NONE
            config.forward.bound_management = BoundManagementType.NONE
            config.pre_post.input_range.enable = True
            config.pre_post.input_range.learn_input_range = False
            config.pre_post.input_range.init_from_data = 0
            config.mapping.weight_scaling_omega = 1.0
            config.mapping.weight_scaling_columnwise = False
            config.noise_model = next(base.analog_tiles()).rpu_config.noise_model
            config.drift_compensation = None
            net = lenet()
            scripted = torch.jit.load(str(REPO / "sample_models" / "lenet.pt"), map_location="cpu")
            net.load_state_dict(scripted.state_dict())
            model = convert_to_analog(net, config).eval()
            for name, layer in model.named_analog_layers():
                for tile in layer.analog_tiles():
                    tile.set_input_range(float(ranges[f"{name}.weight"]))
        accuracies = []
        start = time.perf_counter()
        for _ in range(args.samples):
            model.program_analog_weights()
            with torch.no_grad():
                correct = sum(
                    int((model(xt[s : s + 250]).argmax(1) == yt[s : s + 250]).sum())
                    for s in range(0, len(xt), 250)
                )
            accuracies.append(correct / len(xt))
        rows.append(summary(row, accuracies, time.perf_counter() - start))
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps({"rows": rows}, indent=1))


def table(args: argparse.Namespace) -> None:
    ours = json.loads(Path(args.ftaudit).read_text())["rows"]
    theirs = json.loads(Path(args.aihwkit).read_text())["rows"]
    print("| setting | sigma | ftaudit mean ± s.e. | aihwkit mean ± s.e. | difference / s.e. |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for a, b in zip(ours, theirs, strict=True):
        combined = math.hypot(a["sem"], b["sem"])
        z = (a["mean"] - b["mean"]) / combined if combined > 0 else float("nan")
        print(
            f"| {a['name']} | {a['sigma']:g} | {100 * a['mean']:.2f} ± {100 * a['sem']:.2f} "
            f"| {100 * b['mean']:.2f} ± {100 * b['sem']:.2f} | {z:+.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="side", required=True)
    for side in ("ftaudit", "aihwkit"):
        p = sub.add_parser(side)
        p.add_argument("--images", type=int, default=500)
        p.add_argument("--samples", type=int, default=30)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", required=True)
        p.add_argument("--rows", default=None, help="comma-separated row numbers (default all)")
        if side == "aihwkit":
            p.add_argument("--ranges", required=True)
            p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("table")
    p.add_argument("ftaudit")
    p.add_argument("aihwkit")
    args = parser.parse_args()
    {"ftaudit": run_ftaudit, "aihwkit": run_aihwkit, "table": table}[args.side](args)


if __name__ == "__main__":
    main()
