"""Monte Carlo throughput of ftaudit against plain inference and the naive way.

For each model (the sample LeNet and MLP on the shipped 2,000 Fashion-MNIST images; a residual
CNN, a ResNet-18-width CNN and a MobileNet-style CNN built by ``bench_models.py``) it measures
(a) plain inference of the clean model over the data (ONNX Runtime, weights as constants),
(b) ftaudit's Monte Carlo time per sample (draws + perturbation + inference + bookkeeping) on one
    sigma and per sigma on a grid of five, and the same with the pre-packed graph turned off
    (weights fed to the original graph, the route before the pre-packing),
(c) the naive way: perturb, re-serialise, build a new ONNX Runtime session per sample,
(d) a drift row (one time, no compensation / global compensation) against a plain row,
(e) with the analog forward pipeline (DAC 8 + ADC 8; and with read noise 0.02): the Monte Carlo
    time per sample on one and five sigmas against one plain pass of the same pipeline graph
    (ideal weights, no read noise drawn),
(f) the time to draw one sample's standard normals under each generator (``--rng``),
and writes the table to docs/benchmarks.md (``--write``). Timings are medians of repeats, or
means over many samples; every figure comes from the same run on the same machine. The Monte
Carlo loop draws with ``--rng`` (default fast).

    python benchmarks/mc_throughput.py --write
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "sample_models"
DATA = MODELS / "fmnist_test_2000.npz"
SIGMA = 0.3
GRID = (0.1, 0.2, 0.3, 0.4, 0.5)  # one run over five sigmas shares each sample's draws
BATCH = 512


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_onnx_runner(path: Path, x: np.ndarray, batch_size: int) -> Callable[[], None]:
    """(a) One pass of a default ONNX Runtime session over the data, weights as constants."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run() -> None:
        for s in range(0, len(x), batch_size):
            session.run(None, {name: x[s : s + batch_size]})

    run()
    return run


def monte_carlo_runner(
    path: Path,
    x: np.ndarray,
    y: np.ndarray,
    sigmas: tuple[float, ...] = (SIGMA,),
    *,
    prepacked: bool = True,
    spinning: bool | None = None,
    effects=None,
    batch_size: int = BATCH,
    pipeline=None,
    rng: str = "fast",
) -> Callable[[int], float]:
    """(b) ftaudit's Monte Carlo loop, set up once; the returned function times ``samples``
    samples and gives seconds per sample and row. ``prepacked=False`` feeds the weights to the
    original graph; ``spinning`` sets whether ONNX Runtime's threads spin between runs (None:
    ftaudit's default, ``SPIN_BETWEEN_RUNS``); ``effects`` adds drift rows; ``pipeline`` runs
    the analog forward pass."""
    from ftaudit.models import load_model, ort_spinning
    from ftaudit.models import onnx as onnx_models
    from ftaudit.montecarlo import Crossbar, run_monte_carlo
    from ftaudit.noise import get_noise_model

    model = load_model(path)
    x_fit = model.fit_input(x)
    builder, spin = onnx_models.build_prepacked_graph, ort_spinning.SPIN_BETWEEN_RUNS
    if not prepacked:
        onnx_models.build_prepacked_graph = lambda *a, **k: None
    ort_spinning.SPIN_BETWEEN_RUNS = spin if spinning is None else spinning
    try:
        runner = pipeline_runner(model, x_fit, pipeline, rng)
    finally:
        onnx_models.build_prepacked_graph = builder
        ort_spinning.SPIN_BETWEEN_RUNS = spin
    runner.bind_data(x_fit, y, batch_size=batch_size)
    crossbar = Crossbar.prepare(model.layers, model.clean_weights(), get_noise_model("lognormal"))
    options = dict(n_data=len(y), k=1.0, effects=effects, rng=rng)
    run_monte_carlo(runner, crossbar, sigmas, samples=2, seed=1, **options)

    def timed(samples: int) -> float:
        start = time.perf_counter()
        counts = run_monte_carlo(runner, crossbar, sigmas, samples=samples, seed=0, **options)
        return (time.perf_counter() - start) / samples / counts.counts.shape[0]

    return timed


def pipeline_runner(model, x_fit: np.ndarray, pipeline, rng: str = "fast"):
    """The runner ``ftaudit eval`` uses: the model's own, or the analog pipeline's."""
    if pipeline is None:
        return model.runner(model.layers, device="cpu")
    from ftaudit.analog.runner import analog_runner

    runner, _ = analog_runner(
        model, model.layers, x_fit, pipeline=pipeline, seed=0, device="cpu", rng=rng
    )
    return runner


