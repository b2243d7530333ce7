"""The analog forward pipeline as an ONNX graph rewrite, run by ONNX Runtime.

Each selected crossbar op (Conv, Gemm, MatMul with a stored weight; found by the value it
reads as its weight, so renamed, transposed and dequantised weights alike; float16 ops
computed in float32 between casts) is replaced by:

1. DAC: its input quantised to ``dac_bits`` signed levels over the layer's input range ``r``
   (``clip(round(x * s / r), -s, s) * r / s`` with ``s = 2**(bits-1) - 1``; 1 bit is ``r *
   sign(x)``).
2. Tiles: the input rows (Gemm/MatMul input features; Conv input channels, ``kh * kw`` rows
   each) split into groups of at most ``rows`` crossbar rows; each group is one tile whose
   partial sum is computed on its own (the op itself on the sliced input and weight).
3. Read noise and ADC per tile: in normalised units ``n = p / (w_scale[col] * r)`` (weights
   scaled to max|W| = 1 per layer, column or tile, inputs to the DAC range), ``n + noise *
   z`` with ``z`` a standard normal draw fed per read; weight read noise adds ``S_w z_w``
   times ``||x_t / r||_2`` (additive, aihwkit's ADDITIVE_CONSTANT; Conv: per input patch) or
   ``sqrt(sum_j |W_j| / w_scale (x_j / r)**2)`` (``pcm``, aihwkit's PCM_READ, fed weights);
   then quantised to ``adc_bits`` levels over ``[-bound, bound]``, saturating, scaled back.
4. The tiles' outputs summed digitally, times the layer's digital gain (a scalar graph input,
   ``gain_input``: global drift compensation's alpha, 1 on other rows), then the bias added.

Ranges come from one calibration pass of the ideal model (``calibrate``): ``r`` is the
largest |input| of the layer over the calibration images; a calibrated ADC bound is the
largest |normalised partial sum| of each (row tile, column tile) over the same images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ftaudit.analog.options import CALIBRATION_IMAGES, ForwardPipeline
from ftaudit.analog.quantiser import quantise_nodes
from ftaudit.analog.read_noise import TAG as READ_NOISE_TAG
from ftaudit.analog.read_noise import WEIGHT_TAG
from ftaudit.analog.unmapped import (
    MAPPED_OPS,
    SUPPORTED_OPS,
    refuse_left_weight,
    refuse_unmapped_product,
    unmapped_reason,
)
from ftaudit.errors import UserError
from ftaudit.models.onnx_graph import source_value

NOISE_INPUT_PREFIX = "ftaudit_read_noise_"
WEIGHT_NOISE_INPUT_PREFIX = "ftaudit_weight_read_noise_"
GAIN_INPUT_PREFIX = "ftaudit_gain_"


def gain_input(layer_index: int) -> str:
    """The scalar graph input multiplying crossbar layer ``layer_index``'s summed tiles."""
    return f"{GAIN_INPUT_PREFIX}{layer_index}"


def _onnx():
    import onnx

    return onnx


@dataclass
class TiledNode:
    """One crossbar op of the graph and how its weight is laid onto tiles."""

    node_index: int
    layer: str
    layer_index: int
    kind: str  # gemm, matmul or conv
    x_axis: int  # input axis holding the crossbar rows (features or channels)
    w_axis: int  # weight axis of the same rows
    row_tiles: list[tuple[int, int]]  # [start, stop) along x_axis / w_axis
    col_tiles: list[tuple[int, int]]  # [start, stop) over output columns
    col_shape: tuple[int, ...]  # broadcast shape of a per-column vector against the output
    #: max|W| per output column for each row tile (the conductance range), shape (tiles, out)
    weight_scale: np.ndarray
    #: first tile's number among all the layer's tiles (keys its read noise)
    first_tile: int = 0
    #: the stored weight's shape (Conv: sets the kernel of the input-norm pass)
    weight_shape: list[int] = field(default_factory=list)
    #: the op computes in float16: the pipeline casts its operands to float32 and the
    #: result back (converters and noise in float32, like a float32 model's)
    half: bool = False


