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
from ftaudit.models.base import AuditModel, CrossbarLayer, ModelRunner, TensorSpec
from ftaudit.models.onnx_prepack import DerivedInput, build_prepacked_graph

#: op type -> index of the weight input that a crossbar stores
CROSSBAR_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1}


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
        if not target.is_file():
            raise UserError(
                f"{path} needs its external data file '{location}', which is missing",
                hint=f"put '{location}' next to the model file",
            )


def _tensor_spec(value_info: Any) -> TensorSpec:
    onnx = _onnx()
    tensor_type = value_info.type.tensor_type
    dims: tuple[int | None, ...] | None = None
    if tensor_type.HasField("shape"):
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
        )
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    return TensorSpec(value_info.name, dims, dtype)


def load_onnx_bytes(path: Path, raw: bytes) -> Any:
    """Parse and check an ONNX model, with external data read only from the model's folder."""
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


def _infer_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Static shapes of every value for a batch of one (for MAC counts); {} when unknown."""
    onnx = _onnx()
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for value in probe.graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    except Exception:
        return {}
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        spec = _tensor_spec(value)
        if spec.shape is not None and all(d is not None and d > 0 for d in spec.shape):
            shapes[value.name] = tuple(int(d) for d in spec.shape)  # type: ignore[arg-type]
    return shapes


def _node_macs(
    node: Any,
    weight: np.ndarray,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    batch: int = 1,
    weight_on_left: bool = False,
) -> int | None:
    """Multiply-accumulates per example; ``batch`` is the data input's fixed batch size, if any."""
    out = shapes.get(node.output[0])
    if node.op_type == "ConvTranspose":
        data = shapes.get(node.input[0])
        return None if data is None else int(np.prod(data[1:]) * np.prod(weight.shape[1:]))
    if out is None:
        return None
    if node.op_type == "Conv":
        return int(np.prod(out[1:]) * np.prod(weight.shape[1:]))
    # Gemm and MatMul outputs include the batch axis: divide by it to count per example
    if node.op_type == "Gemm":
        return int(out[0] * weight.size) // batch
    # MatMul: every output element is a dot product over the contracted axis, which is the
    # weight's last axis when it is the left operand and its second-last when it is the right one
    if len(weight.shape) < 2:
        contracted = weight.shape[0]
    else:
        contracted = weight.shape[-1] if weight_on_left else weight.shape[-2]
    return int(np.prod(out) * contracted) // batch


