"""The analog forward pipeline in torch: hardware-aware training (``ftaudit harden``) and
several Monte Carlo samples per pass (``--batch-samples``, ``ftaudit.batched``).

The same transforms as the ONNX rewrite (``ftaudit.analog.onnx_graph``), on the trainable
module's own Linear and Conv layers and onnx2torch's MatMul modules (a MatMul weight, fed as
the graph reads it): their ``forward`` is replaced on the instance, so parameter names, the
export and the optimiser see the same module; a layer left without one is a UserError.
Quantisers use straight-through estimators: rounding passes the gradient unchanged, saturation
passes none outside the range.
Ranges and tiles come from the ONNX calibration of the input model (a TorchScript or
torch.export model: of its in-memory ONNX export, as ``eval`` runs it), fixed for the whole run.
In training mode read noise is drawn from a torch generator seeded by the run's seed
(weight read noise, additive or PCM, from a second one, so turning it on leaves the output
noise's draws).
In eval mode a layer reads the standard normals fed to it (``fed``: the keyed draws of
``ftaudit.analog.read_noise``, the arrays the ONNX runner feeds, so an audit gives the same
numbers either way), else none: the validation passes and the exported model are deterministic.
The layer code sees one sample, so it runs unchanged under ``torch.func.vmap``.
"""

from __future__ import annotations

import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ftaudit.analog.onnx_graph import Calibration, TiledNode, calibrate, plan_tiles
from ftaudit.analog.options import ForwardPipeline
from ftaudit.analog.quantiser import quantiser_scales
from ftaudit.analog.read_noise import TAG as READ_NOISE_TAG
from ftaudit.analog.read_noise import WEIGHT_TAG, read_noise
from ftaudit.draws import DEFAULT_RNG
from ftaudit.errors import UserError

#: spawn key of the training read-noise generator
TRAINING_NOISE_KEY = 0xA7A1
#: spawn key of the training weight-read-noise generator
TRAINING_WEIGHT_NOISE_KEY = 0xA7A2


def training_generator(seed: int, key: int) -> Any:
    """The torch generator of one training noise stream (the one place it is built)."""
    import torch

    sequence = np.random.SeedSequence(seed, spawn_key=(key,))
    return torch.Generator().manual_seed(int(sequence.generate_state(1)[0]))


def _quantise(torch: Any, x: Any, bits: int, scale_in: Any, scale_out: Any) -> Any:
    """N-bit quantiser with a straight-through gradient inside the range (the same values:
    ``c + (round(c) - c)`` is exactly ``round(c)`` in floating point, the difference being
    exact); without autograd, the plain quantiser in place, a third of the memory traffic."""
    scaled = x * scale_in
    steps = float(2 ** (bits - 1) - 1)
    if not torch.is_grad_enabled():  # evaluation: the plain quantiser, rounded in place
        level = torch.sign(scaled) if bits == 1 else scaled.clamp(-steps, steps).round_()
        return level.mul_(scale_out)
    if bits == 1:
        clipped = scaled.clamp(-1.0, 1.0)
        return (clipped + (torch.sign(scaled) - clipped).detach()) * scale_out
    clipped = scaled.clamp(-steps, steps)
    return (clipped + (torch.round(clipped) - clipped).detach()) * scale_out


