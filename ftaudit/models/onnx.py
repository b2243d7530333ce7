"""ONNX models: crossbar weights become graph inputs of one ONNX Runtime session.

Perturbed weights are fed per Monte Carlo sample like any other input, so no sample re-serialises
the model or builds a new session. The file on disk is never modified.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ftaudit.errors import UserError
from ftaudit.limits import release_free_memory
from ftaudit.models import ort_spinning
from ftaudit.models.base import AuditModel, CrossbarLayer, ModelRunner, TensorSpec
from ftaudit.models.binary_head import onnx_output_op, onnx_two_class
from ftaudit.models.onnx_graph import (
    CROSSBAR_WEIGHT_INPUT,
    UntracedOp,
    batchnorm_scales,
    evaluate_values,
    module_path_names,
    trace_crossbar_weights,
)
from ftaudit.models.onnx_io import (
    classifier_output,
    other_float_outputs,
    select_output,
    tensor_spec,
)
from ftaudit.models.onnx_operands import node_macs
from ftaudit.models.onnx_packing import pack_onnx_inputs
from ftaudit.models.onnx_prepack import DerivedInput, build_prepacked_graph, stored_sources
from ftaudit.models.onnx_quant import qoperator_to_qdq
from ftaudit.models.onnx_shapes import infer_static_shapes
from ftaudit.models.onnx_sklearn import unfold_linear_classifiers
from ftaudit.models.onnx_unfuse import unfuse_ort_operators

__all__ = ["CROSSBAR_WEIGHT_INPUT", "OnnxModel", "OnnxRunner", "load_onnx_bytes", "ort_providers"]


def _onnx():
    import onnx

    return onnx


def _ort():
    import onnxruntime

    return onnxruntime


def _check_external_data(model: Any, base_dir: Path, path: Path) -> None:
    """Refuse external-data locations that are absolute or escape the model's folder."""
    onnx = _onnx()
    base = base_dir.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        target = (base / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(base):
            raise UserError(
                f"{path} refers to external data '{location}' outside the model's folder",
                hint="ftaudit only reads external data files next to the model; move them there",
            )
        if not target.exists():
            raise UserError(
                f"{path} needs its external data file '{location}', which is missing",
                hint=f"put '{location}' next to the model file",
            )
        _check_external_extent(tensor, entries, target, path)


def _check_external_extent(tensor: Any, entries: dict[str, str], target: Path, path: Path) -> None:
    """The tensor's offset and length must lie inside its (regular) external data file, and its
    length must match its shape, before onnx reads a byte of it."""
    from ftaudit.limits import require_regular_file

    size = require_regular_file(target, f"external data file of {path}:")
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else size - offset
    except ValueError:
        offset, length = -1, -1
    problem = None
    if offset < 0 or length < 0:
        problem = f"a bad offset/length ({entries.get('offset')}, {entries.get('length')})"
    elif offset + length > size:
        problem = f"bytes {offset} to {offset + length}, beyond the file's {size} bytes"
    else:
        try:
            dtype = _onnx().helper.tensor_dtype_to_np_dtype(tensor.data_type)
        except (KeyError, ValueError):  # an unknown type: onnx.checker reports it
            dtype = np.dtype(object)
        expected = int(np.prod(tensor.dims, dtype=np.int64)) * dtype.itemsize
        if dtype.kind in "biufc" and length != expected:  # numbers: the size is known
            problem = f"{length} bytes, but its shape {list(tensor.dims)} needs {expected}"
    if problem is not None:
        raise UserError(
            f"{path}: tensor '{tensor.name}' declares {problem} in external data file "
            f"'{entries.get('location')}'",
            hint="the model and its external data do not belong together; export them again",
        )


#: model files up to this size are parsed before a run to find the external data files that
#: outputs must not overwrite (a model that keeps its weights outside is small)
EXTERNAL_DATA_PROBE_BYTES = 64 << 20


def declared_external_files(path: Path) -> list[Path]:
    """The external data files an ONNX model file names (without reading them), for the
    output-path checks; [] for other formats, unreadable or large files."""
    from google.protobuf.message import DecodeError

    try:
        if not path.is_file() or path.stat().st_size > EXTERNAL_DATA_PROBE_BYTES:
            return []
        with open(path, "rb") as handle:
            if handle.read(4) == b"PK\x03\x04":  # TorchScript
                return []
        model = _onnx().load_model(str(path), load_external_data=False)
    except (OSError, ValueError, RuntimeError, DecodeError):
        return []  # not a readable ONNX file: the loader reports why, later
    return external_data_files(model, path.parent)


def external_data_files(model: Any, base_dir: Path) -> list[Path]:
    """The external data files a (checked) ONNX model reads, sorted, each once."""
    onnx = _onnx()
    files = set()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            files.add(base_dir / entries.get("location", ""))
    return sorted(files)


def load_onnx_bytes(path: Path, raw: bytes, *, external_files: list[Path] | None = None) -> Any:
    """Parse and check an ONNX model, with external data read only from the model's folder
    (the files it read are appended to ``external_files``)."""
    onnx = _onnx()
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(raw)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise UserError(
            f"{path} is not a readable ONNX model ({exc.__class__.__name__}); the file is "
            "corrupt, truncated or of another format",
            hint="re-export the model to ONNX or TorchScript",
        ) from exc
    if not model.HasField("graph") or not model.graph.node:
        raise UserError(
            f"{path} is neither an ONNX model with a graph nor a TorchScript archive",
            hint="pass a .onnx file or a torch.jit.save archive",
        )
    _check_external_data(model, path.parent, path)
    if external_files is not None:
        external_files.extend(external_data_files(model, path.parent))
    onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        raise UserError(
            f"{path} is not a valid ONNX model: {first}",
            hint="re-export it or run onnx.checker.check_model to see the problem",
        ) from exc
    return model


def _constant_nodes_to_initializers(model: Any) -> None:
    """Turn Constant nodes with a tensor value into initializers so weights look alike."""
    onnx = _onnx()
    keep = []
    for node in model.graph.node:
        value = (
            [a for a in node.attribute if a.name == "value"] if node.op_type == "Constant" else []
        )
        if value and not node.domain:
            tensor = onnx.helper.get_attribute_value(value[0])
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _layer_names(
    found: Mapping[str, Mapping[str, Any]], readable: Mapping[str, str], initializers: set[str]
) -> dict[str, str]:
    """A unique, readable layer name per fed value: the value itself when it is an initializer,
    else its module path (dynamo metadata) or the initializer it is derived from."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    roots = [info["trace"].root for info in found.values()]
    for value, info in found.items():
        root = info["trace"].root
        candidates = [readable.get(value)]
        if value not in initializers:
            candidates.append(root if roots.count(root) == 1 else None)
        candidates.append(value)
        name = next((c for c in candidates if c and c not in taken), f"{value}#{len(names)}")
        names[value] = name
        taken.add(name)
    return names


@dataclass
class OnnxModel(AuditModel):
    """An ONNX model; crossbar weights: Conv/ConvTranspose/Gemm weights and MatMul constants."""

    proto: Any = None
    #: crossbar layer name -> its clean weight, in the layout the operator reads
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    #: crossbar layer name -> the graph value the runner feeds (an initializer, or the output
    #: of a weight-only subgraph such as Transpose(W) or DequantizeLinear(W_int8))
    feed_names: dict[str, str] = field(default_factory=dict)
    #: crossbar layer name -> the initializer the weight is stored in
    roots: dict[str, str] = field(default_factory=dict)
    #: external data files the weights were read from (hashed with the model file)
    external_files: tuple[Path, ...] = ()

    @classmethod
    def from_bytes(cls, path: Path, raw: bytes, *, output: str | None = None) -> OnnxModel:
        external_files: list[Path] = []
        model = load_onnx_bytes(path, raw, external_files=external_files)
        if model.functions:  # a product inside a local function is a layer like any other
            import onnx.inliner

            model = onnx.inliner.inline_local_functions(model)
        _constant_nodes_to_initializers(model)
        # int8 QOperator kernels become dequantise -> float op -> quantise, so their levels can
        # carry device noise like a QDQ model's, and ORT's fused ops the standard ones (every
        # path then sees plain products; the file is never modified)
        qoperator_to_qdq(model)
        unfuse_ort_operators(model)
        unfold_linear_classifiers(model)
        initializer_names = {t.name for t in model.graph.initializer}
        graph_inputs = [i for i in model.graph.input if i.name not in initializer_names]
        if not graph_inputs:
            raise UserError(
                f"{path} has no data input; ftaudit evaluates classifiers that take data",
                hint="export the model with its input tensor",
            )
        data_inputs: tuple[TensorSpec, ...] = ()
        if len(graph_inputs) > 1:  # one packed input in memory (``packed_inputs``)
            data_inputs = tuple(tensor_spec(value) for value in graph_inputs)
            packed = pack_onnx_inputs(model, graph_inputs, path)
            graph_inputs = [i for i in model.graph.input if i.name == packed.name]
        output_spec = classifier_output(model, output, path)
        others = {} if output else {"other_outputs": other_float_outputs(model, output_spec)}
        binary = onnx_two_class(model, output_spec)  # one score per input: two classes
        softmax = binary is None and onnx_output_op(model, output_spec.name) == "Softmax"
        binary_output = {"binary_output": output_spec.name} if binary else {}
        output_spec = binary or output_spec
        traces, untraced = trace_crossbar_weights(model.graph)
        try:
            arrays = evaluate_values(model, list(dict.fromkeys(t.value for t in traces)))
        except _ort_runtime_errors() as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "failed"
            raise UserError(
                f"ONNX Runtime cannot compute the crossbar weights of {path}: {first[:300]}",
                hint="check that the model runs with onnxruntime on its own",
            ) from exc
        shapes = infer_static_shapes(model)
        batch_axis = graph_inputs[0].type.tensor_type.shape.dim
        batch = batch_axis[0].dim_value if len(batch_axis) and batch_axis[0].dim_value > 0 else 1
        readable = module_path_names(traces)
        found: dict[str, dict[str, Any]] = {}  # by the value the operator reads
        for trace in traces:
            node, array = trace.node, arrays[trace.value]
            if not np.issubdtype(array.dtype, np.floating) or array.ndim < 2:
                kind = "integer" if not np.issubdtype(array.dtype, np.floating) else "1-D"
                untraced.append(
                    UntracedOp(
                        node.name or node.op_type,
                        node.op_type,
                        f"its weight '{trace.value}' is {kind} ({array.dtype}, shape "
                        f"{tuple(array.shape)}), not a matrix of real values a crossbar stores",
                    )
                )
                continue
            macs = node_macs(node, array, shapes, batch=batch, weight_on_left=trace.weight_on_left)
            if trace.value in found:  # a weight shared by several nodes is one crossbar layer
                prev = found[trace.value]["macs"]
                found[trace.value]["macs"] = None if prev is None or macs is None else prev + macs
                continue
            found[trace.value] = {
                "op": node.op_type,
                "array": array,
                "transposed": trace.transposed and array.ndim == 2,
                "macs": macs,
                "trace": trace,
            }
        names = _layer_names(found, readable, initializer_names)
        layers = [
            CrossbarLayer(
                name=names[value],
                op=info["op"],
                index=i,
                shape=tuple(info["array"].shape),
                dtype=info["array"].dtype.name,
                transposed=info["transposed"],
                macs=info["macs"],
            )
            for i, (value, info) in enumerate(found.items())
        ]
        opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
        metadata = {
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "opset": opsets.get("ai.onnx"),
            "ir_version": model.ir_version,
            "metadata_props": {p.key: p.value for p in model.metadata_props},
            **binary_output,
            **(others if others.get("other_outputs") else {}),
        }
        release_free_memory()  # the checker's, shape inference's and the raw file's copies
        return cls(
            path=path,
            format="onnx",
            input=tensor_spec(graph_inputs[0]),
            output=output_spec,
            layers=layers,
            metadata=metadata,
            untraced=untraced,
            proto=model,
            initializers={names[value]: info["array"] for value, info in found.items()},
            feed_names={names[value]: value for value in found},
            roots={names[value]: info["trace"].root for value, info in found.items()},
            fold_scales={
                names[value]: scale.reshape(-1, *([1] * (found[value]["array"].ndim - 1)))
                for value, scale in batchnorm_scales(model.graph, traces).items()
                if value in found
            },
            external_files=tuple(external_files),
            data_inputs=data_inputs,
            output_activation="softmax" if softmax else None,
        )

    def clean_weights(self) -> dict[str, np.ndarray]:
        return dict(self.initializers)

    def runner(
        self, selected: Sequence[CrossbarLayer], *, device: str, threads: int | None = None
    ) -> OnnxRunner:
        return OnnxRunner(self, selected, device=device, threads=threads)


def _ort_runtime_errors() -> tuple[type[BaseException], ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "RuntimeException", "InvalidGraph", "NotImplemented")
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


def ort_providers(device: str) -> list[str]:
    """Execution providers for ``--device``; a clear error when CUDA is asked for but missing."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    available = _ort().get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise UserError(
            "--device cuda was asked for, but ONNX Runtime has no CUDA provider here "
            f"(available: {', '.join(available)})",
            hint="install onnxruntime-gpu on a machine with an NVIDIA GPU, or use --device cpu",
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _has_conv(selected: Sequence[CrossbarLayer]) -> bool:
    """Whether a crossbar weight feeds a convolution, the op whose weights ONNX Runtime
    re-lays out (NCHWc); a graph of MatMul/Gemm runs as fast with the plain graph (same
    numbers, measured), so it skips the optimiser's passes and their memory."""
    return any(layer.op == "Conv" for layer in selected)


class OnnxRunner(ModelRunner):
    """One ONNX Runtime session whose selected crossbar weights are graph inputs.

    Each sample feeds its perturbed weights like any other input: no session is rebuilt and
    nothing is re-serialised. On the CPU the graph is the optimiser's own, with the weights it
    pre-packed (blocked NCHWc convolutions, folded BatchNorm) turned into inputs fed through a
    precomputed gather (``onnx_prepack``): convolutions keep their fast kernels. Where that map
    cannot be read off the optimiser, the original graph takes the weights as inputs.
    """

    runtime_errors = _ort_runtime_errors()

    def __init__(
        self,
        model: OnnxModel,
        selected: Sequence[CrossbarLayer],
        *,
        device: str,
        threads: int | None = None,
    ) -> None:
        onnx = _onnx()
        self.providers = ort_providers(device)
        self.threads = threads
        graph_model = onnx.ModelProto()
        graph_model.CopyFrom(model.proto)
        select_output(graph_model.graph, model.output)
        self.model = model
        self.dtypes = {layer.name: np.dtype(layer.dtype) for layer in selected}
        #: crossbar layer -> the graph value its weight is fed to (plain graph)
        self.feed_names = {layer.name: model.feed_names[layer.name] for layer in selected}
        self.feed: dict[str, np.ndarray] = {}
        #: stored initializer -> the optimised graph's inputs derived from it (CPU, float32)
        self._derived: dict[str, list[DerivedInput]] = {}
        #: crossbar layer -> axes turning its weight into the stored initializer's layout, fed
        #: in its place (a transposed weight: pre-packed, or a tied table in the plain graph)
        self._to_stored: dict[str, tuple[int, ...]] = {}
        self._stored_buffers: dict[str, np.ndarray] = {}  # reused: no allocation per sample
        #: crossbar layer -> (its stored initializer, the layer is that initializer transposed)
        self._sources = (
            stored_sources(model, selected) if device == "cpu" and _has_conv(selected) else None
        )
        plan = (
            build_prepacked_graph(
                graph_model,
                {
                    root: (model.initializers[name].T if swap else model.initializers[name])
                    for name, (root, swap) in self._sources.items()
                },
            )
            if self._sources is not None
            else None
        )
        if plan is not None and self._sources is not None:
            self._model_bytes = plan.model_bytes
            self._derived = plan.by_source()
            for derived in plan.inputs:
                self.feed[derived.name] = np.empty(derived.shape, np.float32)
            self._to_stored = {name: (1, 0) for name, (_, swap) in self._sources.items() if swap}
        else:
            self._sources = None
            self._plain_graph(graph_model, selected)
        self.set_weights({layer.name: model.initializers[layer.name] for layer in selected})
        self.input_name = model.input.name
        self.output_name = model.output.name
        self.input_dtype = np.dtype(model.input.dtype)
        self.session = self._new_session()
        self._batches: list[np.ndarray] = []
        self._n = 0
        release_free_memory()  # the optimiser's passes and graph copies, freed above

    @property
    def prepacked(self) -> bool:
        """Whether the runner uses the optimiser's pre-packed weight layouts."""
        return bool(self._derived)

    def _plain_graph(self, graph_model: Any, selected: Sequence[CrossbarLayer]) -> None:
        """The original graph with the selected crossbar weights as graph inputs: initializers
        moved to the inputs, or the value a weight-only subgraph computes (Transpose(W),
        DequantizeLinear(W_int8)) fed in place of the node producing it."""
        onnx = _onnx()
        graph = graph_model.graph
        self._feed_tied_tables(graph, selected)
        feeds = set(self.feed_names.values())
        listed_inputs = {i.name for i in graph.input}
        for tensor in graph.initializer:
            if tensor.name in feeds and tensor.name not in listed_inputs:
                graph.input.append(
                    onnx.helper.make_tensor_value_info(
                        tensor.name, tensor.data_type, list(tensor.dims)
                    )
                )
        stored = {t.name for t in graph.initializer}
        kept = [t for t in graph.initializer if t.name not in feeds]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        produced = [n for n in graph.node if any(o in feeds for o in n.output)]
        for node in produced:
            graph.node.remove(node)
        for layer in selected:
            value = self.feed_names[layer.name]
            if value not in listed_inputs and value not in stored:
                elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(layer.dtype))
                graph.input.append(
                    onnx.helper.make_tensor_value_info(value, elem, list(layer.shape))
                )
        self._model_bytes = graph_model.SerializeToString()

    def _feed_tied_tables(self, graph: Any, selected: Sequence[CrossbarLayer]) -> None:
        """A weight read as ``Transpose(W)`` whose stored ``W`` other nodes read too (a tied
        embedding table: a lookup and the output projection): ``W`` itself is fed, perturbed
        (the layer's weight transposed back), so every reader sees the same perturbed matrix,
        as in the other routes (pre-packed, onnx2torch, TorchScript)."""
        onnx = _onnx()
        readers: dict[str, int] = {}
        producers = {}
        for node in graph.node:
            for name in node.input:
                readers[name] = readers.get(name, 0) + 1
            for name in node.output:
                producers[name] = node
        for name in (o.name for o in graph.output):
            readers[name] = readers.get(name, 0) + 1
        for layer in selected:
            root = self.model.roots.get(layer.name)
            node = producers.get(self.feed_names[layer.name])
            if root is None or node is None or node.op_type != "Transpose" or node.domain:
                continue
            if list(node.input) != [root] or readers.get(root, 0) < 2:
                continue  # only the Transpose reads it: its output is fed, no copy per run
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            perm = attrs.get("perm") or list(reversed(range(len(layer.shape))))
            self.feed_names[layer.name] = root
            self._to_stored[layer.name] = tuple(int(a) for a in np.argsort(perm))

    def _new_session(self) -> Any:
        ort = _ort()
        options = ort.SessionOptions()
        options.log_severity_level = 4  # errors arrive as exceptions, said in one line
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not ort_spinning.spin_between_runs(self.random_reads):
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        try:
            return ort.InferenceSession(self._model_bytes, options, providers=self.providers)
        except Exception as exc:  # ORT raises bare exceptions for models it cannot run
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise UserError(
                f"ONNX Runtime cannot run {self.model.path}: {msg}",
                hint="check that the model runs with onnxruntime on its own",
            ) from exc

    def bind_data(self, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> None:
        fixed = self.model.input.shape[0] if self.model.input.shape else None
        size = fixed or batch_size
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        batches = []
        for start in range(0, len(x), size):
            chunk = x[start : start + size]
            if fixed and len(chunk) < fixed:  # a fixed batch axis: pad, then drop padded rows
                pad = np.zeros((fixed - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            batches.append(chunk)
        self._batches = batches
        self._n = len(x)
        self._labels = np.asarray(y)

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        for name, array in weights.items():
            dtype = self.dtypes[name]
            array = array if array.dtype == dtype else array.astype(dtype)
            array = self._stored_layout(name, array)
            if self._sources is None:
                self.feed[self.feed_names[name]] = array
                continue
            for derived in self._derived.get(self._sources[name][0], ()):
                if derived.same_layout:
                    self.feed[derived.name] = array  # same layout: fed as is, no copy
                else:
                    derived.compute(array, self.feed[derived.name])

    def _stored_layout(self, name: str, array: np.ndarray) -> np.ndarray:
        """Layer ``name``'s weight in the layout of the initializer it is fed as: itself, or
        transposed into a buffer kept for the next sample."""
        axes = self._to_stored.get(name)
        if axes is None:
            return array
        view = array.transpose(axes)
        buffer = self._stored_buffers.get(name)
        if buffer is None or buffer.dtype != array.dtype:
            buffer = self._stored_buffers[name] = np.empty(view.shape, array.dtype)
        np.copyto(buffer, view)
        return buffer

    def logits(self) -> np.ndarray:
        outs = [
            self.session.run([self.output_name], {**self.feed, self.input_name: batch})[0]
            for batch in self._batches
        ]
        logits = np.concatenate(outs) if len(outs) > 1 else outs[0]
        return logits[: self._n]
