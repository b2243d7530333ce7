"""Scale-out: worker processes, Ray, checkpoints and --resume give the numbers of one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ftaudit
from ftaudit.errors import UserError
from ftaudit.eval_checkpoint import checkpoint_file, load_progress
from ftaudit.montecarlo import CHECK_EVERY, Progress
from ftaudit.parallel import check_ray_address, threads_per_worker

SIGMAS = [0.0, 0.4, 0.8]


def accuracies(report) -> list[list[float]]:
    return [r.accuracies.tolist() for r in report.results]


def numbers(report) -> dict:
    """Everything in the JSON report that must not depend on where the samples ran."""
    data = report.to_dict()
    return {"results": data["results"], "gates": data["gates"], "clean": data["clean_accuracy"]}


@pytest.fixture(scope="module")
def single(convnet_onnx: Path, blobs_npz: Path):
    return ftaudit.audit(convnet_onnx, blobs_npz, sigmas=SIGMAS, samples=60, seed=3)


def test_two_worker_processes_give_identical_numbers(single, convnet_onnx, blobs_npz) -> None:
    report = ftaudit.audit(convnet_onnx, blobs_npz, sigmas=SIGMAS, samples=60, seed=3, workers=2)
    assert numbers(report) == numbers(single)
    assert report.options["execution"] == {
        "backend": "processes",
        "workers": 2,
        "resumed_samples": 0,
        "batch_samples": 1,
    }
    assert single.options["execution"]["backend"] == "local"


def test_workers_with_early_stopping_and_drift_match_one_process(
    convnet_onnx: Path, blobs_npz: Path
) -> None:
    """Early stops happen at the same sample, drift rows are the same, whatever the workers."""
    options = dict(
        sigmas=[0.05, 0.6],
        samples=3 * CHECK_EVERY,
        seed=1,
        target_ci=0.3,
        k=25.0,
        times=[3600.0],
        stuck_at=(0.01, 0.0),
    )
    one = ftaudit.audit(convnet_onnx, blobs_npz, **options)
    two = ftaudit.audit(convnet_onnx, blobs_npz, workers=2, **options)
    assert numbers(two) == numbers(one)
    used = [len(r.accuracies) for r in one.results]
    assert min(used) < 3 * CHECK_EVERY  # an early stop did happen


def test_workers_draw_with_the_runs_generator(convnet_onnx: Path, blobs_npz: Path) -> None:
    """--rng reaches the worker processes: under ziggurat two workers give one process's
    numbers, which differ from the fast generator's (plain and drift rows)."""
    options = dict(sigmas=[0.6], samples=12, seed=2, times=[3600.0], compensation="both")
    one = ftaudit.audit(convnet_onnx, blobs_npz, rng="ziggurat", **options)
    two = ftaudit.audit(convnet_onnx, blobs_npz, workers=2, rng="ziggurat", **options)
    assert numbers(two) == numbers(one)
    assert numbers(ftaudit.audit(convnet_onnx, blobs_npz, **options)) != numbers(one)


def test_torchscript_workers_match(convnet_ts: Path, blobs_npz: Path) -> None:
    options = dict(sigmas=[0.5], samples=20, seed=2)
    one = ftaudit.audit(convnet_ts, blobs_npz, **options)
    two = ftaudit.audit(convnet_ts, blobs_npz, workers=2, **options)
    assert accuracies(two) == accuracies(one)


@pytest.mark.ray
def test_local_ray_cluster_gives_identical_numbers(single, convnet_onnx, blobs_npz) -> None:
    pytest.importorskip("ray")
    report = ftaudit.audit(
        convnet_onnx, blobs_npz, sigmas=SIGMAS, samples=60, seed=3, workers=2, ray="local"
    )
    assert numbers(report) == numbers(single)
    execution = report.options["execution"]
    assert execution["backend"] == "ray" and execution["workers"] == 2
    assert execution["nodes"] == 1 and execution["address"] == "local"


