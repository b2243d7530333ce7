"""The analog forward pipeline in torch, for hardware-aware training (``ftaudit harden``).

The same transforms as the ONNX rewrite (``ftaudit.analog.onnx_graph``), on the trainable
module's own Linear and Conv layers and onnx2torch's MatMul modules (a MatMul weight, fed as
the graph reads it): their ``forward`` is replaced on the instance, so parameter names, the
export and the optimiser see the same module; a layer left without one is a UserError.
Quantisers use straight-through estimators: rounding passes the gradient unchanged, saturation
passes none outside the range.
Ranges and tiles come from the ONNX calibration of the input model (a TorchScript or
torch.export model: of its in-memory ONNX export, as ``eval`` runs it), fixed for the whole run.
Read noise is drawn in training mode only, from a torch generator seeded by the run's seed
(weight read noise, additive or PCM, from a second one, so turning it on leaves the output
noise's draws);
the validation passes (eval mode) and the exported model are deterministic.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np

from ftaudit.analog.onnx_graph import (
    Calibration,
    TiledNode,
    calibrate,
    plan_tiles,
    quantiser_scales,
)
from ftaudit.analog.options import ForwardPipeline
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
    """N-bit quantiser with a straight-through gradient inside the range."""
    scaled = x * scale_in
    if bits == 1:
        clipped = scaled.clamp(-1.0, 1.0)
        return (clipped + (torch.sign(scaled) - clipped).detach()) * scale_out
    steps = float(2 ** (bits - 1) - 1)
    clipped = scaled.clamp(-steps, steps)
    return (clipped + (torch.round(clipped) - clipped).detach()) * scale_out


class _LayerPipeline:
    """The constants of one crossbar module (tensors on the module's device)."""

    def __init__(
        self, torch: Any, tiled: TiledNode, pipeline: ForwardPipeline, calibration: Calibration
    ) -> None:
        self.kind = tiled.kind
        self.row_tiles = tiled.row_tiles
        self.pipeline = pipeline
        r = np.float32(calibration.input_range[tiled.layer])
        self.dac = None
        if pipeline.dac_bits is not None:
            scale_in, scale_out = quantiser_scales(pipeline.dac_bits, r)
            self.dac = (float(scale_in), float(scale_out))
        self.units, self.adc, self.sigma, self.weight_sigma = [], [], [], []
        self.weight_shape = tiled.weight_shape
        bounds = calibration.adc_bound.get(tiled.node_index)
        for t in range(len(tiled.row_tiles)):
            unit = (tiled.weight_scale[t] * r).astype(np.float32).reshape(tiled.col_shape)
            self.sigma.append(torch.from_numpy(pipeline.read_noise * unit))
            scale = tiled.weight_scale[t]  # pcm: S sqrt(w_t), as ``onnx_graph`` explains
            pcm = pipeline.weight_read_noise_type == "pcm"
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
    """The tiles' partial sums, each with its read noise and ADC, summed (no bias)."""
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
        if plan.pipeline.read_noise > 0 and module.training:
            z = torch.randn(p.shape, generator=module._ftaudit_generator, dtype=p.dtype)
            p = p + z.to(p.device) * plan.sigma[t].to(p.device)
        if plan.pipeline.weight_read_noise > 0 and module.training:
            z = torch.randn(p.shape, generator=module._ftaudit_weight_generator, dtype=p.dtype)
            if plan.pipeline.weight_read_noise_type == "pcm":
                spread = _pcm_read_spread(module, plan, x_t, w_t)
            else:
                spread = _input_norm(module, plan, x_t, r1 - r0)
            spread = spread * plan.weight_sigma[t].to(p.device)
            p = p + z.to(p.device) * spread
        if plan.pipeline.adc_bits is not None:
            scale_in, scale_out = plan.adc[t]
            p = _quantise(
                torch, p, plan.pipeline.adc_bits, scale_in.to(p.device), scale_out.to(p.device)
            )
        total = p if total is None else total + p
    return total


class AnalogTraining:
    """The pipeline calibrated on the input model, ready to attach to trainable copies."""

    def __init__(
        self,
        model: Any,
        layers: Any,
        x: np.ndarray,
        pipeline: ForwardPipeline,
        *,
        seed: int,
    ) -> None:
        from ftaudit.analog.runner import as_onnx

        #: the graph the pipeline runs: the model itself, or a TorchScript or torch.export
        #: model's in-memory ONNX export (``ftaudit.harden.analog_trainable`` trains that)
        self.model = as_onnx(model, x)
        self.pipeline = pipeline
        self.seed = seed
        self.tiled = plan_tiles(
            self.model.proto, layers, self.model.clean_weights(), pipeline, self.model.feed_names
        )
        _check_trainable(self.tiled)
        self.calibration = calibrate(self.model.proto, self.tiled, x, seed=seed)

    def attach(self, trainable: Any) -> int:
        """Give the trainable module's crossbar Linear/Conv layers the pipeline; returns how
        many layers took it (all of them: a layer left ideal is a UserError)."""
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
                raise _untrainable(
                    [tiled.layer], "its trainable copy has no module computing its product"
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


def _check_trainable(tiled_nodes: list[TiledNode]) -> None:
    """Layers the torch pipeline cannot train through (a Linear or Conv weight read by
    several ops: one module holds it), refused before any work rather than trained ideal."""
    layers = [t.layer for t in tiled_nodes if t.kind != "matmul"]
    shared = sorted({name for name in layers if layers.count(name) > 1})
    if shared:
        raise _untrainable(shared, "several ops read the same weight")


def _untrainable(layers: list[str], why: str) -> UserError:
    named = ", ".join(layers[:3]) + (" ..." if len(layers) > 3 else "")
    return UserError(
        f"harden cannot train layer {named} through the analog forward pipeline: {why}",
        hint="harden without the analog flags, then audit the result with them (ftaudit eval)",
    )
