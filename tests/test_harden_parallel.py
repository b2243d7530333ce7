"""``harden --workers/--ray``: the Monte Carlo of TRICE and of the report on worker processes or
Ray gives the same trace and the same exported model as one process."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from conftest import export_onnx, export_torchscript, make_blobs, tiny_mlp, train

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from ftaudit.harden.api import harden  # noqa: E402
from ftaudit.harden.parallel_eval import HardenWorkers  # noqa: E402
from ftaudit.harden.trainable import make_trainable  # noqa: E402
from ftaudit.harden.training import TrainableRunner, TrainingData  # noqa: E402
from ftaudit.models import load_model  # noqa: E402
from ftaudit.montecarlo import ChunkEvaluator, Crossbar  # noqa: E402
from ftaudit.noise import get_noise_model  # noqa: E402

#: short TRICE runs: the search updates after both epochs (warm-up 0)
TRICE = {
    "method": "trice",
    "sigma": 1.0,
    "epochs": 2,
    "warmup": 0,
    "search_samples": 40,
    "eval_samples": 10,
    "lr": 3e-3,
    "batch_size": 64,
    # sigma 0 only: the report's audits pass workers on (their backend is recorded) but start
    # no processes of their own, which keeps this test short; eval's own tests cover them
    "eval_sigmas": [0.0],
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("harden_parallel")
    x, y = make_blobs(1000, seed=5)
    np.savez(d / "train.npz", x=x, y=y)
    model = train(tiny_mlp(), x[:200], y[:200], steps=60)
    export_onnx(model, d / "mlp.onnx")
    export_torchscript(model, d / "mlp.pt")
    return {"dir": d, "onnx": d / "mlp.onnx", "pt": d / "mlp.pt", "data": d / "train.npz"}


@pytest.fixture(scope="module")
def single(setup) -> tuple:
    report = harden(setup["onnx"], setup["data"], output=setup["dir"] / "one.onnx", **TRICE)
    return report, (setup["dir"] / "one.onnx").read_bytes()


def _trace(report) -> list[tuple]:
    return [(h["kpps"], h["sigma_t"], h["winner"], h["candidates"]) for h in report.history]


def _initializers(data: bytes) -> dict[str, np.ndarray]:
    proto = onnx.load_from_string(data)
    return {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}


def _assert_same_run(report, data: bytes, single: tuple) -> None:
    one, one_data = single
    assert [len(h["kpps"]) for h in one.history] == [3, 3]  # the search ran in both epochs
    assert _trace(report) == _trace(one)
    assert report.details == one.details
    a, b = _initializers(data), _initializers(one_data)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert data == one_data  # the whole file, metadata included


def test_trice_on_two_worker_processes_matches_one_process(setup, single) -> None:
    """Also when a worker process dies between two epochs: the pool is replaced."""
    killed: list[int] = []

    def kill_a_worker(epoch: int, info: dict) -> None:
        children = multiprocessing.active_children()
        if epoch == 0 and children:
            killed.append(children[0].pid)
            os.kill(children[0].pid, signal.SIGKILL)

    out = setup["dir"] / "two.onnx"
    report = harden(
        setup["onnx"], setup["data"], output=out, workers=2, on_epoch=kill_a_worker, **TRICE
    )
    assert killed
    _assert_same_run(report, out.read_bytes(), single)
    assert report.settings["workers"] == 2 and report.settings["ray"] is None
    for audit in (report.before, report.after):
        assert audit.options["execution"] == {
            "backend": "processes",
            "workers": 2,
            "resumed_samples": 0,
            "batch_samples": 1,
        }


@pytest.mark.ray
def test_trice_on_a_local_ray_cluster_matches_one_process(setup, single) -> None:
    pytest.importorskip("ray")
    out = setup["dir"] / "ray.onnx"
    report = harden(setup["onnx"], setup["data"], output=out, workers=2, ray="local", **TRICE)
    _assert_same_run(report, out.read_bytes(), single)
    assert report.after.options["execution"]["backend"] == "ray"


def test_bayesft_objective_from_a_worker_spec_matches_the_local_one(setup) -> None:
    """In process: a worker's objective evaluator (plain trainable, no dropout modules, loaded
    from the dropout model's state) gives the local objective, chunk by chunk."""
    torch = pytest.importorskip("torch")
    from ftaudit.harden.methods.bayesft import bayesft_objective, insert_dropout

    source = load_model(setup["onnx"])
    layers = source.select_layers()
    x, y = make_blobs(64, seed=9)
    data = TrainingData(source.fit_input(x).astype(np.float32), y.astype(np.int64))
    noise = get_noise_model("lognormal")
    trainable = make_trainable(source)
    insert_dropout(trainable)
    with torch.no_grad():
        for parameter in trainable.module.parameters():
            parameter.mul_(0.7).add_(0.05)
    # sigma 1.6: at smaller sigmas some perturbations leave this confident model's softmax
    # saturated (loss exactly 0), and equal losses would hide two samples sharing draws
    kw = {"layers": layers, "noise": noise, "sigma": 1.6, "seed": 3, "batch_size": 16}
    local = bayesft_objective(trainable, data, samples=6, **kw)
    workers = HardenWorkers(source, data, layers=layers, noise=noise, workers=2, ray=None)
    try:
        spec = workers.spec(trainable, sigmas=[1.6], seed=3, batch_size=16, objective="loss")
        assert spec.key != workers.spec(trainable, sigmas=[1.6], seed=3, batch_size=16).key
        evaluator = spec.build()
        chunks = [evaluator.evaluate(0, 4, [0]), evaluator.evaluate(4, 6, [0])]
        losses = np.concatenate([c[0] for c in chunks])
        assert np.array_equal(losses, evaluator.evaluate(0, 6, [0])[0])
        assert len(set(losses.tolist())) == 6  # every sample is a different perturbation
        assert -float(np.mean(losses)) == local
    finally:
        workers.close()