@dataclass
class Calibration:
    """Ranges measured on the ideal model: recorded in the report, used by the rewrite."""

    images: int
    input_range: dict[str, float] = field(default_factory=dict)
    #: per crossbar node: ADC bound per (row tile, output column), normalised units
    adc_bound: dict[int, np.ndarray] = field(default_factory=dict)
    #: per (layer index, tile): the shape of one image's partial sum (read-noise draws)
    tile_shapes: dict[tuple[int, int], tuple[int, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "rule": (
                "ideal model on a seeded subset of the data: DAC range = max |layer input|; "
                "calibrated ADC bound = max |normalised tile partial sum| per column tile"
            ),
            "input_range": {k: float(v) for k, v in self.input_range.items()},
            "tiles": len(self.tile_shapes),
        }


def _attr(node: Any, name: str, default: Any) -> Any:
    onnx = _onnx()
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _spans(total: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, total)) for s in range(0, total, size)]


def plan_tiles(
    proto: Any,
    layers: Sequence[Any],
    weights: Mapping[str, np.ndarray],
    pipeline: ForwardPipeline,
    feed_names: Mapping[str, str] | None = None,
) -> list[TiledNode]:
    """Which graph nodes the pipeline rewrites and how their weights split into tiles.

    ``layers``: the selected CrossbarLayer objects; ``feed_names``: each layer's graph value
    (the value its op reads: an initializer, or a Transpose/Cast/DequantizeLinear output;
    default the layer's name). Every selected layer is planned or refused: a layer the
    pipeline cannot map (ConvTranspose, Gemm with transA, a MatMul whose weight is the left
    operand) is a UserError, never an ideal op left in the graph."""
    feeds = feed_names or {}
    by_value = {feeds.get(layer.name, layer.name): layer for layer in layers}
    producers = {o: n for n in proto.graph.node for o in n.output}
    rows, cols = pipeline.tile_size or (None, None)
    planned = []
    tile_count: dict[str, int] = {}
    for index, node in enumerate(proto.graph.node):
        if len(node.input) < 2:
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type not in MAPPED_OPS:
            refuse_unmapped_product(node, by_value, producers)
            continue
        layer = by_value.get(source_value(node.input[1], producers))
        if layer is None:
            refuse_left_weight(node, by_value, producers)
            continue
        name = layer.name
        stored = weights[name]
        if stored.dtype not in (np.float32, np.float16):
            raise UserError(
                f"crossbar weight {name} is {stored.dtype}; the analog pipeline needs float32 "
                "or float16",
                hint="export the model in float32",
            )
        weight = stored.astype(np.float32, copy=False)
        if node.op_type == "Gemm" and not _attr(node, "transA", 0):
            trans_b = bool(_attr(node, "transB", 0))
            canonical = weight if trans_b else weight.T
            kind, x_axis, w_axis, unit = "gemm", 1, 1 if trans_b else 0, 1
            col_shape: tuple[int, ...] = (canonical.shape[0],)
            groups = 1
        elif node.op_type == "MatMul" and weight.ndim == 2:
            canonical = weight.T
            kind, x_axis, w_axis, unit = "matmul", -1, 0, 1
            col_shape = (canonical.shape[0],)
            groups = 1
        elif node.op_type == "Conv":
            canonical = weight
            kind, x_axis, w_axis = "conv", 1, 1
            unit = int(np.prod(weight.shape[2:]))
            col_shape = (weight.shape[0],) + (1,) * (weight.ndim - 2)
            groups = int(_attr(node, "group", 1))
        elif node.op_type not in ("Gemm", "MatMul", "ConvTranspose"):
            continue  # another reader of the same tensor, not a product with it
        else:
            raise UserError(
                f"the analog forward pipeline cannot map crossbar layer {name} "
                f"({unmapped_reason(node, weight)})",
                hint=f"leave it digital with --layers (select the others) or drop the analog "
                f"flags; supported: {SUPPORTED_OPS}",
            )
        out = canonical.shape[0]
        units = canonical.shape[1]
        per_tile = units if rows is None or groups != 1 else max(1, rows // unit)
        row_tiles = _spans(units, per_tile)
        col_tiles = _spans(out, cols or out)
        magnitude = np.abs(canonical).reshape(out, units, -1).max(axis=2)  # (out, units)
        scale = np.empty((len(row_tiles), out), np.float32)
        for t, (r0, r1) in enumerate(row_tiles):
            if pipeline.weight_scaling == "layer":
                scale[t] = magnitude.max()
            elif pipeline.weight_scaling == "column":
                scale[t] = magnitude.max(axis=1)
            else:
                for c0, c1 in col_tiles:
                    scale[t, c0:c1] = magnitude[c0:c1, r0:r1].max()
        scale[scale == 0] = 1.0  # an all-zero column reads zero at any scale
        planned.append(
            TiledNode(
                node_index=index,
                layer=name,
                layer_index=layer.index,
                kind=kind,
                x_axis=x_axis,
                w_axis=w_axis,
                row_tiles=row_tiles,
                col_tiles=col_tiles,
                col_shape=col_shape,
                weight_scale=scale,
                first_tile=tile_count.get(name, 0),
                weight_shape=list(weight.shape),
                half=stored.dtype == np.float16,
            )
        )
        tile_count[name] = tile_count.get(name, 0) + len(row_tiles)
    missing = [layer.name for layer in layers if layer.name not in tile_count]
    if missing:  # a layer whose value no op of the graph reads as its weight operand
        raise UserError(
            f"the analog forward pipeline found no crossbar op reading layer "
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}",
            hint="leave it digital with --layers (select the others) or drop the analog flags",
        )
    return planned


