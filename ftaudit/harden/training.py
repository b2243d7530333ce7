"""The training loop shared by every harden method: NoiseTrain (TRICE Algorithm 1) and plain ERM.

Randomness never comes from global state: the batch order of epoch e comes from
``SeedSequence(seed, spawn_key=(ORDER_KEY, e))`` and the training noise of step s of epoch e for
crossbar layer l from ``SeedSequence(seed, spawn_key=(NOISE_KEY, e, s, l))`` (numpy's ziggurat
normals under every ``--rng``: training noise keeps its generator; the validation Monte Carlo
draws as ``eval`` does, with the run's ``rng``). A run resumed from a checkpoint therefore draws
exactly what an uninterrupted run draws.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ftaudit._optional import require_torch
from ftaudit.draws import DEFAULT_RNG, keyed_generator
from ftaudit.harden.rc_gaussian import censor_draws
from ftaudit.harden.trainable import TrainableModel
from ftaudit.models.base import CrossbarLayer, ModelRunner, contiguous_input
from ftaudit.montecarlo import Crossbar, run_monte_carlo
from ftaudit.noise import NoiseModel
from ftaudit.stats import kpp

if TYPE_CHECKING:
    from ftaudit.montecarlo import SampleBackend


class SampleWorkers(Protocol):
    """Where validation Monte Carlo runs besides this process (``parallel_eval.HardenWorkers``):
    declared here so the training loop does not import the worker machinery built on it."""

    def backend(
        self,
        trainable: TrainableModel,
        *,
        sigmas: Sequence[float],
        seed: int,
        batch_size: int,
        objective: str = "counts",
        rng: str = DEFAULT_RNG,
    ) -> SampleBackend: ...


ORDER_KEY = 1_000_001
NOISE_KEY = 1_000_002


#: --rc-negative choices: how TRICE's right-censoring treats the draws of a negative weight
RC_NEGATIVE = {
    "magnitude": "every draw censored above, min(z, th): for lognormal and device models the "
    "growth of |w| is capped, negative weights included (a mirrored array's conductance)",
    "value": "a negative weight's draws censored below, max(z, -th): the rise of its value is "
    "capped instead, as for a positive weight",
}


@dataclass(frozen=True)
class TrainingNoise:
    """Noise injected while training: the evaluation noise model at ``sigma``, with its base
    draws right-censored at ``threshold`` for TRICE (None: plain Gaussian draws, NoiseTrain);
    ``negative`` says how a negative weight's draws are censored (``RC_NEGATIVE``)."""

    model: NoiseModel
    sigma: float
    threshold: float | None = None
    negative: str = "magnitude"


