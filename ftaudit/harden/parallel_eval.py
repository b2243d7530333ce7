"""Harden's Monte Carlo evaluations on local worker processes or Ray, one pool for the whole run.

A trainable model lives in memory and its weights change every epoch, so each evaluation ships a
``TrainableWorkerSpec``: the input model's bytes, the module's current state (``torch.save``
bytes), the validation data and the noise. A worker rebuilds the trainable once per spec (the
key changes with the weights) and runs the same ``ChunkEvaluator`` as ``ftaudit eval``. Sample
i's draws depend only on (seed, i, layer) and chunks come back in index order, so TRICE's KPPs,
its choice of sigma_t and therefore the exported weights are the same for any worker count.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ftaudit._optional import require_torch
from ftaudit.draws import DEFAULT_RNG
from ftaudit.execution import Pool, bind, open_pool, session_pool
from ftaudit.harden.trainable import TrainableModel
from ftaudit.harden.training import TrainingData
from ftaudit.models.base import AuditModel, CrossbarLayer, contiguous_input
from ftaudit.montecarlo import ChunkEvaluator, Crossbar, SampleBackend
from ftaudit.noise.base import NoiseModel
from ftaudit.parallel import _limit_threads, threads_per_worker

if TYPE_CHECKING:
    from ftaudit.analog.torch_pipeline import AnalogTraining

FEATURE = "ftaudit harden --workers"
#: this worker process's last model export (a spec per evaluation; the model stays the same)
_EXPORTS: dict[str, Any] = {}


def _exported(source: AuditModel, raw: bytes, x: np.ndarray) -> Any:
    """``source``'s in-memory ONNX export, made once per model in this process."""
    from ftaudit.harden.analog_trainable import export_graph

    digest = hashlib.sha256(raw).hexdigest()
    if digest not in _EXPORTS:
        _EXPORTS.clear()
        _EXPORTS[digest] = export_graph(source, x)
    return _EXPORTS[digest]


@dataclass(frozen=True)
class TrainableWorkerSpec:
    """One evaluation of a trainable model's current weights, as bytes and arrays only."""

    model_path: str
    model_bytes: bytes
    state: bytes
    x: np.ndarray
    y: np.ndarray
    layer_names: tuple[str, ...]
    noise: NoiseModel
    sigmas: tuple[float, ...]
    seed: int
    batch_size: int
    device: str
    threads: int | None = None
    #: 'counts': correct predictions per sigma (the eval engine); 'loss': BayesFT's objective
    objective: str = "counts"
    #: the normal generator of the draws (ftaudit.draws.RNGS)
    rng: str = DEFAULT_RNG
    #: the analog forward pipeline the trainable runs (calibrated once, in the main process)
    analog: AnalogTraining | None = None
    #: the trainable is the model's in-memory ONNX export (rebuilt here from ``x``)
    through_onnx: bool = False
    key: str = field(default="", compare=False)

    def build(self) -> ChunkEvaluator:
        """Recreate the trainable from the model's bytes, load the weights, bind the data."""
        from ftaudit.harden.analog_trainable import trainable_copy
        from ftaudit.harden.training import TrainableRunner
        from ftaudit.models import load_model_bytes

        torch = require_torch(FEATURE)
        if self.threads is not None:
            _limit_threads(self.threads)
        source = load_model_bytes(self.model_path, self.model_bytes)
        graph = _exported(source, self.model_bytes, self.x) if self.through_onnx else None
        trainable = trainable_copy(source, self.analog, graph=graph)
        trainable.module.to(self.device)
        state = torch.load(io.BytesIO(self.state), map_location=self.device, weights_only=True)
        trainable.load_state_dict(state)
        trainable.module.eval()
        by_name = {layer.name: layer for layer in source.layers}
        layers = [by_name[name] for name in self.layer_names]
        if self.objective == "loss":
            # BayesFT's dropout modules hold no state and act only in train mode: the plain
            # trainable loads the state and computes the same eval-mode outputs
            from ftaudit.harden.objective import objective_evaluator

            (sigma,) = self.sigmas
            return objective_evaluator(
                trainable,
                TrainingData(self.x, self.y),
                layers=layers,
                noise=self.noise,
                sigma=sigma,
                seed=self.seed,
                batch_size=self.batch_size,
                device=self.device,
                rng=self.rng,
            )
        runner = TrainableRunner(trainable, self.device)
        runner.bind_data(self.x, self.y, batch_size=self.batch_size)
        crossbar = Crossbar.prepare(layers, trainable.crossbar_arrays(), self.noise)
        return ChunkEvaluator(runner, crossbar, self.sigmas, self.seed, rng=self.rng)