def plain_pipeline_seconds(path: Path, x: np.ndarray, y: np.ndarray, pipeline, repeats: int):
    """(e) One plain pass of the pipeline graph over the data: ideal weights, no read noise."""
    from ftaudit.models import load_model

    model = load_model(path)
    x_fit = model.fit_input(x)
    runner = pipeline_runner(model, x_fit, pipeline)
    runner.bind_data(x_fit, y, batch_size=BATCH)
    return median_time(runner.logits, repeats)


def block_median(
    timed: Callable[[int], float],
    samples: int,
    rounds: int,
    plain: Callable[[], None],
    plain_times: list[float],
) -> tuple[float, list[float]]:
    """Median seconds per sample and row over ``rounds`` blocks of ``samples // rounds``, and
    each block's paired efficiency: the mean of the plain probes (``plain_probe``) just before
    and just after the block, over the block's time per sample. A 2-core VM's speed drifts by
    tens of percent between minutes; a ratio of neighbours cancels that drift where a ratio of
    medians taken minutes apart does not. The probes after each block go to ``plain_times``."""
    blocks, ratios = [], []
    before = plain_probe(plain)
    for _ in range(rounds):
        time.sleep(SETTLE_S)
        block = timed(max(1, samples // rounds))
        after = plain_probe(plain)
        blocks.append(block)
        ratios.append((before + after) / 2 / block)
        plain_times.append(after)
        before = after
    return statistics.median(blocks), ratios


#: whether ftaudit's sessions spin on this machine, decided once when the script starts (other
#: processes' CPU use, ``spin_between_runs``); the "ORT threads" column runs the other mode
SPINS = False


#: pause before each timed segment, so the previous one's threads are idle (a spinning ONNX
#: Runtime pool keeps a core busy for a moment after its run returns)
SETTLE_S = 0.05


def plain_probe(plain: Callable[[], None], passes: int = 3) -> float:
    """Median of ``passes`` plain passes after a pause and one untimed pass (the first pass after
    a Monte Carlo block ran measurably slower: the other session's threads still winding down)."""
    time.sleep(SETTLE_S)
    plain()
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        plain()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired(ratios: list[float]) -> str:
    """The median paired efficiency with its interquartile range, e.g. '0.91 (0.88-0.95)'."""
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    return f"{median:.2f} ({q1:.2f}-{q3:.2f})"


def relative(r: dict, key: str) -> str:
    """A variant's cost over a plain row's, each measured against its neighbouring plain
    passes: median(plain-row efficiency) / median(variant efficiency)."""
    return f"{statistics.median(r['mc_ratios']) / statistics.median(r[f'{key}_ratios']):.2f}"


def draw_seconds_per_sample(path: Path, rng: str, samples: int = 50) -> float:
    """(f) The part of (b) spent making one sample's standard-normal draws (all layers)."""
    from ftaudit.models import load_model
    from ftaudit.montecarlo import draws_for_sample

    layers = load_model(path).layers
    out = [np.empty((1, *layer.canonical_shape), np.float32) for layer in layers]
    start = time.perf_counter()
    for i in range(samples):
        draws_for_sample(0, i, layers, 1, out=out, rng=rng)
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
        for s in range(0, len(x), BATCH):
            session.run(None, {name: x[s : s + BATCH]})
    return (time.perf_counter() - start) / samples


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


def drift_effects(compensation: str):
    from ftaudit.noise.drift import DriftModel
    from ftaudit.noise.effects import DeviceEffects

    return DeviceEffects(
        times=(3600.0,), compensations=(compensation,), drift=DriftModel(20.0, 0.05, 0.01)
    )


#: (e)'s pipelines: DAC and ADC, then with read noise
PIPELINES = {
    "dac_adc": {"dac_bits": 8, "adc_bits": 8},
    "read_noise": {"dac_bits": 8, "adc_bits": 8, "read_noise": 0.02},
}


def measure(name: str, path: Path, x: np.ndarray, y: np.ndarray, args) -> dict:
    """Every column of one model's row: each MC variant in rounds interleaved with plain passes."""
    from ftaudit.analog import ForwardPipeline
    from ftaudit.models import load_model

    samples = max(4, int(args.samples * SCALE.get(name, 1.0)))
    rounds = args.rounds
    model = load_model(path)
    x = model.fit_input(x)
    macs = sum(layer.macs or 0 for layer in model.layers) * len(x)
    weights = sum(layer.params for layer in model.layers)
    plain_pass = plain_onnx_runner(path, x, BATCH)
    plain_times = [median_time(plain_pass, args.repeats)]
    row: dict = {"model": name, "images": len(x), "weights": weights, "macs": macs}
    rng = args.rng
    variants = {
        "mc": lambda: monte_carlo_runner(path, x, y, rng=rng),
        "grid": lambda: monte_carlo_runner(path, x, y, GRID, rng=rng),
        "mc_old": lambda: monte_carlo_runner(path, x, y, prepacked=False, rng=rng),
        "mc_spin": lambda: monte_carlo_runner(path, x, y, spinning=not SPINS, rng=rng),
        "drift": lambda: monte_carlo_runner(path, x, y, effects=drift_effects("none"), rng=rng),
        "drift_comp": lambda: monte_carlo_runner(
            path, x, y, effects=drift_effects("global"), rng=rng
        ),
    }
    pipeline_models = args.pipeline_models.split(",")
    for key, flags in PIPELINES.items() if name in pipeline_models else ():
        pipeline = ForwardPipeline(**flags)
        row[f"{key}_plain"] = plain_pipeline_seconds(path, x, y, pipeline, args.repeats) * 1e3
        variants[key] = lambda p=pipeline: monte_carlo_runner(path, x, y, pipeline=p, rng=rng)
        variants[f"{key}_grid"] = lambda p=pipeline: monte_carlo_runner(
            path, x, y, GRID, pipeline=p, rng=rng
        )
    for key, build_variant in variants.items():
        timed = build_variant()  # one Monte Carlo session alive at a time
        seconds, ratios = block_median(timed, samples, rounds, plain_pass, plain_times)
        row[key], row[f"{key}_ratios"] = seconds * 1e3, ratios
        del timed
        gc.collect()
    naive = naive_seconds_per_sample(path, x, max(3, int(args.naive_samples * SCALE.get(name, 1))))
    row.update(
        plain=statistics.median(plain_times) * 1e3,
        naive=naive * 1e3,
        draws_fast=draw_seconds_per_sample(path, "fast") * 1e3,
        draws_ziggurat=draw_seconds_per_sample(path, "ziggurat") * 1e3,
        samples=samples,
    )
    return row


#: fraction of --samples timed per model (the larger models cost seconds per sample)
SCALE = {"resnet18w": 0.1, "mobilenet": 0.25}


def pipeline_cells(r: dict) -> str:
    """(e)'s cells of one row: plain pipeline pass, MC per sample, efficiency on 1 and 5 sigmas."""
    cells = []
    for key in PIPELINES:
        if f"{key}_plain" not in r:
            cells += ["n/a"] * 4
            continue
        plain = r[f"{key}_plain"]
        cells += [
            f"{plain:.2f}",
            f"{r[key]:.2f}",
            f"{plain / r[key]:.2f}",
            f"{plain / r[f'{key}_grid']:.2f}",
        ]
    return " | ".join(cells)


def render(rows: list[dict], rng: str = "fast") -> str:
    header = (
        "| model | images | crossbar weights | MACs / pass | (a) plain ORT ms "
        "| (b) MC ms/sample | efficiency (a)/(b), median (IQR) | 5 sigmas: ms/sample/sigma "
        "| efficiency, 5 sigmas "
        "| before pre-packing: ms/sample | efficiency before "
        f"| ORT threads {'not ' if SPINS else ''}spinning: ms/sample | efficiency "
        "| (c) naive ms/sample "
        "| speed-up over naive | ceiling (c)/(a) | drift row ms | drift row / plain row "
        "| drift + global comp. row ms | comp. row / plain row "
        "| DAC 8 + ADC 8: plain pass ms | MC ms/sample | efficiency | efficiency, 5 sigmas "
        "| + read noise 0.02: plain pass ms | MC ms/sample | efficiency | efficiency, 5 sigmas "
        f"| draws ms/sample ({rng}) | draws ms/sample ("
        f"{'ziggurat' if rng == 'fast' else 'fast'}) |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    other = "ziggurat" if rng == "fast" else "fast"
    lines = [
        f"| {r['model']} | {r['images']:,} | {r['weights']:,} | {r['macs']:,} "
        f"| {r['plain']:.2f} | {r['mc']:.2f} | {paired(r['mc_ratios'])} "
        f"| {r['grid']:.2f} | {paired(r['grid_ratios'])} "
        f"| {r['mc_old']:.2f} | {paired(r['mc_old_ratios'])} "
        f"| {r['mc_spin']:.2f} | {paired(r['mc_spin_ratios'])} | {r['naive']:.2f} "
        f"| {r['naive'] / r['mc']:.1f}x | {r['naive'] / r['plain']:.1f}x "
        f"| {r['drift']:.2f} | {relative(r, 'drift')} "
        f"| {r['drift_comp']:.2f} | {relative(r, 'drift_comp')} "
        f"| {pipeline_cells(r)} "
        f"| {r[f'draws_{rng}']:.2f} | {r[f'draws_{other}']:.2f} |"
        for r in rows
    ]
    return "\n".join([header, *lines])


def load_models(names: list[str], folder: Path) -> list[tuple[str, Path, np.ndarray, np.ndarray]]:
    from ftaudit.data import load_dataset

    data = load_dataset(DATA)
    found = []
    for name in names:
        if name in ("lenet", "mlp"):
            found.append((name, MODELS / f"{name}.onnx", data.x, data.y))
        else:
            import bench_models

            found.append((name, *bench_models.build(name, folder)))
    return found


def aihwkit_row(python: str, lenet: dict, args) -> str:
    """ftaudit's LeNet cost per sample against IBM aihwkit's on the same model and data."""
    import json
    import subprocess

    samples = max(10, args.samples // 12)
    script = Path(__file__).resolve().parent / "aihwkit_compare.py"
    command = [python, str(script), "--samples", str(samples), "--sigma", str(SIGMA)]
    found = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
    return (
        "| side by side (lenet, 2,000 images, weights-only lognormal noise, sigma "
        f"{SIGMA}) | ms/sample | mean accuracy |\n| --- | ---: | ---: |\n"
        f"| IBM aihwkit 1.2.0 (ideal forward, programming noise only; {samples} samples) "
        f"| {found['ms_per_sample']:.2f} | {found['mean_accuracy']:.4f} "
        f"± {found['standard_error']:.4f} |\n"
        f"| ftaudit (this table's lenet row) | {lenet['mc']:.2f} | |\n"
        f"| ftaudit cost / aihwkit cost | {lenet['mc'] / found['ms_per_sample']:.2f} | |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="MC samples timed per model")
    parser.add_argument("--naive-samples", type=int, default=20, help="samples timed for (c)")
    parser.add_argument("--repeats", type=int, default=20, help="repeats for (a)")
    parser.add_argument(
        "--rounds", type=int, default=6, help="timed blocks per Monte Carlo variant (median)"
    )
    parser.add_argument(
        "--models",
        default="lenet,mlp,rescnn,mobilenet,resnet18w",
        help="comma-separated: lenet, mlp, rescnn, mobilenet, resnet18w",
    )
    parser.add_argument(
        "--aihwkit-python",
        help="a Python with aihwkit 1.2.0: adds the side-by-side LeNet row (aihwkit_compare.py)",
    )
    parser.add_argument(
        "--rng", default="fast", choices=["fast", "ziggurat"], help="the Monte Carlo's generator"
    )
    parser.add_argument(
        "--pipeline-models",
        default="lenet,mlp,rescnn",
        help="models that get the forward-pipeline columns (read noise on the large CNNs "
        "costs minutes per sample)",
    )
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    global SPINS
    from ftaudit.models import ort_spinning

    SPINS = ort_spinning.spin_between_runs()
    ort_spinning.SPIN_BETWEEN_RUNS = SPINS

    with tempfile.TemporaryDirectory(prefix="ftaudit-bench-") as tmp:
        rows = []
        for name, path, x, y in load_models(args.models.split(","), Path(tmp)):
            rows.append(measure(name, path, x, y, args))
            print(render(rows[-1:], args.rng).splitlines()[-1], flush=True)
    table = render(rows, args.rng)
    lenet = next((r for r in rows if r["model"] == "lenet"), None)
    if args.aihwkit_python and lenet is not None:
        table += "\n\n" + aihwkit_row(args.aihwkit_python, lenet, args)
    summary = (
        f"Machine: {machine()}. Run on {time.strftime('%Y-%m-%d')} "
        f"(`python benchmarks/mc_throughput.py --write`).\n\n"
        f"Lognormal noise at sigma={SIGMA} (5-sigma grid {GRID}), batch size {BATCH}, "
        f"{args.samples} Monte Carlo samples timed per model (fewer for the two large models: "
        f"the samples column of the script's output), {args.naive_samples} for the naive way. "
        "lenet and mlp run on the 2,000 shipped Fashion-MNIST images; the other models on "
        "random inputs labelled by the clean model (bench_models.py). (a) is the median of "
        "plain passes timed between the Monte Carlo blocks (and a steady loop before them); "
        "each Monte Carlo column is the median of "
        f"{args.rounds} blocks, one variant alive at a time. Efficiency is paired: each "
        "block's time per sample against the mean of the plain passes timed just before and "
        "after it (each the median of three passes after an untimed one), the median over the "
        "blocks with its interquartile range (the VM's speed "
        "drifts between minutes; neighbours share it). Drift and compensation rows are a "
        "ratio of two such paired efficiencies. "
        "Drift rows: one time "
        "(1 hour), nu 0.05 +- 0.01. Forward-pipeline columns: efficiency is one plain pass "
        "of the same pipeline graph (ideal weights, no read noise) over its Monte Carlo cost "
        f"(models {args.pipeline_models}). Normals drawn with --rng {args.rng}. "
        f"ONNX Runtime threads {'spin' if SPINS else 'do not spin'} (ftaudit's choice when "
        'the script started: spinning on an idle machine); the "ORT threads" column runs '
        "the other mode. "
        "No GPU was lent to this session: no GPU rows.\n"
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
