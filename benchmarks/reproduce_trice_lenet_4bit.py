"""TRICE with 4-bit activations (the paper's setup) on Fashion-MNIST LeNet, one sigma.

TRICE quantises activations to 4 bits; ftaudit models that as a 4-bit DAC on every crossbar
layer's input (``--dac-bits 4``, ftaudit.analog). For each sigma this fine-tunes the sample LeNet
with ``trice`` twice, once on ideal activations and once with the 4-bit DAC in the forward pass
(hardware-aware training), like ``reproduce_trice_lenet.py`` (rram, 4-bit weights, 2-bit cells,
same epochs, seed and TRICE settings), and audits both on a chip with that DAC. The table goes
into docs/reproductions/trice-lenet.md between its ``trice-4bit`` markers.

    python benchmarks/reproduce_trice_lenet_4bit.py --sigmas 0.3 --epochs 5 --warmup 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- trice-4bit:begin -->", "<!-- trice-4bit:end -->"
PAPER_TRICE = {0.10: 95.99, 0.15: 90.58, 0.20: 77.82, 0.25: 54.12, 0.30: 38.51, 0.40: 17.94}


def cell(summary) -> str:
    i = summary.kpp_interval
    return f"{100 * summary.kpp:.2f} [{100 * i.low:.2f}, {100 * i.high:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared/data/fashion-mnist")
    parser.add_argument("--work", type=Path, default=REPO / "out/trice-lenet-4bit")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--sigmas", type=str, default="0.3")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images")
    args = parser.parse_args()

    import ftaudit
    from ftaudit.analog import ForwardPipeline
    from ftaudit.harden.api import harden

    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    train = args.data_dir / "train-images-idx3-ubyte.gz"
    test = REPO / "sample_models/fmnist_test_2000.npz"
    base = REPO / "sample_models/lenet.onnx"
    chip = ForwardPipeline(dac_bits=4)
    common = {
        "method": "trice",
        "epochs": args.epochs,
        "warmup": args.warmup,
        "lr": 1e-3,
        "batch_size": 128,
        "seed": 0,
        "noise": "rram",
        "eval_samples": 1,
        "eval_sigmas": [0.0],
        "limit": args.limit,
    }
    rows = []
    for sigma in [float(s) for s in args.sigmas.split(",")]:
        row = [f"{sigma:.2f}", f"{PAPER_TRICE.get(sigma, float('nan')):.2f}"]
        for name, pipeline in (("ideal", None), ("dac4", chip)):
            path = args.work / f"trice-{name}-{sigma:.2f}.onnx"
            harden(base, train, output=path, sigma=sigma, pipeline=pipeline, **common)
            report = ftaudit.audit(
                path, test, sigmas=[sigma], noise="rram", samples=args.samples, pipeline=chip
            )
            row.append(cell(report.results[0].summary))
        rows.append("| " + " | ".join(row) + " |")
    minutes = (time.perf_counter() - started) / 60
    table = [
        BEGIN,
        f"Regenerate with `python benchmarks/reproduce_trice_lenet_4bit.py --sigmas {args.sigmas} "
        f"--epochs {args.epochs} --warmup {args.warmup} --samples {args.samples}"
        + ("" if args.limit is None else f" --limit {args.limit}")
        + f"` ({minutes:.1f} minutes on a shared 2-core CPU).",
        "Both models: `trice`, rram, 4-bit weights, 2-bit cells, "
        f"{args.epochs} epochs (warm-up {args.warmup}), "
        + ("the full training set" if args.limit is None else f"the first {args.limit} images")
        + f"; audited with a 4-bit DAC (`--dac-bits 4`), {args.samples} samples, seed 0. "
        "KPP (k = 1) in % with its 95% interval.",
        "",
        "| sigma | paper TRICE (MNIST) | trice, ideal activations in training "
        "| trice, 4-bit activations in training |",
        "| ---: | ---: | ---: | ---: |",
        *rows,
        END,
    ]
    md = REPO / "docs/reproductions/trice-lenet.md"
    text = md.read_text()
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + "\n".join(table) + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## With 4-bit activations\n\n" + "\n".join(table) + "\n"
    md.write_text(text)


if __name__ == "__main__":
    main()
