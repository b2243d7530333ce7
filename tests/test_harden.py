"""End-to-end tests of ``ftaudit harden``: methods, export, resume, reports and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import export_onnx, export_torchscript, make_blobs, tiny_mlp, train

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from ftaudit.errors import UserError  # noqa: E402
from ftaudit.harden.api import harden  # noqa: E402
from ftaudit.models import load_model  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A briefly trained MLP (ONNX + TorchScript) and 2,000 training images."""
    d = tmp_path_factory.mktemp("harden")
    x, y = make_blobs(2000, seed=3)
    np.savez(d / "train.npz", x=x, y=y)
    model = train(tiny_mlp(), x[:200], y[:200], steps=60)
    export_onnx(model, d / "mlp.onnx")
    export_torchscript(model, d / "mlp.pt")
    return {"dir": d, "onnx": d / "mlp.onnx", "pt": d / "mlp.pt", "data": d / "train.npz"}


FAST = {"epochs": 15, "lr": 3e-3, "batch_size": 64, "eval_samples": 200}


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_noise_training_beats_plain_training_under_noise(setup) -> None:
    runs = {}
    for method in ("erm", "noise"):
        report = harden(
            setup["onnx"],
            setup["data"],
            output=setup["dir"] / f"{method}.onnx",
            method=method,
            noise="lognormal",
            sigma=1.2,
            eval_sigmas=[1.2],
            **FAST,
        )
        runs[method] = report.after.results[0].summary
    assert runs["noise"].kpp > runs["erm"].kpp + 0.1
    assert runs["noise"].mean > runs["erm"].mean + 0.03


def test_hardened_onnx_differs_only_in_initializer_values(setup) -> None:
    out = setup["dir"] / "trice.onnx"
    before_bytes = setup["onnx"].read_bytes()
    report = harden(
        setup["onnx"],
        setup["data"],
        output=out,
        method="trice",
        sigma=1.0,
        epochs=3,
        warmup=1,
        search_samples=20,
        eval_samples=20,
    )
    assert setup["onnx"].read_bytes() == before_bytes  # the input is never touched
    original, hardened = onnx.load(str(setup["onnx"])), onnx.load(str(out))
    onnx.checker.check_model(hardened)
    assert [(n.op_type, list(n.input), list(n.output)) for n in original.graph.node] == [
        (n.op_type, list(n.input), list(n.output)) for n in hardened.graph.node
    ]
    assert original.graph.input == hardened.graph.input
    assert original.graph.output == hardened.graph.output
    assert original.opset_import == hardened.opset_import
    a, b = _initializers(setup["onnx"]), _initializers(out)
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {
        k: (v.shape, v.dtype) for k, v in b.items()
    }
    assert any(not np.array_equal(a[k], b[k]) for k in a)  # training changed the weights
    meta = json.loads({p.key: p.value for p in hardened.metadata_props}["ftaudit.hardening"])
    assert meta["method"] == "trice" and meta["sigma"] == 1.0 and meta["seed"] == 0
    assert meta["sigma_t"] == report.details["sigma_t"]
    # TRICE's search ran after warm-up and sigma_t lies in the initial range [0, 2 sigma]
    assert [h["epoch"] for h in report.history if "kpps" in h] == [1, 2]
    assert 0 <= report.details["sigma_t"] <= 2.0
    assert load_model(out).layers  # evaluable like any other model


def test_trice_reports_the_sigma_t_the_exported_model_trained_at(setup) -> None:
    """Replays the recorded search path with a fresh TriceSearch: the reported sigma_t is the
    last update's winning candidate (the weights every copy carries), not a quartile of the
    interval that update left behind; the progress records and the caption say the same."""
    from ftaudit.harden.trice_search import TriceSearch
    from ftaudit.report.harden_table import harden_table

    report = harden(
        setup["onnx"],
        setup["data"],
        output=setup["dir"] / "trice-path.onnx",
        method="trice",
        sigma=1.0,
        epochs=4,
        warmup=1,
        search_samples=20,
        eval_samples=10,
    )
    trace = report.details["search"]["trace"]
    replay = TriceSearch(start=0.0, end=2.0, warmup=1)
    for entry in trace:
        candidates = replay.candidates()
        assert list(candidates) == pytest.approx(entry["candidates"])
        last_trained = candidates[replay.update(entry["epoch"], tuple(entry["kpps"]))]
    assert [e["epoch"] for e in trace] == [1, 2, 3]
    assert report.details["sigma_t"] == pytest.approx(last_trained)
    assert report.details["sigma_t"] != pytest.approx(replay.candidates()[trace[-1]["winner"]])
    assert report.history[-1]["sigma_t"] == report.details["sigma_t"]  # the last progress line
    assert report.details["search_status"] == "not converged"
    caption = str(harden_table(report).caption)
    assert "did not converge" in caption and f"{last_trained:.4g}" in caption
    assert "chose" not in caption


