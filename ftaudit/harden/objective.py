"""BayesFT's objective u (eq. 3-4) as a per-sample metric of the engine's one Monte Carlo loop
(``montecarlo.run_monte_carlo`` / ``ChunkEvaluator``): the validation cross-entropy of the
trainable with its crossbar weights perturbed by the evaluation noise, sample by sample, with the
same draws as ``ftaudit eval`` (``draws_for_sample``). The same evaluator runs in this process
and in a worker (``harden/parallel_eval``), so the number does not depend on where it ran."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ftaudit._optional import require_torch
from ftaudit.draws import DEFAULT_RNG
from ftaudit.harden.trainable import TrainableModel
from ftaudit.harden.training import SampleWorkers, TrainableRunner, TrainingData
from ftaudit.models.base import CrossbarLayer
from ftaudit.montecarlo import ChunkEvaluator, Crossbar, run_monte_carlo
from ftaudit.noise import NoiseModel

FEATURE = "the bayesft harden method"


class MeanCrossEntropy:
    """The mean cross-entropy of a ``TrainableRunner``'s module on its bound data (summed per
    batch in batch order, then divided by the number of examples): the objective's metric. The
    module runs in its current mode (eval: no dropout)."""

    dtype = np.float64

    def __init__(self, y: np.ndarray, *, batch_size: int, device: str = "cpu") -> None:
        torch = require_torch(FEATURE)
        self.torch, self.n = torch, len(y)
        self.labels = [
            torch.from_numpy(y[s : s + batch_size]).to(device) for s in range(0, len(y), batch_size)
        ]

    def one(self, runner: TrainableRunner) -> float:  # type: ignore[override]
        torch = self.torch
        total = 0.0
        with torch.no_grad():
            for xb, yb in zip(runner.batches, self.labels, strict=True):
                logits = runner.trainable.forward(xb)
                total += float(
                    torch.nn.functional.cross_entropy(logits.float(), yb, reduction="sum")
                )
        return total / self.n

    def many(self, runner: TrainableRunner, weight_sets: list) -> list[float]:  # type: ignore[override]
        values = []
        for weights in weight_sets:
            runner.set_weights(weights)
            values.append(self.one(runner))
        return values


def objective_parts(
    trainable: TrainableModel,
    data: TrainingData,
    *,
    layers: Sequence[CrossbarLayer],
    noise: NoiseModel,
    batch_size: int = 512,
    device: str = "cpu",
) -> tuple[TrainableRunner, Crossbar, MeanCrossEntropy]:
    """The runner (data bound), the crossbar of the current weights and the loss metric."""
    runner = TrainableRunner(trainable, device)
    runner.bind_data(data.x, data.y, batch_size=batch_size)
    crossbar = Crossbar.prepare(layers, trainable.crossbar_arrays(), noise)
    return runner, crossbar, MeanCrossEntropy(data.y, batch_size=batch_size, device=device)


def objective_evaluator(
    trainable: TrainableModel,
    data: TrainingData,
    *,
    layers: Sequence[CrossbarLayer],
    noise: NoiseModel,
    sigma: float,
    seed: int,
    batch_size: int = 512,
    device: str = "cpu",
    rng: str = DEFAULT_RNG,
) -> ChunkEvaluator:
    """The engine's evaluator of the objective's losses, ``(1, stop - start)`` per chunk (what
    a worker builds for ``objective='loss'``)."""
    runner, crossbar, metric = objective_parts(
        trainable, data, layers=layers, noise=noise, batch_size=batch_size, device=device
    )
    return ChunkEvaluator(runner, crossbar, [sigma], seed, metric=metric, rng=rng)


def bayesft_objective(
    trainable: TrainableModel,
    data: TrainingData,
    *,
    layers: Sequence[CrossbarLayer],
    noise: NoiseModel,
    sigma: float,
    samples: int,
    seed: int,
    batch_size: int = 512,
    device: str = "cpu",
    workers: SampleWorkers | None = None,
    rng: str = DEFAULT_RNG,
) -> float:
    """u (eq. 3-4): minus the mean over ``samples`` Monte Carlo draws of the validation
    cross-entropy, weights perturbed by ``noise`` at ``sigma``, in eval mode (no dropout).

    Sample i's draws are ``draws_for_sample(seed, i, layers, ...)`` with ``rng``'s normals, as in
    ``ftaudit eval``. At sigma = 0 every sample is the same model, so one evaluation serves. With
    ``workers`` the samples are spread over them in chunks and put back in index order (the same
    number). The clean weights and the module's mode are restored afterwards.
    """
    module = trainable.module
    was_training = module.training
    module.eval()
    n = samples if sigma > 0 else 1
    clean = trainable.crossbar_arrays()
    try:
        runner, crossbar, metric = objective_parts(
            trainable, data, layers=layers, noise=noise, batch_size=batch_size, device=device
        )
        backend = None
        if workers is not None and n > 1:
            backend = workers.backend(
                trainable,
                sigmas=[sigma],
                seed=seed,
                batch_size=batch_size,
                objective="loss",
                rng=rng,
            )
        losses = run_monte_carlo(
            runner,
            crossbar,
            [sigma],
            samples=n,
            seed=seed,
            n_data=len(data),
            k=1.0,  # unused: no early stop
            backend=backend,
            metric=metric,
            rng=rng,
        ).counts[0, :n]
    finally:
        trainable.set_crossbar_arrays(clean)
        module.train(was_training)
    return -float(np.mean(losses))
