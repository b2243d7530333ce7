"""Build the sample models and data subsets shipped in ``sample_models/``.

Trains a LeNet-5 (as in TRICE) and a 3-layer MLP (as in BayesFT) on the full Fashion-MNIST
training set, exports each as ONNX and TorchScript, checks that both exports agree, cuts a fixed
2,000-image test subset and a seeded 5,000-image training subset, and writes ``manifest.json``
with hashes and clean accuracies. Everything is seeded, so a rebuild on the same software gives
the same numbers. The tests never run this script; they use its committed outputs.

Usage: ``python sample_models/build.py [--data-dir DIR] [--out DIR]``
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import struct
import sys
import tempfile
import time
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

SEED = 0
THREADS = 2
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
TEST_SUBSET_SIZE = 2_000
TRAIN_SUBSET_SIZE = 5_000
CHECK_IMAGES = 100
MAX_EXPORT_DIFF = 1e-4
ONNX_OPSET = 17

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "fashion-mnist"
DEFAULT_OUT_DIR = Path(__file__).resolve().parent

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

# IDX element type codes (third byte of the magic number) -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True)
class Split:
    """Images as uint8 (n, 1, 28, 28) and labels as int64 (n,)."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class ModelSpec:
    """A sample model: how to build it, how long to train it, and what it is."""

    name: str
    build: Callable[[], nn.Module]
    epochs: int
    description: str


def read_idx(path: Path) -> np.ndarray:
    """Read a (optionally gzip-compressed) IDX file into a native-endian numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        raw = stream.read()
    zero, type_code, ndim = struct.unpack_from(">HBB", raw, 0)
    if zero != 0 or type_code not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic bytes {raw[:4].hex()})")
    shape = struct.unpack_from(f">{ndim}I", raw, 4)
    dtype = IDX_DTYPES[type_code]
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values")
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def load_split(data_dir: Path, prefix: str) -> Split:
    """Load one Fashion-MNIST split (``train`` or ``t10k``) from the four original IDX files."""
    images = read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz")
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(f"{prefix}: images {images.shape} do not match labels {labels.shape}")
    return Split(images=images[:, None, :, :], labels=labels.astype(np.int64))


def to_float(images: np.ndarray) -> np.ndarray:
    """Scale uint8 pixels to float32 in [0, 1]; the models take no other normalisation."""
    return images.astype(np.float32) / 255.0


def build_lenet() -> nn.Module:
    """LeNet-5 as used by TRICE: two 5x5 convolutions with max-pooling, then three dense layers."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 6, 5),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(6, 16, 5),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(16 * 4 * 4, 120),
            relu3=nn.ReLU(),
            fc2=nn.Linear(120, 84),
            relu4=nn.ReLU(),
            fc3=nn.Linear(84, 10),
        )
    )


def build_mlp() -> nn.Module:
    """Three-layer perceptron as used by BayesFT: 784-256-256-10 with ReLU."""
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(28 * 28, 256),
            relu1=nn.ReLU(),
            fc2=nn.Linear(256, 256),
            relu2=nn.ReLU(),
            fc3=nn.Linear(256, 10),
        )
    )


MODELS = (
    ModelSpec(
        name="lenet",
        build=build_lenet,
        epochs=15,
        description="LeNet-5 (2 conv + 3 dense, as in TRICE) trained on Fashion-MNIST",
    ),
    ModelSpec(
        name="mlp",
        build=build_mlp,
        epochs=10,
        description="3-layer MLP 784-256-256-10 (as in BayesFT) trained on Fashion-MNIST",
    ),
)


def train(spec: ModelSpec, train_split: Split) -> nn.Module:
    """Train one model with Adam and cross-entropy; batch order comes from a seeded generator."""
    torch.manual_seed(SEED)
    model = spec.build()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    images = torch.from_numpy(to_float(train_split.images))
    labels = torch.from_numpy(train_split.labels)
    order_generator = torch.Generator().manual_seed(SEED)
    model.train()
    for epoch in range(spec.epochs):
        order = torch.randperm(len(labels), generator=order_generator)
        total_loss = 0.0
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
        print(
            f"  {spec.name} epoch {epoch + 1}/{spec.epochs}: loss {total_loss / len(order):.4f}",
            file=sys.stderr,
        )
    return model.eval()


