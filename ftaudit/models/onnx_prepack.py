"""Pre-packed (blocked NCHWc) convolution kernels for crossbar weights that change every sample.

ONNX Runtime reorders constant Conv weights into its blocked NCHWc layout when it optimises a
session; weights fed as graph inputs lose that and run 2-3x slower. This module optimises the
model once with the weights as constants, then turns every optimised initializer that derives
from a crossbar weight back into a graph input, together with the map from the original weight
to it: ``derived.flat[j] = scale[j] * weight.flat[index[j]]`` (a reorder, zero padding for the
blocked channels, and the per-channel factor of a folded BatchNorm).

The map is read off the optimiser itself, never assumed: the model is optimised again with
every crossbar weight element replaced by an encoding of its position (all ones for the scale,
then the low and high digits of a global element id), the ids are decoded from the optimised
tensors, and the map is checked against the optimiser's output for the real weights. Any
surprise (a different graph between passes, a value that is not a scaled copy of one weight
element) returns None and the caller keeps the plain weights-as-inputs graph. Perturbations
stay in the original layout, so draws and numbers do not depend on the CPU's block size.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftaudit.limits import release_free_memory
from ftaudit.models.base import CrossbarLayer

#: element ids are encoded as two base-RADIX digits, each offset by DIGIT_OFFSET so that no
#: encoded value equals the all-ones scale pass (the digits stay exact in float32)
RADIX = 2048
DIGIT_OFFSET = 2.0
#: protobuf cannot serialise a model over 2 GiB; larger models keep the plain graph
MAX_MODEL_BYTES = 1_800_000_000
#: ONNX Runtime session options writing the optimised model's weights to a file of their own
_EXTERNAL_FILE = "session.optimized_model_external_initializers_file_name"
_EXTERNAL_MIN_BYTES = "session.optimized_model_external_initializers_min_size_in_bytes"


@dataclass(frozen=True)
class DerivedInput:
    """An optimised-graph input computed from one crossbar weight by a gather and a scale."""

    name: str
    source: str
    shape: tuple[int, ...]
    #: flat indices into the source weight (None: the weight itself, same layout, or a reorder
    #: that ``strides`` gives; the index is then not kept, it would cost 2x the weight's memory)
    index: np.ndarray | None
    #: per-element factor (None: all ones)
    scale: np.ndarray | None
    #: (shape, element strides) when ``index`` is a pure reorder (a transpose of a reshape, no
    #: padding): the source viewed with them holds ``index``'s elements in order, so a strided
    #: copy replaces the gather (``affine_strides``)
    strides: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    @property
    def same_layout(self) -> bool:
        """The input is the source weight itself (fed as is, no copy)."""
        return self.index is None and self.strides is None and self.scale is None

    def compute(self, weight: np.ndarray, out: np.ndarray) -> np.ndarray:
        """This input's value for ``weight`` (stored layout), written into ``out``."""
        flat = weight.reshape(-1)
        if self.strides is not None:  # same elements as the gather, 2x faster (no index read)
            shape, steps = self.strides
            view = np.lib.stride_tricks.as_strided(
                flat, shape, tuple(s * flat.itemsize for s in steps), writeable=False
            )
            np.copyto(out.reshape(shape), view)
        elif self.index is None:
            np.copyto(out.reshape(-1), flat)
        else:
            np.take(flat, self.index, out=out.reshape(-1))
        if self.scale is not None:
            np.multiply(out.reshape(-1), self.scale, out=out.reshape(-1))
        return out


@dataclass(frozen=True)
class PrepackedGraph:
    """The optimised model with derived crossbar inputs, and how to feed them."""

    model_bytes: bytes
    inputs: tuple[DerivedInput, ...]

    def by_source(self) -> dict[str, list[DerivedInput]]:
        grouped: dict[str, list[DerivedInput]] = {}
        for derived in self.inputs:
            grouped.setdefault(derived.source, []).append(derived)
        return grouped


