"""ONNX Runtime's fused operators, rewritten in memory as the standard ops they fuse.

A model saved after ONNX Runtime's basic or extended optimisations holds ``com.microsoft``
``FusedConv`` (Conv + bias + optional sum input + activation), ``FusedGemm`` (Gemm +
activation) and ``FusedMatMul`` (MatMul of transposed operands times alpha). Written back as
``Conv``/``Gemm``/``MatMul`` followed by the activation, every path of ftaudit sees a standard
product: the analog pipeline can put DAC, tiles and ADC around it, onnx2torch can train it
(``harden``, ``--batch-samples``), and the weights-only runner is unchanged (ONNX Runtime fuses
them again when it builds its session). The file itself is never modified. A fused node with an
activation or attribute this module does not know stays as it is (its weights are still
crossbar layers, ``onnx_operands``).
"""

from __future__ import annotations

from typing import Any

ORT_DOMAIN = "com.microsoft"
#: FusedConv's activations (MLAS kinds) -> the attribute names ``activation_params`` fills
CONV_ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "Relu": (),
    "Sigmoid": (),
    "Tanh": (),
    "LeakyRelu": ("alpha",),
    "HardSigmoid": ("alpha", "beta"),
    "Clip": ("min", "max"),
}
#: FusedGemm's activations (ONNX ops whose attributes it carries as ``activation_<name>``)
GEMM_ACTIVATIONS = {
    "Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "Elu", "Selu", "Softplus",
    "Softsign", "ThresholdedRelu",
}  # fmt: skip
#: attributes of the fused op that describe its activation, not the product
_ACTIVATION_ATTRS = {
    "activation",
    "activation_params",
    "activation_alpha",
    "activation_beta",
    "activation_gamma",
}


def unfuse_ort_operators(model: Any) -> None:
    """Rewrite ``model``'s FusedConv, FusedGemm and FusedMatMul nodes in place as standard
    ops (opset 11+, where Clip takes its bounds as inputs)."""
    from onnx import helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    graph = model.graph
    if opset < 11 or not any(node.domain == ORT_DOMAIN for node in graph.node):
        return
    ranks = {t.name: len(t.dims) for t in graph.initializer}
    nodes: list[Any] = []
    for node in graph.node:
        replacement = _unfused(node, ranks, graph, helper) if node.domain == ORT_DOMAIN else None
        nodes.extend([node] if replacement is None else replacement)
    del graph.node[:]
    graph.node.extend(nodes)


def _attrs(node: Any, helper: Any) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _activation(
    node: Any, attrs: dict[str, Any], value: str, graph: Any, helper: Any
) -> list[Any] | None:
    """The nodes writing ``node.output[0]`` from ``value``: its activation, or an Identity when
    it has none; None when the activation is one this module does not know."""
    name = attrs.get("activation")
    if name is None:
        return [helper.make_node("Identity", [value], [node.output[0]])]
    name = name.decode() if isinstance(name, bytes) else name
    if node.op_type == "FusedGemm":
        if name not in GEMM_ACTIVATIONS:
            return None
        kwargs = {
            k.removeprefix("activation_"): float(v)
            for k, v in attrs.items()
            if k.startswith("activation_") and k != "activation_params"
        }
        return [helper.make_node(name, [value], [node.output[0]], **kwargs)]
    params = CONV_ACTIVATIONS.get(name)
    given = list(attrs.get("activation_params", []))
    if params is None or len(given) < len(params):
        return None
    if name == "Clip":  # opset 11+: min and max are inputs
        bounds = []
        for bound, v in zip(("min", "max"), given[:2], strict=True):
            const = f"{node.output[0]}/unfused_{bound}"
            graph.initializer.append(helper.make_tensor(const, 1, [], [float(v)]))  # FLOAT
            bounds.append(const)
        return [helper.make_node("Clip", [value, *bounds], [node.output[0]])]
    kwargs = {p: float(v) for p, v in zip(params, given, strict=False)}
    return [helper.make_node(name, [value], [node.output[0]], **kwargs)]


def _unfused(node: Any, ranks: dict[str, int], graph: Any, helper: Any) -> list[Any] | None:
    """The standard nodes computing ``node`` (same output name), or None to keep it."""
    attrs = _attrs(node, helper)
    product = {k: v for k, v in attrs.items() if k not in _ACTIVATION_ATTRS}
    out = f"{node.output[0]}/unfused"
    prefix = node.name or node.output[0]
    if node.op_type == "FusedConv":
        inputs = list(node.input)
        nodes = [helper.make_node("Conv", inputs[:3], [out], name=f"{prefix}/Conv", **product)]
        if len(inputs) > 3 and inputs[3]:  # the sum input, added before the activation
            nodes.append(helper.make_node("Add", [out, inputs[3]], [f"{out}_sum"]))
            out = f"{out}_sum"
    elif node.op_type == "FusedGemm":
        nodes = [
            helper.make_node("Gemm", list(node.input), [out], name=f"{prefix}/Gemm", **product)
        ]
    elif node.op_type == "FusedMatMul":
        if attrs.get("transA", 0) or attrs.get("transBatchA", 0) or attrs.get("transBatchB", 0):
            return None
        a, b = node.input[0], node.input[1]
        nodes = []
        if attrs.get("transB", 0):
            rank = ranks.get(b)
            if rank is None or rank < 2:
                return None  # an activation operand of unknown rank: kept fused
            perm = [*range(rank - 2), rank - 1, rank - 2]
            nodes.append(helper.make_node("Transpose", [b], [f"{out}_bt"], perm=perm))
            b = f"{out}_bt"
        nodes.append(helper.make_node("MatMul", [a, b], [out], name=f"{prefix}/MatMul"))
        alpha = float(attrs.get("alpha", 1.0))
        if alpha != 1.0:
            const = f"{out}_alpha"
            graph.initializer.append(helper.make_tensor(const, 1, [], [alpha]))
            nodes.append(helper.make_node("Mul", [out, const], [f"{out}_scaled"]))
            out = f"{out}_scaled"
        nodes.append(helper.make_node("Identity", [out], [node.output[0]]))
        return nodes
    else:
        return None
    tail = _activation(node, attrs, out, graph, helper)
    return None if tail is None else nodes + tail