def atomic_target(path: Path) -> Path:
    """A fresh temporary path in the target's directory, to be moved over the target.

    ``mkstemp`` creates the file as 0600; widen it to the usual 0644 so the shipped files are
    readable by everyone once they replace their targets.
    """
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    os.chmod(name, 0o644)
    return Path(name)


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export with the TorchScript-based exporter, a dynamic batch axis and named input/output."""
    dummy = torch.zeros(1, 1, 28, 28)
    temporary = atomic_target(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(
            model.eval(),
            (dummy,),
            str(temporary),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
        )
    os.replace(temporary, path)


def export_torchscript(model: nn.Module, path: Path) -> None:
    """Script the model (no tracing needed: both models are plain Sequentials) and save it.

    Saved through a buffer because ``torch.jit.save`` names the archive's root folder after the
    file it writes, which would put the random temporary name into the bytes.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.jit.save(torch.jit.script(model.eval()), buffer)
    temporary = atomic_target(path)
    temporary.write_bytes(buffer.getvalue())
    os.replace(temporary, path)


def onnx_session(path: Path) -> ort.InferenceSession:
    """A CPU ONNX Runtime session limited to the build's thread budget."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    """Logits for uint8 images, computed by ONNX Runtime."""
    (logits,) = session.run(["logits"], {"input": to_float(images)})
    return np.asarray(logits)


def torchscript_logits(path: Path, images: np.ndarray) -> np.ndarray:
    """Logits for uint8 images, computed by the reloaded TorchScript file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        module = torch.jit.load(str(path))
    with torch.no_grad():
        return module(torch.from_numpy(to_float(images))).numpy()


def initializer_shapes(path: Path) -> dict[str, list[int]]:
    """Names and shapes of the ONNX initializers (the weights ftaudit perturbs)."""
    graph = onnx.load(str(path)).graph
    return {tensor.name: list(tensor.dims) for tensor in graph.initializer}


def verify_exports(
    model: nn.Module, onnx_path: Path, torchscript_path: Path, images: np.ndarray
) -> dict[str, float]:
    """Check the ONNX graph and that eager, ONNX Runtime and TorchScript logits agree."""
    onnx.checker.check_model(onnx.load(str(onnx_path)), full_check=True)
    with torch.no_grad():
        eager = model(torch.from_numpy(to_float(images))).numpy()
    from_onnx = onnx_logits(onnx_session(onnx_path), images)
    from_torchscript = torchscript_logits(torchscript_path, images)
    differences = {
        "onnxruntime_vs_torchscript": float(np.max(np.abs(from_onnx - from_torchscript))),
        "onnxruntime_vs_eager": float(np.max(np.abs(from_onnx - eager))),
    }
    for label, difference in differences.items():
        if not difference < MAX_EXPORT_DIFF:
            raise RuntimeError(f"{onnx_path.name}: {label} logits differ by {difference:.3g}")
    return differences


def accuracy(session: ort.InferenceSession, split: Split) -> float:
    """Top-1 accuracy of an ONNX Runtime session on a split, in chunks to bound memory."""
    correct = 0
    for start in range(0, len(split.labels), 1_000):
        logits = onnx_logits(session, split.images[start : start + 1_000])
        correct += int(np.sum(logits.argmax(axis=1) == split.labels[start : start + 1_000]))
    return correct / len(split.labels)


def save_npz(path: Path, split: Split) -> None:
    """Write ``x`` and ``y`` like ``np.savez_compressed``, but with fixed zip timestamps.

    ``np.savez_compressed`` stamps each member with the current time, so its bytes (and the
    manifest's sha256) would change on every rebuild; fixing the timestamp keeps them stable.
    """
    temporary = atomic_target(path)
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in (("x", split.images), ("y", split.labels)):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            member = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(member, buffer.getvalue())
    os.replace(temporary, path)