@dataclass(frozen=True)
class TrainingData:
    """Inputs already fitted to the model (float32) and integer labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def batch_order(self, seed: int, epoch: int, batch_size: int) -> list[np.ndarray]:
        """The shuffled mini-batches of one epoch, a pure function of (seed, epoch)."""
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(ORDER_KEY, epoch)))
        order = rng.permutation(len(self))
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def noise_generator(
    seed: int, epoch: int, step: int, layer: int, draw: int = 0
) -> np.random.Generator:
    """The training noise of one (epoch, step, layer); ``draw`` > 0 keys the further draws of a
    step that averages its gradient over several (draw 0 keeps NoiseTrain's keys)."""
    key = (NOISE_KEY, epoch, step, layer) if draw == 0 else (NOISE_KEY, epoch, step, layer, draw)
    return keyed_generator(seed, key)


def perturbed_arrays(
    clean: Mapping[str, np.ndarray],
    layers: Sequence[CrossbarLayer],
    noise: TrainingNoise,
    *,
    seed: int,
    epoch: int,
    step: int,
    draw: int = 0,
) -> dict[str, np.ndarray]:
    """One training step's perturbed crossbar weights (stored layout)."""
    out = {}
    d = noise.model.draws_per_weight
    for layer in layers:
        weight = clean[layer.name]
        z = noise_generator(seed, epoch, step, layer.index, draw).standard_normal(
            (d, *layer.canonical_shape), dtype=np.float32
        )
        native = layer.to_native(z)
        if noise.threshold is not None and noise.negative == "value":
            negative = np.asarray(weight) < 0
            native = np.where(
                negative,
                np.maximum(native, np.float32(-noise.threshold)),
                np.minimum(native, np.float32(noise.threshold)),
            )
        elif noise.threshold is not None:
            censor_draws(z, noise.threshold, out=z)
        state = noise.model.prepare(weight)
        out[layer.name] = state.perturb(
            native, noise.sigma, np.empty(weight.shape, np.float32)
        ).astype(weight.dtype, copy=False)
    return out


def train_epoch(
    trainable: TrainableModel,
    optimizer: Any,
    data: TrainingData,
    *,
    epoch: int,
    seed: int,
    batch_size: int,
    layers: Sequence[CrossbarLayer],
    noise: TrainingNoise | None,
    device: str = "cpu",
    on_step: Callable[[int, float], None] | None = None,
    draws: int = 1,
    chain_rule: bool = False,
) -> float:
    """One epoch; with ``noise``, each step takes the gradient at perturbed weights and applies
    it to the clean ones (Algorithm 1). ``draws`` > 1 averages each step's loss and gradient
    over that many noise draws (a Monte Carlo estimate of the gradient of the expected loss,
    BayesFT eq. 3-4). Returns the mean training loss.

    The gradient at the perturbed weights w' is dL/dw' (TRICE's NoiseTrain, "straight
    through"). With ``chain_rule`` and multiplicative log-normal noise, w' = w * exp(sigma z),
    it is multiplied by dw'/dw = exp(sigma z) = w'/w per weight, giving the gradient of the
    expected loss with respect to the clean weights (BayesFT Algorithm 1 line 6, the gradient
    of u by the reparameterisation); other noise models keep dL/dw' (additive noise: the same).
    """
    torch = require_torch("ftaudit harden")
    module = trainable.module
    module.train()
    noisy = noise is not None and noise.sigma > 0
    passes = draws if noisy else 1
    rescale = noisy and chain_rule and noise is not None and noise.model.name == "lognormal"
    total, count = 0.0, 0
    for step, index in enumerate(data.batch_order(seed, epoch, batch_size)):
        xb = torch.from_numpy(data.x[index]).to(device)
        yb = torch.from_numpy(data.y[index]).to(device)
        clean = trainable.crossbar_arrays() if noisy else None
        clean_t = {k: t.detach().clone() for k, t in trainable.crossbar.items()} if rescale else {}
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for draw in range(passes):
            if clean is not None:
                assert noise is not None
                trainable.set_crossbar_arrays(
                    perturbed_arrays(
                        clean, layers, noise, seed=seed, epoch=epoch, step=step, draw=draw
                    )
                )
            logits = trainable.forward(xb)
            loss = torch.nn.functional.cross_entropy(logits, yb)
            before = {k: trainable.crossbar[k].grad for k in clean_t}
            for k in clean_t:
                trainable.crossbar[k].grad = None
            (loss / passes).backward()  # gradients add up over the draws: their mean
            for k, w in clean_t.items():
                _chain_rule_grad(trainable.crossbar[k], w, before[k])
            step_loss += float(loss.detach()) / passes
        if clean is not None:
            trainable.set_crossbar_arrays(clean)  # gradient at w + dw, update applied to w
        optimizer.step()
        total += step_loss * len(index)
        count += len(index)
        if on_step is not None:
            on_step(step, step_loss)
    return total / max(count, 1)


def _chain_rule_grad(tensor: Any, clean: Any, before: Any) -> None:
    """This draw's gradient of the perturbed ``tensor`` times w'/w (1 where w = 0, where
    log-normal drift leaves the weight at 0), added to the earlier draws' ``before``."""
    torch = require_torch("ftaudit harden")
    if tensor.grad is None:
        tensor.grad = before
        return
    with torch.no_grad():
        nonzero = clean != 0
        factor = torch.where(nonzero, tensor / torch.where(nonzero, clean, 1), 1)
        tensor.grad.mul_(factor)
        if before is not None:
            tensor.grad.add_(before)


class TrainableRunner(ModelRunner):
    """Evaluates an in-memory trainable module for the Monte Carlo engine (eval mode)."""

    #: a forward that fails on the data (checked_logits turns it into one line)
    runtime_errors: tuple[type[BaseException], ...] = (RuntimeError,)

    def __init__(self, trainable: TrainableModel, device: str = "cpu") -> None:
        self.torch = require_torch("ftaudit harden")
        self.trainable = trainable
        self.device = device
        self._batches: list[Any] = []

    def bind_data(self, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> None:
        x = contiguous_input(x)
        self._batches = [
            self.torch.from_numpy(x[s : s + batch_size]).to(self.device)
            for s in range(0, len(x), batch_size)
        ]
        self._labels = np.asarray(y)

    @property
    def batches(self) -> list[Any]:
        """The bound inputs, one tensor per batch (a metric reads them, e.g. the loss)."""
        return self._batches

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        self.trainable.set_crossbar_arrays(dict(weights))

    def logits(self) -> np.ndarray:
        outs = []
        with self.torch.no_grad():
            for batch in self._batches:
                out = self.trainable.forward(batch)
                outs.append(out.float().cpu().numpy())
        return np.concatenate(outs) if len(outs) > 1 else outs[0]


def quantile_eval(
    trainable: TrainableModel,
    data: TrainingData,
    *,
    layers: Sequence[CrossbarLayer],
    noise: NoiseModel,
    sigma: float,
    samples: int,
    k: float,
    seed: int,
    batch_size: int = 512,
    device: str = "cpu",
    workers: SampleWorkers | None = None,
    rng: str = DEFAULT_RNG,
) -> float:
    """KPP of the module's current weights under the evaluation noise (TRICE QuantileEval).

    Uses the eval Monte Carlo engine on the in-memory module, or on ``workers`` (the same
    numbers), with ``rng``'s normals (``ftaudit.draws.RNGS``), and restores the clean weights."""
    module = trainable.module
    was_training = module.training
    module.eval()
    clean = trainable.crossbar_arrays()
    try:
        runner = TrainableRunner(trainable, device)
        runner.bind_data(data.x, data.y, batch_size=batch_size)
        crossbar = Crossbar.prepare(layers, clean, noise)
        backend = None
        if workers is not None and sigma > 0:  # sigma = 0 is one evaluation, here
            backend = workers.backend(
                trainable, sigmas=[sigma], seed=seed, batch_size=batch_size, rng=rng
            )
        counts = run_monte_carlo(
            runner,
            crossbar,
            [sigma],
            samples=samples,
            seed=seed,
            n_data=len(data),
            k=k,
            backend=backend,
            rng=rng,
        )
        return kpp(counts.accuracies(0, len(data)), k)
    finally:
        trainable.set_crossbar_arrays(clean)
        module.train(was_training)