class _Builder:
    """Appends nodes and constants with unique names."""

    def __init__(self, prefix: str, opset: int) -> None:
        self.prefix = prefix
        self.opset = opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{self.prefix}{hint}_{self._n}"

    def const(self, array: np.ndarray, hint: str = "c") -> str:
        onnx = _onnx()
        name = self.name(hint)
        self.initializers.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], output: str | None = None, **attrs) -> str:
        onnx = _onnx()
        out = output or self.name(op_type.lower())
        self.nodes.append(onnx.helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def reduce_max(self, x: str, axes: Sequence[int] | None) -> str:
        if axes is None:
            return self.op("ReduceMax", [x], keepdims=0)
        if self.opset >= 18:
            return self.op("ReduceMax", [x, self.const(np.array(axes, np.int64))], keepdims=0)
        return self.op("ReduceMax", [x], axes=list(axes), keepdims=0)

    def slice(self, x: str, axis: int, start: int, stop: int) -> str:
        return self.op(
            "Slice",
            [
                x,
                self.const(np.array([start], np.int64), "st"),
                self.const(np.array([stop], np.int64), "sp"),
                self.const(np.array([axis], np.int64), "ax"),
            ],
        )


#: the oldest default-domain opset the rewrite writes nodes for (Slice takes inputs from 10,
#: Gemm's bias is optional from 11)
MIN_OPSET = 11


def _opset(proto: Any) -> int:
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < MIN_OPSET:
        raise UserError(
            f"the analog forward pipeline needs an ONNX model of opset {MIN_OPSET} or later; "
            f"this one is opset {opset}",
            hint="convert it: onnx.version_converter.convert_version(model, 13), or "
            "re-export with opset_version=13 or later",
        )
    return opset


def _tile_input(b: _Builder, tiled: TiledNode, x: str, t: int) -> str:
    """Tile ``t``'s slice of the layer input (its crossbar rows)."""
    r0, r1 = tiled.row_tiles[t]
    return x if len(tiled.row_tiles) == 1 else b.slice(x, tiled.x_axis, r0, r1)


def _float32(b: _Builder, tiled: TiledNode, value: str) -> str:
    """``value`` as float32: a Cast for a float16 op, else the value itself."""
    return b.op("Cast", [value], to=_onnx().TensorProto.FLOAT) if tiled.half else value


def _tile_weight(b: _Builder, tiled: TiledNode, w: str, t: int) -> str:
    """Tile ``t``'s rows of the (float32) weight ``w``."""
    r0, r1 = tiled.row_tiles[t]
    return w if len(tiled.row_tiles) == 1 else b.slice(w, tiled.w_axis, r0, r1)


def _product(b: _Builder, node: Any, x: str, w: str, *, alpha: bool = True) -> str:
    """The node's own op (its attributes: strides, pads, groups, transB) on ``x`` and ``w``, no
    bias: a tile's partial sum on its input slice and weight rows (``_tile_weight``);
    ``alpha=False`` drops Gemm's alpha (a sum over the stored conductances)."""
    attrs = {a.name: _onnx().helper.get_attribute_value(a) for a in node.attribute}
    attrs.pop("beta", None)
    if not alpha:
        attrs.pop("alpha", None)
    return b.op(node.op_type, [x, w], **attrs)


def _pcm_read_spread(b: _Builder, node: Any, x_t: str, w_t: str) -> str:
    """sqrt(sum_j |W_jc| x_j^2) per output: the op itself on x^2 and |W| (so Conv strides, pads,
    dilations and groups match; Gemm without alpha: the stored weights are the conductances)."""
    square = b.op("Mul", [x_t, x_t])
    return b.op("Sqrt", [_product(b, node, square, b.op("Abs", [w_t]), alpha=False)])


def _input_norm(b: _Builder, node: Any, tiled: TiledNode, x_t: str, t: int) -> str:
    """||x||_2 of the inputs each output of tile ``t`` reads, broadcastable to its partial
    sum: over the features (Gemm, MatMul) or each input patch (Conv: the op itself on x^2
    with a kernel of ones, so strides, pads, dilations and groups match)."""
    if tiled.kind == "conv":
        attrs = {a.name: _onnx().helper.get_attribute_value(a) for a in node.attribute}
        r0, r1 = tiled.row_tiles[t]
        shape = tiled.weight_shape[:]
        if int(attrs.get("group", 1)) == 1:  # one sum for all output channels
            shape[0], shape[1] = 1, r1 - r0
        ones = b.const(np.ones(shape, np.float32), "ones")
        total = b.op("Conv", [b.op("Mul", [x_t, x_t]), ones], **attrs)
    elif b.opset >= 18:
        axes = b.const(np.array([tiled.x_axis], np.int64), "ax")
        total = b.op("ReduceSumSquare", [x_t, axes], keepdims=1)
    else:
        total = b.op("ReduceSumSquare", [x_t], axes=[tiled.x_axis], keepdims=1)
    return b.op("Sqrt", [total])


def _weight_read_spread(
    b: _Builder, node: Any, tiled: TiledNode, pipeline: ForwardPipeline, x_t: str, w_t: str, t: int
) -> str:
    """Each output's weight read noise std in partial-sum units: additive ``S w_t ||x||``; pcm
    ``S sqrt(w_t) sqrt(sum_j |W_j| x_j^2)`` (variance S^2 |W| / w_t normalised, r cancels)."""
    scale = tiled.weight_scale[t]
    if pipeline.weight_read_noise_type == "pcm":
        spread = _pcm_read_spread(b, node, x_t, w_t)
        sigma = pipeline.weight_read_noise * np.sqrt(scale)
    else:
        spread = _input_norm(b, node, tiled, x_t, t)
        sigma = pipeline.weight_read_noise * scale
    sigma = sigma.astype(np.float32).reshape(tiled.col_shape)
    return b.op("Mul", [spread, b.const(sigma, "wsigma")])


def _bias(b: _Builder, node: Any, tiled: TiledNode, total: str, output: str) -> None:
    """Add the node's bias digitally to the summed tiles, writing the node's output name."""
    if tiled.half:  # the summed tiles back to the op's float16, written to its output
        total = b.op("Cast", [total], to=_onnx().TensorProto.FLOAT16)
    if len(node.input) < 3 or not node.input[2]:
        b.op("Identity", [total], output)
        return
    bias = node.input[2]  # added in the op's own type, as the op adds it
    if tiled.kind == "gemm":
        beta = float(_attr(node, "beta", 1.0))
        if beta != 1.0:
            dtype = np.float16 if tiled.half else np.float32
            bias = b.op("Mul", [bias, b.const(np.array(beta, dtype), "beta")])
    elif tiled.kind == "conv":
        shape = b.const(np.array(tiled.col_shape, np.int64), "shape")
        bias = b.op("Reshape", [bias, shape])
    b.op("Add", [total, bias], output)


def rewrite(
    proto: Any,
    tiled_nodes: Sequence[TiledNode],
    pipeline: ForwardPipeline,
    calibration: Calibration,
) -> tuple[Any, list[tuple[str, int, int, int]]]:
    """A copy of ``proto`` with the pipeline around every tiled node, and its read-noise inputs
    as (input name, layer index, tile number, draw stream tag); with tiles read on their own
    (``per_tile``), each layer's summed tiles are multiplied by its ``gain_input``."""
    onnx = _onnx()
    new = onnx.ModelProto()
    new.CopyFrom(proto)
    graph = new.graph
    b = _Builder("ftaudit_analog_", _opset(proto))
    replaced: dict[int, list[Any]] = {}
    noise_inputs: list[tuple[str, int, int, int]] = []
    for tiled in tiled_nodes:
        node = graph.node[tiled.node_index]
        start = len(b.nodes)
        r = np.float32(calibration.input_range[tiled.layer])
        x = _float32(b, tiled, node.input[0])
        if pipeline.dac_bits is not None:
            x = quantise_nodes(b, x, pipeline.dac_bits, r, qdq=False)
        if not pipeline.per_tile:
            rewired = onnx.NodeProto()
            rewired.CopyFrom(node)
            rewired.input[0] = b.op("Cast", [x], to=onnx.TensorProto.FLOAT16) if tiled.half else x
            b.nodes.append(rewired)
        else:
            bounds = calibration.adc_bound.get(tiled.node_index)
            gain = gain_input(tiled.layer_index)
            fold_gain = len(tiled.row_tiles) == 1  # one tile: the gain joins the ADC's scale
            w = _float32(b, tiled, node.input[1])
            tiles = []
            for t in range(len(tiled.row_tiles)):
                x_t = _tile_input(b, tiled, x, t)
                w_t = _tile_weight(b, tiled, w, t)
                p = _product(b, node, x_t, w_t)
                unit = (tiled.weight_scale[t] * r).astype(np.float32).reshape(tiled.col_shape)
                tile = tiled.first_tile + t
                if pipeline.read_noise > 0:
                    name = f"{NOISE_INPUT_PREFIX}{tiled.layer_index}_{tile}"
                    noise_inputs.append((name, tiled.layer_index, tile, READ_NOISE_TAG))
                    sigma = b.const((pipeline.read_noise * unit).astype(np.float32), "sigma")
                    p = b.op("Add", [p, b.op("Mul", [name, sigma])])
                if pipeline.weight_read_noise > 0:  # sum_j N_ij x_j: one normal per output
                    name = f"{WEIGHT_NOISE_INPUT_PREFIX}{tiled.layer_index}_{tile}"
                    noise_inputs.append((name, tiled.layer_index, tile, WEIGHT_TAG))
                    spread = _weight_read_spread(b, node, tiled, pipeline, x_t, w_t, t)
                    p = b.op("Add", [p, b.op("Mul", [name, spread])])
                if pipeline.adc_bits is not None:
                    bound = (
                        np.full(unit.size, pipeline.adc_bound, np.float32)
                        if pipeline.adc_bound is not None
                        else bounds[t]
                    )
                    full = bound.reshape(tiled.col_shape) * unit
                    shape = calibration.tile_shapes.get((tiled.layer_index, tile))
                    p = quantise_nodes(
                        b, p, pipeline.adc_bits, full, gain=gain if fold_gain else None, shape=shape
                    )
                tiles.append(p)
            total = tiles[0] if len(tiles) == 1 else b.op("Sum", tiles)
            if not (fold_gain and pipeline.adc_bits is not None):
                total = b.op("Mul", [total, gain])
            _bias(b, node, tiled, total, node.output[0])
        replaced[tiled.node_index] = b.nodes[start:]
        del b.nodes[start:]
    for name, *_ in noise_inputs:
        graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    gains = {gain_input(t.layer_index) for t in tiled_nodes} if pipeline.per_tile else set()
    for name in sorted(gains):
        graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, []))
    nodes = []
    for index, node in enumerate(graph.node):
        nodes.extend(replaced.get(index, [node]))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(b.initializers)
    return new, noise_inputs