@dataclass
class OnnxModel(AuditModel):
    """An ONNX model; crossbar weights: Conv/ConvTranspose/Gemm weights and MatMul constants."""

    proto: Any = None
    initializers: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_bytes(cls, path: Path, raw: bytes, *, output: str | None = None) -> OnnxModel:
        onnx = _onnx()
        model = load_onnx_bytes(path, raw)
        _constant_nodes_to_initializers(model)
        initializer_names = {t.name for t in model.graph.initializer}
        graph_inputs = [i for i in model.graph.input if i.name not in initializer_names]
        if len(graph_inputs) != 1:
            names = ", ".join(i.name for i in graph_inputs) or "none"
            raise UserError(
                f"{path} has {len(graph_inputs)} data inputs ({names}); ftaudit evaluates "
                "single-input classifiers",
                hint="export the model with one input tensor",
            )
        outputs = {o.name: o for o in model.graph.output}
        out_name = output or model.graph.output[0].name
        if out_name not in outputs:
            raise UserError(
                f"{path} has no output named '{out_name}'",
                hint=f"its outputs are: {', '.join(outputs)}",
            )
        producers = {o: n for n in model.graph.node for o in n.output}

        def source(name: str) -> str:
            # weights shared through Identity nodes are still the same stored tensor
            while name in producers and producers[name].op_type == "Identity":
                name = producers[name].input[0]
            return name

        tensors = {t.name: t for t in model.graph.initializer}
        shapes = _infer_shapes(model)
        batch_axis = graph_inputs[0].type.tensor_type.shape.dim
        batch = batch_axis[0].dim_value if len(batch_axis) and batch_axis[0].dim_value > 0 else 1
        found: dict[str, dict[str, Any]] = {}
        for node in model.graph.node:
            if node.domain not in ("", "ai.onnx"):
                continue
            picked: tuple[str, bool] | None = None
            if node.op_type in CROSSBAR_WEIGHT_INPUT and len(node.input) > 1:
                name = source(node.input[CROSSBAR_WEIGHT_INPUT[node.op_type]])
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                picked = (name, node.op_type == "Gemm" and not trans_b)
            elif node.op_type == "MatMul":
                right, left = source(node.input[1]), source(node.input[0])
                if right in tensors:
                    picked = (right, True)
                elif left in tensors:
                    picked = (left, False)
            if picked is None or picked[0] not in tensors:
                continue
            name, transposed = picked
            array = onnx.numpy_helper.to_array(tensors[name])
            if not np.issubdtype(array.dtype, np.floating) or array.ndim < 2:
                continue
            macs = _node_macs(
                node,
                array,
                shapes,
                batch=batch,
                weight_on_left=node.op_type == "MatMul" and not transposed,
            )
            if name in found:  # a weight shared by several nodes is one crossbar layer
                prev = found[name]["macs"]
                found[name]["macs"] = None if prev is None or macs is None else prev + macs
                continue
            found[name] = {
                "op": node.op_type,
                "array": array,
                "transposed": transposed and array.ndim == 2,
                "macs": macs,
            }
        layers = [
            CrossbarLayer(
                name=name,
                op=info["op"],
                index=i,
                shape=tuple(info["array"].shape),
                dtype=info["array"].dtype.name,
                transposed=info["transposed"],
                macs=info["macs"],
            )
            for i, (name, info) in enumerate(found.items())
        ]
        opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
        metadata = {
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "opset": opsets.get("ai.onnx"),
            "ir_version": model.ir_version,
            "metadata_props": {p.key: p.value for p in model.metadata_props},
        }
        return cls(
            path=path,
            format="onnx",
            input=_tensor_spec(graph_inputs[0]),
            output=_tensor_spec(outputs[out_name]),
            layers=layers,
            metadata=metadata,
            proto=model,
            initializers={name: info["array"] for name, info in found.items()},
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
        graph = graph_model.graph
        names = {layer.name for layer in selected}
        # the evaluated output must be a graph output; keep only it so nothing else is computed
        outputs = [o for o in graph.output if o.name == model.output.name]
        del graph.output[:]
        graph.output.extend(outputs)
        self.model = model
        self.dtypes = {layer.name: np.dtype(layer.dtype) for layer in selected}
        self.feed: dict[str, np.ndarray] = {}
        #: crossbar weight -> the optimised graph's inputs derived from it (CPU, float32)
        self._derived: dict[str, list[DerivedInput]] = {}
        plan = (
            build_prepacked_graph(
                graph_model, {layer.name: model.initializers[layer.name] for layer in selected}
            )
            if device == "cpu"
            else None
        )
        if plan is not None:
            self._model_bytes = plan.model_bytes
            self._derived = plan.by_source()
            for derived in plan.inputs:
                self.feed[derived.name] = np.empty(derived.shape, np.float32)
            self.set_weights({layer.name: model.initializers[layer.name] for layer in selected})
        else:
            self._plain_graph(graph_model, names)
            self.feed = {layer.name: model.initializers[layer.name] for layer in selected}
        self.input_name = model.input.name
        self.output_name = model.output.name
        self.input_dtype = np.dtype(model.input.dtype)
        self.session = self._new_session()
        self._batches: list[np.ndarray] = []
        self._n = 0

    @property
    def prepacked(self) -> bool:
        """Whether the runner uses the optimiser's pre-packed weight layouts."""
        return bool(self._derived)

    def _plain_graph(self, graph_model: Any, names: set[str]) -> None:
        """The original graph with the selected crossbar initializers moved to graph inputs."""
        onnx = _onnx()
        graph = graph_model.graph
        listed_inputs = {i.name for i in graph.input}
        for tensor in graph.initializer:
            if tensor.name in names and tensor.name not in listed_inputs:
                graph.input.append(
                    onnx.helper.make_tensor_value_info(
                        tensor.name, tensor.data_type, list(tensor.dims)
                    )
                )
        kept = [t for t in graph.initializer if t.name not in names]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        self._model_bytes = graph_model.SerializeToString()

    def _new_session(self) -> Any:
        ort = _ort()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
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
            if not self._derived:
                self.feed[name] = array
                continue
            for derived in self._derived.get(name, ()):
                if derived.index is None and derived.scale is None:
                    self.feed[derived.name] = array  # same layout: fed as is, no copy
                else:
                    derived.compute(array, self.feed[derived.name])

    def logits(self) -> np.ndarray:
        outs = [
            self.session.run([self.output_name], {**self.feed, self.input_name: batch})[0]
            for batch in self._batches
        ]
        logits = np.concatenate(outs) if len(outs) > 1 else outs[0]
        return logits[: self._n]