@pytest.mark.parametrize(
    ("kw", "status", "words", "sigma_t"),
    [
        ({"epochs": 2, "warmup": 5}, "not run", "never ran", 1.0),  # mid of [0, 2 sigma]
        ({"epochs": 2, "trice_start": 0.7, "trice_end": 0.7}, "converged", "chose", 0.7),
    ],
)
def test_trice_summary_says_when_the_search_did_not_run(setup, kw, status, words, sigma_t) -> None:
    from ftaudit.report.harden_table import harden_table

    report = harden(
        setup["onnx"],
        setup["data"],
        output=setup["dir"] / "trice-status.onnx",
        method="trice",
        sigma=1.0,
        search_samples=10,
        eval_samples=10,
        **kw,
    )
    assert report.details["search_status"] == status
    assert report.details["sigma_t"] == pytest.approx(sigma_t)
    assert words in str(harden_table(report).caption)


def test_same_seed_same_model_and_resume_equals_uninterrupted(setup) -> None:
    d = setup["dir"]
    kw = {
        "method": "trice",
        "sigma": 0.8,
        "epochs": 4,
        "warmup": 1,
        "search_samples": 20,
        "eval_samples": 10,
    }
    harden(setup["onnx"], setup["data"], output=d / "a.onnx", **kw)
    harden(setup["onnx"], setup["data"], output=d / "b.onnx", **kw)
    a, b = _initializers(d / "a.onnx"), _initializers(d / "b.onnx")
    assert all(np.array_equal(a[k], b[k]) for k in a)

    ckpt = d / "ckpt"
    ckpt.mkdir()

    def killed_after_second_epoch(epoch: int, info: dict) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        harden(
            setup["onnx"],
            setup["data"],
            output=d / "c.onnx",
            checkpoint_dir=ckpt,
            on_epoch=killed_after_second_epoch,
            **kw,
        )
    assert not (d / "c.onnx").exists()  # no partial output model
    report = harden(
        setup["onnx"], setup["data"], output=d / "c.onnx", checkpoint_dir=ckpt, resume=True, **kw
    )
    c = _initializers(d / "c.onnx")
    assert all(np.array_equal(a[k], c[k]) for k in a)
    assert [h["epoch"] for h in report.history] == [0, 1, 2, 3]

    with pytest.raises(UserError, match="another model or run"):
        harden(
            setup["onnx"],
            setup["data"],
            output=d / "e.onnx",
            checkpoint_dir=ckpt,
            resume=True,
            **{**kw, "sigma": 0.5},
        )


def test_torchscript_in_torchscript_out(setup) -> None:
    import torch

    out = setup["dir"] / "hard.pt"
    report = harden(
        setup["pt"], setup["data"], output=out, method="noise", sigma=0.5, epochs=1, eval_samples=10
    )
    extra = {"ftaudit.json": ""}
    module = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["ftaudit.json"])["method"] == "noise"
    assert module(torch.zeros(2, 1, 8, 8)).shape == (2, 4)
    assert report.before.results[0].sigma == 0.0
    assert report.notes and "held out" in report.notes[0]


def test_cli_harden_writes_model_and_report(setup, run_cli, tmp_path) -> None:
    out, report = tmp_path / "h.onnx", tmp_path / "r.json"
    checkpoints = tmp_path / "new" / "checkpoints"  # missing: created, as eval does
    code, stdout, err = run_cli(
        "harden",
        "--checkpoint-dir",
        checkpoints,
        setup["onnx"],
        "--data",
        setup["data"],
        "--sigma",
        "0.5",
        "--method",
        "erm",
        "--epochs",
        "1",
        "-o",
        out,
        "--eval-samples",
        "10",
        "--report",
        report,
    )
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["method"] == "erm" and len(data["paired_differences"]) == 4
    assert checkpoints.is_dir() and any(checkpoints.iterdir())
    assert data["before"]["seed"] == data["after"]["seed"]
    assert "mean before" in stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "trcie"], "did you mean 'trice'"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--lr", "-1"], "--lr must be a positive"),
        (["--resume"], "--resume needs --checkpoint-dir"),
        (["--checkpoint-dir", "{data}"], "is a file"),
        (["--trice-start", "2", "--trice-end", "1"], "0 <= --trice-start <= --trice-end"),
        (["--noise", "lognormel"], "did you mean 'lognormal'"),
    ],
)
def test_cli_harden_bad_options(setup, run_cli, tmp_path, extra, message) -> None:
    out = tmp_path / "h.onnx"
    extra = [str(setup["data"]) if arg == "{data}" else arg for arg in extra]
    code, _, err = run_cli(
        "harden", setup["onnx"], "--data", setup["data"], "--sigma", "0.5", "-o", out, *extra
    )
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_harden_refuses_input_as_output_and_bad_data(setup, run_cli, tmp_path) -> None:
    before = setup["onnx"].read_bytes()
    code, _, err = run_cli(
        "harden", setup["onnx"], "--data", setup["data"], "--sigma", "0.5", "-o", setup["onnx"]
    )
    assert code == 2 and "input" in err
    assert setup["onnx"].read_bytes() == before

    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((10, 3, 8, 8), np.uint8), y=np.zeros(10, np.int64))
    out = tmp_path / "h.onnx"
    code, _, err = run_cli("harden", setup["onnx"], "--data", bad, "--sigma", "0.5", "-o", out)
    assert code == 2 and "shape" in err and not out.exists()
    labels = tmp_path / "labels.npz"
    np.savez(labels, x=np.zeros((10, 1, 8, 8), np.uint8), y=np.full(10, 7, np.int64))
    code, _, err = run_cli("harden", setup["onnx"], "--data", labels, "--sigma", "0.5", "-o", out)
    assert code == 2 and "label" in err and not out.exists()