def _optimised_initializers(
    proto: Any, values: Mapping[str, np.ndarray], workdir: Path, tag: str
) -> tuple[Any, dict[str, np.ndarray]]:
    """Optimise ``proto`` with the crossbar initializers set to ``values`` (ORT_ENABLE_ALL, CPU);
    return the optimised model and its initializers (each copy freed as soon as it is written:
    the passes of a large model would otherwise hold several models at once)."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    for tensor in model.graph.initializer:
        if tensor.name in values:
            tensor.CopyFrom(onnx.numpy_helper.from_array(values[tensor.name], tensor.name))
    source = workdir / f"{tag}.in.onnx"
    target = workdir / f"{tag}.out.onnx"
    with open(source, "wb") as file:
        file.write(model.SerializeToString())
    del model
    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors arrive as exceptions, said in one line
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(target)
    options.intra_op_num_threads = 1
    # the optimised weights go to a file of their own, read once into arrays: the optimised
    # proto stays small (graph only) instead of holding a second copy of every weight
    options.add_session_config_entry(_EXTERNAL_FILE, f"{tag}.out.data")
    options.add_session_config_entry(_EXTERNAL_MIN_BYTES, "1024")
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    source.unlink()
    optimised = onnx.load(str(target), load_external_data=False)
    arrays = {t.name: _initializer_array(t, workdir) for t in optimised.graph.initializer}
    for file in workdir.glob(f"{tag}.out.*"):
        file.unlink()
    release_free_memory()  # the pass's model copies and session, before the next pass
    return optimised, arrays


def _initializer_array(tensor: Any, folder: Path) -> np.ndarray:
    """An optimised initializer's value, from its external data file when it has one."""
    import onnx

    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return onnx.numpy_helper.to_array(tensor)
    entries = {e.key: e.value for e in tensor.external_data}
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
    count = int(entries["length"]) // dtype.itemsize if "length" in entries else -1
    array = np.fromfile(
        folder / entries["location"], dtype=dtype, count=count, offset=int(entries.get("offset", 0))
    )
    return array.astype(dtype.newbyteorder("="), copy=False).reshape(tuple(tensor.dims))


def _structure(model: Any) -> tuple[Any, ...]:
    nodes = tuple((n.domain, n.op_type, tuple(n.input), tuple(n.output)) for n in model.graph.node)
    inits = tuple((t.name, tuple(t.dims), t.data_type) for t in model.graph.initializer)
    return nodes, inits


