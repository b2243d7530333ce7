"""The ONNX runner with the analog forward pipeline in its graph."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from ftaudit.analog.onnx_graph import Calibration, calibrate, plan_tiles, rewrite
from ftaudit.analog.options import ForwardPipeline
from ftaudit.analog.read_noise import read_noise
from ftaudit.draws import DEFAULT_RNG
from ftaudit.errors import UserError
from ftaudit.models.base import AuditModel, CrossbarLayer, ModelRunner
from ftaudit.models.onnx import OnnxModel, OnnxRunner


class AnalogOnnxRunner(OnnxRunner):
    """An ``OnnxRunner`` on the rewritten graph; read noise is fed per batch, keyed by the
    sample set with ``set_sample`` (none before the first call: the deterministic pass)."""

    def __init__(
        self,
        model: OnnxModel,
        selected: Sequence[CrossbarLayer],
        *,
        pipeline: ForwardPipeline,
        calibration: Calibration,
        tiled: Sequence,
        device: str,
        threads: int | None = None,
        rng: str = DEFAULT_RNG,
    ) -> None:
        self.rng = rng  # read noise's normal generator (ftaudit.draws.RNGS)
        rewritten, self.noise_inputs = rewrite(model.proto, tiled, pipeline, calibration)
        self.tile_shapes = calibration.tile_shapes
        self.random_reads = bool(self.noise_inputs)
        self._key: tuple[int, int] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1)
        super().__init__(replace(model, proto=rewritten), selected, device=device, threads=threads)

    def set_sample(self, seed: int, sample: int | None) -> None:
        self._key = None if sample is None else (seed, sample)

    def bind_data(self, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> None:
        super().bind_data(x, y, batch_size=batch_size)
        self._zeros = {
            (name, len(batch)): np.zeros((len(batch), *self.tile_shapes[(layer, tile)]), np.float32)
            for batch in self._batches
            for name, layer, tile, _tag in self.noise_inputs
        }
        # two draw buffers per input and batch size: one fed to the running batch, one filled
        self._buffers = {
            (name, slot, size): np.empty_like(zeros)
            for (name, size), zeros in self._zeros.items()
            for slot in (0, 1)
        }

    def _noise_feed(self, start: int, size: int, slot: int) -> dict[str, np.ndarray]:
        feed = {}
        for name, layer, tile, tag in self.noise_inputs:
            if self._key is None:
                feed[name] = self._zeros[(name, size)]
            else:
                seed, sample = self._key
                shape = self.tile_shapes[(layer, tile)]
                out = self._buffers[(name, slot, size)]
                feed[name] = read_noise(
                    seed, sample, layer, tile, start, start + size, shape, out, tag, self.rng
                )
        return feed

    def logits(self) -> np.ndarray:
        if not self.noise_inputs:
            return super().logits()
        starts = np.cumsum([0] + [len(b) for b in self._batches])
        # the next batch's draws are made on a helper thread while this batch runs (numpy's
        # generators and ONNX Runtime both release the GIL)
        pending = self._pool.submit(self._noise_feed, 0, len(self._batches[0]), 0)
        outs = []
        for k, batch in enumerate(self._batches):
            noise = pending.result()
            if k + 1 < len(self._batches):
                pending = self._pool.submit(
                    self._noise_feed, int(starts[k + 1]), len(self._batches[k + 1]), (k + 1) & 1
                )
            feed = {**self.feed, **noise, self.input_name: batch}
            outs.append(self.session.run([self.output_name], feed)[0])
        logits = np.concatenate(outs) if len(outs) > 1 else outs[0]
        return logits[: self._n]

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)


def as_onnx(model: AuditModel, x: np.ndarray) -> OnnxModel:
    """``model`` itself if ONNX; a TorchScript model exported to ONNX in memory, checked to
    have the same crossbar layers (names, stored shapes, order)."""
    if isinstance(model, OnnxModel):
        return model
    if model.format != "torchscript":
        raise UserError(
            f"the analog forward pipeline does not run {model.format} models yet",
            hint="export the model to ONNX (torch.onnx.export) and audit the .onnx file",
        )
    import io
    import warnings

    import torch

    from ftaudit.models.torchscript import jit_load

    module = jit_load(model.raw, model.path)  # type: ignore[attr-defined]
    example = torch.from_numpy(np.ascontiguousarray(x[:1], dtype=np.float32))
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "n"}, "output": {0: "n"}},
                opset_version=17,
                do_constant_folding=False,
            )
    except Exception as exc:  # the exporter raises many types for graphs it cannot export
        raise UserError(
            f"the analog forward pipeline runs TorchScript models through ONNX, and "
            f"{model.path} cannot be exported ({exc.__class__.__name__})",
            hint="export the model to ONNX yourself and audit the .onnx file",
        ) from exc
    exported = OnnxModel.from_bytes(model.path, buffer.getvalue())
    same = [(la.name, la.shape) for la in exported.layers] == [
        (la.name, la.shape) for la in model.layers
    ]
    if not same:
        raise UserError(
            f"{model.path}'s ONNX export does not keep its crossbar weights as they are, so the "
            "analog forward pipeline cannot run it",
            hint="export the model to ONNX yourself and audit the .onnx file",
        )
    return exported


def analog_runner(
    model: AuditModel,
    selected: Sequence[CrossbarLayer],
    x: np.ndarray,
    *,
    pipeline: ForwardPipeline,
    seed: int,
    device: str,
    threads: int | None = None,
    rng: str = DEFAULT_RNG,
) -> tuple[ModelRunner, Calibration]:
    """Calibrate the pipeline's ranges on (a seeded subset of) ``x`` and build the runner.

    A TorchScript model runs as its own ONNX export (same weights, same names, same layer
    order, so the same draws and numbers as the ONNX file of the same network)."""
    model = as_onnx(model, x)
    weights = model.clean_weights()
    tiled = plan_tiles(model.proto, selected, weights, pipeline)
    calibration = calibrate(model.proto, tiled, x, seed=seed)
    runner: ModelRunner = AnalogOnnxRunner(
        model,
        selected,
        pipeline=pipeline,
        calibration=calibration,
        tiled=tiled,
        device=device,
        threads=threads,
        rng=rng,
    )
    chosen = {layer.name for layer in selected}
    scales = {name: s for name, s in model.fold_scales.items() if name in chosen}
    if scales:  # fed folded weights (BatchNorm folded in); the graph still runs the BatchNorm
        from ftaudit.models.folding import FoldedRunner

        runner = FoldedRunner(runner, scales)
    return runner, calibration