def test_resume_after_an_interrupt_reaches_the_same_numbers(
    single, convnet_onnx: Path, blobs_npz: Path, tmp_path: Path
) -> None:
    """Interrupted after some chunks, then resumed: only the missing samples run."""
    seen: list[int] = []

    def interrupt(done: int, total: int) -> None:
        seen.append(done)
        if done >= 30:
            raise KeyboardInterrupt

    options = dict(sigmas=SIGMAS, samples=60, seed=3, checkpoint_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        ftaudit.audit(convnet_onnx, blobs_npz, progress=interrupt, **options)
    with np.load(checkpoint_file(tmp_path)) as saved:
        done = saved["done"]
    assert 30 <= done[1].sum() < 60 and done[0].all()  # sigma 0 needs no sample

    resumed_progress: list[int] = []
    resumed = ftaudit.audit(
        convnet_onnx,
        blobs_npz,
        resume=True,
        progress=lambda d, t: resumed_progress.append(d),
        **options,
    )
    assert numbers(resumed) == numbers(single)
    assert resumed.options["execution"]["resumed_samples"] == int(done.sum())


def test_resume_after_sigkill_of_the_cli(
    convnet_onnx: Path, blobs_npz: Path, tmp_path: Path
) -> None:
    """A real kill -9 midway; the restarted command's JSON numbers equal an uninterrupted run."""
    ckpt = tmp_path / "ckpt"
    args = [
        sys.executable, "-m", "ftaudit", "eval", str(convnet_onnx), "--data", str(blobs_npz),
        "--sigma", "0.3,0.6", "--samples", "4000", "--seed", "5", "--checkpoint-dir", str(ckpt),
        "-q",
    ]  # fmt: skip
    proc = subprocess.Popen([*args, "--json", str(tmp_path / "killed.json")])
    try:
        deadline = time.monotonic() + 120
        while not checkpoint_file(ckpt).exists():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "killed.json").exists()
    with np.load(checkpoint_file(ckpt)) as saved:
        partial = int(saved["done"].sum())
    assert 0 < partial < 2 * 4000

    resumed = subprocess.run(
        [*args, "--resume", "--json", str(tmp_path / "resumed.json")], capture_output=True
    )
    assert resumed.returncode == 0, resumed.stderr.decode()
    fresh = subprocess.run(
        [*args[:-3], "-q", "--json", str(tmp_path / "fresh.json")], capture_output=True
    )
    assert fresh.returncode == 0, fresh.stderr.decode()
    a = json.loads((tmp_path / "resumed.json").read_text())
    b = json.loads((tmp_path / "fresh.json").read_text())
    assert a["results"] == b["results"]
    assert a["options"]["execution"]["resumed_samples"] >= partial


def test_a_checkpoint_of_another_run_is_refused(
    convnet_onnx: Path, blobs_npz: Path, tmp_path: Path, run_cli
) -> None:
    ftaudit.audit(convnet_onnx, blobs_npz, sigmas=[0.3], samples=10, checkpoint_dir=tmp_path)
    code, _, err = run_cli(
        "eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0.3", "--samples", "10",
        "--seed", "9", "--checkpoint-dir", tmp_path, "--resume", "--json", tmp_path / "r.json",
    )  # fmt: skip
    assert code == 2
    assert err.count("\n") == 1 and "from another run (differs in: seed)" in err
    assert not (tmp_path / "r.json").exists()


def test_a_checkpoint_of_another_generator_is_refused(
    convnet_onnx: Path, blobs_npz: Path, tmp_path: Path, run_cli
) -> None:
    """The normal generator is part of the run: a checkpoint written under --rng ziggurat (or
    by an ftaudit that recorded no generator) refuses to resume a fast run, naming the field."""
    import json

    ftaudit.audit(
        convnet_onnx, blobs_npz, sigmas=[0.3], samples=10, checkpoint_dir=tmp_path, rng="ziggurat"
    )
    args = ["eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0.3", "--samples", "10"]
    code, _, err = run_cli(*args, "--checkpoint-dir", tmp_path, "--resume", "-q")
    assert code == 2
    assert err.count("\n") == 1 and "from another run (differs in: rng)" in err
    code, _, err = run_cli(*args, "--rng", "ziggurat", "--checkpoint-dir", tmp_path, "--resume")
    assert code == 0, err
    # a checkpoint from before the generator was recorded
    path = checkpoint_file(tmp_path)
    with np.load(path) as saved:
        arrays = dict(saved)
    fingerprint = json.loads(str(arrays["fingerprint"]))
    del fingerprint["rng"]
    arrays["fingerprint"] = np.array(json.dumps(fingerprint, sort_keys=True))
    np.savez(path, **arrays)
    code, _, err = run_cli(*args, "--rng", "ziggurat", "--checkpoint-dir", tmp_path, "--resume")
    assert code == 2 and "differs in: rng" in err


