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


@dataclass(frozen=True)
class UntracedOp:
    """A Conv/ConvTranspose/Gemm/MatMul (or int8 kernel) whose weight is not perturbed, and why."""

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
    """Every crossbar weight of ``graph`` in node order, and every operator left out, with why."""
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {t.name for t in graph.initializer}
    constant, not_weight_only = _classify_values(graph)
    traces: list[WeightTrace] = []
    untraced: list[UntracedOp] = []
    for i, node in enumerate(graph.node):
        label = _node_label(node, i)
        if node.op_type in QOPERATOR_WEIGHT_INPUT and node.domain in _QUANT_DOMAINS:
            operands = (node.input[0], node.input[QOPERATOR_WEIGHT_INPUT[node.op_type]])
            if any(v in constant for v in operands):  # else activations x activations
                untraced.append(UntracedOp(label, node.op_type, QOPERATOR_REASON))
            continue
        if node.domain not in ("", "ai.onnx"):
            continue
        weight_on_left = False
        if node.op_type in CROSSBAR_WEIGHT_INPUT:
            if len(node.input) < 2:
                continue
            operand = node.input[1]
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            transposed = node.op_type == "Gemm" and not trans_b
            if operand not in constant:
                untraced.append(
                    UntracedOp(label, node.op_type, "its weight is computed from the data input")
                )
                continue
        elif node.op_type == "MatMul":
            if node.input[1] in constant:
                operand, transposed = node.input[1], True
            elif node.input[0] in constant:
                operand, transposed, weight_on_left = node.input[0], False, True
            else:
                continue  # activations times activations (attention): no stored weight
        else:
            continue
        if operand in not_weight_only:
            untraced.append(
                UntracedOp(
                    label,
                    node.op_type,
                    f"its weight passes through {not_weight_only[operand]}, which is not a "
                    "weight-only re-layout (Transpose, Cast, Reshape, DequantizeLinear, ...)",
                )
            )
            continue
        value = operand
        while value in producers and producers[value].op_type == "Identity":
            value = producers[value].input[0]
        root, via = value, []
        while root not in initializers and root in producers:
            via.append(producers[root].op_type)
            root = producers[root].input[0]
        traces.append(
            WeightTrace(node, value, root, tuple(reversed(via)), transposed, weight_on_left)
        )
    return traces, untraced


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
    options.log_severity_level = 3
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
    for trace in traces:
        # onnxruntime.quantization appends suffixes to the float weight's name
        stem = re.sub(r"(_Transposed)?(_quantized)?$", "", trace.root)
        if not _GENERATED_NAME.match(stem):
            continue
        props: Mapping[str, str] = {p.key: p.value for p in trace.node.metadata_props}
        scopes = _parse_scopes(props.get("pkg.torch.onnx.name_scopes", ""))
        if len(scopes) >= 2 and scopes[-2]:
            names[trace.value] = f"{scopes[-2]}.weight"
        elif trace.node.name.startswith("/") and trace.node.name.count("/") >= 2:
            # torch's legacy exporter names nodes by module scope: /features/0/Conv
            path = ""
            for part in trace.node.name.split("/")[1:-1]:
                # each scope is the child's name (layer1) or, in containers, its full path (mlp.0)
                path = part if not path or part.startswith(f"{path}.") else f"{path}.{part}"
            if path:
                names[trace.value] = f"{path}.weight"
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
