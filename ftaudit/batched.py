"""Several Monte Carlo samples per forward pass: the GPU path (``--batch-samples``).

An ONNX model is converted to torch (onnx2torch, the same conversion ``harden`` trains) and
``torch.func.vmap`` evaluates S perturbed weight sets over one data batch in a single call
(convolutions become grouped convolutions, linear layers batched matmuls), with the data and
labels kept on the device. On a GPU this turns S small launches into one large one. Logits come
from torch rather than ONNX Runtime, so they agree with the one-sample path to float rounding
(counts may differ on an exact tie), not bit for bit.

With the analog forward pipeline its crossbar layers run the pipeline's torch twin
(``ftaudit.analog.torch_pipeline``, calibrated as the ONNX rewrite is), and each stacked weight
set reads its own sample's keyed read-noise draws, fed as a vmapped input.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from ftaudit._optional import require_torch
from ftaudit.draws import DEFAULT_RNG
from ftaudit.errors import UserError
from ftaudit.models.base import AuditModel, CrossbarLayer, ModelRunner, contiguous_input
from ftaudit.models.packed_inputs import module_arguments

if TYPE_CHECKING:
    from ftaudit.analog.options import ForwardPipeline
    from ftaudit.analog.torch_pipeline import AnalogTraining, KeyedReads

FEATURE = "--batch-samples (several Monte Carlo samples per forward pass)"
#: samples per forward pass on a GPU when --batch-samples is not given
DEFAULT_CUDA_BATCH_SAMPLES = 16


def resolve_batch_samples(batch_samples: int | None, *, device: str) -> int:
    """The samples per forward pass to use: explicit, else 16 for ONNX on CUDA, else 1."""
    if batch_samples is not None:
        if batch_samples < 1:
            raise UserError(
                f"--batch-samples must be at least 1, got {batch_samples}",
                hint="e.g. --batch-samples 16",
            )
        return batch_samples
    return DEFAULT_CUDA_BATCH_SAMPLES if device == "cuda" else 1


class BatchedTorchRunner(ModelRunner):
    """The model as a torch module; ``count_correct_many`` runs S weight sets in one vmap.

    ``analog``: the calibrated forward pipeline its crossbar layers run (every one of them,
    or a UserError), read noise keyed by ``set_sample``/``set_samples``, digital gains fed by
    ``set_gains``/``set_gain_sets`` (with tiles read on their own), vmapped like the noise."""

    def __init__(
        self,
        model: AuditModel,
        selected: Sequence[CrossbarLayer],
        *,
        device: str,
        analog: AnalogTraining | None = None,
        rng: str = DEFAULT_RNG,
        x: np.ndarray | None = None,
    ) -> None:
        self.torch = torch = require_torch(FEATURE)
        from ftaudit.harden.analog_trainable import export_graph, trainable_copy
        from ftaudit.models.torchscript import resolve_torch_device

        self.device = resolve_torch_device(device)
        # a TorchScript or torch.export module runs as its in-memory ONNX export (the graph the
        # analog pipeline runs), whose onnx2torch module torch's stateless API can call
        graph = None
        if model.format != "onnx":
            graph = analog.model if analog is not None else export_graph(model, _example(x))
        self.trainable = trainable_copy(model, graph=graph)
        self.module = self.trainable.module.to(self.device).eval()
        names = {id(p): n for n, p in self.module.named_parameters()}
        names.update({id(b): n for n, b in self.module.named_buffers()})
        self.selected = [layer.name for layer in selected]
        #: crossbar weight -> (module parameter name, stored transposed)
        self.targets = {
            name: (names[id(self.trainable.crossbar[name])], self.trainable._transposed(name))
            for name in self.selected
        }
        self._batches: list[Any] = []
        self._labels_t: list[Any] = []
        self.runtime_errors = (RuntimeError,)
        #: why weight sets run one by one after all (an op torch cannot vmap), else None
        self.fallback: str | None = None
        self.reads: KeyedReads | None = None
        if analog is not None:
            self.calibration = analog.calibration
            self.reads = _attach_pipeline(analog, self.trainable, rng)
            for plan in self.reads.plans:
                plan.to(self.device)
            self.random_reads = bool(self.reads.shapes)
            self.digital_gains = analog.pipeline.per_tile
        self._key: tuple[int, int] | None = None
        self._gains: Mapping[str, float] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._call = torch.func.vmap(self._forward, in_dims=(0, 0, 0, None))

    def _forward(
        self, weights: dict[str, Any], normals: dict[Any, Any], gains: dict[str, Any], x: Any
    ) -> Any:
        """One weight set's logits (vmapped: the stacked sets), its read noise ``normals`` and
        its layers' digital ``gains``."""
        args = module_arguments(x, self.trainable.split_inputs)
        if self.reads is None or not (normals or gains):
            out = self.torch.func.functional_call(self.module, weights, args)
        else:
            with self.reads.feeding(normals, gains):
                out = self.torch.func.functional_call(self.module, weights, args)
        return out[0] if isinstance(out, (tuple, list)) else out

    def set_sample(self, seed: int, sample: int | None) -> None:
        self._key = None if sample is None else (seed, sample)

    def set_gains(self, gains: Mapping[str, float] | None) -> None:
        if gains is not None and not self.digital_gains:
            super().set_gains(gains)  # refused: no pipeline applies them
        self._gains = gains

    def _stacked_gains(self, gain_sets: Sequence[Mapping[str, float] | None]) -> dict[str, Any]:
        """Each layer's gain in each of ``gain_sets`` (None: all 1), shape (sets,) on the
        device; {} when every gain is 1, so the layers multiply by nothing."""
        if all(g is None for g in gain_sets):
            return {}
        return {
            name: self.torch.tensor(
                [1.0 if g is None else g.get(name, 1.0) for g in gain_sets],
                dtype=self.torch.float32,
            ).to(self.device)
            for name in self.selected
        }

    def _normals(self, seed: int, samples: Sequence[int], k: int) -> dict[Any, Any]:
        """Batch ``k``'s read-noise draws of ``samples`` on the device, (S, batch, *shape)."""
        if self.reads is None or not self.reads.shapes:
            return {}
        start = k * self._batch_size
        stop = start + len(self._batches[k])
        draws = self.reads.draws(seed, samples, start, stop, slot=k & 1)
        return {
            stream: self.torch.from_numpy(array).to(self.device, non_blocking=True)
            for stream, array in draws.items()
        }

    def _normals_ahead(self, keys: tuple[int, list[int]] | None) -> Iterator[dict[Any, Any]]:
        """Every batch's read-noise draws in turn, the next batch's made on a helper thread
        while this one runs (numpy's generators release the GIL)."""
        if keys is None or self.reads is None or not self.reads.shapes:
            yield from ({} for _ in self._batches)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1)
        pending = self._pool.submit(self._normals, *keys, 0)
        for k in range(len(self._batches)):
            normals = pending.result()
            if k + 1 < len(self._batches):
                pending = self._pool.submit(self._normals, *keys, k + 1)
            yield normals

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    def bind_data(self, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> None:
        x = contiguous_input(x)
        torch = self.torch
        self._batch_size = batch_size
        self._batches = [
            torch.from_numpy(x[s : s + batch_size]).to(self.device)
            for s in range(0, len(x), batch_size)
        ]
        self._labels = np.asarray(y)
        self._labels_t = [
            torch.from_numpy(np.ascontiguousarray(self._labels[s : s + batch_size])).to(self.device)
            for s in range(0, len(x), batch_size)
        ]

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        self.trainable.set_crossbar_arrays(dict(weights))

    def logits(self) -> np.ndarray:
        outs = []
        gains = {name: g[0] for name, g in self._stacked_gains([self._gains]).items()}
        with self.torch.no_grad():
            for k, batch in enumerate(self._batches):
                key = self._key
                normals = {} if key is None else self._normals(key[0], [key[1]], k)
                if (normals or gains) and self.reads is not None:  # one sample, unstacked
                    with self.reads.feeding({s: z[0] for s, z in normals.items()}, gains):
                        out = self.trainable.forward(batch)
                else:
                    out = self.trainable.forward(batch)
                outs.append(out.float().cpu().numpy())
        return np.concatenate(outs) if len(outs) > 1 else outs[0]

    def _passes(self, weight_sets: Sequence[Mapping[str, np.ndarray]]) -> Iterator[tuple[Any, Any]]:
        """(logits (S, batch, classes), labels) of each data batch, one vmapped pass each; set
        k reads the read noise of the k-th ``set_samples`` sample (else all the last
        ``set_sample``'s) and the k-th ``set_gain_sets`` gains (else the last ``set_gains``)."""
        torch = self.torch
        stacked = {}
        for name in self.selected:
            target, transposed = self.targets[name]
            value = torch.from_numpy(np.stack([w[name] for w in weight_sets]))
            if transposed:
                value = value.transpose(-1, -2)
            stacked[target] = value.to(self.device, non_blocking=True)
        keys, self._samples_key = self._samples_key, None
        if keys is None and self._key is not None:
            keys = (self._key[0], [self._key[1]] * len(weight_sets))
        gain_sets, self._gain_sets = self._gain_sets, None
        gains = self._stacked_gains(gain_sets or [self._gains] * len(weight_sets))
        batches = zip(self._batches, self._labels_t, self._normals_ahead(keys), strict=True)
        for batch, labels, normals in batches:
            yield self._call(stacked, normals, gains, batch), labels

    def logits_many(self, weight_sets: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
        """Logits of several weight sets over the bound data, shape (S, n, classes): the
        vmapped passes ``count_correct_many`` counts."""
        with self.torch.no_grad():
            outs = [logits.float().cpu().numpy() for logits, _ in self._passes(weight_sets)]
        return np.concatenate(outs, axis=1)

    def count_correct_many(self, weight_sets: Sequence[Mapping[str, np.ndarray]]) -> list[int]:
        """Correct counts of several weight sets (stored layout), one vmapped pass per batch."""
        torch = self.torch
        # the one-by-one fallback keys its sets and gains the same way
        given, given_gains = self._samples_key, self._gain_sets
        if self.fallback is not None:
            return super().count_correct_many(weight_sets)
        correct = torch.zeros(len(weight_sets), dtype=torch.int64, device=self.device)
        try:
            with torch.no_grad():
                for logits, labels in self._passes(weight_sets):  # (S, batch, classes)
                    correct += (logits.argmax(dim=-1) == labels).sum(dim=-1)
        except (RuntimeError, NotImplementedError) as exc:
            # an op with no batching rule: evaluate the weight sets one by one from now on
            # (the first pass already ran this module on the data, so the data is not at fault)
            text = str(exc).strip().splitlines()
            self.fallback = f"vmap failed, one sample per pass: {text[0][:200] if text else exc}"
            self._samples_key, self._gain_sets = given, given_gains
            return super().count_correct_many(weight_sets)
        return [int(c) for c in correct.cpu()]


def _attach_pipeline(analog: AnalogTraining, trainable: Any, rng: str) -> KeyedReads:
    """Run the pipeline in ``trainable``'s crossbar layers (Gemm, Conv and MatMul modules;
    ``attach`` refuses a layer it cannot run), their read noise keyed."""
    from ftaudit.analog.torch_pipeline import KeyedReads

    analog.attach(trainable)
    return KeyedReads(trainable.module, analog.calibration.tile_shapes, rng)


def build_runner(
    model: AuditModel,
    selected: Sequence[CrossbarLayer],
    *,
    device: str,
    threads: int | None = None,
    batch_samples: int = 1,
    batch_required: bool = True,
    pipeline: ForwardPipeline | None = None,
    x: np.ndarray | None = None,
    seed: int = 0,
    rng: str = DEFAULT_RNG,
) -> ModelRunner:
    """The model's own runner, or the vmapped torch runner when samples are batched; with an
    active ``pipeline`` (calibrated on ``x`` with ``seed``) both run it, and carry its
    ``calibration``.

    When batching was only a default (``batch_required`` False: ``--device cuda`` without
    ``--batch-samples``), a model torch cannot take, or no torch at all, falls back to the
    model's own runner instead of failing, and its ``fallback`` says why."""
    runner: ModelRunner | None = None
    fallback = None
    analog = pipeline is not None and pipeline.active
    if batch_samples > 1:
        try:
            runner = BatchedTorchRunner(
                model,
                selected,
                device=device,
                analog=_calibrated(model, selected, x, pipeline, seed) if analog else None,
                rng=rng,
                x=x,
            )
        except UserError as exc:
            if batch_required:
                raise
            fallback = f"one sample per pass: {exc.message}"
    if runner is None and analog:
        from ftaudit.analog.runner import analog_runner

        runner, calibration = analog_runner(  # it feeds folded weights itself
            model,
            selected,
            x,
            pipeline=pipeline,
            seed=seed,
            device=device,
            threads=threads,
            rng=rng,
        )
        runner.calibration, runner.fallback = calibration, fallback
        return runner
    if runner is None:
        try:
            runner = model.runner(selected, device=device, threads=threads)
        except UserError as exc:
            if fallback is None:
                raise
            # both routes to the device failed: say why each did
            why = fallback.removeprefix("one sample per pass: ")
            why = why.removeprefix(f"--device {device} was asked for, but ")
            raise UserError(
                f"{exc.message}, and for the batched torch path {why}", exc.hint
            ) from exc
    chosen = {layer.name for layer in selected}
    scales = {name: s for name, s in model.fold_scales.items() if name in chosen}
    if scales:
        from ftaudit.models.folding import FoldedRunner

        runner = FoldedRunner(runner, scales)
    if fallback is not None:  # (a batched runner keeps its own: a vmap failure sets it later)
        runner.fallback = fallback
    return runner


def _example(x: np.ndarray | None) -> np.ndarray:
    """One data sample to export a torch model with (the data it will run on)."""
    if x is None:
        raise UserError(
            "--batch-samples on a TorchScript or torch.export model needs the data to export "
            "the model with",
            hint="bind the data first, or drop --batch-samples",
        )
    return x[:1]


def _calibrated(
    model: AuditModel,
    selected: Sequence[CrossbarLayer],
    x: np.ndarray | None,
    pipeline: ForwardPipeline | None,
    seed: int,
) -> AnalogTraining:
    """The pipeline calibrated on ``x`` as the ONNX runner calibrates it (same ranges)."""
    from ftaudit.analog.torch_pipeline import AnalogTraining

    if x is None or pipeline is None:
        raise ValueError("the analog forward pipeline needs the data x to calibrate on")
    return AnalogTraining(model, selected, x, pipeline, seed=seed, feature="--batch-samples")