def write_json(path: Path, payload: object) -> None:
    """Write pretty-printed JSON atomically."""
    temporary = atomic_target(path)
    temporary.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_subset_indices(total: int) -> np.ndarray:
    """The training subset: a seeded draw without replacement, sorted to keep file order."""
    generator = np.random.default_rng(SEED)
    return np.sort(generator.choice(total, size=TRAIN_SUBSET_SIZE, replace=False))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; a data folder without the four IDX files is a usage error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder with the four Fashion-MNIST IDX .gz files (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help="folder to write models, data and manifest.json into (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    missing = [name for name in IDX_FILES if not (args.data_dir / name).is_file()]
    if missing:
        parser.error(
            f"{args.data_dir} lacks {', '.join(missing)}; pass --data-dir with the Fashion-MNIST "
            "IDX files (apt-get install dataset-fashion-mnist puts them in "
            "/usr/share/datasets/fashion-mnist)"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Build every output into ``--out`` and write the manifest last."""
    args = parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)

    train_split = load_split(args.data_dir, "train")
    test_split = load_split(args.data_dir, "t10k")
    test_subset = Split(test_split.images[:TEST_SUBSET_SIZE], test_split.labels[:TEST_SUBSET_SIZE])
    subset_indices = train_subset_indices(len(train_split.labels))
    train_subset = Split(train_split.images[subset_indices], train_split.labels[subset_indices])

    entries: dict[str, dict[str, object]] = {}
    test_subset_path = out_dir / "fmnist_test_2000.npz"
    save_npz(test_subset_path, test_subset)
    entries[test_subset_path.name] = {
        "kind": "data",
        "description": "Fashion-MNIST t10k test set, first 2,000 images (indices 0-1999), "
        "x uint8 (2000, 1, 28, 28), y int64 (2000,)",
        "selection": "t10k indices 0..1999 in file order",
    }
    train_subset_path = out_dir / "fmnist_train_5000.npz"
    save_npz(train_subset_path, train_subset)
    entries[train_subset_path.name] = {
        "kind": "data",
        "description": "Fashion-MNIST training set, seeded random 5,000 images, "
        "x uint8 (5000, 1, 28, 28), y int64 (5000,)",
        "selection": f"np.sort(np.random.default_rng({SEED}).choice(60000, size=5000, "
        "replace=False)) over the train IDX file order",
        "class_counts": np.bincount(train_subset.labels, minlength=10).tolist(),
    }

    check_images = test_split.images[:CHECK_IMAGES]
    for spec in MODELS:
        model_started = time.perf_counter()
        print(f"training {spec.name} for {spec.epochs} epochs", file=sys.stderr)
        model = train(spec, train_split)
        onnx_path = out_dir / f"{spec.name}.onnx"
        torchscript_path = out_dir / f"{spec.name}.pt"
        export_onnx(model, onnx_path)
        export_torchscript(model, torchscript_path)
        differences = verify_exports(model, onnx_path, torchscript_path, check_images)
        session = onnx_session(onnx_path)
        accuracies = {
            "test_10k": accuracy(session, test_split),
            "test_2000": accuracy(session, test_subset),
        }
        common = {
            "kind": "model",
            "model": spec.name,
            "description": spec.description,
            "input": {"name": "input", "shape": ["batch", 1, 28, 28], "dtype": "float32"},
            "input_scaling": "pixels / 255, no mean/std normalisation",
            "output": {"name": "logits", "shape": ["batch", 10], "dtype": "float32"},
            "parameters": sum(p.numel() for p in model.parameters()),
            "clean_accuracy": accuracies,
            "training": {
                "data": "Fashion-MNIST train, all 60,000 images",
                "optimizer": "Adam",
                "learning_rate": LEARNING_RATE,
                "batch_size": BATCH_SIZE,
                "epochs": spec.epochs,
                "seed": SEED,
            },
        }
        entries[onnx_path.name] = {
            **common,
            "format": "onnx",
            "opset": ONNX_OPSET,
            "initializers": initializer_shapes(onnx_path),
            "max_abs_logit_diff_100_test_images": differences,
        }
        entries[torchscript_path.name] = {**common, "format": "torchscript"}
        print(
            f"  {spec.name}: test accuracy {accuracies['test_10k']:.4f} (10k), "
            f"{accuracies['test_2000']:.4f} (first 2,000); "
            f"{time.perf_counter() - model_started:.0f} s",
            file=sys.stderr,
        )

    files = {
        name: {"sha256": sha256(out_dir / name), "size": (out_dir / name).stat().st_size, **entry}
        for name, entry in sorted(entries.items())
    }
    manifest = {
        "source": {
            "dataset": "Fashion-MNIST (Zalando Research)",
            "license": "MIT, Copyright (c) 2017 Zalando SE",
            "idx_sha256": {name: sha256(args.data_dir / name) for name in sorted(IDX_FILES)},
        },
        "built_with": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "threads": THREADS,
        },
        "files": files,
    }
    write_json(out_dir / "manifest.json", manifest)
    print(f"done in {time.perf_counter() - started:.0f} s, wrote {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
