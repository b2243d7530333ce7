"""TRICE with 4-bit activations (the paper's setup) on Fashion-MNIST LeNet: a paired rerun.

TRICE quantises activations to 4 bits; ftaudit models that as a 4-bit DAC on every crossbar
layer's input (``--dac-bits 4``, ftaudit.analog). For each sigma and seed this fine-tunes the
sample LeNet with ``erm``, ``noise`` (NoiseTrain) and ``trice``, all with the 4-bit DAC in
the forward pass (hardware-aware training, straight-through quantisers), plus ``trice`` on ideal
activations, then compares every model with the ``noise`` one by ``ftaudit.compare`` on the
same draws and the same 4-bit chip (rram, 4-bit weights, 2-bit cells). Writes
docs/reproductions/trice-lenet-4bit.md between its ``generated`` markers.

    python benchmarks/reproduce_trice_lenet_4bit.py --sigmas 0.3 --seeds 0 1 2 --epochs 5
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "sample_models/fmnist_train_5000.npz"
TEST = REPO / "sample_models/fmnist_test_2000.npz"
OUT = REPO / "docs/reproductions/trice-lenet-4bit.md"
BEGIN, END = "<!-- generated:begin -->", "<!-- generated:end -->"
#: TRICE Table I (MNIST LeNet, 4-bit activations): paper's KPP (k = 1) in % per sigma
PAPER = {
    0.10: (70.72, 95.59, 95.99),
    0.15: (38.15, 87.60, 90.58),
    0.20: (19.81, 66.04, 77.82),
    0.25: (11.95, 40.27, 54.12),
    0.30: (8.58, 23.09, 38.51),
    0.40: (6.05, 10.38, 17.94),
}
#: (row label, harden method, trained with the 4-bit DAC)
MODELS = (
    ("erm, 4-bit", "erm", True),
    ("noise, 4-bit", "noise", True),
    ("trice, 4-bit", "trice", True),
    ("trice, ideal activations", "trice", False),
)


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--samples", type=int, default=500, help="audit samples (>= 368)")
    parser.add_argument("--search-samples", type=int, default=50)
    args = parser.parse_args()
    rows: list[str] = []
    diffs: list[str] = []
    started = time.perf_counter()
    for sigma in args.sigmas:
        for seed in args.seeds:
            run(sigma, seed, args, rows, diffs)
            write(args, rows, diffs, time.perf_counter() - started)


def run(
    sigma: float, seed: int, args: argparse.Namespace, rows: list[str], diffs: list[str]
) -> None:
    """Train the four models at (sigma, seed) and add their rows and paired differences."""

    from ftaudit.analog import ForwardPipeline
    from ftaudit.compare import compare
    from ftaudit.coverage import with_test_set_error
    from ftaudit.harden.api import harden

    chip = ForwardPipeline(dac_bits=4)
    paths: dict[str, Path] = {}
    sigma_t: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, method, hardware_aware in MODELS:
            paths[label] = Path(tmp) / f"{method}-{int(hardware_aware)}.onnx"
            extra: dict[str, Any] = {}
            if method == "trice":
                extra = {"warmup": args.warmup, "search_samples": args.search_samples}
            report = harden(
                REPO / "sample_models/lenet.onnx",
                TRAIN,
                output=paths[label],
                method=method,
                noise="rram",
                sigma=sigma,
                seed=seed,
                epochs=args.epochs,
                eval_sigmas=[sigma],
                eval_samples=10,
                pipeline=chip if hardware_aware else None,
                **extra,
            )
            if method == "trice":
                d = report.details
                sigma_t[label] = f"{d['sigma_t']:.4f} ({d['search_status']})"
        summaries: dict[str, Any] = {}
        for label, _method, _ in MODELS:
            if label == "noise, 4-bit":
                continue
            report = compare(
                paths["noise, 4-bit"],
                paths[label],
                TEST,
                sigmas=[sigma],
                noise="rram",
                samples=args.samples,
                seed=1000 + seed,
                fail_if_worse=0.0,
                pipeline=chip,
            )
            paired = report.results[0]
            n = report.baseline.data["n"]
            summaries["noise, 4-bit"] = with_test_set_error(paired.baseline.summary, n)
            summaries[label] = with_test_set_error(paired.candidate.summary, n)
            i, k = paired.mean_difference_interval, paired.kpp_difference_interval
            diffs.append(
                f"| {sigma:g} | {seed} | {label} - noise, 4-bit | "
                f"{100 * paired.mean_difference:+.2f} "
                f"[{100 * i.low:+.2f}, {100 * i.high:+.2f}] | "
                f"{100 * paired.kpp_difference:+.2f} "
                + ("(n/a)" if k is None else f"[{100 * k.low:+.2f}, {100 * k.high:+.2f}]")
                + f" | {'worse' if not report.gates[0].passed else 'not worse'} |"
            )
        for label, _method, _ in MODELS:
            s = summaries[label]
            rows.append(
                f"| {sigma:g} | {seed} | {label} | {pct(s.mean)} [{pct(s.mean_interval.low)}, "
                f"{pct(s.mean_interval.high)}] | {pct(s.kpp)} [{pct(s.kpp_interval.low)}, "
                f"{pct(s.kpp_interval.high)}] | {sigma_t.get(label, '–')} |"
            )


def write(args: argparse.Namespace, rows: list[str], diffs: list[str], elapsed: float) -> None:
    sigmas = " ".join(f"{s:g}" for s in args.sigmas)
    seeds = " ".join(map(str, args.seeds))
    command = (
        f"python benchmarks/reproduce_trice_lenet_4bit.py --sigmas {sigmas} --seeds {seeds} "
        f"--epochs {args.epochs} --warmup {args.warmup} --samples {args.samples} "
        f"--search-samples {args.search_samples}"
    )
    paper = [
        f"sigma {s:g}: w/o noise {PAPER[round(s, 2)][0]:.2f}, Gaussian "
        f"{PAPER[round(s, 2)][1]:.2f}, TRICE {PAPER[round(s, 2)][2]:.2f}"
        for s in args.sigmas
        if round(s, 2) in PAPER
    ]
    lines = [
        BEGIN,
        f"Regenerate with `{command}` ({platform.machine()} {platform.system()}, Python "
        f"{platform.python_version()}, 2 shared CPU cores, {time.strftime('%Y-%m-%d')}: "
        f"{elapsed / 60:.0f} minutes).",
        "",
        "rram (4-bit weights, 2-bit cells). Every model fine-tunes `sample_models/lenet.onnx` "
        f"for {args.epochs} epochs on the 5,000-image training subset (10% held out, seeded, "
        "for TRICE's search), Adam lr 0.001, batch 128, with the row's seed; TRICE warm-up "
        f"{args.warmup}, {args.search_samples} Monte Carlo samples per search step, start 0, "
        "end 2 sigma, th 2. '4-bit' models train with a 4-bit DAC on every crossbar input "
        "(`--dac-bits 4`, straight-through rounding). Every model is audited on the "
        f"2,000-image test subset on the same chip (4-bit DAC), {args.samples} Monte Carlo "
        "samples, seed 1000 + the row's seed, the same draws for every model of a row. "
        "Per-model intervals are 95% and include the test set's sampling error; the paired "
        "differences (`ftaudit compare`, each model against `noise, 4-bit`) are Monte Carlo "
        "only. Accuracies in %."
        + ("" if not paper else " The paper's MNIST LeNet KPPs (k = 1): " + "; ".join(paper) + "."),
        "",
        "| sigma | seed | model | mean [95% CI] | KPP (k = 1) [95% CI] | TRICE sigma_t (search) |",
        "| ---: | ---: | --- | ---: | ---: | ---: |",
        *rows,
        "",
        "| sigma | seed | paired | Δmean [95% CI] | ΔKPP [bootstrap 95% CI] | "
        "gate (--fail-if-worse 0) |",
        "| ---: | ---: | --- | ---: | ---: | --- |",
        *diffs,
        END,
    ]
    text = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + "\n".join(lines) + rest.split(END, 1)[1]
    else:
        title = "# TRICE with 4-bit activations on Fashion-MNIST LeNet (paired, reduced)\n\n"
        text = title + "\n".join(lines) + "\n"
    OUT.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
