"""Peak memory of ``ftaudit eval`` against plain inference of the same model.

Each measurement runs in a fresh Python process and reads its own high-water mark
(``VmHWM`` in /proc/self/status, Linux) at exit, so nothing of this script's process counts:
(a) plain inference over the data in batches of 512 (ONNX: one ONNX Runtime session; torch:
the loaded module without autograd); (b) ``ftaudit eval MODEL --sigma 0.3 --samples 20``
(load, set-up, Monte Carlo, report), with its resident memory at exit (``VmRSS``: what a long
run holds). Models: the two sample models, the ResNet-18-width CNN of bench_models.py (as
ONNX, TorchScript and torch.export) and a wide MLP (784-4096-4096-4096-10, 33.6 million
weights) built here with seeded random weights. The last columns give ftaudit's extra peak
over plain inference and the target: at most 64 MiB (ftaudit's own imports: typer, rich, its
modules) plus 10 times the crossbar weights' bytes (a Monte Carlo sample holds the clean, the
perturbed and two draw buffers of them, and the set-up optimises the model for the
pre-packed layouts).

    python benchmarks/memory.py --write
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "sample_models"
DATA = MODELS / "fmnist_test_2000.npz"
BEGIN, END = "<!-- memory:begin -->", "<!-- memory:end -->"
#: extra peak over plain inference: a fixed MiB plus a multiple of the crossbar weights' bytes
TARGET_FIXED, TARGET_PER_WEIGHT = 64.0, 10.0

#: prepended to every measured program: report VmHWM and VmRSS (MiB) on stderr at exit
_REPORT_AT_EXIT = """
import atexit, sys
def _report():
    fields = dict(line.split(':', 1) for line in open('/proc/self/status'))
    hwm, rss = (int(fields[k].split()[0]) / 1024 for k in ('VmHWM', 'VmRSS'))
    sys.stderr.write(f'MEMORY {hwm} {rss}\\n')
atexit.register(_report)
"""

_PLAIN = """
import numpy as np, onnxruntime as ort
with np.load({data!r}) as d:
    x = d['x']
session = ort.InferenceSession({model!r}, providers=['CPUExecutionProvider'])
name = session.get_inputs()[0].name
x = x.astype(np.float32).reshape(len(x), *session.get_inputs()[0].shape[1:])
if {scale!r}:
    x = x / 255
for start in range(0, len(x), 512):
    session.run(None, {{name: x[start:start + 512]}})
"""

_PLAIN_TORCH = """
import numpy as np, torch
with np.load({data!r}) as d:
    x = torch.from_numpy(d['x'].astype(np.float32))
path = {model!r}
module = torch.export.load(path).module() if path.endswith('.pt2') else torch.jit.load(path)
with torch.no_grad():
    for start in range(0, len(x), 512):
        module(x[start:start + 512])
"""

_EVAL = """
import runpy
sys.argv = ['ftaudit', 'eval', {model!r}, '--data', {data!r}, '--sigma', '0.3',
            '--samples', '20', '--seed', '0', '--json', {json!r}]
try:
    runpy.run_module('ftaudit', run_name='__main__')
except SystemExit as exc:
    if exc.code:
        raise
"""


def measured(program: str) -> tuple[float, float]:
    """(peak MiB, resident MiB at exit) of ``program`` run in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _REPORT_AT_EXIT + program],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("MEMORY ")]
    if done.returncode or not lines:
        raise SystemExit(f"measurement failed:\n{done.stderr[-2000:]}")
    hwm, rss = lines[-1].split()[1:]
    return float(hwm), float(rss)