def test_checkpoint_round_trip_and_damage(tmp_path: Path) -> None:
    from ftaudit.eval_checkpoint import CheckpointWriter

    fingerprint = {"seed": 1, "sigmas": [0.1, 0.2]}
    progress = Progress(
        counts=np.arange(6, dtype=np.int64).reshape(2, 3),
        done=np.array([[True, True, False], [True, False, False]]),
    )
    CheckpointWriter(tmp_path, fingerprint)(progress, force=True)
    back = load_progress(tmp_path, fingerprint, (2, 3))
    assert back is not None
    assert np.array_equal(back.counts, progress.counts)
    assert np.array_equal(back.done, progress.done)
    assert load_progress(tmp_path / "none", fingerprint, (2, 3)) is None
    with pytest.raises(UserError, match="damaged"):
        load_progress(tmp_path, fingerprint, (2, 4))
    checkpoint_file(tmp_path).write_bytes(b"not a zip")
    with pytest.raises(UserError, match="unreadable"):
        load_progress(tmp_path, fingerprint, (2, 3))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--resume"], "--resume needs the --checkpoint-dir"),
        (["--ray", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
        (["--ray", "no-port"], "is not host:port"),
    ],
)
def test_bad_scale_out_options_exit_2(
    extra: list[str], message: str, convnet_onnx: Path, blobs_npz: Path, tmp_path: Path, run_cli
) -> None:
    if extra[0] == "--ray":
        pytest.importorskip("ray")
    out = tmp_path / "r.json"
    code, _, err = run_cli(
        "eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0.3", "--samples", "5",
        "--json", out, *extra,
    )  # fmt: skip
    assert code == 2, err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_ray_without_the_extra_names_it(
    monkeypatch, convnet_onnx: Path, blobs_npz: Path, run_cli
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code, _, err = run_cli(
        "eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0.3", "--samples", "5", "--ray"
    )
    assert code == 2
    assert "pip install 'ftaudit[ray]'" in err


def test_bare_ray_flag_means_a_local_cluster(tmp_path: Path) -> None:
    from ftaudit.cli import optional_ray_value

    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    assert optional_ray_value(["eval", "m", "--ray"]) == ["eval", "m", "--ray=local"]
    assert optional_ray_value(["eval", "--ray", "-q"]) == ["eval", "--ray=local", "-q"]
    assert optional_ray_value(["eval", "--ray", str(model)]) == ["eval", "--ray=local", str(model)]
    assert optional_ray_value(["eval", "--ray", "auto"]) == ["eval", "--ray", "auto"]
    assert optional_ray_value(["eval", "--ray", "h:1"]) == ["eval", "--ray", "h:1"]


def test_address_checks_accept_the_special_names() -> None:
    check_ray_address("local")
    check_ray_address("auto")
    with pytest.raises(UserError, match="not host:port"):
        check_ray_address("ray://nohost")


def test_threads_per_worker_share_the_cores() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert threads_per_worker(1) == cores
    assert threads_per_worker(cores * 4) == 1


def test_a_killed_worker_process_is_replaced_and_its_chunk_rerun(
    single, convnet_onnx: Path, blobs_npz: Path
) -> None:
    import multiprocessing

    killed: list[int] = []

    def kill_a_worker(done: int, total: int) -> None:
        children = multiprocessing.active_children()
        if not killed and children:
            killed.append(children[0].pid)
            os.kill(children[0].pid, signal.SIGKILL)

    report = ftaudit.audit(
        convnet_onnx,
        blobs_npz,
        sigmas=SIGMAS,
        samples=60,
        seed=3,
        workers=2,
        progress=kill_a_worker,
    )
    assert killed
    assert numbers(report) == numbers(single)


def test_more_workers_than_usable_cpus_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, convnet_onnx: Path, blobs_npz: Path, run_cli
) -> None:
    from ftaudit import parallel

    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert parallel.usable_cpus() == 1
    assert parallel.oversubscription_warning(1) is None
    assert parallel.oversubscription_warning(2, ray="auto") is None  # Ray places its own tasks
    assert "pass --workers 1" in (parallel.oversubscription_warning(2) or "")
    code, _, err = run_cli(
        "eval", convnet_onnx, "--data", blobs_npz, "--sigma", "0.3", "--samples", "4",
        "--workers", "2", "-q",
    )  # fmt: skip
    assert code == 0, err
    assert "ftaudit: warning: --workers 2 is more than the 1 CPU(s)" in err
