"""Where Monte Carlo samples run: this process, local worker processes, or a Ray cluster.

Every backend evaluates chunks of sample indices with the same ``ChunkEvaluator``; sample i's
draws depend only on (seed, i, layer), and the engine takes chunks back in index order, so the
reported numbers are identical for any backend and worker count. Workers get a picklable,
file-free ``WorkerSpec`` (the model's bytes, the bound data, the noise model) and rebuild their
own session once.
"""

from __future__ import annotations

import hashlib
import importlib
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from ftaudit.analog.options import ForwardPipeline
from ftaudit.draws import DEFAULT_RNG
from ftaudit.errors import MissingExtraError, UserError
from ftaudit.montecarlo import ChunkEvaluator, Crossbar, LocalBackend, SampleBackend
from ftaudit.noise.base import NoiseModel
from ftaudit.noise.effects import DeviceEffects

#: Ray retries a task whose worker process died this many times before the run fails
RAY_MAX_RETRIES = 3
#: a chunk whose local worker process died is run again on a fresh pool this many times
PROCESS_MAX_RETRIES = 3
#: seconds to wait for a TCP answer from an explicit Ray address before calling it unreachable
CONNECT_TIMEOUT_S = 5.0


class EvaluatorSpec(Protocol):
    """What backends ship to workers: picklable, with a ``key`` under which a worker keeps the
    evaluator it builds (``WorkerSpec`` for eval, ``TrainableWorkerSpec`` for harden)."""

    @property
    def key(self) -> str: ...

    def build(self) -> ChunkEvaluator: ...


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to rebuild the runner: bytes and arrays only, no open sessions."""

    model_path: str
    model_bytes: bytes
    output: str | None
    x: np.ndarray
    y: np.ndarray
    layer_names: tuple[str, ...]
    noise: NoiseModel
    sigmas: tuple[float, ...]
    seed: int
    batch_size: int
    device: str
    threads: int | None = None
    effects: DeviceEffects | None = None
    batch_samples: int = 1
    fold_batchnorm: bool = True
    #: the analog forward pipeline (``ftaudit.analog``); workers recalibrate it identically
    pipeline: ForwardPipeline | None = None
    rng: str = DEFAULT_RNG  # the normal generator (ftaudit.draws.RNGS)
    key: str = field(default="", compare=False)

    def with_key(self) -> WorkerSpec:
        """This spec with ``key``: a digest workers use to reuse a built evaluator."""
        digest = hashlib.sha256(self.model_bytes)
        for part in (self.x.tobytes(), self.y.tobytes()):
            digest.update(hashlib.sha256(part).digest())
        digest.update(
            repr(
                (
                    self.output,
                    self.layer_names,
                    self.noise.parameters(),
                    self.sigmas,
                    self.seed,
                    self.batch_size,
                    self.device,
                    self.threads,
                    None if self.effects is None else self.effects.to_dict(),
                    self.batch_samples,
                    self.fold_batchnorm,
                    None if self.pipeline is None else self.pipeline.to_dict(),
                    self.rng,
                )
            ).encode()
        )
        return replace(self, key=digest.hexdigest())

    def build(self) -> ChunkEvaluator:
        """Load the model from its bytes, bind the data and prepare the crossbar."""
        from ftaudit.batched import build_runner
        from ftaudit.models import load_model_bytes

        if self.threads is not None:
            _limit_threads(self.threads)
        model = load_model_bytes(self.model_path, self.model_bytes, output=self.output)
        if not self.fold_batchnorm:
            model.fold_scales.clear()
        chosen = set(self.layer_names)
        selected = [layer for layer in model.layers if layer.name in chosen]
        runner = build_runner(
            model,
            selected,
            device=self.device,
            threads=self.threads,
            batch_samples=self.batch_samples,
            pipeline=self.pipeline,
            x=self.x,
            seed=self.seed,
            rng=self.rng,
        )
        runner.bind_data(self.x, self.y, batch_size=self.batch_size)
        crossbar = Crossbar.prepare(selected, model.crossbar_weights(), self.noise)
        return ChunkEvaluator(
            runner, crossbar, self.sigmas, self.seed, self.effects, self.batch_samples, self.rng
        )


def _limit_threads(threads: int) -> None:
    """Keep a worker's intra-op threads to its share of the cores (torch is per process)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