def wide_mlp(folder: Path) -> tuple[Path, Path]:
    """A 784-4096-4096-4096-10 ReLU MLP (ONNX MatMul + Add) and 500 random images labelled by
    it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dims = [784, 4096, 4096, 4096, 10]
    nodes, weights, value = [], [], "x"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(dims)):
        w = rng.normal(0, fan_in**-0.5, (fan_in, fan_out)).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}")]
        weights += [numpy_helper.from_array(np.zeros(fan_out, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [value, f"w{i}"], [f"m{i}"])]
        nodes += [helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        value = f"a{i}"
        if i < len(dims) - 2:
            nodes += [helper.make_node("Relu", [value], [f"r{i}"])]
            value = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "wide_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 784])],
        [helper.make_tensor_value_info(value, TensorProto.FLOAT, ["batch", 10])],
        weights,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    model = folder / "wide_mlp.onnx"
    onnx.save(proto, str(model))
    x = rng.random((500, 784), dtype=np.float32)
    h = x
    for i in range(len(dims) - 1):
        h = h @ numpy_helper.to_array(weights[2 * i])
        h = np.maximum(h, 0) if i < len(dims) - 2 else h
    data = folder / "wide_mlp.npz"
    np.savez(data, x=x, y=h.argmax(1))
    return model, data


def crossbar_megabytes(model: Path) -> float:
    from ftaudit.models import load_model

    loaded = load_model(model)
    return sum(w.nbytes for w in loaded.clean_weights().values()) / 2**20


def cases(folder: Path) -> list[tuple[str, Path, Path, bool]]:
    """(name, model, data, data in 0-255) for every measured model."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_models

    resnet, x, y = bench_models.build("resnet18w", folder)
    resnet_data = folder / "resnet18w.npz"
    np.savez(resnet_data, x=x, y=y)
    mlp, mlp_data = wide_mlp(folder)
    torch, _ = bench_models._torch()
    torch.manual_seed(0)
    module = bench_models.SPECS["resnet18w"][0]().eval()
    bench_models._randomise_batchnorm(module, 1)
    example = (torch.from_numpy(x[:2]),)
    scripted, exported = folder / "resnet18w.pt", folder / "resnet18w.pt2"
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.14, still supported
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(module, example), str(scripted))
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, example, dynamic_shapes=({0: batch},))
    torch.export.save(program, str(exported))
    return [
        ("lenet", MODELS / "lenet.onnx", DATA, True),
        ("mlp", MODELS / "mlp.onnx", DATA, True),
        ("resnet18w", resnet, resnet_data, False),
        ("resnet18w, TorchScript", scripted, resnet_data, False),
        ("resnet18w, torch.export", exported, resnet_data, False),
        ("wide MLP", mlp, mlp_data, False),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ftaudit-memory-") as tmp:
        folder = Path(tmp)
        for name, model, data, scale in cases(folder):
            plain = _PLAIN if model.suffix == ".onnx" else _PLAIN_TORCH
            plain_peak, _ = measured(plain.format(data=str(data), model=str(model), scale=scale))
            report = folder / f"{name}.json"
            peak, resident = measured(
                _EVAL.format(model=str(model), data=str(data), json=str(report))
            )
            json.loads(report.read_text())  # the run finished and wrote its report
            weights = crossbar_megabytes(model)
            extra = peak - plain_peak
            budget = TARGET_FIXED + TARGET_PER_WEIGHT * weights
            rows.append(
                f"| {name} | {weights:,.1f} | {plain_peak:,.0f} | {peak:,.0f} | {resident:,.0f} "
                f"| {extra:,.0f} | {budget:,.0f} | {'yes' if extra <= budget else 'no'} |"
            )
            print(rows[-1], flush=True)
    table = "\n".join(
        [
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}; run on "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC (`python benchmarks/memory.py "
            "--write`). MiB; plain = one ONNX Runtime session (torch: the loaded module) over the "
            "data, batches of 512; "
            "eval = `ftaudit eval --sigma 0.3 --samples 20`.",
            "",
            "| model | crossbar weights | plain inference peak | ftaudit eval peak | eval "
            "resident at exit | extra peak | target: 64 + 10 x weights | met |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
            *rows,
        ]
    )
    print(table)
    if args.write:
        doc = REPO / "docs" / "benchmarks.md"
        text = doc.read_text()
        head, rest = text.split(BEGIN)
        _, tail = rest.split(END)
        doc.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


if __name__ == "__main__":
    main()
