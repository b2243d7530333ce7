"""BayesFT's objective u (eq. 3-4) as a per-sample metric: the validation cross-entropy of the
trainable with its crossbar weights perturbed by the evaluation noise, sample by sample, with the
same draws as ``ftaudit eval`` (``draws_for_sample``). The same evaluator runs in this process
and in a worker (``harden/parallel_eval``), so the number does not depend on where it ran."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ftaudit._optional import require_torch
from ftaudit.harden.trainable import TrainableModel
from ftaudit.harden.training import SampleWorkers, TrainingData
from ftaudit.models.base import CrossbarLayer, contiguous_input
from ftaudit.montecarlo import Crossbar, chunk_size, draws_for_sample
from ftaudit.noise import NoiseModel

FEATURE = "the bayesft harden method"


class ObjectiveEvaluator:
    """Mean validation cross-entropy of Monte Carlo samples [start, stop): the objective's unit
    of work, the same class in this process and in a worker (``--workers``/``--ray``).

    Sample i's weights are ``noise`` at ``sigma`` applied with ``draws_for_sample(seed, i, ...)``;
    the module runs in its current mode (eval: no dropout). The clean weights are put back after
    every chunk."""

    def __init__(
        self,
        trainable: TrainableModel,
        data: TrainingData,
        *,
        layers: Sequence[CrossbarLayer],
        noise: NoiseModel,
        sigma: float,
        seed: int,
        batch_size: int = 512,
        device: str = "cpu",
    ) -> None:
        torch = require_torch(FEATURE)
        self.torch, self.trainable = torch, trainable
        self.layers, self.sigma, self.seed = list(layers), sigma, seed
        self.clean = trainable.crossbar_arrays()
        self.crossbar = Crossbar.prepare(layers, self.clean, noise)
        self.n = len(data)
        x = contiguous_input(data.x)
        self.batches = [
            (
                torch.from_numpy(x[s : s + batch_size]).to(device),
                torch.from_numpy(data.y[s : s + batch_size]).to(device),
            )
            for s in range(0, len(data), batch_size)
        ]
        self._weights = [np.empty(layer.shape, np.float32) for layer in layers]
        d = noise.draws_per_weight
        self._draws = [np.empty((d, *layer.canonical_shape), np.float32) for layer in layers]

    def evaluate(self, start: int, stop: int, active: Sequence[int] = (0,)) -> np.ndarray:
        """Losses ``(1, stop - start)`` of samples [start, stop) (``active`` is the engine's
        row list; the objective has one row)."""
        torch, module = self.torch, self.trainable.module
        losses = np.zeros((1, stop - start), dtype=np.float64)
        d = self.crossbar.noise.draws_per_weight
        try:
            for offset, i in enumerate(range(start, stop)):
                draws = draws_for_sample(self.seed, i, self.layers, d, out=self._draws)
                self.trainable.set_crossbar_arrays(
                    {
                        layer.name: state.perturb(layer.to_native(z), self.sigma, buf)
                        for layer, state, z, buf in zip(
                            self.layers, self.crossbar.states, draws, self._weights, strict=True
                        )
                    }
                )
                total = 0.0
                with torch.no_grad():
                    for xb, yb in self.batches:
                        logits = module(xb)
                        if isinstance(logits, (tuple, list)):
                            logits = logits[0]
                        loss = torch.nn.functional.cross_entropy(
                            logits.float(), yb, reduction="sum"
                        )
                        total += float(loss)
                losses[0, offset] = total / self.n
        finally:
            self.trainable.set_crossbar_arrays(self.clean)
        return losses

    def close(self) -> None:
        pass


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
) -> float:
    """u (eq. 3-4): minus the mean over ``samples`` Monte Carlo draws of the validation
    cross-entropy, weights perturbed by ``noise`` at ``sigma``, in eval mode (no dropout).

    Sample i's draws are ``draws_for_sample(seed, i, layers, ...)``, as in ``ftaudit eval``. At
    sigma = 0 every sample is the same model, so one evaluation serves. With ``workers`` the
    samples are spread over them in chunks and put back in index order (the same number). The
    clean weights and the module's mode are restored afterwards.
    """
    module = trainable.module
    was_training = module.training
    module.eval()
    n = samples if sigma > 0 else 1
    try:
        if workers is None or n == 1:
            evaluator = ObjectiveEvaluator(
                trainable,
                data,
                layers=layers,
                noise=noise,
                sigma=sigma,
                seed=seed,
                batch_size=batch_size,
                device=device,
            )
            losses = evaluator.evaluate(0, n)[0]
        else:
            backend = workers.backend(
                trainable, sigmas=[sigma], seed=seed, batch_size=batch_size, objective="loss"
            )
            size = chunk_size(n, backend.parallelism, None)
            futures = [backend.submit(s, min(s + size, n), [0]) for s in range(0, n, size)]
            try:
                losses = np.concatenate([future.result()[0] for future in futures])
            finally:
                for future in futures:
                    future.cancel()
    finally:
        module.train(was_training)
    return -float(np.mean(losses))