@pytest.mark.parametrize("kind", ["onnx", "pt"])
def test_worker_spec_rebuilds_the_current_weights(setup, kind: str) -> None:
    """In process: the spec's evaluator counts what the in-memory trainable counts, after its
    weights moved away from the file's; the key follows the weights."""
    torch = pytest.importorskip("torch")
    source = load_model(setup[kind])
    layers = source.select_layers()
    x, y = make_blobs(64, seed=9)
    data = TrainingData(source.fit_input(x).astype(np.float32), y.astype(np.int64))
    noise = get_noise_model("lognormal")
    trainable = make_trainable(source)
    with torch.no_grad():
        for parameter in trainable.module.parameters():
            parameter.mul_(0.7).add_(0.05)  # a state the model file does not have
    workers = HardenWorkers(source, data, layers=layers, noise=noise, workers=2, ray=None)
    try:
        spec = workers.spec(trainable, sigmas=[0.0, 0.6], seed=4, batch_size=16)
        assert workers.spec(trainable, sigmas=[0.0, 0.6], seed=4, batch_size=16).key == spec.key
        assert workers.spec(trainable, sigmas=[0.0, 0.6], seed=5, batch_size=16).key != spec.key
        runner = TrainableRunner(trainable)
        runner.bind_data(data.x, data.y, batch_size=16)
        evaluator = spec.build()
        # the worker's model computes the trained weights' logits, not the file's
        assert np.array_equal(evaluator.runner.logits(), runner.logits())
        file_runner = TrainableRunner(make_trainable(source))
        file_runner.bind_data(data.x, data.y, batch_size=16)
        assert not np.allclose(file_runner.logits(), runner.logits())
        crossbar = Crossbar.prepare(layers, trainable.crossbar_arrays(), noise)
        local = ChunkEvaluator(runner, crossbar, [0.0, 0.6], 4)
        expected = local.evaluate(0, 12, [0, 1])
        assert np.array_equal(evaluator.evaluate(0, 12, [0, 1]), expected)
        assert len(set(expected[1].tolist())) > 1  # the noise moves the counts
        local.close()
        evaluator.close()
        with torch.no_grad():
            next(trainable.module.parameters()).add_(1e-3)
        assert workers.spec(trainable, sigmas=[0.0, 0.6], seed=4, batch_size=16).key != spec.key
    finally:
        workers.close()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--workers", "two"], "Invalid value for '--workers'"),
        (["--ray", "no-port"], "is not host:port"),
        (["--ray", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
    ],
)
def test_cli_bad_workers_and_ray_exit_2(setup, run_cli, tmp_path, extra, message) -> None:
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    code, _, err = run_cli(
        "harden", setup["onnx"], "--data", setup["data"], "--sigma", "1", "-o", out,
        "--report", report, "--epochs", "1", *extra,
    )  # fmt: skip
    assert code == 2, err
    assert message in err
    assert not out.exists() and not report.exists()


def test_harden_runs_training_and_audits_on_one_pool(setup, monkeypatch) -> None:
    """One pool of worker processes serves TRICE's evaluations and the before/after audits
    (before, the audits started their own); the audits' numbers are those of one process."""
    from ftaudit import parallel

    pools: list[str] = []
    start = parallel.ProcessBackend.__init__

    def counted(self, *args, **kwargs):
        pools.append(type(self).__name__)
        start(self, *args, **kwargs)

    options = {**TRICE, "epochs": 1, "eval_sigmas": [0.6], "eval_samples": 12}
    one = harden(setup["onnx"], setup["data"], output=setup["dir"] / "pool1.onnx", **options)
    monkeypatch.setattr(parallel.ProcessBackend, "__init__", counted)
    two = harden(
        setup["onnx"], setup["data"], output=setup["dir"] / "pool2.onnx", workers=2, **options
    )
    assert pools == ["ProcessPool"]
    assert _trace(two) == _trace(one)
    for mine, theirs in ((two.before, one.before), (two.after, one.after)):
        assert mine.options["execution"]["backend"] == "processes"
        assert [r.accuracies.tolist() for r in mine.results] == [
            r.accuracies.tolist() for r in theirs.results
        ]