def state_bytes(trainable: TrainableModel) -> bytes:
    """The module's parameters and buffers as ``torch.save`` bytes (CPU tensors)."""
    torch = require_torch(FEATURE)
    state = {name: value.detach().cpu() for name, value in trainable.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


# --- one pool for the run (ftaudit.execution); chunks carry their evaluation's spec ----------


class HardenWorkers:
    """The workers of one harden run: started once, given a new spec per evaluation."""

    def __init__(
        self,
        source: AuditModel,
        data: TrainingData,
        *,
        layers: Sequence[CrossbarLayer],
        noise: NoiseModel,
        workers: int,
        ray: str | None,
        device: str = "cpu",
        analog: AnalogTraining | None = None,
        through_onnx: bool = False,
    ) -> None:
        from ftaudit.models.fingerprint import model_bytes

        self._static: dict[str, Any] = {
            "model_path": str(source.path),
            "model_bytes": model_bytes(source),
            "x": contiguous_input(data.x),
            "y": np.asarray(data.y),
            "layer_names": tuple(layer.name for layer in layers),
            "noise": noise,
            "device": device,
            "threads": 1 if ray is not None else threads_per_worker(workers),
            "analog": analog,
            "through_onnx": through_onnx,
        }
        digest = hashlib.sha256(self._static["model_bytes"])
        for array in (self._static["x"], self._static["y"]):
            digest.update(hashlib.sha256(array.tobytes()).digest())
        static = {k: v for k, v in self._static.items() if k not in ("model_bytes", "x", "y")}
        static["noise"] = noise.parameters()
        static["analog"] = None if analog is None else analog.pipeline.to_dict()
        digest.update(repr(sorted(static.items())).encode())
        self._digest = digest.digest()
        # the command's pool when harden opened one (its before/after audits then run on the
        # same processes); every epoch's weights make a new spec, never released: each chunk
        # carries it
        shared = session_pool(workers, ray)
        pool = shared if shared is not None else open_pool(workers, ray, by_file=False)
        assert pool is not None  # open_workers asks for workers only with --workers/--ray
        self.pool: Pool = pool
        self._owns_pool = shared is None

    def spec(
        self,
        trainable: TrainableModel,
        *,
        sigmas: Sequence[float],
        seed: int,
        batch_size: int,
        objective: str = "counts",
        rng: str = DEFAULT_RNG,
    ) -> TrainableWorkerSpec:
        """The spec of evaluating ``trainable``'s current weights at ``sigmas`` with ``seed``."""
        state = state_bytes(trainable)
        sigmas = tuple(float(s) for s in sigmas)
        digest = hashlib.sha256(self._digest)
        digest.update(hashlib.sha256(state).digest())
        digest.update(repr((sigmas, seed, batch_size, objective, rng)).encode())
        return TrainableWorkerSpec(
            **self._static,
            state=state,
            sigmas=sigmas,
            seed=seed,
            batch_size=batch_size,
            objective=objective,
            rng=rng,
            key=digest.hexdigest(),
        )

    def backend(
        self,
        trainable: TrainableModel,
        *,
        sigmas: Sequence[float],
        seed: int,
        batch_size: int,
        objective: str = "counts",
        rng: str = DEFAULT_RNG,
    ) -> SampleBackend:
        """A backend over ``trainable``'s current weights (for ``run_monte_carlo``, or BayesFT's
        objective with ``objective='loss'``)."""
        spec = self.spec(
            trainable,
            sigmas=sigmas,
            seed=seed,
            batch_size=batch_size,
            objective=objective,
            rng=rng,
        )
        return bind(self.pool, spec, by_file=False)

    def describe(self) -> dict[str, Any]:
        return self.pool.describe()

    def close(self) -> None:
        """Close the pool if this run opened it (a command's pool is closed by its session)."""
        if self._owns_pool:
            self.pool.close()


def open_workers(
    source: AuditModel,
    data: TrainingData,
    *,
    layers: Sequence[CrossbarLayer],
    noise: NoiseModel,
    workers: int,
    ray: str | None,
    device: str = "cpu",
    analog: AnalogTraining | None = None,
    through_onnx: bool = False,
) -> HardenWorkers | None:
    """The run's workers for ``--workers``/``--ray``; None: evaluate in this process."""
    if workers == 1 and ray is None:
        return None
    return HardenWorkers(
        source,
        data,
        layers=layers,
        noise=noise,
        workers=workers,
        ray=ray,
        device=device,
        analog=analog,
        through_onnx=through_onnx,
    )
