"""The acceptance matrix's models: tiny stand-ins for real architectures, every exporter.

Shared by tests/test_real_models.py (formats, inspect, harden) and
tests/test_real_models_analog.py (the analog forward pipeline on the same cells); the session
fixtures ``matrix`` and ``sklearn_mlp`` (tests/conftest.py) build each file once, on demand.
A ResNet-style CNN with BatchNorm, a MobileNet-style depthwise CNN, a ViT and a BERT-like text
encoder with int64 token ids, built in plain torch, random init, labelled with the clean
model's own argmax; each written by torch.onnx legacy and dynamo (with and without
optimisation), TorchScript, torch.export, float16 and int8 (QDQ, QOperator, dynamic); plus a
scikit-learn MLP through skl2onnx with and without ZipMap.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_blobs, train

nn = torch.nn

N = 32
FLOAT_FORMATS = ("legacy", "dynamo", "dynamo_noopt", "torchscript", "export")
SLOW_FORMATS = {"dynamo"}  # the optimising dynamo exporter takes seconds per model
#: onnxruntime.quantization: static QDQ, static QOperator (QLinearConv, QGemm), dynamic
#: (MatMulInteger, ConvInteger)
QUANTISED = ("qdq", "qoperator", "dynamic")
FORMATS = (*FLOAT_FORMATS, "float16", *QUANTISED)
#: cells whose harden gives one clear line and exit 2 (listed in the README)
HARDEN_UNSUPPORTED = set(QUANTISED)


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def resnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        Residual(4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 4),
    )


def mobilenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU6(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),  # depthwise
        nn.BatchNorm2d(4),
        nn.ReLU6(),
        nn.Conv2d(4, 8, 1),  # pointwise
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


class Attention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, t):
        scores = self.q(t) @ self.k(t).transpose(-1, -2) / 4.0
        return self.o(torch.softmax(scores, -1) @ self.v(t))


class ViT(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, d, 4, 4)
        self.attn = Attention(d)
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 16), nn.GELU(), nn.Linear(16, d))
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = t + self.attn(t)
        t = t + self.mlp(self.norm(t))
        return self.head(t.mean(1))


class TextEncoder(nn.Module):
    def __init__(self, vocab: int = 40, d: int = 8, length: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.position = nn.Parameter(torch.randn(length, d) * 0.1)
        self.attn = Attention(d)
        self.ff = nn.Linear(d, d)
        self.head = nn.Linear(d, 3)

    def forward(self, ids):
        t = self.embed(ids) + self.position
        t = t + self.attn(t)
        t = t + torch.relu(self.ff(t))
        return self.head(t.mean(1))


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "resnet": resnet,
    "mobilenet": mobilenet,
    "vit": ViT,
    "text": TextEncoder,
}


def _inputs(arch: str) -> np.ndarray:
    if arch == "text":
        rng = np.random.default_rng(5)
        return rng.integers(0, 40, size=(N, 6)).astype(np.int64)
    return make_blobs(N, seed=5)[0].astype(np.float32) / 255


def _build(arch: str) -> nn.Module:
    """Image models are fitted briefly to the blobs task, so their predictions differ between
    inputs and noise moves the accuracy; the text encoder's random init already does."""
    torch.manual_seed(11)
    model = ARCHITECTURES[arch]()
    if arch != "text":
        train(model, *make_blobs(200, seed=1), steps=40)
    return model.eval()


def crossbar_module_count(model: nn.Module) -> int:
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    return sum(isinstance(m, kinds) for m in model.modules())


def _dynamic() -> tuple[dict[int, object]]:
    return ({0: torch.export.Dim("batch", min=1, max=1024)},)


def _export(model: nn.Module, x: np.ndarray, fmt: str, path: Path, calib: np.ndarray) -> Path:
    example = torch.from_numpy(x[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt in ("legacy", "float16", *QUANTISED):
            legacy = path.with_suffix(".legacy.onnx") if fmt in QUANTISED else path
            net = model
            if fmt == "float16":
                net = _half(model)
                example = example.half() if example.is_floating_point() else example
            torch.onnx.export(
                net,
                (example,),
                str(legacy),
                dynamo=False,
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
                opset_version=17,
            )
            if fmt in QUANTISED:
                _quantize(legacy, path, calib, fmt)
        elif fmt in ("dynamo", "dynamo_noopt"):
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                optimize=fmt == "dynamo",
                dynamic_shapes=_dynamic(),
                verbose=False,
            )
        elif fmt == "torchscript":
            torch.jit.save(torch.jit.trace(model, example), str(path))
        elif fmt == "export":
            program = torch.export.export(model, (example,), dynamic_shapes=_dynamic())
            torch.export.save(program, str(path))
    return path


def _half(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).half()


def _quantize(source: Path, target: Path, calib: np.ndarray, fmt: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_dynamic,
        quantize_static,
    )

    if fmt == "dynamic":
        quantize_dynamic(str(source), str(target))
        return

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": calib[i : i + 8]} for i in range(0, len(calib), 8)])

        def get_next(self):
            return next(self.batches, None)

    quant_format = QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator
    quantize_static(str(source), str(target), Reader(), quant_format=quant_format)


SUFFIX = {"torchscript": ".pt", "export": ".pt2"}


class Matrix:
    """Models, data and exported files, built once per session and on demand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models: dict[str, nn.Module] = {}
        self.files: dict[tuple[str, str], Path] = {}
        self.data: dict[str, Path] = {}

    def model(self, arch: str) -> nn.Module:
        if arch not in self.models:
            self.models[arch] = _build(arch)
        return self.models[arch]

    def dataset(self, arch: str) -> Path:
        if arch not in self.data:
            x, model = _inputs(arch), self.model(arch)
            with torch.no_grad():
                y = model(torch.from_numpy(x)).argmax(1).numpy()
            path = self.root / f"{arch}.npz"
            np.savez(path, x=x, y=y)
            self.data[arch] = path
        return self.data[arch]

    def file(self, arch: str, fmt: str) -> Path:
        if (arch, fmt) not in self.files:
            path = self.root / f"{arch}_{fmt}{SUFFIX.get(fmt, '.onnx')}"
            x = np.load(self.dataset(arch))["x"]
            _export(self.model(arch), x, fmt, path, x)
            self.files[arch, fmt] = path
        return self.files[arch, fmt]


def cells(formats):
    """Every (arch, format) cell of ``formats`` as pytest params (the slow ones marked)."""
    return [
        pytest.param(arch, fmt, marks=[pytest.mark.slow] if fmt in SLOW_FORMATS else [])
        for arch in ARCHITECTURES
        for fmt in formats
        if not (arch == "text" and fmt == "float16")  # covered: int64 ids with float16 below
    ]


def build_sklearn_mlp(root: Path):
    """A fitted MLPClassifier, its data, the .npz and the skl2onnx files (ZipMap on and off)."""
    import onnx
    import skl2onnx
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=300, random_state=0).fit(x, y)
    np.savez(root / "data.npz", x=x, y=y)
    paths = {}
    for zipmap in (True, False):
        options = None if zipmap else {id(clf): {"zipmap": False}}
        proto = skl2onnx.to_onnx(
            clf, x[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3}
        )
        paths[zipmap] = root / f"mlp_zipmap_{zipmap}.onnx"
        onnx.save(proto, paths[zipmap])
    return clf, x, y, root / "data.npz", paths