def test_a_collapsed_training_is_flagged() -> None:
    from types import SimpleNamespace

    from ftaudit.harden.api import collapse_warnings

    good = SimpleNamespace(clean_accuracy=0.9)
    assert collapse_warnings(good, SimpleNamespace(clean_accuracy=0.75)) == []
    (note,) = collapse_warnings(good, SimpleNamespace(clean_accuracy=0.1))
    assert "10.0%" in note and "80.0 points below" in note and "--sigma" in note


def test_progress_follows_the_training_steps_and_the_evaluations(setup, tmp_path) -> None:
    calls: list[tuple[str, int, int]] = []
    report = harden(
        setup["onnx"],
        setup["data"],
        output=tmp_path / "p.onnx",
        sigma=0.5,
        method="noise",
        epochs=2,
        batch_size=256,
        eval_samples=6,
        limit=1000,
        progress=lambda stage, done, total: calls.append((stage, done, total)),
    )
    n_train = report.settings["n_train"]  # 1,000 minus the 10% held out
    steps = -(-n_train // 256)
    for epoch in (1, 2):
        stage = f"training, epoch {epoch}"
        assert [c for c in calls if c[0] == stage] == [
            (stage, i, steps) for i in range(1, steps + 1)
        ]
    stages = list(dict.fromkeys(c[0] for c in calls))
    assert stages == [
        "training, epoch 1",
        "training, epoch 2",
        "evaluating the input model",
        "evaluating the hardened model",
    ]
    for stage in stages[2:]:
        done, total = [c[1:] for c in calls if c[0] == stage][-1]
        assert done == total > 0


def test_a_clean_accuracy_drop_of_a_few_points_is_called_out() -> None:
    from types import SimpleNamespace

    from rich.console import Console

    from ftaudit.harden.api import clean_drop_notes
    from ftaudit.report.harden_table import harden_table

    good = SimpleNamespace(clean_accuracy=0.9, samples=10, results=[])
    assert clean_drop_notes(good, SimpleNamespace(clean_accuracy=0.88)) == []  # 2 points: fine
    (note,) = clean_drop_notes(good, SimpleNamespace(clean_accuracy=0.85))
    assert "5.0 points lower" in note and "90.0% -> 85.0%" in note

    def caption(after: float) -> str:
        report = SimpleNamespace(
            details={}, input_model="a.onnx", output_model="b.onnx", method="noise",
            before=good, after=SimpleNamespace(clean_accuracy=after, results=[]),
            validation={"n": 100}, paired_differences=lambda: [],
        )  # fmt: skip
        console = Console(width=100, record=True)
        console.print(harden_table(report))
        return console.export_text()

    assert "5.00 points lower after hardening" in caption(0.85)
    assert "points lower" not in caption(0.89)


def test_fixed_batch_onnx_that_cannot_take_a_mini_batch_is_one_line(tmp_path: Path, run_cli):
    """torch's dynamo exporter without dynamic shapes writes Reshape(x, [1, -1])-style shapes
    with the batch in them: harden refuses in one line, naming the fixed batch."""
    from onnx import TensorProto, helper, numpy_helper
    from test_cli import assert_one_line_error

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "shape"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w"], ["y"], transB=1),
        ],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [
            numpy_helper.from_array(np.array([1, 8], np.int64), "shape"),
            numpy_helper.from_array(rng.normal(size=(3, 8)).astype(np.float32), "w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "fixed.onnx"
    onnx.save(model, str(path))
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.normal(size=(40, 2, 4)).astype(np.float32), y=np.arange(40) % 3)
    out = tmp_path / "hard.onnx"
    code, stdout, err = run_cli("harden", path, "--data", data, "--sigma", "0.1", "-o", out)
    line = assert_one_line_error(code, stdout, err)
    assert "batches of exactly 1" in line and not out.exists()