def build_prepacked_graph(proto: Any, weights: Mapping[str, np.ndarray]) -> PrepackedGraph | None:
    """The optimised graph of ``proto`` whose crossbar-derived initializers are inputs, or None
    when the optimiser did something this map cannot express (the caller then keeps the plain
    graph). ``weights``: the selected crossbar initializers (float32, stored layout)."""
    import onnx

    if not weights or any(w.dtype != np.float32 for w in weights.values()):
        return None
    if proto.ByteSize() > MAX_MODEL_BYTES:
        return None
    names = list(weights)
    sizes = np.array([weights[n].size for n in names], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    total = int(offsets[-1])
    if total >= 2**31:  # ids are int32 (and digits exact in float32)
        return None

    def encoding(tag: str) -> dict[str, np.ndarray]:
        """Every crossbar weight element replaced by the pass's code of its global id."""
        if tag == "one":
            flat = np.ones(total, dtype=np.float32)
        else:
            gid = np.arange(total, dtype=np.int32)
            digit = np.remainder(gid, RADIX, out=gid) if tag == "low" else gid // RADIX
            flat = digit.astype(np.float32)
            flat += np.float32(DIGIT_OFFSET)
            del gid, digit
        return {
            n: flat[offsets[i] : offsets[i + 1]].reshape(weights[n].shape)
            for i, n in enumerate(names)
        }

    try:
        with tempfile.TemporaryDirectory(prefix="ftaudit-prepack-") as tmp:
            workdir = Path(tmp)
            real_model, real = _optimised_initializers(proto, weights, workdir, "real")
            shape = _structure(real_model)
            passes = []
            for tag in ("one", "low", "high"):  # one pass alive at a time, its model dropped
                model, arrays = _optimised_initializers(proto, encoding(tag), workdir, tag)
                if _structure(model) != shape:
                    return None
                del model
                passes.append(arrays)
    except Exception:  # the optimiser refused a model the plain session may still run
        return None
    scale_pass, low_pass, high_pass = passes
    derived: list[DerivedInput] = []
    for name, value in real.items():
        scale, lo, hi = scale_pass.pop(name), low_pass.pop(name), high_pass.pop(name)
        if np.array_equal(scale, lo) and np.array_equal(lo, hi):
            continue  # independent of the crossbar weights: stays a constant
        if value.dtype != np.float32:
            return None
        found = _decode(name, value, scale, lo, hi, names, offsets, weights)
        if found is None:
            return None
        derived.append(found)
    if not derived:
        return None
    graph = real_model.graph
    derived_names = {d.name for d in derived}
    kept = [
        t
        if t.data_location != onnx.TensorProto.EXTERNAL
        else onnx.numpy_helper.from_array(real[t.name], t.name)
        for t in graph.initializer
        if t.name not in derived_names
    ]
    del real
    del graph.initializer[:]
    graph.initializer.extend(kept)
    listed = {i.name for i in graph.input}  # keep_initializers_as_inputs lists them already
    for d in derived:
        if d.name not in listed:
            graph.input.append(
                onnx.helper.make_tensor_value_info(d.name, onnx.TensorProto.FLOAT, d.shape)
            )
    return PrepackedGraph(real_model.SerializeToString(), tuple(derived))


def _decode(
    name: str,
    value: np.ndarray,
    scale: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    names: Sequence[str],
    offsets: np.ndarray,
    weights: Mapping[str, np.ndarray],
) -> DerivedInput | None:
    """The gather-and-scale map of one optimised initializer, checked against its real value."""
    scale = scale.astype(np.float32).reshape(-1)
    live = scale != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        lo_digit = np.where(live, lo.reshape(-1) / np.where(live, scale, 1), DIGIT_OFFSET)
        hi_digit = np.where(live, hi.reshape(-1) / np.where(live, scale, 1), DIGIT_OFFSET)
    lo_int, hi_int = np.rint(lo_digit), np.rint(hi_digit)
    if (
        not np.all(np.isfinite(lo_digit))
        or np.max(np.abs(lo_digit - lo_int), initial=0) > 0.01
        or np.max(np.abs(hi_digit - hi_int), initial=0) > 0.01
        or np.any(lo_int < DIGIT_OFFSET)
        or np.any(lo_int >= RADIX + DIGIT_OFFSET)
        or np.any(hi_int < DIGIT_OFFSET)
    ):
        return None
    gid = (hi_int - DIGIT_OFFSET).astype(np.int64) * RADIX + (lo_int - DIGIT_OFFSET).astype(
        np.int64
    )
    if np.any(gid >= offsets[-1]):
        return None
    layer = np.searchsorted(offsets, gid, side="right") - 1
    sources = np.unique(layer[live])
    if len(sources) != 1:
        return None  # mixes several weights, or none: keep the plain graph
    source = int(sources[0])
    index = np.where(live, gid - offsets[source], 0).astype(np.intp)
    weight = weights[names[source]]
    rebuilt = scale * weight.reshape(-1)[index]
    if not np.allclose(rebuilt, value.reshape(-1), rtol=1e-5, atol=1e-30):
        return None
    identity = (
        value.size == weight.size
        and tuple(value.shape) == tuple(weight.shape)
        and np.array_equal(index, np.arange(weight.size))
    )
    shape = tuple(int(d) for d in value.shape)
    strides = None if identity else affine_strides(index)
    return DerivedInput(
        name=name,
        source=names[source],
        shape=shape,
        index=None if identity or strides is not None else index,
        scale=None if bool(np.all(scale == 1)) else scale,
        strides=strides,
    )


def affine_strides(index: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(shape, element strides) of a strided view of the source whose C-order elements are
    ``index`` (a transpose of a reshape: a reorder without padding), else None.

    Read off the index from the innermost axis out: each axis repeats the block of the axes
    inside it at a constant stride; the result is checked against the whole index."""
    n = index.size
    if n == 0 or index[0] != 0:
        return None
    sizes: list[int] = []
    strides: list[int] = []
    block = 1
    while block < n:
        stride = int(index[block])
        if stride <= 0 or n % block:
            return None
        heads = index[::block]
        matches = heads == stride * np.arange(heads.size, dtype=np.intp)
        size = int(np.argmin(matches)) if not matches.all() else heads.size
        while size > 1 and (n // block) % size:  # the axis must tile the blocks above it
            size -= 1
        if size < 2:
            return None
        sizes.append(size)
        strides.append(stride)
        block *= size
    shape, steps = tuple(reversed(sizes)), tuple(reversed(strides))
    if sum(s * (k - 1) for s, k in zip(steps, shape, strict=True)) >= n:
        return None  # the view would leave the source
    ids = np.arange(n, dtype=np.intp)
    predicted = np.lib.stride_tricks.as_strided(ids, shape, tuple(s * ids.itemsize for s in steps))
    return (shape, steps) if np.array_equal(predicted.reshape(-1), index) else None


def stored_sources(
    model: Any, selected: Sequence[CrossbarLayer]
) -> dict[str, tuple[str, bool]] | None:
    """Crossbar layer -> (the initializer it is stored in, whether the layer is its 2-D
    transpose) for an ``OnnxModel``, for the pre-packed graph, which maps optimised inputs to
    initializers; None when a layer is not a plain or transposed initializer (Cast,
    DequantizeLinear) or two layers share one."""
    import onnx

    tensors = {t.name: t for t in model.proto.graph.initializer}
    sources: dict[str, tuple[str, bool]] = {}
    for layer in selected:
        root = model.roots.get(layer.name, model.feed_names[layer.name])
        value = model.initializers[layer.name]
        if root not in tensors:
            return None
        if model.feed_names[layer.name] == root:
            sources[layer.name] = (root, False)
            continue
        stored = onnx.numpy_helper.to_array(tensors[root])
        if stored.dtype != value.dtype or stored.ndim != 2 or stored.T.shape != value.shape:
            return None
        if not np.array_equal(stored.T, value):
            return None
        sources[layer.name] = (root, True)
    if len({root for root, _ in sources.values()}) != len(sources):
        return None
    return sources
