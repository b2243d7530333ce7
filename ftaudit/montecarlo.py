"""The Monte Carlo engine: per-sample draws keyed by (seed, sample, layer), shared across sigma.

Sample i's base draws for crossbar layer l are the standard normals of the keyed stream
``(i, l)`` (``ftaudit.draws``: SFC64 seeded by ``SeedSequence(seed, spawn_key=(i, l))``, turned
into normals by the run's ``rng``), so they depend on nothing else: not the batch size, the
worker count, the order of work, nor which other layers are selected. Every sigma of a run
reuses the same draws (common random numbers), which makes accuracy curves smooth and paired
comparisons between models possible.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ftaudit.coverage import look_confidence, sequential_looks
from ftaudit.draws import DEFAULT_RNG, standard_normal
from ftaudit.models.base import CrossbarLayer, ModelRunner
from ftaudit.noise.base import LayerNoise, NoiseModel
from ftaudit.stats import kpp_interval_width

if TYPE_CHECKING:
    from ftaudit.noise.effects import DeviceEffects

#: chunk size under --target-ci: every sequential look (50 * 2**i) falls on a chunk end
CHECK_EVERY = 50

ProgressCallback = Callable[[int, int], None]


def draws_for_sample(
    seed: int,
    sample: int,
    layers: Sequence[CrossbarLayer],
    draws_per_weight: int,
    out: Sequence[np.ndarray] | None = None,
    rng: str = DEFAULT_RNG,
) -> list[np.ndarray]:
    """Standard-normal base draws of one sample, one array (d, *canonical_shape) per layer:
    stream ``(sample, layer.index)`` of ``ftaudit.draws`` under generator ``rng``."""
    result = []
    for i, layer in enumerate(layers):
        buffer = (
            out[i]
            if out is not None
            else np.empty((draws_per_weight, *layer.canonical_shape), np.float32)
        )
        result.append(standard_normal(seed, (sample, layer.index), buffer, rng))
    return result


@dataclass
class Crossbar:
    """The selected layers of one model with their prepared noise state."""

    layers: list[CrossbarLayer]
    states: list[LayerNoise]
    noise: NoiseModel

    @classmethod
    def prepare(
        cls, layers: Sequence[CrossbarLayer], weights: dict[str, np.ndarray], noise: NoiseModel
    ) -> Crossbar:
        return cls(list(layers), [noise.prepare(weights[layer.name]) for layer in layers], noise)

    def unperturbed(self) -> dict[str, np.ndarray]:
        """Weights at sigma = 0 (quantised for device models)."""
        pairs = zip(self.layers, self.states, strict=True)
        return {layer.name: state.unperturbed() for layer, state in pairs}


@dataclass
class MonteCarloCounts:
    """Correct-prediction counts, ``counts[j, i]`` for sigma j and sample i, and samples used."""

    counts: np.ndarray
    used: np.ndarray
    stopped_early: np.ndarray

    def accuracies(self, j: int, n: int) -> np.ndarray:
        return self.counts[j, : self.used[j]] / n


class Metric(Protocol):
    """What the loop measures of each perturbed model (one value per weight set)."""

    #: the dtype of the values (counts are integers, a loss is a float)
    dtype: Any

    def one(self, runner: ModelRunner) -> Any:
        """The value of the weights ``runner`` holds now."""
        ...

    def many(self, runner: ModelRunner, weight_sets: list[dict[str, np.ndarray]]) -> list[Any]:
        """The values of several weight sets (``--batch-samples``)."""
        ...


class AccuracyCounts:
    """Correct predictions on the data (eval's metric: accuracy = count / n)."""

    dtype = np.int64

    def one(self, runner: ModelRunner) -> int:
        return runner.count_correct()

    def many(self, runner: ModelRunner, weight_sets: list[dict[str, np.ndarray]]) -> list[int]:
        return runner.count_correct_many(weight_sets)


#: the default metric of the loop
ACCURACY_COUNTS = AccuracyCounts()


class ChunkEvaluator:
    """Metric values (correct counts by default) for a range of sample indices: the unit of
    work a worker runs.

    It owns its draw and weight buffers and a helper thread that makes sample i+1's draws while
    sample i is evaluated (numpy's generators and the model runtimes release the GIL)."""

    def __init__(
        self,
        runner: ModelRunner,
        crossbar: Crossbar,
        sigmas: Sequence[float],
        seed: int,
        effects: DeviceEffects | None = None,
        batch_samples: int = 1,
        rng: str = DEFAULT_RNG,
        metric: Metric = ACCURACY_COUNTS,
    ) -> None:
        self.runner = runner
        self.rng = rng  # the normal generator of every draw (ftaudit.draws.RNGS)
        self.metric = metric
        #: weight sets per runner call (``count_correct_many``), with or without device effects
        self.batch_samples = batch_samples
        self.crossbar = crossbar
        self.sigmas = [float(s) for s in sigmas]
        self.seed = seed
        self.engine = None
        if effects is not None:
            from ftaudit.effects_engine import EffectsEngine

            self.engine = EffectsEngine(
                crossbar.layers, crossbar.states, effects, seed, rng, runner.digital_gains
            )
        #: result rows: one per sigma, or one per (sigma, time, compensation) with effects
        self.rows = len(self.sigmas) if self.engine is None else len(self.engine.rows(sigmas))
        d = crossbar.noise.draws_per_weight
        layers = crossbar.layers
        self._draws = [
            [np.empty((d, *la.canonical_shape), np.float32) for la in layers] for _ in "ab"
        ]
        self._weights = [np.empty(layer.shape, np.float32) for layer in layers]
        self._staged = [
            [np.empty(layer.shape, np.float32) for layer in layers]
            for _ in range(self.batch_samples if self.batch_samples > 1 else 0)
        ]
        self._pool = ThreadPoolExecutor(max_workers=1)

    def evaluate(self, start: int, stop: int, active: Sequence[int]) -> np.ndarray:
        """Counts ``(rows, stop - start)`` for samples [start, stop); only ``active`` rows are
        filled (the others stay 0)."""
        counts = np.zeros((self.rows, stop - start), dtype=self.metric.dtype)
        if not active or stop <= start:
            return counts
        names = [layer.name for layer in self.crossbar.layers]
        pending = self._pool.submit(self._draw, start, 0)
        # (sample offset, row, gains) of the staged weight sets
        staged: list[tuple[int, int, list[float] | None]] = []
        # batched: plain rows are perturbed straight into the next free staging slot
        target = (lambda: self._staged[len(staged)]) if self.batch_samples > 1 else None
        for offset, i in enumerate(range(start, stop)):
            draws, extra = pending.result()
            self.runner.set_sample(self.seed, i)
            if i + 1 < stop:
                pending = self._pool.submit(self._draw, i + 1, ~offset & 1)
            for row, weights, gains in self._weight_sets(draws, extra, active, target):
                if self.batch_samples > 1:
                    for buffer, weight in zip(self._staged[len(staged)], weights, strict=True):
                        if weight is not buffer:
                            np.copyto(buffer, weight)
                    staged.append((offset, row, gains))
                    if len(staged) == self.batch_samples:
                        self._flush(staged, counts, start)
                else:
                    self.runner.set_weights(dict(zip(names, weights, strict=True)))
                    if self.runner.digital_gains:
                        self.runner.set_gains(None if gains is None else self._named(gains))
                    counts[row, offset] = self.metric.one(self.runner)
        if staged:
            self._flush(staged, counts, start)
        if self.runner.digital_gains:
            self.runner.set_gains(None)  # later passes (another caller's) read uncompensated
        return counts

    def _named(self, gains: Sequence[float]) -> dict[str, float]:
        """Per-layer gains keyed by crossbar layer name, as the runner takes them."""
        return {layer.name: g for layer, g in zip(self.crossbar.layers, gains, strict=True)}

    def _weight_sets(
        self,
        draws: Sequence[np.ndarray],
        extra: Any,
        active: Sequence[int],
        target: Callable[[], list[np.ndarray]] | None = None,
    ) -> Iterator[tuple[int, list[np.ndarray], list[float] | None]]:
        """(row, weights, gains) for every active row of one sample (``EffectsEngine``'s); the
        arrays are reused buffers, valid until the next item. Plain rows are written into
        ``target()`` when given."""
        if self.engine is not None:
            yield from self.engine.weight_sets(self.sigmas, active, draws, extra)
            return
        layers, states = self.crossbar.layers, self.crossbar.states
        native = [layer.to_native(z) for layer, z in zip(layers, draws, strict=True)]
        for j in active:
            buffers = self._weights if target is None else target()
            yield (
                j,
                [
                    state.perturb(z, self.sigmas[j], out=buffer)
                    for state, z, buffer in zip(states, native, buffers, strict=True)
                ],
                None,
            )

    def _flush(
        self, staged: list[tuple[int, int, list[float] | None]], counts: np.ndarray, start: int
    ) -> None:
        """Evaluate the staged weight sets in one runner call and empty the stage; each set
        reads its own sample's read noise (``set_samples``) and its own row's gains
        (``set_gain_sets``), as one sample per pass would."""
        names = [layer.name for layer in self.crossbar.layers]
        sets = [dict(zip(names, self._staged[k], strict=True)) for k in range(len(staged))]
        self.runner.set_samples(self.seed, [start + offset for offset, _, _ in staged])
        if self.runner.digital_gains:
            self.runner.set_gain_sets([None if g is None else self._named(g) for *_, g in staged])
        values = self.metric.many(self.runner, sets)
        for (offset, j, _), value in zip(staged, values, strict=True):
            counts[j, offset] = value
        staged.clear()

    def _draw(self, sample: int, buffer: int) -> tuple[list[np.ndarray], Any]:
        """Sample ``sample``'s base draws (into buffer set ``buffer``) and effect draws."""
        layers, d = self.crossbar.layers, self.crossbar.noise.draws_per_weight
        draws = draws_for_sample(self.seed, sample, layers, d, self._draws[buffer], self.rng)
        return draws, None if self.engine is None else self.engine.draw(sample)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class SampleBackend(Protocol):
    """Where chunks of samples run: in this process, local worker processes, or Ray."""

    #: chunks kept in flight at once (enough to keep every worker busy)
    parallelism: int

    def submit(self, start: int, stop: int, active: Sequence[int]) -> Future[np.ndarray]:
        """Start counting samples [start, stop) at the ``active`` sigmas."""
        ...

    def describe(self) -> dict[str, Any]:
        """Where the work ran, for the report."""
        ...


class LocalBackend:
    """Runs every chunk in this process, synchronously."""

    parallelism = 1

    def __init__(self, evaluator: ChunkEvaluator) -> None:
        self.evaluator = evaluator

    def submit(self, start: int, stop: int, active: Sequence[int]) -> Future[np.ndarray]:
        future: Future[np.ndarray] = Future()
        future.set_result(self.evaluator.evaluate(start, stop, active))
        return future

    def describe(self) -> dict[str, Any]:
        return {"backend": "local", "workers": 1}


@dataclass
class Progress:
    """Samples finished so far (a contiguous prefix), given to checkpoints and progress bars."""

    counts: np.ndarray
    done: np.ndarray


ChunkCallback = Callable[[Progress], None]


def chunk_size(samples: int, parallelism: int, target_ci: float | None) -> int:
    """Samples per unit of work: early-stopping checkpoints fall on chunk ends."""
    if target_ci is not None:
        return CHECK_EVERY
    return max(1, min(CHECK_EVERY, -(-samples // (4 * parallelism))))


def run_monte_carlo(
    runner: ModelRunner,
    crossbar: Crossbar,
    sigmas: Sequence[float],
    *,
    samples: int,
    seed: int,
    n_data: int,
    k: float,
    target_ci: float | None = None,
    progress: ProgressCallback | None = None,
    backend: SampleBackend | None = None,
    restored: Progress | None = None,
    on_chunk: ChunkCallback | None = None,
    effects: DeviceEffects | None = None,
    rng: str = DEFAULT_RNG,
    metric: Metric = ACCURACY_COUNTS,
) -> MonteCarloCounts:
    """Evaluate ``samples`` perturbed models per sigma; stop a sigma early at ``target_ci``.

    Chunks of samples run on ``backend`` (this process by default) and are taken back in index
    order, so counts, early stops and therefore every reported number are the same for any
    backend and worker count. ``restored`` (a checkpoint) marks samples already counted;
    ``on_chunk`` sees the state after every chunk (to write a checkpoint).

    With ``effects`` (stuck-at faults, drift) the rows are ``effects.conditions(sigmas)``, one
    per (sigma, time, compensation), and every row is random, sigma = 0 included. ``metric``
    is what each sample measures (correct counts; BayesFT's objective: a loss); ``target_ci``
    reads counts."""
    if backend is None:
        evaluator = ChunkEvaluator(runner, crossbar, sigmas, seed, effects, rng=rng, metric=metric)
        backend = LocalBackend(evaluator)
    n_sigma = len(sigmas) if effects is None else len(effects.conditions(sigmas))
    state = Progress(
        counts=np.zeros((n_sigma, samples), dtype=metric.dtype),
        done=np.zeros((n_sigma, samples), dtype=bool),
    )
    if restored is not None:
        state.counts[...] = restored.counts
        state.done[...] = restored.done
    used = np.full(n_sigma, samples, dtype=np.int64)
    stopped = np.zeros(n_sigma, dtype=bool)
    random = effects is not None or runner.random_reads  # every row random, sigma 0 included
    active = list(range(n_sigma)) if random else [j for j, s in enumerate(sigmas) if s > 0]
    zero = [j for j in range(n_sigma) if j not in active]
    if zero:  # sigma = 0: no perturbation at all, one evaluation serves all
        runner.set_weights(crossbar.unperturbed())
        state.counts[zero] = metric.one(runner)
        state.done[zero] = True
    if not active:  # every sigma is 0: nothing to draw
        return MonteCarloCounts(counts=state.counts, used=used, stopped_early=stopped)

    size = chunk_size(samples, backend.parallelism, target_ci)
    # the criterion is checked on a geometric schedule at the per-look level that keeps the
    # stopped interval's coverage (stats.sequential_looks); the reported interval uses the same
    looks = set(sequential_looks(samples))
    level = look_confidence(0.95, len(looks))
    chunks = [(s, min(s + size, samples)) for s in range(0, samples, size)]
    # one chunk at a time in this process (so nothing runs past an early stop); two per
    # worker otherwise, so no worker waits while the next chunk is handed out
    in_flight = 1 if backend.parallelism == 1 else 2 * backend.parallelism
    queue: deque[tuple[int, int, list[int], Future[np.ndarray] | None]] = deque()
    next_chunk = 0
    try:
        while active and (next_chunk < len(chunks) or queue):
            while next_chunk < len(chunks) and len(queue) < in_flight:
                start, stop = chunks[next_chunk]
                next_chunk += 1
                need = [j for j in active if not state.done[j, start:stop].all()]
                future = backend.submit(start, stop, need) if need else None
                queue.append((start, stop, need, future))
            start, stop, need, future = queue.popleft()
            if future is not None:
                counts = future.result()
                need = [j for j in need if j in active]  # drop sigmas stopped meanwhile
                state.counts[need, start:stop] = counts[need]
                state.done[need, start:stop] = True
                if on_chunk is not None:
                    on_chunk(state)
            if target_ci is not None and stop in looks and stop < samples:
                for j in list(active):
                    width = kpp_interval_width(state.counts[j, :stop] / n_data, k, confidence=level)
                    if width < target_ci:
                        active.remove(j)
                        used[j] = stop
                        stopped[j] = True
            if progress is not None:
                progress(stop, samples)
    finally:
        for *_, future in queue:
            if future is not None:
                future.cancel()
    return MonteCarloCounts(counts=state.counts, used=used, stopped_early=stopped)