def calibration_indices(n: int, seed: int) -> np.ndarray:
    """The seeded, sorted subset of data indices that sets the ranges."""
    size = min(n, CALIBRATION_IMAGES)
    rng = np.random.default_rng([seed, 0xCA1B])
    return np.sort(rng.choice(n, size=size, replace=False))


def _check_image_axis(tiled: Sequence[TiledNode], shapes: Sequence[Any], images: int) -> None:
    """Refuse a layer whose partial sums (``shapes``, one per tile) do not hold the batch's
    ``images`` on their first axis: read noise keyed by image cannot be fed to it."""
    for node, shape in zip(tiled, shapes, strict=True):
        if len(shape) and int(shape[0]) != images:
            raise UserError(
                f"read noise is drawn per image, and crossbar layer {node.layer}'s outputs "
                f"(shape {tuple(int(d) for d in shape)} for {images} images) do not hold the "
                "images on their first axis (its input is a transposed or flattened sequence, "
                "as in nn.MultiheadAttention's projections)",
                hint=f"leave it digital with --exclude '{node.layer}', or drop --read-noise "
                "and --weight-read-noise",
            )


def calibrate(
    proto: Any,
    tiled_nodes: Sequence[TiledNode],
    x: np.ndarray,
    *,
    seed: int,
    batch_size: int = 64,
    noisy_reads: bool = False,
) -> Calibration:
    """Input ranges, calibrated ADC bounds and tile output shapes from the ideal model.
    ``noisy_reads`` (read noise drawn per image): a layer whose outputs do not hold the images
    on their first axis is refused, as its draws could not be keyed by image."""
    import onnxruntime as ort

    onnx = _onnx()
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    graph = probe.graph
    b = _Builder("ftaudit_calib_", _opset(proto))
    wanted: list[tuple[str, Any]] = []
    for tiled in tiled_nodes:
        node = graph.node[tiled.node_index]
        x_in, w = _float32(b, tiled, node.input[0]), _float32(b, tiled, node.input[1])
        wanted.append((b.reduce_max(b.op("Abs", [x_in]), None), ("x", tiled)))
        for t in range(len(tiled.row_tiles)):
            x_t, w_t = _tile_input(b, tiled, x_in, t), _tile_weight(b, tiled, w, t)
            p = _product(b, node, x_t, w_t)
            inv = (1.0 / tiled.weight_scale[t]).astype(np.float32).reshape(tiled.col_shape)
            normalised = b.op("Abs", [b.op("Mul", [p, b.const(inv, "inv")])])
            if tiled.kind == "conv":
                flat = b.op(
                    "Reshape",
                    [normalised, b.const(np.array([0, tiled.col_shape[0], -1], np.int64))],
                )
                peak = b.reduce_max(flat, [0, 2])
            else:
                flat = b.op(
                    "Reshape", [normalised, b.const(np.array([-1, tiled.col_shape[0]], np.int64))]
                )
                peak = b.reduce_max(flat, [0])
            wanted.append((peak, ("p", tiled, t)))
            wanted.append((b.op("Shape", [p]), ("shape", tiled, t)))
    graph.node.extend(b.nodes)
    graph.initializer.extend(b.initializers)
    del graph.output[:]
    for name, _ in wanted:
        graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors arrive as exceptions, said in one line
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    data_input = next(
        i for i in proto.graph.input if i.name not in {t.name for t in graph.initializer}
    )
    input_name = data_input.name
    chosen = x[calibration_indices(len(x), seed)]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(data_input.type.tensor_type.elem_type)
    if np.issubdtype(dtype, np.floating):  # a float16 model reads float16 images
        chosen = chosen.astype(dtype, copy=False)
    dim = data_input.type.tensor_type.shape.dim
    fixed = dim[0].dim_value if len(dim) and dim[0].HasField("dim_value") else 0
    size = fixed or batch_size
    batches = [chosen[s : s + size] for s in range(0, len(chosen), size)]
    if fixed and len(batches[-1]) < fixed:  # a fixed batch axis: pad with a repeated image,
        last = batches[-1]  # which leaves every maximum as it is
        batches[-1] = np.concatenate([last, np.repeat(last[:1], fixed - len(last), axis=0)])
    names = [n for n, _ in wanted]
    is_shape = [what[0] == "shape" for _, what in wanted]
    peaks: list[np.ndarray] = []
    shapes: list[np.ndarray] = []
    shaped = [what[1] for _, what in wanted if what[0] == "shape"]
    for batch in batches:
        outs = session.run(names, {input_name: np.ascontiguousarray(batch)})
        values = [o for o, shape in zip(outs, is_shape, strict=True) if not shape]
        shapes = [o for o, shape in zip(outs, is_shape, strict=True) if shape]
        if noisy_reads:
            _check_image_axis(shaped, shapes, len(batch))
        peaks = [np.maximum(a, v) for a, v in zip(peaks, values, strict=True)] if peaks else values
    calibration = Calibration(images=len(chosen))
    peak_iter = iter(peaks)
    shape_iter = iter(shapes)
    for _name, what in wanted:
        if what[0] == "x":
            tiled = what[1]
            value = float(next(peak_iter))
            calibration.input_range[tiled.layer] = value if value > 0 else 1.0
        elif what[0] == "p":
            tiled, t = what[1], what[2]
            r = calibration.input_range[tiled.layer]
            per_col = np.asarray(next(peak_iter), np.float64) / r
            bounds = calibration.adc_bound.setdefault(
                tiled.node_index, np.empty((len(tiled.row_tiles), per_col.size), np.float32)
            )
            for c0, c1 in tiled.col_tiles:
                top = float(per_col[c0:c1].max())
                bounds[t, c0:c1] = top if top > 0 else 1.0
        else:
            tiled, t = what[1], what[2]
            shape = tuple(int(d) for d in next(shape_iter)[1:])
            calibration.tile_shapes[(tiled.layer_index, tiled.first_tile + t)] = shape
    return calibration
