"""Seeded, paired reruns of the TRICE (Table I) and BayesFT (Fig. 3) comparisons (issue 11).

For each seed, every method fine-tunes the shipped sample model on the shipped 5,000-image
Fashion-MNIST training subset (10% held out for TRICE's search and BayesFT's objective); each
method is compared with the `noise` model by ``ftaudit.compare`` on the 2,000-image test subset
(the same draws); each model's own interval also covers the test set's sampling error
(``coverage.with_test_set_error``).

    python benchmarks/reproduce_seeds.py trice --seeds 0 1 2
    python benchmarks/reproduce_seeds.py bayesft --seeds 0 1 2

Results go to docs/reproductions/{trice-lenet,bayesft-mlp}-seeds.md after every seed.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduction_options import add_rng_option, rng_note

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "sample_models/fmnist_train_5000.npz"
TEST = REPO / "sample_models/fmnist_test_2000.npz"
SETUPS: dict[str, dict[str, Any]] = {
    # TRICE Table I's protocol on LeNet with the rram device (4-bit weights, 2-bit cells), at the
    # paper's rows sigma 0.05 and 0.35
    "trice": {
        "model": "lenet.onnx",
        "noise": "rram",
        "sigmas": (0.05, 0.35),
        "methods": ("erm", "noise", "trice"),
        "metric": "kpp",
        "out": "trice-lenet-seeds.md",
    },
    # BayesFT Fig. 3(a): the MLP under log-normal drift, trained at sigma 1.0
    "bayesft": {
        "model": "mlp.onnx",
        "noise": "lognormal",
        "sigmas": (1.0,),
        "methods": ("erm", "noise", "bayesft"),
        "metric": "mean",
        "out": "bayesft-mlp-seeds.md",
    },
}


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def cell(summary: Any, metric: str) -> str:
    interval = summary.kpp_interval if metric == "kpp" else summary.mean_interval
    value = summary.kpp if metric == "kpp" else summary.mean
    return f"{pct(value)} [{pct(interval.low)}, {pct(interval.high)}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("setup", choices=sorted(SETUPS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=400, help="Monte Carlo samples (>= 368)")
    parser.add_argument("--search-samples", type=int, default=100)
    add_rng_option(parser, "docs/reproductions/*-seeds.md")
    args = parser.parse_args()
    setup = SETUPS[args.setup]

    from ftaudit.compare import compare
    from ftaudit.coverage import with_test_set_error
    from ftaudit.harden.api import harden

    out = REPO / "docs/reproductions" / setup["out"]
    metric = setup["metric"]
    started = time.perf_counter()
    rows: list[str] = []
    diffs: list[str] = []
    sigma_t: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            erm_path = None
            for sigma in setup["sigmas"]:
                paths = {}
                for method in setup["methods"]:
                    if method == "erm" and erm_path is not None:  # erm ignores sigma
                        paths[method] = erm_path
                        continue
                    paths[method] = Path(tmp) / f"{method}-{sigma}-{seed}.onnx"
                    extra: dict[str, Any] = {"epochs": args.epochs}
                    if method == "trice":
                        extra.update(warmup=1, search_samples=args.search_samples)
                    if method == "bayesft":
                        extra = {"trials": args.epochs, "epochs_per_trial": 1}
                    report = harden(
                        REPO / "sample_models" / setup["model"],
                        TRAIN,
                        output=paths[method],
                        method=method,
                        noise=setup["noise"],
                        sigma=sigma,
                        seed=seed,
                        rng=args.rng,
                        eval_sigmas=[sigma],
                        eval_samples=10,
                        **extra,
                    )
                    if method == "erm":
                        erm_path = paths[method]
                    if method == "trice":
                        d = report.details
                        sigma_t.append(
                            f"| {seed} | {sigma:.2f} | {d['sigma_t']:.4f} | {d['search_status']} |"
                        )
                # every method against noise with ftaudit's paired compare (the same draws);
                # each model's own summary gets the test set's sampling error as well
                summaries = {}
                for method in setup["methods"]:
                    if method == "noise":
                        continue
                    report = compare(
                        paths["noise"],
                        paths[method],
                        TEST,
                        sigmas=[sigma],
                        noise=setup["noise"],
                        samples=args.samples,
                        seed=1000 + seed,
                        rng=args.rng,
                        fail_if_worse=0.0,
                    )
                    paired = report.results[0]
                    n = report.baseline.data["n"]
                    summaries["noise"] = with_test_set_error(paired.baseline.summary, n)
                    summaries[method] = with_test_set_error(paired.candidate.summary, n)
                    i = paired.mean_difference_interval
                    k = paired.kpp_difference_interval
                    diffs.append(
                        f"| {seed} | {sigma:.2f} | {method} - noise | "
                        f"{100 * paired.mean_difference:+.2f} [{100 * i.low:+.2f}, "
                        f"{100 * i.high:+.2f}] | {100 * paired.kpp_difference:+.2f} "
                        + ("(n/a)" if k is None else f"[{100 * k.low:+.2f}, {100 * k.high:+.2f}]")
                        + f" | {'worse' if not report.gates[0].passed else 'not worse'} |"
                    )
                rows.append(
                    f"| {seed} | {sigma:.2f} | "
                    + " | ".join(cell(summaries[m], metric) for m in setup["methods"])
                    + " |"
                )
                write(out, args, setup, rows, diffs, sigma_t, time.perf_counter() - started)


def write(
    out: Path,
    args: argparse.Namespace,
    setup: dict[str, Any],
    rows: list[str],
    diffs: list[str],
    sigma_t: list[str],
    elapsed: float,
) -> None:
    metric = "KPP (k = 1)" if setup["metric"] == "kpp" else "mean accuracy"
    seeds = " ".join(map(str, args.seeds))
    lines = [
        f"# {args.setup}: seeded, paired rerun ({setup['model']}, {setup['noise']})",
        "",
        rng_note(args.rng),
        "",
        f"Regenerate with `python benchmarks/reproduce_seeds.py {args.setup} --seeds {seeds} "
        f"--epochs {args.epochs} --samples {args.samples} --search-samples "
        f"{args.search_samples} --rng {args.rng}` ({platform.machine()} "
        f"{platform.system()}, 2 shared CPU cores, {time.strftime('%Y-%m-%d')}: "
        f"{elapsed / 60:.0f} minutes).",
        "",
        "Reduced protocol, to fit a shared 2-core CPU: every method fine-tunes the shipped "
        f"`sample_models/{setup['model']}` for {args.epochs} epochs"
        + (" (BayesFT: as many 1-epoch trials)" if args.setup == "bayesft" else "")
        + " on the 5,000-image training subset (not the 60,000 images, not from scratch, not the "
        "paper's 100 epochs); TRICE warm-up 1 epoch and "
        f"{args.search_samples} Monte Carlo samples per search step (paper: 5 and 300); each "
        f"model is audited on the 2,000-image test subset with {args.samples} Monte Carlo "
        "samples (seed 1000 + training seed, the same draws for every model of a seed), each "
        "method against `noise` with `ftaudit compare`. Per-model intervals are 95% and include "
        "the test set's sampling error (`--test-set-error`); the paired differences are of two "
        "models on the same images and draws, so their intervals are Monte Carlo only. "
        "Accuracies in %.",
        "",
        f"## {metric} per seed",
        "",
        "| seed | sigma | " + " | ".join(setup["methods"]) + " |",
        "| ---: | ---: |" + " ---: |" * len(setup["methods"]),
        *rows,
        "",
        "## Paired differences (ftaudit compare, same draws; Monte Carlo error only)",
        "",
        "| seed | sigma | models | Δmean [95% CI] | ΔKPP [bootstrap 95% CI] | "
        "gate (--fail-if-worse 0) |",
        "| ---: | ---: | --- | ---: | ---: | --- |",
        *diffs,
    ]
    if sigma_t:
        lines += [
            "",
            "## TRICE's sigma_t (the exported model's last epoch)",
            "",
            "| seed | sigma | sigma_t | search |",
            "| ---: | ---: | ---: | --- |",
            *sigma_t,
        ]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
