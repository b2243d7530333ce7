"""The analog forward pipeline against IBM aihwkit 1.2.0: same LeNet, matched settings.

One run does everything and, with ``--write``, puts the table in docs/analog.md (aihwkit is a
benchmark dependency only, never a runtime one, so its half runs in aihwkit's own Python):

    python benchmarks/aihwkit_validate.py run --aihwkit-python /path/to/aihwkit-venv/bin/python \
        --samples 1500 --write

The halves also run alone (``ftaudit``, ``aihwkit --ftaudit ROWS.json``, ``table``), and a
deterministic check (``probe-aihwkit``, ``probe-ftaudit``, run first by ``run``): aihwkit
programs one draw per programming-noise row, records its base draws z, and ftaudit replays the
same z; the accuracies must be identical.

Both evaluate the sample LeNet on the first ``--images`` shipped test images with lognormal
programming noise (each weight times exp(sigma z)), fresh per Monte Carlo sample, under these
rows: weights only (aihwkit ``forward.is_perfect``); plus DAC and ADC bits (aihwkit ``inp_res``
/ ``out_res`` = 1 / (2**bits - 2), ``out_bound`` = ftaudit's ``--adc-bound``, static per-layer
input ranges = ftaudit's calibrated DAC ranges via aihwkit's ``pre_post.input_range``, noise and
bound management off, weights scaled to max|W| = 1 per layer: ``weight_scaling_omega`` = 1);
plus output noise (aihwkit ``out_noise`` = ftaudit's ``--read-noise``); weight read noise
(aihwkit ``w_noise`` with ``w_noise_type`` ADDITIVE_CONSTANT = ftaudit's
``--weight-read-noise``, PCM_READ = ``--weight-read-noise-type pcm``, alone and on top of
programming noise, which it reads through). ``--rows 5`` runs a subset (row numbers from 0).
Row n runs with seed ``--seed + n`` on both sides, so the rows' Monte Carlo errors are
independent (with one seed, ftaudit's common random numbers would give its programming-noise
rows the same draws, and one lucky set of draws would move them all together). The random
numbers differ between the two simulators, so the means agree within Monte Carlo error, not
exactly.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- aihwkit-validate:begin -->", "<!-- aihwkit-validate:end -->"
#: ``max_samples``: a row without programming noise needs fewer samples (2 if nothing is random)
ROWS = [
    {"name": "weights only", "sigma": 0.3},
    {
        "name": "DAC 6 + ADC 6 (bound 12), no programming noise",
        "sigma": 0.0,
        "bits": 6,
        "max_samples": 2,
    },
    {"name": "DAC 6 + ADC 6 (bound 12)", "sigma": 0.3, "bits": 6},
    {
        "name": "DAC 8 + ADC 8 (bound 12) + output noise 0.06",
        "sigma": 0.3,
        "bits": 8,
        "noise": 0.06,
    },
    {
        "name": "output noise 0.2 only (DAC/ADC 16)",
        "sigma": 0.0,
        "bits": 16,
        "noise": 0.2,
        "max_samples": 300,
    },
    {
        "name": "weight read noise 0.05 only (DAC/ADC 16)",
        "sigma": 0.0,
        "bits": 16,
        "w_noise": 0.05,
        "max_samples": 300,
    },
    {
        "name": "differential pairs: Gaussian 0.03 w_max on G+ and G-, clamped at 0",
        "sigma": 0.03,
        "pairs": "gaussian",
    },
    {
        "name": "PCM weight read noise 0.15 only (DAC/ADC 16)",
        "sigma": 0.0,
        "bits": 16,
        "w_noise": 0.15,
        "w_noise_type": "pcm",
        "max_samples": 300,
    },
    {
        "name": "PCM weight read noise 0.15 + programming noise (DAC/ADC 16)",
        "sigma": 0.3,
        "bits": 16,
        "w_noise": 0.15,
        "w_noise_type": "pcm",
        # aihwkit's CPU PCM_READ loops over |W| x^2 per vector: about 2.5 s a sample here
        "max_samples": 500,
    },
]
ADC_BOUND = 12.0


def load_data(images: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(REPO / "sample_models" / "fmnist_test_2000.npz") as data:
        return data["x"][:images].astype(np.float32) / 255, data["y"][:images]


def chosen_rows(args: argparse.Namespace) -> list[tuple[int, dict]]:
    """(row number, row) for the rows ``--rows`` names (all by default)."""
    numbers = range(len(ROWS)) if args.rows is None else [int(i) for i in args.rows.split(",")]
    return [(n, ROWS[n]) for n in numbers]


def samples_for(row: dict, samples: int) -> int:
    return min(samples, row.get("max_samples", samples))


def normal_generator() -> str:
    """The standard-normal generator ``audit`` draws with: its ``rng`` default, or numpy's
    ziggurat where ``audit`` has no ``rng`` (asked of ``audit`` itself: an editable install
    can supply a module the running checkout does not use)."""
    import inspect

    from ftaudit.evaluation import audit

    rng = inspect.signature(audit).parameters.get("rng")
    return "ziggurat" if rng is None else str(rng.default)


def run_ftaudit(args: argparse.Namespace) -> None:
    import ftaudit
    from ftaudit.data import Dataset
    from ftaudit.evaluation import audit

    x, y = load_data(args.images)
    dataset = Dataset(x=x, y=y, source={})
    rows = []
    for number, row in chosen_rows(args):
        start = time.perf_counter()
        report = audit(
            REPO / "sample_models" / "lenet.onnx",
            dataset,
            sigmas=[row["sigma"]],
            samples=samples_for(row, args.samples),
            seed=args.seed + number,
            pipeline=pipeline_for(row),
            **noise_for(row),
        )
        ranges = None if report.analog is None else report.analog["calibration"]["input_range"]
        rows.append(
            {
                **summary(row, report.results[0].accuracies, time.perf_counter() - start),
                "number": number,
                "seed": args.seed + number,
                "input_range": ranges,
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "input_range"}), flush=True)
    about = {"version": ftaudit.__version__, "generator": normal_generator(), "images": args.images}
    Path(args.out).write_text(json.dumps({"about": about, "rows": rows}, indent=1))


def pipeline_for(row: dict):
    """ftaudit's forward pipeline for ``row`` (None: weights only)."""
    from ftaudit.analog import ForwardPipeline

    if "bits" not in row:
        return None
    return ForwardPipeline(
        dac_bits=row["bits"],
        adc_bits=row["bits"],
        adc_bound=ADC_BOUND,
        read_noise=row.get("noise", 0.0),
        weight_read_noise=row.get("w_noise", 0.0),
        weight_read_noise_type=row.get("w_noise_type", "additive"),
    )