class _LayerPipeline:
    """The constants of one crossbar module (tensors on the module's device)."""

    def __init__(
        self, torch: Any, tiled: TiledNode, pipeline: ForwardPipeline, calibration: Calibration
    ) -> None:
        self.kind = tiled.kind
        self.layer = tiled.layer
        self.layer_index, self.first_tile = tiled.layer_index, tiled.first_tile
        self.row_tiles = tiled.row_tiles
        self.pipeline = pipeline
        #: the keyed draw streams this layer reads: (layer index, tile number, tag)
        tags = [READ_NOISE_TAG] if pipeline.read_noise > 0 else []
        tags += [WEIGHT_TAG] if pipeline.weight_read_noise > 0 else []
        self.streams = [
            (tiled.layer_index, tiled.first_tile + t, tag)
            for t in range(len(tiled.row_tiles))
            for tag in tags
        ]
        #: standard normals fed for the next passes, by stream (eval mode); None: none fed
        self.fed: Mapping[tuple[int, int, int], Any] | None = None
        #: the digital gain on the summed tiles for the next passes (a scalar tensor), or None
        self.gain: Any = None
        r = np.float32(calibration.input_range[tiled.layer])
        self.dac = None
        if pipeline.dac_bits is not None:
            scale_in, scale_out = quantiser_scales(pipeline.dac_bits, r)
            self.dac = (float(scale_in), float(scale_out))
        self.units, self.adc, self.sigma, self.weight_sigma = [], [], [], []
        self.weight_shape = tiled.weight_shape
        bounds = calibration.adc_bound.get(tiled.node_index)
        pcm = pipeline.weight_read_noise_type == "pcm"
        for t in range(len(tiled.row_tiles)):
            unit = (tiled.weight_scale[t] * r).astype(np.float32).reshape(tiled.col_shape)
            self.sigma.append(torch.from_numpy(pipeline.read_noise * unit))
            scale = tiled.weight_scale[t]  # pcm: S sqrt(w_t), as ``onnx_graph`` explains
            weight_sigma = pipeline.weight_read_noise * (np.sqrt(scale) if pcm else scale)
            self.weight_sigma.append(
                torch.from_numpy(weight_sigma.astype(np.float32).reshape(tiled.col_shape))
            )
            if pipeline.adc_bits is not None:
                bound = (
                    np.full(unit.size, pipeline.adc_bound, np.float32)
                    if pipeline.adc_bound is not None
                    else bounds[t]
                )
                full = bound.reshape(tiled.col_shape) * unit
                scale_in, scale_out = quantiser_scales(pipeline.adc_bits, full)
                self.adc.append((torch.from_numpy(scale_in), torch.from_numpy(scale_out)))
        self.col_shape = tiled.col_shape

    def to(self, device: Any) -> None:
        """Keep the constants on ``device`` (the batched runner's), so no pass copies them."""
        self.sigma = [s.to(device) for s in self.sigma]
        self.weight_sigma = [s.to(device) for s in self.weight_sigma]
        self.adc = [(a.to(device), b.to(device)) for a, b in self.adc]

    def normals(self, module: Any, t: int, tag: int, like: Any) -> Any:
        """Standard normals shaped like tile ``t``'s partial sum ``like``: the fed draws, the
        training generator's in training mode, else None (a deterministic read)."""
        if self.fed is not None:
            return self.fed[(self.layer_index, self.first_tile + t, tag)]
        if not module.training:
            return None
        import torch

        generator = (
            module._ftaudit_generator if tag == READ_NOISE_TAG else module._ftaudit_weight_generator
        )
        z = torch.randn(like.shape, generator=generator, dtype=like.dtype)
        return z.to(like.device)


def _input_norm(module: Any, plan: _LayerPipeline, x_t: Any, rows: int) -> Any:
    """||x||_2 of the inputs each output reads (Conv: per patch, the module's own conv on
    x^2 with a kernel of ones), outside the graph: the noise carries no gradient."""
    import torch

    with torch.no_grad():
        if plan.kind != "conv":
            return x_t.square().sum(-1, keepdim=True).sqrt()
        shape = list(plan.weight_shape)
        if module.groups == 1:
            shape[0], shape[1] = 1, rows
        ones = torch.ones(shape, dtype=x_t.dtype, device=x_t.device)
        return module._conv_forward(x_t.square(), ones, None).sqrt()


