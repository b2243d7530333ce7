"""Finding the crossbar weights of an ONNX graph, wherever the exporter put them.

A crossbar stores the matrix an operator multiplies by: the weight operand of a Conv,
ConvTranspose or Gemm, or the constant operand of a MatMul. Exporters rarely hand that operand
over as a bare initializer: torch's dynamo exporter writes ``MatMul(x, Transpose(W))`` for every
Linear, float16 conversions add a Cast, QDQ quantisation a ``DequantizeLinear`` of int8 levels.
This module follows the operand back through such weight-only subgraphs to the initializers,
evaluates the subgraph once, and reports the value at the operator's input: that value, in the
layout the operator consumes, is what the crossbar stores and what the runners perturb.

An operator whose weight cannot be traced (it passes through arithmetic, or is computed by an
int8 QOperator kernel) is never skipped silently: it is returned with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ftaudit.models.onnx_operands import (
    ATTRIBUTE_PRODUCTS,
    ATTRIBUTE_REASON,
    INTEGER_KERNEL_REASON,
    INTEGER_KERNELS,
    LOOKUP_REASON,
    NCHWC_DOMAIN,
    NCHWC_REASON,
    SHAPED_REASON,
    SUBGRAPH_REASON,
    TREE_ENSEMBLES,
    TREE_REASON,
    unknown_matrix_reader,
    weight_inputs,
    weight_operands,
)

#: op type -> index of the weight input that a crossbar stores
CROSSBAR_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1}
#: operators that only re-lay out, re-type or dequantise a constant: traced through
WEIGHT_ONLY_OPS = frozenset(
    {
        "Identity",
        "Transpose",
        "Cast",
        "Reshape",
        "Unsqueeze",
        "Squeeze",
        "Flatten",
        "DequantizeLinear",
        "QuantizeLinear",  # fake-quantised float weights (QAT exports): W -> Q -> DQ
    }
)
#: int8 kernels (onnxruntime.quantization's QOperator format) -> index of their weight input
QOPERATOR_WEIGHT_INPUT = {
    "QLinearConv": 3,
    "QLinearMatMul": 3,
    "QGemm": 3,  # com.microsoft
    "ConvInteger": 1,
    "MatMulInteger": 1,
}
_QUANT_DOMAINS = ("", "ai.onnx", "com.microsoft")
QOPERATOR_REASON = (
    "an int8 QOperator kernel computes it from integer levels that cannot carry device noise, "
    "and ftaudit could not rewrite it into dequantise -> float op -> quantise; quantise the "
    "model with QuantFormat.QDQ (onnxruntime.quantization) to audit its levels"
)
#: names exporters make up for folded constants (torch dynamo's val_31, legacy onnx::MatMul_12)
_GENERATED_NAME = re.compile(r"^(val_\d+|_?v_\d+|onnx::\w+_\d+|\d+|_val_\d+)$")


@dataclass(frozen=True)
class WeightTrace:
    """One crossbar weight: the operator consuming it and how it is reached.

    ``value`` is the tensor the operator reads (after skipping Identity copies): the runner
    feeds perturbed weights there. ``root`` is the initializer it is derived from, ``via`` the
    weight-only operators between them (empty when the operator reads the initializer itself).
    ``transposed``: the value is (in, out), the transpose of the canonical "outputs first"
    layout (MatMul right operands, Gemm with transB=0).
    """

    node: Any
    value: str
    root: str
    via: tuple[str, ...]
    transposed: bool
    weight_on_left: bool
    #: the layer's name under its module path (``weight``; ``weight_ih``/``weight_hh`` for
    #: recurrent operators' two matrices)
    role: str = "weight"


@dataclass(frozen=True)
class UntracedOp:
    """An operator reading stored weights that are not perturbed, and why: a product whose
    weight cannot be traced (or an int8 kernel), an embedding lookup, a tree ensemble."""

    node: str
    op: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"node": self.node, "op": self.op, "reason": self.reason}


def _node_label(node: Any, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def _classify_values(graph: Any) -> tuple[set[str], dict[str, str]]:
    """Constant values (derived from initializers only) and, for each constant value that is not
    weight-only, the first operator on its path that is not (``op 'name'``)."""
    constant = {t.name for t in graph.initializer} | {""}
    not_weight_only: dict[str, str] = {}
    for i, node in enumerate(graph.node):
        inputs = list(node.input)
        if node.op_type == "Constant" or (inputs and all(v in constant for v in inputs)):
            blocker = next((not_weight_only[v] for v in inputs if v in not_weight_only), None)
            if blocker is None and node.op_type not in WEIGHT_ONLY_OPS | {"Constant"}:
                blocker = f"{node.op_type} '{_node_label(node, i)}'"
            if node.op_type in WEIGHT_ONLY_OPS:
                # only the first input carries the weight; scales, shapes and zero points are
                # parameters of the re-layout and must merely be constant
                blocker = not_weight_only.get(inputs[0]) if inputs else blocker
            for out in node.output:
                constant.add(out)
                if blocker is not None:
                    not_weight_only[out] = blocker
    return constant, not_weight_only


def trace_crossbar_weights(graph: Any) -> tuple[list[WeightTrace], list[UntracedOp]]:
    """Every crossbar weight of ``graph`` in node order, and every operator left out, with why:
    the products ``onnx_operands`` knows whose weight cannot be traced, integer kernels, any
    other operator reading a stored matrix, and products inside control-flow bodies."""
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {t.name for t in graph.initializer}
    constant, not_weight_only = _classify_values(graph)
    stored = _stored_matrices(graph)
    shaped = _shape_indexed_weights(graph, constant, stored)
    traces: list[WeightTrace] = []
    untraced: list[UntracedOp] = []
    lookups: list[tuple[str, str, tuple[int, ...]]] = []
    tables = {t.name: tuple(int(d) for d in t.dims) for t in graph.initializer}
    for i, node in enumerate(graph.node):
        label = _node_label(node, i)
        if node.op_type in QOPERATOR_WEIGHT_INPUT and node.domain in _QUANT_DOMAINS:
            operands = (node.input[0], node.input[QOPERATOR_WEIGHT_INPUT[node.op_type]])
            if any(v in constant for v in operands):  # else activations x activations
                untraced.append(UntracedOp(label, node.op_type, QOPERATOR_REASON))
            continue
        operands = weight_operands(node, constant)
        reason = _not_traceable(node, constant, stored, known_product=operands is not None)
        if reason is not None:
            untraced.append(UntracedOp(label, node.op_type, reason))
            continue
        table = _lookup_table(node, producers, tables)
        if table is not None:
            lookups.append((label, *table))  # listed at the end unless a product reads it too
        if operands is None:
            continue
        computed = [shaped[v] for v in weight_inputs(node) if v not in constant and v in shaped]
        if computed:
            untraced.append(UntracedOp(label, node.op_type, SHAPED_REASON.format(root=computed[0])))
        elif not operands and node.op_type in CROSSBAR_WEIGHT_INPUT and len(node.input) > 1:
            untraced.append(
                UntracedOp(label, node.op_type, "its weight is computed from the data input")
            )
        for operand in operands:
            if operand.value in not_weight_only:
                untraced.append(
                    UntracedOp(
                        label,
                        node.op_type,
                        f"its weight passes through {not_weight_only[operand.value]}, which is "
                        "not a weight-only re-layout (Transpose, Cast, Reshape, "
                        "DequantizeLinear, ...)",
                    )
                )
                continue
            value = source_value(operand.value, producers)
            root, via = value, []
            while root not in initializers and root in producers:
                via.append(producers[root].op_type)
                root = producers[root].input[0]
            traces.append(
                WeightTrace(
                    node,
                    value,
                    root,
                    tuple(reversed(via)),
                    operand.transposed,
                    operand.on_left,
                    operand.role,
                )
            )
    multiplied = {t.root for t in traces}
    for label, root, shape in lookups:
        if root not in multiplied:  # a table that is also a product's weight is a layer
            reason = LOOKUP_REASON.format(value=root, shape=shape)
            untraced.append(UntracedOp(label, "Gather", reason))
    return traces, untraced


def _lookup_table(
    node: Any, producers: Mapping[str, Any], tables: Mapping[str, tuple[int, ...]]
) -> tuple[str, tuple[int, ...]] | None:
    """The initializer (and its shape) a Gather looks rows up in, through weight-only
    re-layouts (an int8 table's DequantizeLinear), when it is a matrix: an embedding table."""
    if node.op_type != "Gather" or not node.input:
        return None
    value = node.input[0]
    while value not in tables and value in producers:
        if producers[value].op_type not in WEIGHT_ONLY_OPS:
            return None
        value = producers[value].input[0]
    shape = tables.get(value)
    return (value, shape) if shape is not None and sum(d >= 2 for d in shape) >= 2 else None


def source_value(name: str, producers: Mapping[str, Any]) -> str:
    """The value ``name`` copies through Identity nodes (what an operator really reads)."""
    while name in producers and producers[name].op_type == "Identity":
        name = producers[name].input[0]
    return name


def _not_traceable(
    node: Any, constant: set[str], stored: Mapping[str, Any], *, known_product: bool
) -> str | None:
    """Why ``node`` multiplies by a stored weight that cannot be a crossbar layer, if it does:
    an integer kernel, the nchwc layout, a control-flow body, or an operator nobody maps
    (``known_product``: ``onnx_operands`` has the node's rule, so it is none of those)."""
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    ints = INTEGER_KERNELS.get((domain, node.op_type))
    if ints is not None:
        return INTEGER_KERNEL_REASON if any(node.input[i] in constant for i in ints) else None
    if domain == "ai.onnx.ml" and node.op_type in ATTRIBUTE_PRODUCTS:
        return ATTRIBUTE_REASON
    if domain == "ai.onnx.ml" and node.op_type in TREE_ENSEMBLES:
        return TREE_REASON
    if domain == NCHWC_DOMAIN and node.op_type == "Conv":
        return NCHWC_REASON if node.input[1] in constant else None
    if _product_in_body(node, stored):
        return SUBGRAPH_REASON.format(op=node.op_type)
    return None if known_product else unknown_matrix_reader(node, stored)


def _product_in_body(node: Any, stored: Mapping[str, Any]) -> bool:
    """For If/Loop/Scan: whether a body (or a body's body) multiplies by a stored or
    body-local matrix."""
    import onnx

    bodies = [
        g
        for a in node.attribute
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))
    ]
    for body in bodies:
        local = {t.name for t in body.initializer if len(t.dims) >= 2}
        local |= {out for n in body.node if n.op_type == "Constant" for out in n.output}
        reads = local | set(stored)
        if any(weight_operands(n, reads) or _product_in_body(n, stored) for n in body.node):
            return True
    return False


