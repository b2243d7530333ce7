"""Hostile inputs and faults (issue 14): the corpus as one table, case -> exit code -> stderr
fragment -> files left, plus the cases that need a library call or a real process.

Every table case runs the CLI in-process in its own folder; for an exit 2 the run must print
exactly one stderr line and leave every file in the folder as it was (nothing written, nothing
replaced, no temp file).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_blobs

onnx = pytest.importorskip("onnx")

FAST = ("--samples", "3", "--seed", "1", "--sigma", "0.1")


# --- builders of hostile files ------------------------------------------------------------------
def tiny_onnx(
    path: Path,
    *,
    weight_name: str = "w",
    weight: np.ndarray | None = None,
    bool_output: bool = False,
    external: bool = False,
) -> Path:
    """Flatten -> MatMul(64x4) -> scores: a linear classifier of the 8x8 blobs (columns are
    the bars' rows, so it is accurate). ``bool_output``: scores > 0 instead of the scores."""
    from onnx import TensorProto, helper, numpy_helper

    if weight is None:
        weight = np.zeros((64, 4), np.float32)
        for label in range(4):
            row = 1 + 2 * label
            weight[8 * row + 1 : 8 * row + 7, label] = 1.0
            weight[8 * (row + 1) + 1 : 8 * (row + 1) + 7, label] = 1.0
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", weight_name], ["scores"]),
    ]
    out_name, out_type = "scores", TensorProto.FLOAT
    if bool_output:
        nodes.append(helper.make_node("Greater", ["scores", "zero"], ["hot"]))
        out_name, out_type = "hot", TensorProto.BOOL
    initializers = [numpy_helper.from_array(weight.astype(np.float32), weight_name)]
    if bool_output:
        initializers.append(numpy_helper.from_array(np.zeros((), np.float32), "zero"))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info(out_name, out_type, ["n", 4])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="weights.bin",
            size_threshold=0,
        )
    else:
        onnx.save(model, str(path))
    return path


def blobs_file(path: Path, *, x: np.ndarray | None = None, y: np.ndarray | None = None) -> Path:
    bx, by = make_blobs(64, seed=5)
    np.savez(path, x=bx if x is None else x, y=by if y is None else y)
    return path


