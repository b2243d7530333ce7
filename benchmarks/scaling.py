"""Scale-out: Monte Carlo samples/second for 1 and 2 workers, local processes and local Ray.

For each sample model (ONNX LeNet and MLP) on the shipped 2,000-image Fashion-MNIST subset it
times ``ftaudit.audit`` with the samples in this process (ONNX Runtime using every core), on
``--workers 2`` local processes (each worker gets its share of the cores), and on a
local Ray cluster with 2 CPUs. Start-up (spawning workers, starting Ray, loading the model in
each worker) is part of the wall time, as a user sees it; the table also gives the steady rate
measured on a second, longer run minus the first. Every CPU run's numbers are checked to be
identical. ``--cuda`` adds ``--device cuda`` rows with 1, 16 and 64 samples per forward pass
(run it where a GPU is lent). Writes the table into docs/benchmarks.md with ``--write``.

    python benchmarks/scaling.py --write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "sample_models"
DATA = MODELS / "fmnist_test_2000.npz"
BEGIN, END = "<!-- scaling:begin -->", "<!-- scaling:end -->"


def timed(model: Path, samples: int, **options) -> tuple[float, list]:
    import ftaudit

    start = time.perf_counter()
    report = ftaudit.audit(model, DATA, sigmas=[0.3], samples=samples, seed=0, **options)
    return time.perf_counter() - start, [r.accuracies.tolist() for r in report.results]


def measure(model: Path, short: int, long: int, **options) -> dict[str, float]:
    """Wall time of a short and a long run; steady rate from their difference."""
    t_short, _ = timed(model, short, **options)
    t_long, a_long = timed(model, long, **options)
    return {
        "wall_s": t_long,
        "rate": long / t_long,
        "steady_rate": (long - short) / max(t_long - t_short, 1e-9),
        "startup_s": max(0.0, t_short - short * (t_long - t_short) / (long - short)),
        "accuracies": a_long,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=100)
    parser.add_argument("--long", type=int, default=600)
    parser.add_argument("--write", action="store_true")
    parser.add_argument(
        "--cuda",
        action="store_true",
        help="also time --device cuda with 1, 16 and 64 samples per forward pass (a GPU machine)",
    )
    args = parser.parse_args()

    configs = [
        ("this process", {}),
        ("2 worker processes", {"workers": 2}),
        ("Ray, local, 2 CPUs", {"workers": 2, "ray": "local"}),
    ]
    if args.cuda:
        configs += [
            (f"cuda, {n} sample(s) per pass", {"device": "cuda", "batch_samples": n})
            for n in (1, 16, 64)
        ]
    rows = []
    timed(MODELS / "mlp.onnx", 1)  # imports and first-session costs, paid once per process
    for name in ("lenet", "mlp"):
        model = MODELS / f"{name}.onnx"
        results = {}
        for label, options in configs:
            results[label] = measure(model, args.short, args.long, **options)
            shown = {k: v for k, v in results[label].items() if k != "accuracies"}
            print(name, label, json.dumps(shown), flush=True)
        reference = results["this process"]
        for label, r in results.items():
            if not label.startswith("cuda"):  # a GPU's logits agree to float rounding only
                assert r["accuracies"] == reference["accuracies"], f"{name} {label}: differ"
            rows.append((name, label, r, r["steady_rate"] / reference["steady_rate"]))

    lines = [
        BEGIN,
        f"Scale-out (`python benchmarks/scaling.py --write`), {platform.machine()}, "
        f"{os.cpu_count()} cores, {args.long} samples at sigma 0.3 on 2,000 images; the numbers "
        "of every run were identical to the single-process run.",
        "",
        "| model | where the samples ran | wall s | samples/s (wall) | samples/s (steady) "
        "| start-up s | speed-up (steady) | parallel efficiency |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, label, r, speedup in rows:
        workers = 2 if label.startswith(("2 ", "Ray")) else 1
        lines.append(
            f"| {name} | {label} | {r['wall_s']:.1f} | {r['rate']:.1f} | {r['steady_rate']:.1f} "
            f"| {r['startup_s']:.1f} | {speedup:.2f} | {speedup / workers:.2f} |"
        )
    lines.append(END)
    print("\n".join(lines))
    if args.write:
        path = REPO / "docs/benchmarks.md"
        text = path.read_text()
        block = "\n".join(lines)
        if BEGIN in text:
            text = text.split(BEGIN)[0] + block + text.split(END, 1)[1]
        else:
            text = text.rstrip() + "\n\n## Scale-out: worker processes and Ray\n\n" + block + "\n"
        path.write_text(text)


if __name__ == "__main__":
    main()