def _shape_indexed_weights(
    graph: Any, constant: set[str], stored: Mapping[str, Any]
) -> dict[str, str]:
    """value -> the stored matrix it is cut from, for values that are no constant only because
    index operands come from tensor shapes (Shape, Size and what is computed from them alone):
    a weight the exporter slices and concatenates at run time (not multiplied by data)."""
    from_shapes: set[str] = set()
    cut = {name: name for name in stored}
    for node in graph.node:
        inputs = [v for v in node.input if v]
        if node.op_type in ("Shape", "Size"):
            from_shapes.update(node.output)
            continue
        if weight_operands(node, set()) is not None:
            continue  # a product's output is data
        roots = [cut[v] for v in inputs if v in cut]
        if roots and all(v in constant or v in from_shapes or v in cut for v in inputs):
            for out in node.output:
                cut[out] = roots[0]
        elif any(v in from_shapes for v in inputs) and all(
            v in constant or v in from_shapes for v in inputs
        ):
            from_shapes.update(node.output)
    return {value: root for value, root in cut.items() if value not in constant}


def _stored_matrices(graph: Any) -> dict[str, tuple[int, ...]]:
    """value -> shape of every float initializer with 2+ axes of 2+ entries, and of the values
    weight-only re-layouts derive from one (their root's shape)."""
    import onnx

    floats = {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
    }
    stored = {
        t.name: tuple(int(d) for d in t.dims)
        for t in graph.initializer
        if t.data_type in floats and sum(d >= 2 for d in t.dims) >= 2
    }
    for node in graph.node:
        if node.op_type in WEIGHT_ONLY_OPS and node.input and node.input[0] in stored:
            for out in node.output:
                stored[out] = stored[node.input[0]]
    return stored


