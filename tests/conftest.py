"""Shared fixtures: small trained networks on a synthetic task, exported in several layouts.

The task (4 classes of 1x8x8 "images", each class a bright bar in a different place plus noise)
trains to ~100% in well under a second, so accuracy really moves under noise and tests of
robustness have signal. Everything is seeded.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"


def keyed_normals(
    seed: int, key: tuple[int, ...], shape: tuple[int, ...], rng: str = "fast"
) -> np.ndarray:
    """Stream ``key``'s first float32 standard normals under generator ``rng``: numpy's own
    ziggurat on SFC64(SeedSequence(seed, spawn_key=key)) for "ziggurat" (independent of
    ftaudit), the public ``ftaudit.draws.normals`` for "fast" (tests/test_draws.py checks it
    against an independent float64 Box-Muller)."""
    if rng == "ziggurat":
        sequence = np.random.SeedSequence(seed, spawn_key=key)
        generator = np.random.Generator(np.random.SFC64(sequence))
        return generator.standard_normal(shape, dtype=np.float32)
    from ftaudit.draws import normals

    return normals(seed, key, shape, rng)


def make_blobs(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (n, 1, 8, 8) and int64 labels in 0..3."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=n)
    x = rng.normal(60, 25, size=(n, 1, 8, 8))
    for i, label in enumerate(y):
        row = 1 + 2 * int(label)
        x[i, 0, row : row + 2, 1:7] += 150
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


@pytest.fixture(scope="session")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    return make_blobs()


@pytest.fixture(scope="session")
def blobs_npz(tmp_path_factory: pytest.TempPathFactory, blobs) -> Path:
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(path, x=blobs[0], y=blobs[1])
    return path


def _torch():
    return pytest.importorskip("torch")


def train(model, x: np.ndarray, y: np.ndarray, *, steps: int = 150, seed: int = 0):
    """Fit ``model`` on (x uint8, y) with Adam; returns the model in eval mode."""
    torch = _torch()
    torch.set_num_threads(1)  # tiny models: one thread trains ~8x faster on busy cores
    torch.manual_seed(seed)
    xt = torch.from_numpy(x.astype(np.float32) / 255)
    yt = torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
    return model.eval()


def tiny_convnet(batchnorm: bool = False):
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(1)
    layers = [nn.Conv2d(1, 4, 3)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 4)]
    return nn.Sequential(*layers)


def tiny_mlp():
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(2)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))


def export_onnx(
    model,
    path: Path,
    *,
    input_name: str = "input",
    output_name: str = "logits",
    dynamic: bool = True,
    keep_batchnorm: bool = False,
    batch: int = 1,
) -> Path:
    """Export with torch.onnx (dynamo=False); keep_batchnorm leaves BatchNormalization unfolded."""
    torch = _torch()
    kwargs = {}
    if keep_batchnorm:
        kwargs = {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            torch.zeros(batch, 1, 8, 8),
            str(path),
            dynamo=False,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "n"}, output_name: {0: "n"}} if dynamic else None,
            opset_version=17,
            **kwargs,
        )
    return path


def export_torchscript(model, path: Path) -> Path:
    torch = _torch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model.eval()), str(path))
    return path


@pytest.fixture(scope="session")
def trained_convnet(blobs):
    return train(tiny_convnet(), *blobs)


@pytest.fixture(scope="session")
def trained_convnet_bn(blobs):
    return train(tiny_convnet(batchnorm=True), *blobs)


@pytest.fixture(scope="session")
def trained_mlp(blobs):
    return train(tiny_mlp(), *blobs)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def convnet_onnx(trained_convnet, model_dir: Path) -> Path:
    return export_onnx(trained_convnet, model_dir / "convnet.onnx")


@pytest.fixture(scope="session")
def convnet_ts(trained_convnet, model_dir: Path) -> Path:
    return export_torchscript(trained_convnet, model_dir / "convnet.pt")


@pytest.fixture(scope="session")
def mlp_onnx(trained_mlp, model_dir: Path) -> Path:
    return export_onnx(trained_mlp, model_dir / "mlp.onnx")


def export_program(model, path: Path, example) -> Path:
    """torch.export.save of ``model`` with a dynamic batch axis."""
    torch = _torch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="session")
def lenet_pt2(model_dir: Path) -> Path:
    """The shipped sample LeNet (sample_models/lenet.pt's weights) as a torch.export archive,
    its architecture from the script that built the samples."""
    import importlib.util
    import sys

    torch = _torch()
    spec = importlib.util.spec_from_file_location("sample_models_build", SAMPLES / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = build  # its dataclasses look their module up
    spec.loader.exec_module(build)
    model = build.build_lenet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_state_dict(torch.jit.load(str(SAMPLES / "lenet.pt")).state_dict())
    return export_program(model, model_dir / "lenet.pt2", torch.zeros(2, 1, 28, 28))


def matmul_mlp_onnx(trained_mlp, path: Path, *, input_name: str = "pixels") -> Path:
    """The trained MLP rebuilt by hand: MatMul + Add, weights stored (in, out), no torch export."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    linear1, linear2 = trained_mlp[1], trained_mlp[3]
    w1 = linear1.weight.detach().numpy().T.copy()
    w2 = linear2.weight.detach().numpy().T.copy()
    b1 = linear1.bias.detach().numpy()
    b2 = linear2.bias.detach().numpy()
    nodes = [
        helper.make_node("Flatten", [input_name], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "fc1_w"], ["h0"]),
        helper.make_node("Add", ["h0", "fc1_b"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "fc2_w"], ["h3"]),
        helper.make_node("Add", ["h3", "fc2_b"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "matmul_mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])],
        [
            numpy_helper.from_array(w1, "fc1_w"),
            numpy_helper.from_array(b1, "fc1_b"),
            numpy_helper.from_array(w2, "fc2_w"),
            numpy_helper.from_array(b2, "fc2_b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def mlp_matmul_onnx(trained_mlp, model_dir: Path) -> Path:
    return matmul_mlp_onnx(trained_mlp, model_dir / "mlp_matmul.onnx")


@pytest.fixture(scope="session")
def matrix(tmp_path_factory: pytest.TempPathFactory):
    """The acceptance matrix's models and exported files (tests/real_models.py), on demand."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from real_models import Matrix

    _torch().set_num_threads(1)
    return Matrix(tmp_path_factory.mktemp("real_models"))


@pytest.fixture(scope="session")
def sklearn_mlp(tmp_path_factory: pytest.TempPathFactory):
    """A scikit-learn MLP through skl2onnx, with and without ZipMap (tests/real_models.py)."""
    pytest.importorskip("sklearn")
    pytest.importorskip("skl2onnx")
    pytest.importorskip("torch")
    from real_models import build_sklearn_mlp

    return build_sklearn_mlp(tmp_path_factory.mktemp("sklearn"))


@pytest.fixture
def run_cli(capsys) -> Callable[..., tuple[int, str, str]]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from ftaudit.cli import run

    def invoke(*args: str | Path) -> tuple[int, str, str]:
        code = run([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


@pytest.fixture
def gated_report():
    """A hand-built AuditReport for report writers: 3 sigmas, 4 gates (2 failed), hostile names.

    Model, layer and noise strings carry HTML/XML metacharacters and a control character, so
    writers must escape them; sigma 0.2 has a non-finite std (written as null / n/a).
    """
    from ftaudit.results import AuditReport, GateResult, Interval, LayerInfo, SigmaResult, Summary

    def result(sigma, n, mean, mean_ci, kpp, kpp_ci, lo, hi, std=0.01, stopped_early=False):
        summary = Summary(
            n=n,
            mean=mean,
            std=std,
            mean_interval=Interval(*mean_ci, 0.95, "Student t"),
            kpp=kpp,
            kpp_interval=Interval(*kpp_ci, 0.95, "order-statistic (binomial), equal-tailed"),
            min=lo,
            max=hi,
        )
        accuracies = np.linspace(lo, hi, n)
        return SigmaResult(sigma, summary, accuracies, 0.9781, stopped_early)

    results = [
        result(0.1, 200, 0.9712, (0.9706, 0.9718), 0.9641, (0.9625, 0.9652), 0.958, 0.979),
        result(0.2, 137, 0.9420, (0.9399, 0.9441), 0.9210, (0.9170, 0.9245), 0.901, 0.965,
               std=float("nan"), stopped_early=True),
        result(0.3, 200, 0.8730, (0.8681, 0.8779), 0.8105, (None, 0.8190), 0.740, 0.920),
    ]  # fmt: skip
    return AuditReport(
        ftaudit_version="0.1.0",
        command=["ftaudit", "eval", "models/<b>net</b> & co.onnx", "--sigma", "0.1,0.2,0.3"],
        model={
            "path": 'models/<b>net</b> & "co".onnx',
            "sha256": "a" * 64,
            "format": "onnx",
            "input": {"name": "input", "shape": [None, 1, 28, 28], "dtype": "float32"},
            "output": {"name": "logits"},
        },
        layers=[
            LayerInfo("fc1.weight<script>", "Gemm", (128, 784), 100352, 0.71, True, 100352),
            LayerInfo("fc2.weight", "Gemm", (10, 128), 1280, 0.93, False, None),
        ],
        data={"path": "data/test\x01set.npz", "sha256": "0123456789abcdef" * 4, "n": 10000},
        noise={"name": "rram", "levels": 16},
        seed=1234,
        samples=200,
        k=5.0,
        device="cpu",
        clean_accuracy=0.9805,
        quantized_accuracy=0.9781,
        results=results,
        elapsed_s=42.5,
        target_ci=0.01,
        gates=[
            GateResult("kpp", 0.1, 0.9641, 0.93, True),
            GateResult("mean", 0.1, 0.9712, 0.95, True),
            GateResult("kpp", 0.3, 0.8105, 0.93, False),
            GateResult("mean", 0.3, 0.8730, 0.95, False),
        ],
        options={"batch_size": 512, "layers": ["fc*"], "config_file": None},
    )
