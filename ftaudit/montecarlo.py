"""The Monte Carlo engine: per-sample draws keyed by (seed, sample, layer), shared across sigma.

Sample i's base draws for crossbar layer l come from ``SeedSequence(seed, spawn_key=(i, l))``
(an SFC64 generator: among numpy's, the fastest for normal draws, and statistically sound),
so they depend on nothing else: not the batch size, the worker count, the order of work, nor
which other layers are selected. Every sigma of a run reuses the same draws (common random
numbers), which makes accuracy curves smooth and paired comparisons between models possible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ftaudit.models.base import CrossbarLayer, ModelRunner
from ftaudit.noise.base import LayerNoise, NoiseModel
from ftaudit.stats import kpp_interval_width

if TYPE_CHECKING:
    from ftaudit.device_effects import DeviceEffects

#: early-stopping checks happen only after multiples of this many samples (deterministic)
CHECK_EVERY = 50

ProgressCallback = Callable[[int, int], None]


def sample_generator(seed: int, sample: int, layer_index: int) -> np.random.Generator:
    """The random generator owning sample ``sample``'s draws for crossbar layer ``layer_index``."""
    sequence = np.random.SeedSequence(seed, spawn_key=(sample, layer_index))
    return np.random.Generator(np.random.SFC64(sequence))


def draws_for_sample(
    seed: int,
    sample: int,
    layers: Sequence[CrossbarLayer],
    draws_per_weight: int,
    out: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Standard-normal base draws of one sample, one array (d, *canonical_shape) per layer."""
    result = []
    for i, layer in enumerate(layers):
        buffer = (
            out[i]
            if out is not None
            else np.empty((draws_per_weight, *layer.canonical_shape), np.float32)
        )
        sample_generator(seed, sample, layer.index).standard_normal(dtype=np.float32, out=buffer)
        result.append(buffer)
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
    effects: DeviceEffects | None = None,
) -> MonteCarloCounts:
    """Evaluate ``samples`` perturbed models per sigma; stop a sigma early at ``target_ci``.

    With ``effects`` (stuck-at faults, drift) the rows are ``effects.conditions(sigmas)``, one
    per (sigma, time, compensation), and every row is random, sigma = 0 included.
    """
    engine = None
    if effects is not None:
        from ftaudit.device_effects import EffectsEngine

        engine = EffectsEngine(crossbar.layers, crossbar.states, effects, seed)
    n_sigma = len(sigmas) if engine is None else len(engine.rows(sigmas))
    counts = np.zeros((n_sigma, samples), dtype=np.int64)
    used = np.full(n_sigma, samples, dtype=np.int64)
    stopped = np.zeros(n_sigma, dtype=bool)
    active = [j for j, s in enumerate(sigmas) if s > 0] if engine is None else list(range(n_sigma))

    if len(active) < n_sigma:  # sigma = 0: no perturbation at all, one evaluation serves all
        runner.set_weights(crossbar.unperturbed())
        counts[[j for j in range(n_sigma) if j not in active]] = runner.count_correct()

    if not active:  # every sigma is 0: nothing to draw
        return MonteCarloCounts(counts=counts, used=used, stopped_early=stopped)
    d = crossbar.noise.draws_per_weight
    layers = crossbar.layers
    # two sets of draw buffers: a helper thread fills sample i+1's while sample i is evaluated
    # (numpy's generators and the model runtimes release the GIL while they work)
    draw_buffers = [[np.empty((d, *la.canonical_shape), np.float32) for la in layers] for _ in "ab"]
    weight_buffers = [np.empty(layer.shape, np.float32) for layer in layers]

    def draw(i: int) -> tuple[list[np.ndarray], object]:
        draws = draws_for_sample(seed, i, layers, d, draw_buffers[i & 1])
        return draws, None if engine is None else engine.draw(i)

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(draw, 0)
        for i in range(samples):
            if not active:
                break
            draws, extra = pending.result()
            if i + 1 < samples:
                pending = pool.submit(draw, i + 1)
            if engine is None:
                _evaluate_sample(
                    runner, crossbar, sigmas, active, draws, weight_buffers, counts[:, i]
                )
            else:
                engine.evaluate(runner, sigmas, active, draws, extra, counts[:, i])
            done = i + 1
            if target_ci is not None and done % CHECK_EVERY == 0 and done < samples:
                for j in list(active):
                    width = kpp_interval_width(counts[j, :done] / n_data, k)
                    if width < target_ci:
                        active.remove(j)
                        used[j] = done
                        stopped[j] = True
            if progress is not None:
                progress(done, samples)
    return MonteCarloCounts(counts=counts, used=used, stopped_early=stopped)


def _evaluate_sample(
    runner: ModelRunner,
    crossbar: Crossbar,
    sigmas: Sequence[float],
    active: Sequence[int],
    draws: Sequence[np.ndarray],
    weight_buffers: Sequence[np.ndarray],
    counts_out: np.ndarray,
) -> None:
    """Correct counts of one sample's draws at every active sigma, written to ``counts_out``."""
    native = [layer.to_native(z) for layer, z in zip(crossbar.layers, draws, strict=True)]
    for j in active:
        weights = {
            layer.name: state.perturb(z, sigmas[j], out=buf)
            for layer, state, z, buf in zip(
                crossbar.layers, crossbar.states, native, weight_buffers, strict=True
            )
        }
        runner.set_weights(weights)
        counts_out[j] = runner.count_correct()