def evaluate_values(model: Any, names: list[str]) -> dict[str, np.ndarray]:
    """Values of constant tensors: initializers directly, the rest by running their (weight-only)
    subgraph once with ONNX Runtime."""
    import onnx
    from onnx import numpy_helper

    tensors = {t.name: t for t in model.graph.initializer}
    arrays = {n: numpy_helper.to_array(tensors[n]) for n in names if n in tensors}
    wanted = [n for n in names if n not in tensors]
    if not wanted:
        return arrays
    producers = {out: node for node in model.graph.node for out in node.output}
    needed: list[Any] = []
    seen: set[str] = set()
    stack = list(wanted)
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        needed.append(node)
        stack.extend(node.input)
    order = {id(n): i for i, n in enumerate(model.graph.node)}
    needed.sort(key=lambda n: order[id(n)])
    used = {v for n in needed for v in n.input}
    graph = onnx.helper.make_graph(
        needed,
        "crossbar_weights",
        [],
        [onnx.helper.make_empty_tensor_value_info(n) for n in wanted],
        initializer=[tensors[n] for n in used if n in tensors],
    )
    probe = onnx.helper.make_model(
        graph, opset_imports=list(model.opset_import), ir_version=model.ir_version
    )
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # errors arrive as exceptions, said in one line
    session = onnxruntime.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    results = session.run(wanted, {})
    arrays.update({n: np.asarray(r) for n, r in zip(wanted, results, strict=True)})
    return arrays