def noise_for(row: dict) -> dict:
    """ftaudit's programming-noise options for ``row`` (lognormal on one device by default)."""
    if row.get("pairs") == "gaussian":
        return {"noise": "gaussian", "differential": True, "clamp": True}
    return {"noise": "lognormal"}


def summary(row: dict, accuracies, seconds: float) -> dict:
    accuracies = np.asarray(accuracies, dtype=float)
    n = len(accuracies)
    sem = float(accuracies.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return {**row, "mean": float(accuracies.mean()), "sem": sem, "samples": n, "s": seconds}


def ftaudit_rows(path: str) -> dict[int, dict]:
    """The ftaudit half's rows by number: their seeds and calibrated DAC ranges."""
    return {row["number"]: row for row in json.loads(Path(path).read_text())["rows"]}


def aihwkit_model(row: dict, ranges: dict | None):
    """The sample LeNet under aihwkit with ``row``'s settings (``ranges``: ftaudit's DAC ranges).

    Its tiles keep the clean weights as their reference; ``program_analog_weights`` draws the
    programming noise afresh from that reference each time (``probe_aihwkit`` checks it).
    """
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

    if "pairs" in row:
        model = analog_lenet(row["sigma"])
        for tile in model.analog_tiles():
            tile.rpu_config.noise_model = gaussian_pairs(row["sigma"])
        return model
    if "bits" not in row:
        return analog_lenet(row["sigma"])
    base = analog_lenet(row["sigma"])  # its noise model, reused below
    config = InferenceRPUConfig()
    config.forward.is_perfect = False
    config.forward.inp_res = 1 / (2 ** row["bits"] - 2)
    config.forward.out_res = 1 / (2 ** row["bits"] - 2)
    config.forward.inp_bound = 1.0
    config.forward.out_bound = ADC_BOUND
    config.forward.out_noise = row.get("noise", 0.0)
    config.forward.w_noise = row.get("w_noise", 0.0)
    config.forward.w_noise_type = (
        WeightNoiseType.PCM_READ
        if row.get("w_noise_type") == "pcm"
        else WeightNoiseType.ADDITIVE_CONSTANT
    )
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
    return model


def gaussian_pairs(sigma: float):
    """aihwkit's single-pair converter (G+ for w > 0, G- for w < 0, the other at g_min = 0,
    max|W| at g_max) with g_prog = max(g_target + sigma g_max z, 0) on both devices: ftaudit's
    ``--noise gaussian --differential --clamp``."""
    import torch
    from aihwkit.inference.noise.base import BaseNoiseModel

    class GaussianPairs(BaseNoiseModel):
        def apply_programming_noise_to_conductance(self, g_target):
            noise = sigma * self.g_converter.g_max * torch.randn_like(g_target)
            return (g_target + noise).clamp(min=0.0)

        def generate_drift_coefficients(self, g_target):
            return None

        def apply_drift_noise_to_conductance(self, g_prog, drift_noise_param, t_inference):
            return g_prog

    return GaussianPairs()


def programmed(row: dict, clean, positive, negative):
    """The weights ``row``'s noise programs from the base draws of G+ and G- (weight units)."""
    import torch

    if "pairs" in row:
        scale = row["sigma"] * clean.abs().max()
        return (clean.clamp(min=0) + scale * positive).clamp(min=0) - (
            (-clean).clamp(min=0) + scale * negative
        ).clamp(min=0)
    return clean * torch.exp(row["sigma"] * torch.where(clean < 0, negative, positive))


def run_aihwkit(args: argparse.Namespace) -> None:
    import aihwkit
    import torch

    torch.set_num_threads(args.threads)
    ours = ftaudit_rows(args.ftaudit)
    x, y = load_data(args.images)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    rows = []
    for number, row in chosen_rows(args):
        torch.manual_seed(ours[number]["seed"])
        model = aihwkit_model(row, ours[number]["input_range"])
        accuracies = []
        start = time.perf_counter()
        for _ in range(samples_for(row, args.samples)):
            model.program_analog_weights()
            with torch.no_grad():
                correct = sum(
                    int((model(xt[s : s + 250]).argmax(1) == yt[s : s + 250]).sum())
                    for s in range(0, len(xt), 250)
                )
            accuracies.append(correct / len(xt))
        rows.append({**summary(row, accuracies, time.perf_counter() - start), "number": number})
        print(json.dumps(rows[-1]), flush=True)
    about = {"version": aihwkit.__version__, "torch": torch.__version__}
    Path(args.out).write_text(json.dumps({"about": about, "rows": rows}, indent=1))


def recording(programme, recorded: list):
    """``programme`` (a noise model's per-device programming) drawing its z through
    ``torch.randn_like`` as usual, each z appended to ``recorded``."""
    import torch

    def wrapped(g_target):
        draw = torch.randn_like

        def keep(like):
            z = draw(like)
            recorded.append(z)
            return z

        torch.randn_like = keep
        try:
            return programme(g_target)
        finally:
            torch.randn_like = draw

    return wrapped


def probe_aihwkit(args: argparse.Namespace) -> None:
    """One programming-noise draw per row, recorded: its base draws z (per weight, the z of the
    device that carries it) and aihwkit's predictions with it; rows with read noise skipped.
    Checks on the way that each tile then holds exactly its clean weights times exp(sigma z)."""
    import torch

    torch.set_num_threads(args.threads)
    ours = ftaudit_rows(args.ftaudit)
    x, _ = load_data(args.images)
    saved: dict[str, np.ndarray] = {}
    for number, row in chosen_rows(args):
        if row.get("noise") or row.get("w_noise") or row["sigma"] == 0:
            continue
        torch.manual_seed(ours[number]["seed"])
        model = aihwkit_model(row, ours[number]["input_range"])
        recorded: list = []
        for tile in model.analog_tiles():  # each tile holds its own copy of the noise model
            noise_model = tile.rpu_config.noise_model
            noise_model.apply_programming_noise_to_conductance = recording(
                noise_model.apply_programming_noise_to_conductance, recorded
            )
        layers = list(model.named_analog_layers())
        clean = [next(layer.analog_tiles()).get_weights()[0] for _, layer in layers]
        model.program_analog_weights()
        for i, (name, layer) in enumerate(layers):
            positive, negative = recorded[2 * i], recorded[2 * i + 1]  # G+ and G- of each pair
            expected = programmed(row, clean[i], positive, negative)
            weights = next(layer.analog_tiles()).get_weights()[0]
            error = float((weights - expected).abs().max() / clean[i].abs().max())
            if error > 1e-5:
                raise SystemExit(f"row {number} {name}: programmed weights off by {error:g}")
            saved[f"plus{number}_{name}.weight"] = positive.numpy()
            saved[f"minus{number}_{name}.weight"] = negative.numpy()
            saved[f"negative{number}_{name}.weight"] = (clean[i] < 0).numpy()
        with torch.no_grad():
            saved[f"predicted{number}"] = model(torch.from_numpy(x)).argmax(1).numpy()
    np.savez(args.out, **saved)


def probe_ftaudit(args: argparse.Namespace) -> None:
    """Replay aihwkit's recorded draws through ftaudit's Monte Carlo, one sample per row, and
    check the accuracies are identical (exit 1 if not)."""
    import ftaudit.montecarlo as montecarlo
    from ftaudit.data import Dataset
    from ftaudit.evaluation import audit

    recorded = np.load(args.probe)
    ours = ftaudit_rows(args.ftaudit)
    x, y = load_data(args.images)
    current: dict[str, int] = {}

    def replay(seed, sample, layers, *rest, **options):
        """Each layer's base draws: the own device's z (G+ for w >= 0, G- for w < 0), then
        the other device's for a differential pair."""
        draws = []
        for layer in layers:
            key = f"{current['row']}_{layer.name}"
            plus, minus = recorded[f"plus{key}"], recorded[f"minus{key}"]
            negative = recorded[f"negative{key}"]
            own, other = np.where(negative, minus, plus), np.where(negative, plus, minus)
            chosen = [own, other] if "pairs" in ROWS[current["row"]] else [own]
            draws.append(np.stack([z.reshape(layer.canonical_shape) for z in chosen]))
        return draws

    montecarlo.draws_for_sample = replay
    lines, failed = [], False
    for number, row in chosen_rows(args):
        if f"predicted{number}" not in recorded:
            continue
        current["row"] = number
        report = audit(
            REPO / "sample_models" / "lenet.onnx",
            Dataset(x=x, y=y, source={}),
            sigmas=[row["sigma"]],
            samples=1,
            seed=ours[number]["seed"],
            pipeline=pipeline_for(row),
            **noise_for(row),
        )
        if report.analog is not None:  # the ranges aihwkit was given
            assert report.analog["calibration"]["input_range"] == ours[number]["input_range"]
        mine = float(report.results[0].accuracies[0])
        theirs = float((recorded[f"predicted{number}"] == y).mean())
        failed |= round(mine * len(y)) != round(theirs * len(y))
        lines.append(f"row {number} ({row['name']}): ftaudit {mine:.4f}, aihwkit {theirs:.4f}")
    print("\n".join(lines))
    if failed:
        raise SystemExit("the same programming-noise draws give different accuracies")


def table_lines(ftaudit_path: str, aihwkit_path: str, caption: str = "") -> list[str]:
    ours = json.loads(Path(ftaudit_path).read_text())
    theirs = json.loads(Path(aihwkit_path).read_text())
    lines = [BEGIN, caption, ""] if caption else [BEGIN]
    lines += [
        "| setting | sigma | samples | ftaudit mean ± s.e. | aihwkit mean ± s.e. "
        "| difference ± s.e. | difference / s.e. |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for a, b in zip(ours["rows"], theirs["rows"], strict=True):
        combined = math.hypot(a["sem"], b["sem"])
        difference = a["mean"] - b["mean"]
        z = f"{difference / combined:+.2f}" if combined > 0 else "exact" if difference == 0 else "-"
        samples = (
            f"{a['samples']}" if a["samples"] == b["samples"] else f"{a['samples']}/{b['samples']}"
        )
        lines.append(
            f"| {a['name']} | {a['sigma']:g} | {samples} "
            f"| {100 * a['mean']:.2f} ± {100 * a['sem']:.2f} "
            f"| {100 * b['mean']:.2f} ± {100 * b['sem']:.2f} "
            f"| {100 * difference:+.2f} ± {100 * combined:.2f} | {z} |"
        )
    lines.append(END)
    return lines


def table(args: argparse.Namespace) -> None:
    print("\n".join(table_lines(args.ftaudit, args.aihwkit)))


def write_block(lines: list[str]) -> None:
    """Put the table between its markers in docs/analog.md."""
    path = REPO / "docs" / "analog.md"
    text = path.read_text()
    if BEGIN not in text:
        raise SystemExit(f"{path} lacks the {BEGIN} marker")
    head, rest = text.split(BEGIN, 1)
    path.write_text(head + "\n".join(lines) + rest.split(END, 1)[1])


def cpu_name() -> str:
    """The processor's model name (Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def run_all(args: argparse.Namespace) -> None:
    """Both halves, the deterministic probe first, then the table (``--write``: into the docs)."""
    folder = Path(args.folder or tempfile.mkdtemp(prefix="aihwkit-validate-"))
    folder.mkdir(parents=True, exist_ok=True)
    ours, theirs, probe = folder / "ftaudit.json", folder / "aihwkit.json", folder / "probe.npz"
    common = ["--images", str(args.images)] + (["--rows", args.rows] if args.rows else [])
    runs = ["--samples", str(args.samples), "--threads", str(args.threads)]
    script = [str(Path(__file__).resolve())]
    started = time.perf_counter()
    args.out = str(ours)
    run_ftaudit(args)
    aihwkit_side = [args.aihwkit_python, *script]
    # aihwkit's venv first on PATH for its half (its tools), ftaudit kept off its sys.path
    env = {
        **os.environ,
        "PATH": f"{Path(args.aihwkit_python).parent}{os.pathsep}{os.environ['PATH']}",
    }
    subprocess.run(
        [*aihwkit_side, "probe-aihwkit", "--ftaudit", str(ours), "--out", str(probe), *common],
        check=True,
        env=env,
    )
    args.probe, args.ftaudit = str(probe), str(ours)
    probe_ftaudit(args)
    subprocess.run(
        [*aihwkit_side, "aihwkit", "--ftaudit", str(ours), "--out", str(theirs), *common, *runs],
        check=True,
        env=env,
    )
    about = json.loads(theirs.read_text())["about"]
    generator = json.loads(ours.read_text())["about"]["generator"]
    caption = (
        f"`python benchmarks/aihwkit_validate.py run --samples {args.samples} --seed {args.seed}"
        f"{' --rows ' + args.rows if args.rows else ''} --write`, "
        f"{datetime.date.today().isoformat()}, {cpu_name()} "
        f"({os.cpu_count()} cores, shared), {args.images} images, aihwkit {about['version']} "
        f"(torch {about['torch']}), ftaudit's {generator} normal draws, "
        f"{(time.perf_counter() - started) / 60:.0f} min. "
        "The same programming-noise draw replayed through both simulators (`probe-aihwkit`, "
        "`probe-ftaudit`) gave identical accuracies."
    )
    lines = table_lines(str(ours), str(theirs), caption)
    print("\n".join(lines))
    if args.write:
        write_block(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="side", required=True)
    commands = {
        "run": run_all,
        "ftaudit": run_ftaudit,
        "aihwkit": run_aihwkit,
        "probe-aihwkit": probe_aihwkit,
        "probe-ftaudit": probe_ftaudit,
        "table": table,
    }
    for name in commands:
        p = sub.add_parser(name)
        if name == "table":
            p.add_argument("ftaudit")
            p.add_argument("aihwkit")
            continue
        p.add_argument("--images", type=int, default=500)
        p.add_argument("--rows", default=None, help="comma-separated row numbers (default all)")
        if name in ("run", "ftaudit", "aihwkit"):
            p.add_argument("--samples", type=int, default=30)
        if name in ("run", "ftaudit"):
            p.add_argument("--seed", type=int, default=0, help="row n runs with seed + n")
        if name in ("run", "aihwkit", "probe-aihwkit"):
            p.add_argument("--threads", type=int, default=1)
        if name in ("aihwkit", "probe-aihwkit", "probe-ftaudit"):
            p.add_argument("--ftaudit", required=True, help="the ftaudit half's rows (.json)")
        if name in ("ftaudit", "aihwkit", "probe-aihwkit"):
            p.add_argument("--out", required=True)
        if name == "probe-ftaudit":
            p.add_argument("probe", help="probe-aihwkit's recorded draws (.npz)")
        if name == "run":
            p.add_argument(
                "--aihwkit-python",
                default=os.environ.get("AIHWKIT_PYTHON"),
                required="AIHWKIT_PYTHON" not in os.environ,
                help="a Python with aihwkit 1.2.0 (default: $AIHWKIT_PYTHON)",
            )
            p.add_argument("--folder", help="where the halves write (default: a new temporary one)")
            p.add_argument("--write", action="store_true", help="put the table in docs/analog.md")
    args = parser.parse_args()
    commands[args.side](args)


if __name__ == "__main__":
    main()
