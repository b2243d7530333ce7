"""Monte Carlo throughput of ftaudit against plain inference and the naive way.

For each sample model (LeNet, MLP) on the shipped 2,000-image Fashion-MNIST subset it measures
(a) plain inference of the clean model over the data (ONNX Runtime; torch for TorchScript),
(b) ftaudit's Monte Carlo time per sample (draws + perturbation + inference + bookkeeping),
(c) the naive way: perturb, re-serialise, build a new ONNX Runtime session per sample,
(d) numpy's dense float32 matmul throughput on this machine,
and writes the table to docs/benchmarks.md (``--write``). Timings are medians of repeats.

    python benchmarks/mc_throughput.py --write
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "sample_models"
DATA = MODELS / "fmnist_test_2000.npz"
SIGMA = 0.3
GRID = (0.1, 0.2, 0.3, 0.4, 0.5)  # one run over five sigmas shares each sample's draws


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_onnx_seconds(path: Path, x: np.ndarray, batch_size: int, repeats: int) -> float:
    """(a) A default ONNX Runtime session over the data, weights as constants."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run() -> None:
        for s in range(0, len(x), batch_size):
            session.run(None, {name: x[s : s + batch_size]})

    return median_time(run, repeats)


def plain_torch_seconds(path: Path, x: np.ndarray, batch_size: int, repeats: int) -> float:
    """(a') The TorchScript module over the data with torch.no_grad."""
    import torch

    from ftaudit.models.torchscript import jit_load

    module = jit_load(path.read_bytes(), path).eval()
    batches = [torch.from_numpy(x[s : s + batch_size]) for s in range(0, len(x), batch_size)]

    def run() -> None:
        with torch.no_grad():
            for batch in batches:
                module(batch)

    return median_time(run, repeats)


def ftaudit_seconds_per_sample(
    path: Path, x: np.ndarray, y: np.ndarray, samples: int, sigmas: tuple[float, ...] = (SIGMA,)
) -> float:
    """(b) ftaudit's Monte Carlo loop per sample and sigma (setup excluded)."""
    from ftaudit.models import load_model
    from ftaudit.montecarlo import Crossbar, run_monte_carlo
    from ftaudit.noise import get_noise_model

    model = load_model(path)
    x_fit = model.fit_input(x)
    runner = model.runner(model.layers, device="cpu")
    runner.bind_data(x_fit, y, batch_size=512)
    crossbar = Crossbar.prepare(model.layers, model.clean_weights(), get_noise_model("lognormal"))
    run_monte_carlo(runner, crossbar, sigmas, samples=3, seed=1, n_data=len(y), k=1.0)
    start = time.perf_counter()
    run_monte_carlo(runner, crossbar, sigmas, samples=samples, seed=0, n_data=len(y), k=1.0)
    return (time.perf_counter() - start) / samples / len(sigmas)


def draw_seconds_per_sample(path: Path, samples: int = 50) -> float:
    """The part of (b) spent making one sample's standard-normal draws (all layers)."""
    from ftaudit.models import load_model
    from ftaudit.montecarlo import draws_for_sample

    layers = load_model(path).layers
    start = time.perf_counter()
    for i in range(samples):
        draws_for_sample(0, i, layers, 1)
    return (time.perf_counter() - start) / samples