def module_path_names(traces: list[WeightTrace]) -> dict[str, str]:
    """``value -> module.path.weight`` for weights whose stored name the exporter made up
    (``val_31``, ``onnx::MatMul_12``), from the consuming node's recorded module scope (torch
    dynamo's name_scopes metadata, or the legacy exporter's node names such as /layer1/Conv)."""
    names: dict[str, str] = {}
    recurrent: dict[str, int] = {}  # recurrent matrices per module path: torch's _l{k}
    for trace in traces:
        # onnxruntime.quantization appends suffixes to the float weight's name
        stem = re.sub(r"(_Transposed)?(_quantized)?$", "", trace.root)
        if not _GENERATED_NAME.match(stem):
            continue
        props: Mapping[str, str] = {p.key: p.value for p in trace.node.metadata_props}
        scopes = _parse_scopes(props.get("pkg.torch.onnx.name_scopes", ""))
        path = ""
        if len(scopes) >= 2 and scopes[-2]:
            path = scopes[-2]
        elif trace.node.name.startswith("/") and trace.node.name.count("/") >= 2:
            # torch's legacy exporter names nodes by module scope: /features/0/Conv
            for part in trace.node.name.split("/")[1:-1]:
                # each scope is the child's name (layer1) or, in containers, its full path (mlp.0)
                path = part if not path or part.startswith(f"{path}.") else f"{path}.{part}"
        if not path:
            continue
        name = f"{path}.{trace.role}"
        if trace.role != "weight":  # one LSTM/GRU/RNN node per stacked layer, in order
            layer = recurrent.get(name, 0)
            recurrent[name] = layer + 1
            name = f"{name}_l{layer}"
        names[trace.value] = name
    return names


def _parse_scopes(text: str) -> list[str]:
    """The list literal torch writes as name_scopes (``['', 'attn', 'attn.q', 'linear']``)."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return []
    return [part.strip().strip("'\"") for part in text[1:-1].split(",")]


def batchnorm_scales(graph: Any, traces: list[WeightTrace]) -> dict[str, np.ndarray]:
    """``value -> gamma / sqrt(var + eps)`` (one factor per output channel) for Conv weights
    used once, whose output goes only to a BatchNormalization with constant statistics (see
    ``ftaudit.models.folding``)."""
    from onnx import numpy_helper

    from ftaudit.models.folding import fold_scale

    tensors = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    uses: dict[str, int] = {}
    for trace in traces:
        uses[trace.value] = uses.get(trace.value, 0) + 1
    scales: dict[str, np.ndarray] = {}
    for trace in traces:
        node = trace.node
        users = consumers.get(node.output[0], [])
        if node.op_type != "Conv" or uses[trace.value] != 1 or len(users) != 1:
            continue
        bn = users[0]
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
            continue
        if bn.input[1] not in tensors or bn.input[4] not in tensors:
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale = fold_scale(
            numpy_helper.to_array(tensors[bn.input[1]]),
            numpy_helper.to_array(tensors[bn.input[4]]),
            eps,
            1,
        )
        if scale is not None:
            scales[trace.value] = scale
    return scales
