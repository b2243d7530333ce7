"""ftaudit.execution: one long-lived pool per command, bound to each evaluation it runs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pytest

from ftaudit import execution, parallel
from ftaudit.execution import (
    BoundBackend,
    ProcessPool,
    SpecFile,
    backend_for,
    bind,
    execution_session,
    release,
)
from ftaudit.sensitivity import sensitivity


@dataclass(frozen=True)
class _Spec:
    """A stand-in spec: picklable, with a key (never built: nothing is submitted)."""

    payload: bytes
    key: str = field(default="k1")

    def with_key(self) -> _Spec:
        return self


def test_a_spec_is_written_once_and_removed_with_the_pool():
    pool = ProcessPool(2)
    try:
        first, again = bind(pool, _Spec(b"x" * 1000)), bind(pool, _Spec(b"x" * 1000))
        assert isinstance(first, BoundBackend) and isinstance(first.handle, SpecFile)
        assert first.handle == again.handle
        assert os.listdir(os.path.dirname(first.handle.path)) == ["k1.pkl"]
        assert first.describe() == {"backend": "processes", "workers": 2}
        release(first)  # a bound backend leaves the pool open
        assert pool.pool is not None
        folder = os.path.dirname(first.handle.path)
    finally:
        pool.close()
    assert not os.path.exists(folder)


def test_a_worker_unpickles_only_the_spec_file_the_pool_wrote(monkeypatch):
    """The spec file is signed with the pool's in-memory key: the genuine file is loaded, a
    file changed after it was written is refused before anything is unpickled."""
    built = []

    class _Evaluator:
        def evaluate(self, start, stop, active):
            return np.arange(start, stop)

    monkeypatch.setattr(execution, "_evaluator", lambda spec: built.append(spec) or _Evaluator())
    pool = ProcessPool(1)
    try:
        handle = pool.handle(_Spec(b"x" * 100))
        assert list(execution._file_chunk(handle, 2, 5, [0])) == [2, 3, 4]
        assert built == [_Spec(b"x" * 100)]
        with open(handle.path, "r+b") as file:  # one byte changed by someone else
            data = bytearray(file.read())
            data[-5] ^= 1
            file.seek(0)
            file.write(bytes(data))
        with pytest.raises(RuntimeError, match="changed after it was written"):
            execution._file_chunk(handle, 2, 5, [0])
        assert len(built) == 1
    finally:
        pool.close()


def test_without_a_session_each_evaluation_gets_its_own_backend(monkeypatch):
    made = []
    monkeypatch.setattr(execution, "make_backend", lambda *a, **k: made.append(k) or "own")
    assert backend_for(_Spec(b""), None, workers=2, ray=None) == "own"
    with execution_session(2, None):
        assert isinstance(backend_for(_Spec(b""), None, workers=2, ray=None), BoundBackend)
        # another worker count than the session's: its own backend, as before
        assert backend_for(_Spec(b""), None, workers=3, ray=None) == "own"
    assert made == [{"workers": 2, "ray": None}, {"workers": 3, "ray": None}]


def test_sensitivity_starts_one_pool_and_gives_the_same_ranking(mlp_onnx, blobs_npz, monkeypatch):
    """2L+1 audits on one process pool; the numbers are those of this process."""
    pools = []
    start = parallel.ProcessBackend.__init__

    def counted(self, *args, **kwargs):
        pools.append(type(self).__name__)
        start(self, *args, **kwargs)

    monkeypatch.setattr(parallel.ProcessBackend, "__init__", counted)
    options = {"sigmas": [0.8], "samples": 8, "seed": 2}
    alone = sensitivity(mlp_onnx, blobs_npz, **options)
    pooled = sensitivity(mlp_onnx, blobs_npz, workers=2, **options)
    assert len(alone.layers) >= 2  # 2L+1 audits ran
    assert pools == ["ProcessPool"]
    assert [layer.to_dict() for layer in pooled.layers] == [
        layer.to_dict() for layer in alone.layers
    ]


@pytest.mark.parametrize("workers", [1])
def test_one_worker_needs_no_pool(workers):
    with execution_session(workers, None):
        assert execution._SESSION.get() is None
