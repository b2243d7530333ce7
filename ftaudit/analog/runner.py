"""The ONNX runner with the analog forward pipeline in its graph."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np

from ftaudit.analog.onnx_graph import Calibration, calibrate, gain_input, plan_tiles, rewrite
from ftaudit.analog.options import ForwardPipeline
from ftaudit.analog.read_noise import read_noise
from ftaudit.analog.unmapped import SUPPORTED_OPS
from ftaudit.draws import DEFAULT_RNG
from ftaudit.errors import UserError
from ftaudit.models.base import AuditModel, CrossbarLayer, ModelRunner, contiguous_input
from ftaudit.models.folding import FoldedRunner
from ftaudit.models.onnx import OnnxModel, OnnxRunner
from ftaudit.models.packed_inputs import module_arguments


class AnalogOnnxRunner(OnnxRunner):
    """An ``OnnxRunner`` on the rewritten graph; read noise is fed per batch, keyed by the
    sample set with ``set_sample`` (none before the first call: the deterministic pass), and
    each layer's digital gain (``set_gains``) as a scalar input when tiles are read on their own."""

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
        #: crossbar layer -> the scalar its gain input is fed, set in place by ``set_gains``
        self._gains: dict[str, np.ndarray] = {}
        for node in tiled if pipeline.per_tile else ():
            gain = self._gains.setdefault(node.layer, np.ones((), np.float32))
            self.feed[gain_input(node.layer_index)] = gain
        self.digital_gains = bool(self._gains)

    def set_gains(self, gains: Mapping[str, float] | None) -> None:
        for name, value in self._gains.items():
            value[...] = 1.0 if gains is None else gains.get(name, 1.0)

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


def _script_module(model: AuditModel) -> Any:
    from ftaudit.models.torchscript import jit_load

    return jit_load(model.raw, model.path)  # type: ignore[attr-defined]


def _program_module(model: AuditModel) -> Any:
    from ftaudit.models.export import load_program

    return load_program(model.raw, model.path).module()  # type: ignore[attr-defined]


#: formats the pipeline runs as their own in-memory ONNX export -> the torch module exported
EXPORTED_FORMATS: dict[str, Callable[[AuditModel], Any]] = {
    "torchscript": _script_module,
    "torch.export": _program_module,
}


#: crossbar layer ops of torch models the pipeline cannot map onto tiles -> what they are
#: (a recurrent kernel runs as one fused op, a bilinear form and an einsum have no tile mapping)
UNMAPPED_OPS = {
    "LSTM": "an LSTM",
    "GRU": "a GRU",
    "RNN": "an RNN",
    "Bilinear": "a bilinear form",
    "Einsum": "an einsum",
}


def as_onnx(
    model: AuditModel, x: np.ndarray, selected: Sequence[CrossbarLayer] | None = None
) -> OnnxModel:
    """``model`` itself if ONNX; a TorchScript or torch.export model exported to ONNX in
    memory (torch's TorchScript exporter, parameters kept as named initializers), checked to
    have the same crossbar layers the pipeline maps (names, canonical shapes, order). A
    ``selected`` layer it cannot map (``UNMAPPED_OPS``) is refused first."""
    if isinstance(model, OnnxModel):
        return model
    make_module = EXPORTED_FORMATS.get(model.format)
    if make_module is not None and model.output_index:  # the export keeps the first output
        raise UserError(
            f"--output {model.output.name} runs {model.format} models in PyTorch only; the "
            "analog pipeline, --batch-samples and BayesFT run them as their ONNX export, which "
            "evaluates the first output",
            hint="re-export the model with the class scores first, or export it to ONNX and "
            "choose the output there with --output NAME",
        )
    if make_module is None:
        raise UserError(
            f"the analog forward pipeline does not run {model.format} models",
            hint="export the model to ONNX (torch.onnx.export) and audit the .onnx file",
        )
    for layer in model.layers if selected is None else selected:
        if layer.op in UNMAPPED_OPS:
            raise UserError(
                f"the analog forward pipeline cannot map crossbar layer {layer.name} "
                f"({UNMAPPED_OPS[layer.op]}) onto crossbar tiles",
                hint="leave it digital with --layers (select the others) or --exclude "
                f"'{layer.name.rpartition('.')[0] or layer.name}*'; supported: {SUPPORTED_OPS}",
            )
    import contextlib
    import io
    import warnings

    import torch

    module = make_module(model)
    # a program exported for a fixed batch runs on that batch only: export it so (the ONNX
    # runner pads the last batch); otherwise one image and a dynamic batch axis
    fixed = model.input.shape[0] if model.input.shape else None
    example = contiguous_input(x[:1])  # token ids stay integers
    if model.input.dtype == "float16" and example.dtype == np.float32:
        example = example.astype(np.float16)  # a model.half() archive reads float16
    if fixed:
        example = np.ascontiguousarray(np.resize(example, (fixed, *example.shape[1:])))
    # several inputs: exported with the module's own arguments, packed again by from_bytes
    args = module_arguments(torch.from_numpy(example), model.data_inputs)
    names = [spec.name for spec in model.data_inputs] or ["input"]
    buffer = io.BytesIO()
    try:
        # the exporter prints the graph to stdout when it fails: the library stays silent
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                buffer,
                dynamo=False,
                input_names=names,
                output_names=["output"],
                dynamic_axes=None if fixed else {n: {0: "n"} for n in [*names, "output"]},
                opset_version=17,
                do_constant_folding=False,
                # no merging of parameters with equal values (an untrained BatchNorm's bias and
                # running mean): every initializer keeps its parameter's name (dropped from the
                # graph inputs below)
                keep_initializers_as_inputs=True,
                # an exported program refuses train(); the module is in its inference mode
                training=torch.onnx.TrainingMode.PRESERVE,
            )
    except Exception as exc:  # the exporter raises many types for graphs it cannot export
        raise UserError(
            f"the analog forward pipeline runs {model.format} models through ONNX, and "
            f"{model.path} cannot be exported ({exc.__class__.__name__})",
            hint="export the model to ONNX yourself and audit the .onnx file",
        ) from exc
    raw = _initializers_off_inputs(buffer.getvalue())
    if not fixed:
        feed = {name: arg.numpy() for name, arg in zip(names, args, strict=True)}
        _check_other_batches(raw, feed, model)
    exported = OnnxModel.from_bytes(model.path, raw)
    # the same weights in the canonical layout (a Linear on a 3-D input exports as MatMul with
    # W^T: ``transposed_layers`` feeds those transposed)
    mapped = {la.name for la in model.layers if la.op not in UNMAPPED_OPS}
    same = [(la.name, la.canonical_shape) for la in exported.layers if la.name in mapped] == [
        (la.name, la.canonical_shape) for la in model.layers if la.name in mapped
    ]
    if not same:
        raise UserError(
            f"{model.path}'s ONNX export does not keep its crossbar weights as they are, so the "
            "analog forward pipeline cannot run it",
            hint="export the model to ONNX yourself and audit the .onnx file",
        )
    return exported