# --- worker side ----------------------------------------------------------------------------
_EVALUATORS: dict[str, ChunkEvaluator] = {}


def _evaluator(spec: EvaluatorSpec) -> ChunkEvaluator:
    """The worker's evaluator for ``spec``, built on first use and kept for later chunks."""
    evaluator = _EVALUATORS.get(spec.key)
    if evaluator is None:
        for old in _EVALUATORS.values():
            old.close()
        _EVALUATORS.clear()
        evaluator = _EVALUATORS[spec.key] = spec.build()
    return evaluator


#: seconds between a worker's checks that its parent is still alive
PARENT_POLL_S = 0.5


def _init_process_worker(spec: EvaluatorSpec | None, parent: int | None = None) -> None:
    # Ctrl-C goes to the whole process group: the parent handles it and stops the pool
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    globals()["_PROCESS_SPEC"] = spec
    # the parent's pid comes from the parent: if it died while this worker was starting, the
    # worker's parent is already another process, and it exits at once
    _exit_with_parent(os.getppid() if parent is None else parent)


def _exit_with_parent(parent: int) -> None:
    """A worker whose parent died (kill -9, OOM killer) exits too, instead of idling on with a
    model and data in memory: a daemon thread watches the parent's pid. Once every worker is
    gone, multiprocessing's resource tracker sees its pipe close and exits as well."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="ftaudit-parent-watchdog", daemon=True).start()


def _process_chunk(start: int, stop: int, active: list[int]) -> np.ndarray:
    return _evaluator(globals()["_PROCESS_SPEC"]).evaluate(start, stop, active)


def _ray_chunk(spec: EvaluatorSpec, start: int, stop: int, active: list[int]) -> np.ndarray:
    return _evaluator(spec).evaluate(start, stop, active)


# --- backends -------------------------------------------------------------------------------
class WorkersDied(UserError):
    """Worker processes kept dying on the same samples (out of memory, or killed): one line,
    exit 2, not a traceback."""

    def __init__(self, workers: int) -> None:
        super().__init__(
            f"the worker processes died {PROCESS_MAX_RETRIES + 1} times running the same "
            "samples (out of memory, or killed)",
            hint=f"run with fewer --workers than {workers} (each holds the model and the data) "
            "or a smaller --batch-size; --checkpoint-dir keeps the samples already counted",
        )


class RetriedChunk:
    """``fn(*args)`` on a backend's process pool, resubmitted on a fresh pool if a worker dies
    (also one that died while the pool idled, which breaks the next submit)."""

    def __init__(self, backend: ProcessBackend, fn: Callable[..., np.ndarray], args: tuple) -> None:
        self.backend, self.fn, self.args = backend, fn, args
        self._submit()

    def _submit(self) -> None:
        self.generation = self.backend.generation
        try:
            self.future = self.backend.pool.submit(self.fn, *self.args)
        except BrokenProcessPool:
            self.backend.restart(self.generation)
            self.generation = self.backend.generation
            try:
                self.future = self.backend.pool.submit(self.fn, *self.args)
            except BrokenProcessPool as exc:
                raise WorkersDied(self.backend.parallelism) from exc

    def result(self) -> np.ndarray:
        for _ in range(PROCESS_MAX_RETRIES):
            try:
                return self.future.result()
            except BrokenProcessPool:
                self.backend.restart(self.generation)
                self._submit()
        try:
            return self.future.result()
        except BrokenProcessPool as exc:
            raise WorkersDied(self.backend.parallelism) from exc

    def cancel(self) -> bool:
        return self.future.cancel()


class ProcessBackend:
    """Local worker processes (spawned, so no runtime state is shared with the parent)."""

    def __init__(self, spec: EvaluatorSpec | None, workers: int) -> None:
        """``spec`` None: the chunks carry their own (see ftaudit.harden.parallel_eval)."""
        self.parallelism = workers
        self.spec = spec
        self.generation = 0
        self.pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.parallelism,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_process_worker,
            initargs=(self.spec, os.getpid()),
        )

    def restart(self, generation: int) -> None:
        """Replace a pool broken by a dead worker (once, however many chunks noticed it)."""
        if generation == self.generation:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()
            self.generation += 1

    def submit(self, start: int, stop: int, active: Sequence[int]) -> Future[np.ndarray]:
        chunk = RetriedChunk(self, _process_chunk, (start, stop, list(active)))
        return chunk  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        return {"backend": "processes", "workers": self.parallelism}

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def require_ray() -> ModuleType:
    """Import ray or raise a UserError naming the ``ray`` extra."""
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise MissingExtraError("--ray runs", "ray", "Ray") from exc


def check_ray_address(address: str) -> None:
    """Fail fast, as a UserError, when an explicit host:port does not answer."""
    if address in ("local", "auto"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(
            f"Ray address '{address}' is not host:port",
            hint="pass --ray auto, --ray HOST:6379, --ray ray://HOST:10001, or --ray alone "
            "for a local cluster",
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise UserError(
            f"cannot reach the Ray cluster at {address}: {reason}",
            hint="check the address and that the head node is up (`ray status` on it), "
            "or pass --ray alone to start a local cluster",
        ) from exc


def _init_ray(address: str, workers: int | None) -> bool:
    """Connect to (or start) Ray unless already connected; True when this call started it."""
    ray = require_ray()
    check_ray_address(address)
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": True,
        "logging_level": "ERROR",
    }
    try:
        if address == "local":
            ray.init(num_cpus=workers, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(
            f"cannot connect to the Ray cluster at {address}: {first[:200]}",
            hint="start one with `ray start --head`, check the address, or pass --ray "
            "alone to start a local cluster",
        ) from exc
    return True


@contextmanager
def ray_session(address: str | None, workers: int = 1) -> Iterator[None]:
    """One Ray connection for several audits (compare, sensitivity, harden), closed at the end."""
    if address is None:
        yield
        return
    started = _init_ray(address, None if workers == 1 else workers)
    try:
        yield
    finally:
        if started:
            require_ray().shutdown()


class RayBackend:
    """Ray tasks on an existing cluster, or on a local one started (and stopped) here."""

    def __init__(self, spec: EvaluatorSpec | None, address: str, workers: int | None) -> None:
        ray = require_ray()
        self._ray = ray
        self._started = _init_ray(address, workers)
        self.address = address
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.parallelism = max(1, min(workers or cpus, cpus))
        self.nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        self._spec = ray.put(spec)
        self._task = ray.remote(num_cpus=1, max_retries=RAY_MAX_RETRIES)(_ray_chunk)

    def submit(self, start: int, stop: int, active: Sequence[int]) -> Future[np.ndarray]:
        return self._task.remote(self._spec, start, stop, list(active)).future()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "ray",
            "workers": self.parallelism,
            "address": self.address,
            "nodes": self.nodes,
        }

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()


def make_backend(
    spec: WorkerSpec | None,
    evaluator: ChunkEvaluator | None,
    *,
    workers: int,
    ray: str | None,
) -> SampleBackend:
    """The backend for ``--workers``/``--ray``: this process when neither asks for more."""
    if ray is not None:
        assert spec is not None
        return RayBackend(spec.with_key(), ray, None if workers == 1 else workers)
    if workers > 1:
        assert spec is not None
        return ProcessBackend(spec.with_key(), workers)
    assert evaluator is not None
    return LocalBackend(evaluator)


def close_backend(backend: SampleBackend) -> None:
    close = getattr(backend, "close", None)
    if close is not None:
        close()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def threads_per_worker(workers: int) -> int:
    """Each worker's share of the machine's cores (at least one)."""
    return max(1, usable_cpus() // workers)


def oversubscription_warning(workers: int, ray: str | None = None) -> str | None:
    """A warning when more local worker processes than usable CPUs were asked for: they only
    compete for the cores (8 workers on 2 cores ran 4x slower than 2). Ray places its own."""
    cpus = usable_cpus()
    if ray is not None or workers <= cpus:
        return None
    return (
        f"--workers {workers} is more than the {cpus} CPU(s) this process may use; the extra "
        f"workers only compete for them and slow the run down: pass --workers {cpus}"
    )
