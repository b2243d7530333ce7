"""TRICE with 4-bit activations (the paper's setup) on Fashion-MNIST LeNet: a paired rerun.

TRICE quantises activations to 4 bits; ftaudit models that as a 4-bit DAC on every crossbar
layer's input (``--dac-bits 4``, ftaudit.analog). At one sigma this fine-tunes the sample LeNet
with ``erm``, ``noise`` (NoiseTrain) and ``trice``, all with the 4-bit DAC in the forward pass
(hardware-aware training, straight-through quantisers), plus ``trice`` on ideal activations,
then compares every model with the ``noise`` one by ``ftaudit.compare`` on the same draws and
the same 4-bit chip (rram, 4-bit weights, 2-bit cells). Writes
docs/reproductions/trice-lenet-4bit.md between its ``generated`` markers.

    python benchmarks/reproduce_trice_lenet_4bit.py --sigma 0.3 --epochs 3 --samples 400
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
    parser.add_argument("--sigma", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--samples", type=int, default=400, help="audit samples (>= 368)")
    parser.add_argument("--search-samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from ftaudit.analog import ForwardPipeline
    from ftaudit.compare import compare
    from ftaudit.coverage import with_test_set_error
    from ftaudit.harden.api import harden

    started = time.perf_counter()
    chip = ForwardPipeline(dac_bits=4)
    sigma = args.sigma
    paths: dict[str, Path] = {}
    sigma_t: dict[str, str] = {}
    rows: list[str] = []
    diffs: list[str] = []
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
                seed=args.seed,
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
                seed=1000 + args.seed,
                fail_if_worse=0.0,
                pipeline=chip,
            )
            paired = report.results[0]
            n = report.baseline.data["n"]
            summaries["noise, 4-bit"] = with_test_set_error(paired.baseline.summary, n)
            summaries[label] = with_test_set_error(paired.candidate.summary, n)
            i, k = paired.mean_difference_interval, paired.kpp_difference_interval
            diffs.append(
                f"| {label} - noise, 4-bit | {100 * paired.mean_difference:+.2f} "
                f"[{100 * i.low:+.2f}, {100 * i.high:+.2f}] | "
                f"{100 * paired.kpp_difference:+.2f} "
                + ("(n/a)" if k is None else f"[{100 * k.low:+.2f}, {100 * k.high:+.2f}]")
                + f" | {'worse' if not report.gates[0].passed else 'not worse'} |"
            )
        for label, _method, _ in MODELS:
            s = summaries[label]
            rows.append(
                f"| {label} | {pct(s.mean)} [{pct(s.mean_interval.low)}, "
                f"{pct(s.mean_interval.high)}] | {pct(s.kpp)} [{pct(s.kpp_interval.low)}, "
                f"{pct(s.kpp_interval.high)}] | {sigma_t.get(label, '–')} |"
            )
    write(args, rows, diffs, time.perf_counter() - started)


def write(args: argparse.Namespace, rows: list[str], diffs: list[str], elapsed: float) -> None:
    paper = PAPER.get(round(args.sigma, 2))
    command = (
        f"python benchmarks/reproduce_trice_lenet_4bit.py --sigma {args.sigma:g} --epochs "
        f"{args.epochs} --warmup {args.warmup} --samples {args.samples} --search-samples "
        f"{args.search_samples} --seed {args.seed}"
    )
    lines = [
        BEGIN,
        f"Regenerate with `{command}` ({platform.machine()} {platform.system()}, Python "
        f"{platform.python_version()}, 2 shared CPU cores, {time.strftime('%Y-%m-%d')}: "
        f"{elapsed / 60:.0f} minutes).",
        "",
        f"Sigma {args.sigma:g}, rram (4-bit weights, 2-bit cells), seed {args.seed}. Every model "
        f"fine-tunes `sample_models/lenet.onnx` for {args.epochs} epochs on the 5,000-image "
        "training subset (10% held out, seeded, for TRICE's search), Adam lr 0.001, batch 128; "
        f"TRICE warm-up {args.warmup}, {args.search_samples} Monte Carlo samples per search "
        "step, start 0, end 2 sigma, th 2. '4-bit' models train with a 4-bit DAC on every "
        "crossbar input (`--dac-bits 4`, straight-through rounding). Every model is audited on "
        f"the 2,000-image test subset on the same chip (4-bit DAC), {args.samples} Monte Carlo "
        f"samples, seed {1000 + args.seed}, the same draws for every model. Per-model "
        "intervals are 95% and include the test set's sampling error; the paired differences "
        "(`ftaudit compare`, each model against `noise, 4-bit`) are Monte Carlo only. "
        "Accuracies in %."
        + (
            ""
            if paper is None
            else f" The paper's MNIST LeNet row at this sigma (KPP, k = 1): w/o noise "
            f"{paper[0]:.2f}, Gaussian {paper[1]:.2f}, TRICE {paper[2]:.2f}."
        ),
        "",
        "| model | mean [95% CI] | KPP (k = 1) [95% CI] | TRICE sigma_t (search) |",
        "| --- | ---: | ---: | ---: |",
        *rows,
        "",
        "| paired | Δmean [95% CI] | ΔKPP [bootstrap 95% CI] | gate (--fail-if-worse 0) |",
        "| --- | ---: | ---: | --- |",
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
