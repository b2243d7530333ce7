"""The interface of an ONNX graph: tensor specs, and the output ftaudit reads class scores from
(scikit-learn's ZipMap outputs stand for their probability tensor)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ftaudit.errors import UserError
from ftaudit.models.base import TensorSpec


def _onnx():
    import onnx

    return onnx


def tensor_spec(value_info: Any) -> TensorSpec:
    onnx = _onnx()
    tensor_type = value_info.type.tensor_type
    dims: tuple[int | None, ...] | None = None
    if tensor_type.HasField("shape"):
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
        )
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    return TensorSpec(value_info.name, dims, dtype)


def classifier_output(model: Any, requested: str | None, path: Path) -> TensorSpec:
    """The evaluated output: ``requested`` or the first real-valued tensor output. A ZipMap's
    sequence of maps (scikit-learn's default ONNX output) stands for the probability tensor it
    is made from."""
    zipped = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "ZipMap"}
    outputs = {o.name: o for o in model.graph.output}
    if requested is not None and requested not in outputs:
        raise UserError(
            f"{path} has no output named '{requested}'",
            hint=f"its outputs are: {', '.join(outputs)}",
        )
    candidates = [requested] if requested is not None else list(outputs)
    for name in candidates:
        if name in zipped:
            return _value_spec(model, zipped[name])
        if outputs[name].type.WhichOneof("value") != "tensor_type":
            continue
        spec = tensor_spec(outputs[name])
        if requested is not None or np.issubdtype(np.dtype(spec.dtype), np.floating):
            return spec
    kinds = ", ".join(f"{o.name} ({_kind(o)})" for o in model.graph.output)
    raise UserError(
        f"{path} has no output of floating-point logits or probabilities (outputs: {kinds})",
        hint="choose the scores or probabilities with --output NAME, or re-export the "
        "classifier with a tensor output",
    )


def other_float_outputs(model: Any, chosen: TensorSpec) -> list[str]:
    """The graph's floating-point tensor outputs besides the evaluated one (features, a second
    head): the audit reads only ``chosen``, so the user is told which it is."""
    names = []
    for value in model.graph.output:
        if value.name == chosen.name or value.type.WhichOneof("value") != "tensor_type":
            continue
        try:
            spec = tensor_spec(value)
        except KeyError:  # an undefined element type
            continue
        if np.issubdtype(np.dtype(spec.dtype), np.floating):
            names.append(value.name)
    return names


def _kind(value_info: Any) -> str:
    """``float32 tensor``, ``bool tensor``, ``sequence``, ... for messages."""
    kind = value_info.type.WhichOneof("value") or "unknown"
    if kind != "tensor_type":
        return kind.removesuffix("_type")
    try:
        return f"{tensor_spec(value_info).dtype} tensor"
    except KeyError:  # an undefined element type
        return "tensor"


def _value_spec(model: Any, name: str) -> TensorSpec:
    """Spec of an intermediate value (from shape inference), float32 with unknown shape else."""
    onnx = _onnx()
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort; the runner checks the real output
        return TensorSpec(name, None, "float32")
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        if value.name == name and value.type.tensor_type.elem_type:
            return tensor_spec(value)
    return TensorSpec(name, None, "float32")


def select_output(graph: Any, spec: TensorSpec) -> None:
    """Make ``spec`` the graph's only output and drop the nodes it does not need, so nothing
    else is computed (an intermediate value such as the probabilities under a ZipMap becomes
    an output)."""
    onnx = _onnx()
    kept = [o for o in graph.output if o.name == spec.name]
    if not kept:
        elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype))
        shape = None if spec.shape is None else list(spec.shape)
        kept = [onnx.helper.make_tensor_value_info(spec.name, elem, shape)]
    del graph.output[:]
    graph.output.extend(kept)
    needed, live = {spec.name}, []
    for node in reversed(graph.node):  # nodes come in topological order
        if any(out in needed for out in node.output):
            live.append(node)
            needed.update(_reads(node))
    if len(live) != len(graph.node):  # a ZipMap, a label branch: dropped, never converted
        del graph.node[:]
        graph.node.extend(reversed(live))


def _reads(node: Any) -> set[str]:
    """Every value ``node`` reads: its inputs and, for If/Loop/Scan, what its bodies read from
    the enclosing graph."""
    names = set(node.input)
    for attribute in node.attribute:
        for body in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in body.node:
                names |= _reads(inner)
    return names