def _pcm_read_spread(module: Any, plan: _LayerPipeline, x_t: Any, w_t: Any) -> Any:
    """sqrt(sum_j |W_j| x_j^2) per output (aihwkit's PCM_READ): the layer's own product on
    x^2 and |W|, outside the graph like ``_input_norm``."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        square, magnitude = x_t.square(), w_t.abs()
        if plan.kind == "conv":
            return module._conv_forward(square, magnitude, None).sqrt()
        if plan.kind == "matmul":  # the weight (in, out), as the ONNX graph feeds it
            return torch.matmul(square, magnitude).sqrt()
        return F.linear(square, magnitude).sqrt()


def _analog_forward(self: Any, x: Any) -> Any:
    """Replaces ``forward`` of an nn.Linear / nn.ConvNd carrying ``_ftaudit_analog``."""
    plan: _LayerPipeline = self._ftaudit_analog
    if not plan.pipeline.per_tile:
        return type(self).forward(self, _dac(plan, x))
    total = _tiled_product(self, plan, _dac(plan, x), self.weight)
    if self.bias is not None:
        total = total + self.bias.view(plan.col_shape if plan.kind == "conv" else (-1,))
    return total


def _analog_matmul_forward(self: Any, x: Any, weight: Any) -> Any:
    """Replaces ``forward`` of onnx2torch's MatMul module (``x @ weight``, the weight
    (in, out) as the ONNX graph feeds it) carrying ``_ftaudit_analog``."""
    import torch

    plan: _LayerPipeline = self._ftaudit_analog
    if not plan.pipeline.per_tile:
        return torch.matmul(_dac(plan, x), weight)
    return _tiled_product(self, plan, _dac(plan, x), weight)


def _dac(plan: _LayerPipeline, x: Any) -> Any:
    import torch

    return x if plan.dac is None else _quantise(torch, x, plan.pipeline.dac_bits, *plan.dac)


def _tiled_product(module: Any, plan: _LayerPipeline, x: Any, weight: Any) -> Any:
    """The tiles' partial sums, each with its read noise and ADC, summed, times the fed
    digital gain (no bias)."""
    import torch
    import torch.nn.functional as F

    axis = 1 if plan.kind == "conv" else -1
    w_axis = 0 if plan.kind == "matmul" else 1  # the weight's crossbar rows
    total = None
    for t, (r0, r1) in enumerate(plan.row_tiles):
        whole = len(plan.row_tiles) == 1
        x_t = x if whole else x.narrow(axis, r0, r1 - r0)
        w_t = weight if whole else weight.narrow(w_axis, r0, r1 - r0)
        if plan.kind == "conv":
            p = module._conv_forward(x_t, w_t, None)
        elif plan.kind == "matmul":
            p = torch.matmul(x_t, w_t)
        else:
            p = F.linear(x_t, w_t)
        z = plan.normals(module, t, READ_NOISE_TAG, p) if plan.pipeline.read_noise > 0 else None
        if z is not None:
            p = p + z * plan.sigma[t].to(p.device)
        z = plan.normals(module, t, WEIGHT_TAG, p) if plan.pipeline.weight_read_noise > 0 else None
        if z is not None:
            if plan.pipeline.weight_read_noise_type == "pcm":
                spread = _pcm_read_spread(module, plan, x_t, w_t)
            else:
                spread = _input_norm(module, plan, x_t, r1 - r0)
            p = p + z * (spread * plan.weight_sigma[t].to(p.device))
        folded = whole and plan.gain is not None and plan.pipeline.adc_bits is not None
        if plan.pipeline.adc_bits is not None:
            scale_in, scale_out = plan.adc[t]
            scale_out = scale_out.to(p.device)
            if folded:  # one tile: the gain joins the ADC's output scale, as in the graph
                scale_out = scale_out * plan.gain
            p = _quantise(torch, p, plan.pipeline.adc_bits, scale_in.to(p.device), scale_out)
        total = p if total is None else total + p
    return total if plan.gain is None or folded else total * plan.gain


class AnalogTraining:
    """The pipeline calibrated on the input model, ready to attach to trainable copies
    (``harden``) and to the module of the batched runner (``ftaudit.batched``)."""

    def __init__(
        self,
        model: Any,
        layers: Any,
        x: np.ndarray,
        pipeline: ForwardPipeline,
        *,
        seed: int,
        feature: str = "harden",
    ) -> None:
        from ftaudit.analog.runner import as_onnx

        #: the graph the pipeline runs: the model itself, or a TorchScript or torch.export
        #: model's in-memory ONNX export (``ftaudit.harden.analog_trainable`` trains that)
        self.model = as_onnx(model, x, layers)
        self.pipeline = pipeline
        self.seed = seed
        #: who runs the twin (a key of ``UNRUNNABLE_HINTS``), named when a layer is refused
        self.feature = feature
        self.tiled = plan_tiles(
            self.model.proto, layers, self.model.clean_weights(), pipeline, self.model.feed_names
        )
        _check_runnable(self.tiled, feature)
        noisy = pipeline.read_noise > 0 or pipeline.weight_read_noise > 0
        self.calibration = calibrate(self.model.proto, self.tiled, x, seed=seed, noisy_reads=noisy)

    def attach(self, trainable: Any) -> int:
        """Give the torch module's crossbar Linear/Conv layers and MatMul modules the pipeline;
        returns how many layers took it (all of them: a layer left ideal is a UserError)."""
        import torch

        generator = training_generator(self.seed, TRAINING_NOISE_KEY)
        weight_generator = training_generator(self.seed, TRAINING_WEIGHT_NOISE_KEY)
        owners = _crossbar_modules(torch, trainable)
        matmuls = _matmul_modules(trainable)
        for tiled in self.tiled:
            if tiled.kind == "matmul":
                output = self.model.proto.graph.node[tiled.node_index].output[0]
                module, forward = matmuls.get(output), _analog_matmul_forward
            else:
                module, forward = owners.get(tiled.layer), _analog_forward
            if module is None:
                raise _unrunnable(
                    [tiled.layer],
                    "its torch copy has no module computing its product",
                    self.feature,
                )
            module._ftaudit_analog = _LayerPipeline(torch, tiled, self.pipeline, self.calibration)
            module._ftaudit_generator = generator
            module._ftaudit_weight_generator = weight_generator
            module.forward = types.MethodType(forward, module)
        return len(self.tiled)


def _matmul_modules(trainable: Any) -> dict[str, Any]:
    """ONNX MatMul output name -> the onnx2torch module computing it."""
    found = {}
    for module in trainable.module.modules():
        mapping = getattr(module, "onnx_mapping", None)
        if type(module).__name__ == "OnnxMatMul" and mapping is not None and mapping.outputs:
            found[mapping.outputs[0]] = module
    return found


def _crossbar_modules(torch: Any, trainable: Any) -> dict[str, Any]:
    """Crossbar layer name -> the Linear or Conv module whose weight is its tensor."""
    kinds = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
    by_weight = {
        id(m.weight): m
        for m in trainable.module.modules()
        if isinstance(m, kinds) and not isinstance(m, torch.nn.modules.conv._ConvTransposeNd)
    }
    return {
        name: by_weight[id(tensor)]
        for name, tensor in trainable.crossbar.items()
        if id(tensor) in by_weight
    }


#: what each user of the torch twin is told to do about a layer the twin cannot run
UNRUNNABLE_HINTS = {
    "harden": "harden without the analog flags, then audit the result with them (ftaudit eval)",
    "--batch-samples": "drop --batch-samples (one sample per pass runs every layer)",
}


def _check_runnable(tiled_nodes: list[TiledNode], feature: str) -> None:
    """Layers the torch twin cannot run (a Linear or Conv weight read by several ops: one
    module holds it), refused before any work rather than run ideal."""
    layers = [t.layer for t in tiled_nodes if t.kind != "matmul"]
    shared = sorted({name for name in layers if layers.count(name) > 1})
    if shared:
        raise _unrunnable(shared, "several ops read the same weight", feature)


def _unrunnable(layers: list[str], why: str, feature: str) -> UserError:
    named = ", ".join(layers[:3]) + (" ..." if len(layers) > 3 else "")
    return UserError(
        f"{feature} cannot run layer {named} through the analog forward pipeline: {why}",
        hint=UNRUNNABLE_HINTS[feature],
    )


#: one keyed draw stream of the pipeline: (layer index, tile number, tag)
Stream = tuple[int, int, int]


class KeyedReads:
    """The keyed read-noise draws of Monte Carlo samples, fed to a module's pipeline layers:
    sample ``s``'s draws for images [start, stop) are ``read_noise(seed, s, ...)``, the very
    arrays the ONNX runner feeds, so the numbers do not depend on how samples are batched."""

    def __init__(
        self,
        module: Any,
        tile_shapes: Mapping[tuple[int, int], tuple[int, ...]],
        rng: str = DEFAULT_RNG,
    ) -> None:
        self.plans = [m._ftaudit_analog for m in module.modules() if hasattr(m, "_ftaudit_analog")]
        self.shapes = {s: tile_shapes[s[:2]] for plan in self.plans for s in plan.streams}
        self.rng = rng
        self._buffers: dict[tuple[Stream, int, int, int], np.ndarray] = {}

    def draws(
        self, seed: int, samples: Sequence[int], start: int, stop: int, slot: int = 0
    ) -> dict[Stream, np.ndarray]:
        """Every stream's draws, shape (len(samples), stop - start, *tile shape); the arrays
        are reused buffers, valid until the next call with the same sizes and ``slot`` (two
        slots: one batch's draws are made while the other's are read)."""
        out = {}
        for stream, shape in self.shapes.items():
            key = (stream, len(samples), stop - start, slot)
            if key not in self._buffers:
                self._buffers[key] = np.empty((len(samples), stop - start, *shape), np.float32)
            array = out[stream] = self._buffers[key]
            layer, tile, tag = stream
            for k, sample in enumerate(samples):
                read_noise(seed, sample, layer, tile, start, stop, shape, array[k], tag, self.rng)
        return out

    @contextmanager
    def feeding(
        self, normals: Mapping[Stream, Any], gains: Mapping[str, Any] | None = None
    ) -> Iterator[None]:
        """The layers read ``normals`` (one sample's, shaped like their partial sums) inside,
        and multiply their summed tiles by ``gains`` (by layer name; scalar tensors)."""
        for plan in self.plans:
            plan.fed = normals or None  # none fed: a deterministic read
            plan.gain = None if gains is None else gains.get(plan.layer)
        try:
            yield
        finally:
            for plan in self.plans:
                plan.fed, plan.gain = None, None