def device_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def lying_npz(path: Path) -> Path:
    """x.npy's header promises (10**9, 64) floats; the entry holds 64 bytes of data."""
    import zipfile

    header = {"descr": "<f4", "fortran_order": False, "shape": (10**9, 64)}
    buffer = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", buffer.getvalue() + bytes(64))
        archive.writestr("y.npy", _npy(np.zeros(10**9 // 10**9, np.int64)))
    return path


def _npy(array: np.ndarray) -> bytes:
    buffer = __import__("io").BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def external_beyond(folder: Path) -> Path:
    """An ONNX model whose external tensor claims bytes past the end of weights.bin."""
    model_path = tiny_onnx(folder / "ext.onnx", external=True)
    model = onnx.load(str(model_path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "length":
            entry.value = str(10**12)
    onnx.save(model, str(model_path))
    return model_path


def config(folder: Path, text: str) -> Path:
    path = folder / "cfg.toml"
    path.write_text(text)
    return path


def torchscript_module(folder: Path, kind: str) -> Path:
    """A scripted Linear model whose forward raises (torch.jit.Error), returns a dict, or
    returns integer class indices."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Raises(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.numel() >= 0:
                raise ValueError("refusing to run")
            return self.fc(x.flatten(1))

    class ReturnsDict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 4)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.fc(x.flatten(1))}

    class ReturnsClasses(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1)).argmax(dim=1, keepdim=True).expand(-1, 4)

    module = {"raises": Raises, "dict": ReturnsDict, "ints": ReturnsClasses}[kind]()
    path = folder / f"{kind}.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def damaged_checkpoint(folder: Path, run_cli, edit: Callable[[dict], None]) -> list[str]:
    """A real checkpointed run, then its checkpoint edited; returns the --resume argv."""
    model, data = tiny_onnx(folder / "m.onnx"), blobs_file(folder / "d.npz")
    argv = ["eval", str(model), "--data", str(data), *FAST, "--checkpoint-dir", str(folder)]
    code, _, err = run_cli(*argv, "-q")
    assert code == 0, err
    path = folder / "ftaudit-eval.ckpt.npz"
    with np.load(path) as saved:
        arrays = {key: saved[key] for key in saved.files}
    edit(arrays)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return [*argv, "--resume"]


# --- the table ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    build: Callable[..., list[str]]  # (folder, run_cli) -> argv
    code: int
    fragment: str
    left: tuple[str, ...] = ()  # new files the run leaves (relative to the folder)


def _eval(d: Path, *extra: str, model: Path | None = None, data: Path | None = None) -> list[str]:
    model = model or tiny_onnx(d / "m.onnx")
    data = data or blobs_file(d / "d.npz")
    return ["eval", str(model), "--data", str(data), *FAST, "-q", *extra]


def _harden(d: Path, *extra: str) -> list[str]:
    model, data = tiny_onnx(d / "m.onnx"), blobs_file(d / "d.npz")
    return ["harden", str(model), "--data", str(data), "--sigma", "0.1", "-q", *extra]


def _image_folder(d: Path) -> Path:
    from PIL import Image

    x, y = make_blobs(8, seed=1)
    for i, (pixels, label) in enumerate(zip(x, y, strict=True)):
        (d / "img" / f"{label:02d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[0]).save(d / "img" / f"{label:02d}" / f"{i}.png")
    return d / "img"


def _first_image(d: Path) -> str:
    return str(sorted((d / "img").rglob("*.png"))[0])


CASES: dict[str, Case] = {
    # 2. outputs never overwrite an input or each other
    "json-over-data": Case(lambda d, r: _eval(d, "--json", str(d / "d.npz")), 2, "refusing"),
    "csv-over-config": Case(
        lambda d, r: _eval(
            d, "--config", str(config(d, "seed = 1\n")), "--csv", str(d / "cfg.toml")
        ),
        2,
        "over the input file",
    ),
    "json-over-noise-file": Case(
        lambda d, r: _eval(
            d,
            "--noise",
            str(device_file(d / "dev.toml", "sigma_multipliers = [1.0, 1.0, 1.0, 1.0]\n")),
            "--json",
            str(d / "dev.toml"),
        ),
        2,
        "over the input file",
    ),
    "json-over-image-in-data-folder": Case(
        lambda d, r: [
            *_eval(d, data=_image_folder(d)),
            "--json",
            _first_image(d),
        ],
        2,
        "inside the input folder",
    ),
    "json-and-csv-one-path": Case(
        lambda d, r: _eval(d, "--json", str(d / "r.out"), "--csv", str(d / "r.out")),
        2,
        "would both be written",
    ),
    "json-via-link-to-model": Case(
        lambda d, r: [
            *_eval(d),
            "--json",
            str(_link(d / "link.json", d / "m.onnx")),
        ],
        2,
        "refusing",
    ),
    "harden-o-over-data": Case(lambda d, r: _harden(d, "-o", str(d / "d.npz")), 2, "refusing"),
    "harden-report-over-val-data": Case(
        lambda d, r: _harden(
            d,
            "-o",
            str(d / "out.onnx"),
            "--val-data",
            str(d / "d.npz"),
            "--report",
            str(d / "d.npz"),
        ),
        2,
        "refusing",
    ),
    "harden-report-and-o-one-path": Case(
        lambda d, r: _harden(d, "-o", str(d / "out.onnx"), "--report", str(d / "out.onnx")),
        2,
        "would both be written",
    ),
    "json-over-external-data": Case(
        lambda d, r: _eval(
            d, "--json", str(d / "weights.bin"), model=tiny_onnx(d / "ext.onnx", external=True)
        ),
        2,
        "over the input file",
    ),
    # 5. unbounded reads
    "npz-header-lies": Case(
        lambda d, r: _eval(d, data=lying_npz(d / "lie.npz")), 2, "declares shape"
    ),
    "external-data-beyond-file": Case(
        lambda d, r: _eval(d, model=external_beyond(d)), 2, "beyond the file's"
    ),
    "model-link-to-dev-zero": Case(
        lambda d, r: _eval(d, model=_link(d / "zero.onnx", Path("/dev/zero"))),
        2,
        "not a regular file",
    ),
    "model-fifo": Case(lambda d, r: _eval(d, model=_fifo(d / "m.onnx")), 2, "is a FIFO"),
    "data-fifo": Case(lambda d, r: _eval(d, data=_fifo(d / "d.npz")), 2, "is a FIFO"),
    # 6. silently wrong numbers
    "nan-inputs": Case(
        lambda d, r: _eval(
            d, data=blobs_file(d / "nan.npz", x=np.full((64, 1, 8, 8), np.nan, np.float32))
        ),
        2,
        "NaN or infinite",
    ),
    "overflowing-inputs": Case(
        lambda d, r: _eval(
            d, data=blobs_file(d / "big.npz", x=np.full((64, 1, 8, 8), 1e300))
        ),  # float32 overflow: numpy's cast warning must not reach stderr
        2,
        "NaN or infinite",
    ),
    "nan-weights": Case(
        lambda d, r: _eval(
            d, model=tiny_onnx(d / "nan.onnx", weight=np.full((64, 4), np.nan, np.float32))
        ),
        2,
        "holds NaN or infinite",
    ),
    "bool-logits": Case(
        lambda d, r: _eval(d, model=tiny_onnx(d / "b.onnx", bool_output=True)),
        2,
        "floating-point logits",
    ),
    "device-multiplier-1e308": Case(
        lambda d, r: _eval(
            d,
            "--noise",
            str(device_file(d / "dev.toml", "sigma_multipliers = [1.0, 1e308, 1.0, 1.0]\n")),
        ),
        2,
        "or one above 1e+06",
    ),
    # 7. formerly exit 3
    "torchscript-raises": Case(
        lambda d, r: _eval(d, model=torchscript_module(d, "raises")), 2, "cannot run"
    ),
    "torchscript-returns-dict": Case(
        lambda d, r: _eval(d, model=torchscript_module(d, "dict")), 2, "returns a dict"
    ),
    "torchscript-int-logits": Case(
        lambda d, r: _eval(d, model=torchscript_module(d, "ints")), 2, "floating-point logits"
    ),
    "empty-sigma-multipliers": Case(
        lambda d, r: _eval(
            d, "--noise", str(device_file(d / "dev.toml", "sigma_multipliers = []\n"))
        ),
        2,
        "needs sigma_multipliers",
    ),
    "samples-1e12": Case(
        lambda d, r: [*_eval(d), "--samples", "1000000000000"], 2, "more than ftaudit runs"
    ),
    "checkpoint-fingerprint-list": Case(
        lambda d, r: damaged_checkpoint(d, r, lambda a: a.update(fingerprint=np.array("[1, 2]"))),
        2,
        "fingerprint is not a table",
        ("ftaudit-eval.ckpt.npz",),
    ),
    # 8. config
    "config-unknown-top-key-beside-eval-table": Case(
        lambda d, r: _eval(d, "--config", str(config(d, "sampels = 3\n[eval]\nseed = 1\n"))),
        2,
        "unknown setting 'sampels'",
    ),
    # 9. edited checkpoints
    "checkpoint-count-999999": Case(
        lambda d, r: damaged_checkpoint(d, r, lambda a: a["counts"].fill(999999)),
        2,
        "was edited",
        ("ftaudit-eval.ckpt.npz",),
    ),
    "checkpoint-negative-count": Case(
        lambda d, r: damaged_checkpoint(d, r, lambda a: a["counts"].fill(-5)),
        2,
        "negative count",
        ("ftaudit-eval.ckpt.npz",),
    ),
    # 13. labels
    "label-1e30": Case(
        lambda d, r: _eval(d, data=blobs_file(d / "l.npz", y=np.full(64, 1e30))),
        2,
        "not a whole-number class index",
    ),
}


def _link(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: a regular file's sha256, else its kind."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        mode = os.lstat(path).st_mode
        if stat.S_ISREG(mode):
            entries[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            entries[str(path.relative_to(folder))] = stat.filemode(mode)
    return entries


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_case(name: str, tmp_path: Path, run_cli) -> None:
    case = CASES[name]
    argv = case.build(tmp_path, run_cli)
    before = _snapshot(tmp_path)
    code, out, err = run_cli(*argv)
    assert code == case.code, err
    assert case.fragment in err, err
    assert "Traceback" not in err and "\x1b" not in out + err
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err  # one line: no warning, no traceback
    after = _snapshot(tmp_path)
    left = {key for key in after if key not in before}
    assert left == set() or left <= set(case.left), left
    changed = {key for key in before if after.get(key) != before[key]}
    assert changed <= set(case.left), changed  # inputs untouched, nothing replaced


# --- 1. special files as outputs -----------------------------------------------------------------
def test_dev_null_stays_a_device(tmp_path: Path, run_cli) -> None:
    code, _, err = run_cli(*_eval(tmp_path, "--json", "/dev/null", "--csv", "/dev/null"))
    assert code == 2 and "would both be written" in err  # one target for two outputs
    code, _, err = run_cli(*_eval(tmp_path, "--json", "/dev/null"))
    assert code == 0, err
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_pipe_via_proc_fd_is_written_in_place(tmp_path: Path, run_cli) -> None:
    read_end, write_end = os.pipe()
    try:
        code, _, err = run_cli(*_eval(tmp_path, "--csv", f"/proc/self/fd/{write_end}"))
        assert code == 0, err
        os.close(write_end)
        write_end = -1
        text = os.read(read_end, 1 << 16).decode()
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    assert text.startswith("noise,k,sigma")
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_fifo_output_is_written_in_place(tmp_path: Path, run_cli) -> None:
    import threading

    fifo = _fifo(tmp_path / "out.json")
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    code, _, err = run_cli(*_eval(tmp_path, "--json", str(fifo)))
    reader.join(timeout=30)
    assert code == 0, err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert json.loads(received[0])["samples"] == 3


def test_link_to_a_regular_file_stays_a_link(tmp_path: Path, run_cli) -> None:
    target = tmp_path / "real.json"
    target.write_text("old")
    link = _link(tmp_path / "link.json", target)
    code, _, err = run_cli(*_eval(tmp_path, "--json", str(link)))
    assert code == 0, err
    assert link.is_symlink() and json.loads(target.read_text())["samples"] == 3


# --- 3. unwritable folders and late write failures -----------------------------------------------
@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_folder_is_refused_up_front(tmp_path: Path, run_cli) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = run_cli(*_eval(tmp_path, "--json", str(locked / "r.json")))
    finally:
        locked.chmod(0o755)
    assert code == 2 and "is not writable" in err


def test_writability_is_checked_before_any_work(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check runs up front (os.access says no): the model is never even loaded."""
    import ftaudit.fileio
    import ftaudit.models

    real_access = os.access
    monkeypatch.setattr(
        ftaudit.fileio.os,
        "access",
        lambda p, mode: False if str(p).endswith("locked") else real_access(p, mode),
    )
    monkeypatch.setattr(ftaudit.models, "load_model", lambda *a, **k: pytest.fail("loaded"))
    (tmp_path / "locked").mkdir()
    code, _, err = run_cli(*_eval(tmp_path, "--json", str(tmp_path / "locked" / "r.json")))
    assert code == 2 and "is not writable" in err


def test_disk_full_at_the_end_leaves_no_partial_set(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import ftaudit.fileio as fileio

    real = fileio.atomic_write_bytes

    def full_disk_for_csv(path: Path, data: bytes) -> None:
        if str(path).endswith(".csv"):

            def write(tmp: Path) -> None:
                tmp.write_bytes(data[:10])
                raise OSError(errno.ENOSPC, "No space left on device")

            fileio.atomic_write(path, write)
        else:
            real(path, data)

    monkeypatch.setattr(fileio, "atomic_write_bytes", full_disk_for_csv)
    argv = _eval(tmp_path, "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"))
    before = _snapshot(tmp_path)
    code, _, err = run_cli(*argv)
    assert code == 2, err
    assert "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert _snapshot(tmp_path) == before  # neither the JSON nor the CSV, no temp file


def test_checkpoint_enospc_is_one_line(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    def no_space(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    argv = _eval(tmp_path, "--checkpoint-dir", str(tmp_path / "ck"))
    monkeypatch.setattr(np, "savez", no_space)
    code, _, err = run_cli(*argv)
    assert code == 2 and "No space left on device" in err, err
    assert list((tmp_path / "ck").iterdir()) == []


# --- 4. external weight data is part of the model's identity -------------------------------------
def test_external_data_changes_the_model_hash_and_blocks_resume(tmp_path: Path, run_cli) -> None:
    model = tiny_onnx(tmp_path / "ext.onnx", external=True)
    data = blobs_file(tmp_path / "d.npz")
    ck = tmp_path / "ck"
    argv = ["eval", str(model), "--data", str(data), *FAST, "-q", "--checkpoint-dir", str(ck)]
    code, _, err = run_cli(*argv, "--json", str(tmp_path / "a.json"))
    assert code == 0, err
    weights = tmp_path / "weights.bin"
    changed = bytearray(weights.read_bytes())
    changed[:4] = np.float32(0.5).tobytes()
    weights.write_bytes(bytes(changed))
    code, _, err = run_cli(*argv, "--json", str(tmp_path / "b.json"))
    assert code == 0, err
    first = json.loads((tmp_path / "a.json").read_text())["model"]["sha256"]
    second = json.loads((tmp_path / "b.json").read_text())["model"]["sha256"]
    model_file_only = hashlib.sha256(model.read_bytes()).hexdigest()
    assert first != second and model_file_only not in (first, second)
    expected = hashlib.sha256(
        f"ext.onnx\0{model_file_only}\nweights.bin\0{hashlib.sha256(changed).hexdigest()}\n".encode()
    ).hexdigest()
    assert second == expected
    weights.write_bytes(bytes(changed[:-4]) + np.float32(2.0).tobytes())
    code, _, err = run_cli(*argv, "--resume")
    assert code == 2 and "model_sha256" in err


# --- 5. reads bounded by --limit and by memory ---------------------------------------------------
def test_npz_zip_bomb_reads_only_what_limit_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tracemalloc

    from ftaudit.data import load_dataset
    from ftaudit.errors import UserError

    n = 200_000  # 12.8 MB of zeros, about 13 kB compressed
    np.savez_compressed(
        tmp_path / "bomb.npz", x=np.zeros((n, 1, 8, 8), np.uint8), y=np.zeros(n, np.int64)
    )
    assert (tmp_path / "bomb.npz").stat().st_size < 100_000
    tracemalloc.start()
    data = load_dataset(tmp_path / "bomb.npz", limit=100)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert data.x.shape == (100, 1, 8, 8) and data.source["n"] == 100
    assert peak < 3_000_000  # 100 rows, not the 12.8 MB of the whole array
    monkeypatch.setenv("FTAUDIT_MEMORY_LIMIT", "4e6")
    with pytest.raises(UserError, match=r"needs 12\.8 MB of memory, more than the 4\.0 MB"):
        load_dataset(tmp_path / "bomb.npz")


def test_idx_gzip_with_lying_header_is_not_decompressed_in_full(tmp_path: Path) -> None:
    import gzip
    import tracemalloc

    from ftaudit.data import load_dataset
    from ftaudit.errors import UserError

    header = b"\x00\x00\x08\x03" + (10**7).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(header + bytes(28 * 28 * 10))  # 7.8 GB promised, 10 images given
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(b"\x00\x00\x08\x01" + (10**7).to_bytes(4, "big") + bytes(10))
    tracemalloc.start()
    with pytest.raises(UserError, match=r"truncated|memory"):
        load_dataset(tmp_path / "t10k-images-idx3-ubyte.gz")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50_000_000
    data = load_dataset(tmp_path / "t10k-images-idx3-ubyte.gz", limit=5)
    assert data.x.shape == (5, 28, 28)


# --- 6. harden never writes a diverged model ------------------------------------------------------
def test_harden_refuses_to_write_non_finite_weights(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from ftaudit.errors import UserError
    from ftaudit.harden.trainable import export_hardened, make_trainable
    from ftaudit.models import load_model

    trainable = make_trainable(load_model(tiny_onnx(tmp_path / "m.onnx")))
    with torch.no_grad():
        next(trainable.module.parameters()).fill_(float("nan"))
    with pytest.raises(UserError, match="training diverged"):
        export_hardened(trainable, tmp_path / "out.onnx", metadata={})
    assert not (tmp_path / "out.onnx").exists()


# --- 8. config paths ------------------------------------------------------------------------------
def test_config_noise_file_is_relative_to_the_config(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    device_file(sub / "dev.toml", 'name = "subdev"\nsigma_multipliers = [1.0, 2.0, 2.0, 1.0]\n')
    cfg = sub / "ftaudit.toml"
    cfg.write_text('noise = "dev.toml"\n[eval]\nseed = 1\n')
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(*_eval(tmp_path, "--config", str(cfg), "--json", "-"))
    assert code == 0, err
    assert json.loads(out)["noise"]["name"] == "subdev"


def test_config_top_level_keys_count_beside_an_eval_table(tmp_path: Path, run_cli) -> None:
    cfg = config(tmp_path, "samples = 2\nfail_under_kpp = 0.5\n[eval]\nseed = 4\n")
    model, data = tiny_onnx(tmp_path / "m.onnx"), blobs_file(tmp_path / "d.npz")
    code, out, err = run_cli(
        "eval", model, "--data", data, "--sigma", "0.1", "--config", cfg, "--json", "-"
    )
    assert code == 0, err
    report = json.loads(out)
    assert (report["samples"], report["seed"]) == (2, 4)
    assert [gate["metric"] for gate in report["gates"]] == ["kpp"]
    both = config(tmp_path, "samples = 2\n[eval]\nsamples = 3\n")
    code, _, err = run_cli("eval", model, "--data", data, "--sigma", "0.1", "--config", both)
    assert code == 2 and "both at the top level and in [eval]" in err


# --- 10, 11. hostile names in CSV cells and on the terminal --------------------------------------
def test_csv_cells_are_neutralised(tmp_path: Path, run_cli) -> None:
    import csv

    dev = device_file(
        tmp_path / "dev.toml",
        'name = "=HYPERLINK(\\"http://x\\")\\u0000\\r"\nsigma_multipliers = [1.0, 1.0, 1.0, 1.0]\n',
    )
    code, _, err = run_cli(*_eval(tmp_path, "--noise", str(dev), "--csv", str(tmp_path / "r.csv")))
    assert code == 0, err
    raw = (tmp_path / "r.csv").read_bytes()
    assert b"\0" not in raw and b"\r" not in raw
    rows = list(csv.reader(raw.decode().splitlines()))
    assert rows[1][0] == '\'=HYPERLINK("http://x") '
    assert rows[1][2] == "0.1"  # numbers are not touched


def test_text_cell_follows_owasp() -> None:
    from ftaudit.report.csv_report import text_cell

    for start in ("=", "+", "-", "@", "\t"):
        assert text_cell(f"{start}1+1") == f"'{start}1+1"
    assert text_cell("\r=1") == "' =1"
    assert text_cell("fc1.weight") == "fc1.weight" and text_cell("a\0b") == "ab"


def test_escape_sequences_in_layer_names_never_reach_the_terminal(tmp_path: Path, run_cli) -> None:
    model = tiny_onnx(tmp_path / "m.onnx", weight_name="fc\x1b]0;owned\x07\x1b[31m")
    code, out, err = run_cli("inspect", model)
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out
    assert "fc\\x1b]0;ow" in out  # shown escaped (the table may cut the rest)


def test_inspect_json_is_strict_json_with_nan_weights(tmp_path: Path, run_cli) -> None:
    model = tiny_onnx(tmp_path / "m.onnx", weight=np.full((64, 4), np.nan, np.float32))
    code, out, err = run_cli("inspect", model, "--json")
    assert code == 0, err

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in JSON")

    payload = json.loads(out, parse_constant=refuse)
    assert payload["layers"][0]["max_abs"] is None


# --- 12. workers and signals ----------------------------------------------------------------------
def test_repeated_worker_death_is_one_clear_error() -> None:
    from ftaudit.parallel import ProcessBackend, RetriedChunk, WorkersDied

    backend = ProcessBackend(None, 1)
    try:
        with pytest.raises(WorkersDied, match="died 4 times"):
            RetriedChunk(backend, os._exit, (9,)).result()
    finally:
        backend.close()


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(tmp_path: Path, *extra: str) -> subprocess.Popen:
    model, data = tiny_onnx(tmp_path / "m.onnx"), blobs_file(tmp_path / "d.npz")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CI": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ftaudit", "eval", str(model), "--data", str(data), "--sigma",
         "0.1", "--samples", "2000000", "-q", *extra],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    parent = _start(tmp_path, "--workers", "2")
    try:
        assert _wait_for(lambda: len(_children(parent.pid)) >= 2, 60), "workers never started"
        time.sleep(0.5)
        descendants = _children(parent.pid)  # the two workers and the resource tracker
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert _wait_for(lambda: not any(_alive(pid) for pid in descendants), 10), [
            pid for pid in descendants if _alive(pid)
        ]
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stderr.close()  # type: ignore[union-attr]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_keeps_the_checkpoint_and_names_the_resume_command(
    tmp_path: Path, workers: str
) -> None:
    ck = tmp_path / "ck"
    parent = _start(tmp_path, "--workers", workers, "--checkpoint-dir", str(ck))
    try:
        assert _wait_for(lambda: (ck / "ftaudit-eval.ckpt.npz").exists(), 60)
        children = _children(parent.pid)
        parent.send_signal(signal.SIGTERM)
        _, err = parent.communicate(timeout=60)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 143, err
    assert _wait_for(lambda: not any(_alive(pid) for pid in children), 10)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"checkpoint kept in {ck}" in lines[0]
    assert lines[0].endswith("--checkpoint-dir " + str(ck) + " --resume")
    with np.load(ck / "ftaudit-eval.ckpt.npz") as saved:
        assert saved["done"].sum() > 0


def test_edited_harden_checkpoint_is_refused(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from ftaudit.errors import UserError
    from ftaudit.harden.methods import _restore

    class Module:
        def load_state_dict(self, state: dict) -> None:
            raise RuntimeError("size mismatch for fc.weight")

    state = {"models": [{}], "optimizers": [], "epochs_done": 1, "method_state": "{}"}
    ctx = SimpleNamespace(resume_state=state, checkpoint_dir=tmp_path, epochs=3)
    with pytest.raises(UserError, match="damaged or was edited"):
        _restore(ctx, [SimpleNamespace(module=Module())], [])
    ok = SimpleNamespace(module=SimpleNamespace(load_state_dict=lambda state: None))
    state.update(epochs_done=999999, history="[]")
    with pytest.raises(UserError, match="epochs done: 999999 of 3"):
        _restore(ctx, [ok], [])
