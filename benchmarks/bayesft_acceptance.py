"""BayesFT acceptance check (issue 11): does the search raise the noisy accuracy of a small MLP?

Hardens the shipped `sample_models/mlp.onnx` with `--method bayesft` at log-normal sigma 1.0,
`--trials 6 --epochs-per-trial 10`, on the Fashion-MNIST training set (10% held out for the
objective),
then measures the input and the hardened model on the held-out 2,000-image test subset with a
Monte Carlo that shares no code with ftaudit: numpy, its own generator, w * exp(sigma * z) per
weight of the three Gemm layers. Prints one line per seed and the mean gain.
``--straight-through`` trains on dL/dw' as BayesFT did before the chain-rule fix (the comparison
rows of docs/reproductions/bayesft-acceptance.md).

    python benchmarks/bayesft_acceptance.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduction_options import add_rng_option

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "sample_models/mlp.onnx"
TEST = REPO / "sample_models/fmnist_test_2000.npz"


def independent_mc_accuracy(path: Path, sigma: float, samples: int, seed: int) -> float:
    """Mean test accuracy of the MLP at ``path`` under w * exp(N(0, sigma^2)), numpy only."""
    import onnx
    from onnx import numpy_helper

    w = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    data = np.load(TEST)
    x = data["x"].reshape(len(data["y"]), -1).astype(np.float32) / 255
    y = data["y"]
    rng = np.random.default_rng(seed)
    accuracies = []
    for _ in range(samples):
        h = x
        for i, name in enumerate(("fc1", "fc2", "fc3")):
            weight = w[f"{name}.weight"]
            drifted = weight * np.exp(sigma * rng.standard_normal(weight.shape)).astype(np.float32)
            h = h @ drifted.T + w[f"{name}.bias"]
            if i < 2:
                h = np.maximum(h, 0)
        accuracies.append(float(np.mean(h.argmax(1) == y)))
    return float(np.mean(accuracies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs-per-trial", type=int, default=10)
    parser.add_argument("--max-dropout", type=float, default=None)
    parser.add_argument("--train-draws", type=int, default=None, help="noise draws per step")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3)")
    parser.add_argument(
        "--straight-through",
        action="store_true",
        help="train BayesFT on dL/dw' as before the chain-rule fix (for the comparison row)",
    )
    parser.add_argument("--samples", type=int, default=200, help="independent MC samples")
    parser.add_argument(
        "--train",
        type=Path,
        default=Path("/work/shared/data/fashion-mnist/train-images-idx3-ubyte.gz"),
        help="training data (default: the full Fashion-MNIST training set; "
        "sample_models/fmnist_train_5000.npz is the quick option)",
    )
    parser.add_argument("--method", default="bayesft", help="bayesft, or noise/erm for reference")
    add_rng_option(parser, "docs/reproductions/bayesft-acceptance.md")
    args = parser.parse_args()

    from ftaudit.harden.api import harden
    from ftaudit.harden.methods import bayesft

    bayesft.CHAIN_RULE = not args.straight_through

    given = {"max_dropout": args.max_dropout, "train_draws": args.train_draws, "lr": args.lr}
    extra = {k: v for k, v in given.items() if v is not None}
    before = independent_mc_accuracy(MODEL, args.sigma, args.samples, seed=12345)
    gains = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            started = time.perf_counter()
            out = Path(tmp) / f"mlp-bayesft-{seed}.onnx"
            report = harden(
                MODEL,
                args.train,
                output=out,
                method=args.method,
                sigma=args.sigma,
                trials=args.trials,
                epochs_per_trial=args.epochs_per_trial,
                epochs=args.trials * args.epochs_per_trial,  # erm/noise: the same epochs
                eval_sigmas=[args.sigma],
                eval_samples=10,
                seed=seed,
                rng=args.rng,
                **extra,
            )
            after = independent_mc_accuracy(out, args.sigma, args.samples, seed=12345)
            for trial in report.history:
                if "rates" in trial:
                    rates = "/".join(f"{r:.2f}" for r in trial["rates"].values())
                    print(
                        f"  trial {trial['index'] + 1}: rates {rates}, train loss "
                        f"{trial['loss']:.3f}, objective {trial['objective']}",
                        flush=True,
                    )
            gains.append(after - before)
            rates = ", ".join(
                f"{k} {v:.3f}" for k, v in report.details.get("dropout_rates", {}).items()
            )
            print(
                f"seed {seed}: input {100 * before:.2f}% -> bayesft {100 * after:.2f}% "
                f"({100 * (after - before):+.2f} points; rates {rates}; "
                f"{time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    print(f"mean gain {100 * np.mean(gains):+.2f} points over {len(gains)} seed(s)")


if __name__ == "__main__":
    main()