def naive_seconds_per_sample(path: Path, x: np.ndarray, samples: int) -> float:
    """(c) Perturb the initializers, re-serialise, new session, run: per sample."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from ftaudit.models import load_model

    model = load_model(path)
    proto = onnx.load(str(path))
    names = {layer.name for layer in model.layers}
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(samples):
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        for tensor in copy.graph.initializer:
            if tensor.name in names:
                w = numpy_helper.to_array(tensor)
                noisy = w * np.exp(SIGMA * rng.standard_normal(w.shape, dtype=np.float32))
                tensor.CopyFrom(numpy_helper.from_array(noisy.astype(w.dtype), tensor.name))
        session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for s in range(0, len(x), 512):
            session.run(None, {name: x[s : s + 512]})
    return (time.perf_counter() - start) / samples


def numpy_macs_per_second(size: int = 1024, repeats: int = 10) -> float:
    """(d) Dense float32 matmul throughput, multiply-accumulates per second."""
    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    return size**3 / median_time(lambda: a @ b, repeats)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    parts = [
        cpu,
        f"{os.cpu_count()} cores",
        f"Python {platform.python_version()}",
        f"numpy {np.__version__}",
        f"onnxruntime {onnxruntime.__version__}",
    ]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="MC samples timed for (b)")
    parser.add_argument("--naive-samples", type=int, default=20, help="samples timed for (c)")
    parser.add_argument("--repeats", type=int, default=20, help="repeats for (a)")
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()

    from ftaudit.data import load_dataset
    from ftaudit.models import load_model

    data = load_dataset(DATA)
    x, y = data.x, data.y
    macs_peak = numpy_macs_per_second()
    rows = []
    for name in ("lenet", "mlp"):
        onnx_path, ts_path = MODELS / f"{name}.onnx", MODELS / f"{name}.pt"
        macs = sum(layer.macs or 0 for layer in load_model(onnx_path).layers) * len(x)
        plain = plain_onnx_seconds(onnx_path, x, 512, args.repeats)
        plain_ts = plain_torch_seconds(ts_path, x, 512, args.repeats)
        mc_onnx = ftaudit_seconds_per_sample(onnx_path, x, y, args.samples)
        mc_ts = ftaudit_seconds_per_sample(ts_path, x, y, args.samples)
        mc_grid = ftaudit_seconds_per_sample(onnx_path, x, y, args.samples // 2, GRID)
        draws = draw_seconds_per_sample(onnx_path)
        naive = naive_seconds_per_sample(onnx_path, x, args.naive_samples)
        rows.append(
            {
                "model": name,
                "macs": macs,
                "plain_onnx_ms": plain * 1e3,
                "plain_torch_ms": plain_ts * 1e3,
                "mc_onnx_ms": mc_onnx * 1e3,
                "mc_ts_ms": mc_ts * 1e3,
                "mc_grid_ms": mc_grid * 1e3,
                "draws_ms": draws * 1e3,
                "eff_grid": plain / mc_grid,
                "naive_ms": naive * 1e3,
                "eff_onnx": plain / mc_onnx,
                "eff_ts": plain_ts / mc_ts,
                "eff_ts_vs_ort": plain / mc_ts,
                "speedup": naive / mc_onnx,
                "mac_fraction": macs / mc_onnx / macs_peak,
            }
        )
    header = (
        "| model | MACs / pass | (a) plain ORT ms | (a') plain torch ms | (b) MC ONNX ms/sample "
        "| (b) MC TorchScript ms/sample | (c) naive ms/sample | efficiency ONNX (a)/(b) "
        "| efficiency TorchScript (a')/(b) | speed-up over naive | MAC/s vs numpy matmul "
        "| draws ms/sample | (b) ONNX, 5 sigmas, ms/sample/sigma | efficiency, 5 sigmas |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: |"
    )
    lines = [
        f"| {r['model']} | {r['macs']:,} | {r['plain_onnx_ms']:.1f} | {r['plain_torch_ms']:.1f} "
        f"| {r['mc_onnx_ms']:.1f} | {r['mc_ts_ms']:.1f} | {r['naive_ms']:.1f} "
        f"| {r['eff_onnx']:.2f} | {r['eff_ts']:.2f} | {r['speedup']:.1f}x "
        f"| {r['mac_fraction']:.1%} | {r['draws_ms']:.2f} | {r['mc_grid_ms']:.1f} "
        f"| {r['eff_grid']:.2f} |"
        for r in rows
    ]
    table = "\n".join([header, *lines])
    summary = (
        f"Machine: {machine()}.\n\nData: {len(x):,} images (sample_models/fmnist_test_2000.npz), "
        f"batch size 512, lognormal noise at sigma={SIGMA}, {args.samples} Monte Carlo samples "
        f"timed per model and format, {args.naive_samples} for the naive way. numpy dense "
        f"float32 matmul: {macs_peak / 1e9:.1f} GMAC/s.\n"
    )
    print(summary)
    print(table)
    if args.write:
        from ftaudit.fileio import atomic_write_text

        target = REPO / "docs" / "benchmarks.md"
        text = target.read_text() if target.exists() else ""
        begin, end = "<!-- mc_throughput:begin -->", "<!-- mc_throughput:end -->"
        block = f"{begin}\n{summary}\n{table}\n{end}"
        if begin in text and end in text:
            text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
        else:
            text = text + ("\n" if text else "") + block + "\n"
        atomic_write_text(target, text)


if __name__ == "__main__":
    main()
