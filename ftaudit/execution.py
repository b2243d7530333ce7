"""One long-lived execution backend per command: worker processes or a Ray connection opened
once and bound to every evaluation the command runs (``compare``'s two audits,
``sensitivity``'s 2L+1, ``harden``'s validation and objective evaluations).

A bound evaluation ships its spec (model bytes, data, noise) once: to Ray's object store, or
pickled to a signed file in the pool's folder that every chunk names, so a worker rebuilds the
evaluator once per evaluation, not per chunk. Numbers never depend on the backend (see
``ftaudit.parallel``).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ftaudit.montecarlo import ChunkEvaluator, SampleBackend
from ftaudit.parallel import (
    EvaluatorSpec,
    ProcessBackend,
    RayBackend,
    RetriedChunk,
    _evaluator,
    _ray_chunk,
    close_backend,
    make_backend,
)


@dataclass(frozen=True)
class SpecFile:
    """A spec pickled once into the pool's folder: what a chunk carries instead of the spec,
    with the HMAC-SHA256 of the file's bytes under the pool's secret key (sent over the pipe,
    never written), so a worker unpickles only the bytes this command wrote."""

    key: str
    path: str
    secret: bytes
    digest: bytes


def _signature(secret: bytes, data: bytes) -> bytes:
    return hmac.new(secret, data, hashlib.sha256).digest()


def _file_chunk(handle: SpecFile, start: int, stop: int, active: list[int]) -> np.ndarray:
    """Worker side: the evaluator of ``handle``'s spec (loaded from its file on first use).

    The file is this command's own pickle in its private ``mkdtemp`` folder (mode 0700), the
    same bytes a process pool would send over its pipe; its signature is checked before it is
    unpickled (a file changed by anyone else is refused), and nothing a user hands in is."""
    from ftaudit import parallel

    evaluator = parallel._EVALUATORS.get(handle.key)
    if evaluator is None:
        with open(handle.path, "rb") as file:
            data = file.read()
        if not hmac.compare_digest(_signature(handle.secret, data), handle.digest):
            raise RuntimeError(f"evaluation spec {handle.path} was changed after it was written")
        evaluator = _evaluator(pickle.loads(data))
    return evaluator.evaluate(start, stop, active)


class ProcessPool(ProcessBackend):
    """Spawned worker processes started once; each evaluation is bound to them by a handle.

    ``by_file`` (the default) ships each spec once, as a file; False sends the spec with every
    chunk (small specs, or evaluations nobody releases, such as harden's per-epoch weights);
    ``handle`` can choose per spec."""

    def __init__(self, workers: int, *, by_file: bool = True) -> None:
        super().__init__(None, workers)
        self.by_file = by_file
        self._folder = tempfile.mkdtemp(prefix="ftaudit-pool-")
        #: signs the spec files (``SpecFile``); lives in memory and in the chunks' pipes only
        self._secret = os.urandom(32)
        self._digests: dict[str, bytes] = {}

    def handle(self, spec: EvaluatorSpec, *, by_file: bool | None = None) -> Any:
        if not (self.by_file if by_file is None else by_file):
            return spec
        path = os.path.join(self._folder, f"{spec.key}.pkl")
        if spec.key not in self._digests:
            data = pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL)
            with open(path + ".tmp", "wb") as file:
                file.write(data)
            os.replace(path + ".tmp", path)
            self._digests[spec.key] = _signature(self._secret, data)
        return SpecFile(spec.key, path, self._secret, self._digests[spec.key])

    def submit_spec(self, handle: Any, start: int, stop: int, active: Sequence[int]) -> Any:
        chunk = _file_chunk if isinstance(handle, SpecFile) else _ray_chunk
        return RetriedChunk(self, chunk, (handle, start, stop, list(active)))

    def close(self) -> None:
        try:
            super().close()
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)


class RayPool(RayBackend):
    """A Ray connection kept for the command; each spec is put in the object store once."""

    def __init__(self, address: str, workers: int | None) -> None:
        super().__init__(None, address, workers)

    def handle(self, spec: EvaluatorSpec, *, by_file: bool | None = None) -> Any:
        return self._ray.put(spec)  # the object store holds it once either way

    def submit_spec(self, handle: Any, start: int, stop: int, active: Sequence[int]) -> Any:
        return self._task.remote(handle, start, stop, list(active)).future()


Pool = ProcessPool | RayPool


@dataclass
class BoundBackend:
    """The ``SampleBackend`` of one evaluation: the command's pool with that evaluation's spec.
    Closing it leaves the pool running (the pool's owner closes it)."""

    pool: Pool
    handle: Any
    parallelism: int

    def submit(self, start: int, stop: int, active: Sequence[int]) -> Future[np.ndarray]:
        return self.pool.submit_spec(self.handle, start, stop, active)

    def describe(self) -> dict[str, Any]:
        return self.pool.describe()


def open_pool(workers: int, ray: str | None, *, by_file: bool = True) -> Pool | None:
    """The pool for ``--workers``/``--ray``; None: this process evaluates."""
    if ray is not None:
        return RayPool(ray, None if workers == 1 else workers)
    if workers > 1:
        return ProcessPool(workers, by_file=by_file)
    return None


def bind(pool: Pool, spec: EvaluatorSpec, *, by_file: bool | None = None) -> BoundBackend:
    """A backend that evaluates ``spec`` on ``pool`` (``by_file``: see ``ProcessPool``)."""
    return BoundBackend(pool, pool.handle(spec, by_file=by_file), pool.parallelism)


#: the pool of the command running now, with the (workers, ray) it was opened for
_SESSION: contextvars.ContextVar[tuple[int, str | None, Pool] | None] = contextvars.ContextVar(
    "ftaudit_execution_session", default=None
)


@contextmanager
def execution_session(workers: int, ray: str | None) -> Iterator[None]:
    """One pool for every evaluation inside the block (``backend_for`` binds to it); closed,
    and a Ray cluster started here stopped, at the end."""
    pool = open_pool(workers, ray)
    if pool is None:
        yield
        return
    token = _SESSION.set((workers, ray, pool))
    try:
        yield
    finally:
        _SESSION.reset(token)
        pool.close()


def session_pool(workers: int, ray: str | None) -> Pool | None:
    """The pool of the command running now, if it was opened for ``workers``/``ray``."""
    session = _SESSION.get()
    return session[2] if session is not None and session[:2] == (workers, ray) else None


def backend_for(
    spec: Any, evaluator: ChunkEvaluator | None, *, workers: int, ray: str | None
) -> SampleBackend:
    """The backend of one evaluation: bound to the session's pool when one is open for the
    same ``workers``/``ray``, else its own (``parallel.make_backend``)."""
    pool = session_pool(workers, ray)
    if pool is not None and spec is not None:
        return bind(pool, spec.with_key())
    return make_backend(spec, evaluator, workers=workers, ray=ray)


def release(backend: SampleBackend) -> None:
    """Close a backend made by ``backend_for`` (a bound one leaves its pool open)."""
    if not isinstance(backend, BoundBackend):
        close_backend(backend)