def _check_other_batches(raw: bytes, example: Mapping[str, np.ndarray], model: AuditModel) -> None:
    """The export must run on a batch of another size than its one-image ``example`` (an array
    per input name): torch's exporter keeps some modules' reshapes at the example's batch size
    (a torch.export program's MultiheadAttention), which would fail on the first real batch."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # the failure is said in one line below, not in ORT's log
    session = onnxruntime.InferenceSession(raw, options, providers=["CPUExecutionProvider"])
    try:
        session.run(None, {name: np.concatenate([a, a]) for name, a in example.items()})
    except OnnxRunner.runtime_errors as exc:
        raise UserError(
            f"{model.path}'s ONNX export runs on batches of exactly 1 only (torch's "
            "exporter kept the example's batch size in a reshape), so the analog forward "
            f"pipeline cannot run this {model.format} model",
            hint="export the model to ONNX yourself with a dynamic batch axis and audit the "
            ".onnx file",
        ) from exc


def transposed_layers(source: AuditModel, exported: AuditModel) -> set[str]:
    """Layers the export stores in the other 2-D layout than the source model."""
    layouts = {layer.name: layer.transposed for layer in source.layers}
    return {
        la.name for la in exported.layers if layouts.get(la.name, la.transposed) != la.transposed
    }


class TransposedRunner(FoldedRunner):
    """A runner fed weights in the source model's layout, transposing those the export stores
    the other way (the delegation of ``FoldedRunner``, with a transpose for its one hook)."""

    def __init__(self, inner: ModelRunner, names: set[str]) -> None:
        super().__init__(inner, {})
        self.names = names

    def unfold(self, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            name: np.ascontiguousarray(array.T) if name in self.names else array
            for name, array in weights.items()
        }


def _initializers_off_inputs(raw: bytes) -> bytes:
    """An exported model whose initializers are no longer also graph inputs."""
    import onnx

    proto = onnx.load_from_string(raw)
    names = {t.name for t in proto.graph.initializer}
    data_inputs = [i for i in proto.graph.input if i.name not in names]
    del proto.graph.input[:]
    proto.graph.input.extend(data_inputs)
    return proto.SerializeToString()


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

    A TorchScript or torch.export model runs as its own ONNX export (same weights, same names,
    same layer order, so the same draws and numbers as the ONNX file of the same network)."""
    source = model
    model = as_onnx(model, x, selected)
    chosen = {layer.name for layer in selected}
    selected = [layer for layer in model.layers if layer.name in chosen]  # the export's layouts
    weights = model.clean_weights()
    tiled = plan_tiles(model.proto, selected, weights, pipeline, model.feed_names)
    noisy = pipeline.read_noise > 0 or pipeline.weight_read_noise > 0
    calibration = calibrate(model.proto, tiled, x, seed=seed, noisy_reads=noisy)
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
    swapped = transposed_layers(source, model)
    if swapped & chosen:
        runner = TransposedRunner(runner, swapped & chosen)
    scales = {name: s for name, s in model.fold_scales.items() if name in chosen}
    if scales:  # fed folded weights (BatchNorm folded in); the graph still runs the BatchNorm
        runner = FoldedRunner(runner, scales)
    return runner, calibration
