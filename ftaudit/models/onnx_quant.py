"""int8 QOperator kernels rewritten as dequantise -> float operator -> quantise (QDQ form).

onnxruntime.quantization writes quantised models in two formats. In QDQ form the int8 weight
reaches a float operator through a ``DequantizeLinear``, which ``onnx_graph`` traces. In
QOperator form (``QLinearConv``, ``QLinearMatMul``, ``QGemm``; ``quantize_dynamic``'s
``MatMulInteger``/``ConvInteger``) an integer kernel consumes the int8 levels directly, and
levels perturbed by device noise are no longer integers. The in-memory copy of such a model is
rewritten node by node into the equivalent QDQ form, so the crossbar weight is the dequantised
level ``(q - zero_point) * scale`` in both formats; the file is never modified. The float
operator computes the same sums the integer kernel does (exactly, for the integer products),
so sigma 0 gives the quantised model's predictions up to the rounding of the requantisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

_CONV_ATTRIBUTES = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


class _Rewriter:
    """Builds the replacement nodes of one graph, with unique names for new values."""

    def __init__(self, graph: Any) -> None:
        import onnx

        self.onnx = onnx
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}__ftaudit_qdq{self.count}"

    def node(self, op: str, inputs: list[str], base: str, **attributes: Any) -> tuple[Any, str]:
        out = self.name(base)
        return self.onnx.helper.make_node(op, inputs, [out], name=out, **attributes), out

    def constant(self, base: str, value: np.ndarray) -> str:
        name = self.name(base)
        self.graph.initializer.append(self.onnx.numpy_helper.from_array(value, name))
        return name

    def dequantize(self, value: str, scale: str, zero: str, axis: int | None) -> tuple[Any, str]:
        inputs = [value, scale] + ([zero] if zero else [])
        attributes = {} if axis is None else {"axis": axis}
        return self.node("DequantizeLinear", inputs, value, **attributes)

    def shape_of(self, name: str) -> tuple[int, ...] | None:
        tensor = self.initializers.get(name)
        return None if tensor is None else tuple(tensor.dims)


def _attributes(node: Any, names: tuple[str, ...]) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute if a.name in names}


def _input(node: Any, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _per_axis(r: _Rewriter, scale: str, axis: int) -> int | None:
    """The DequantizeLinear axis for a per-channel scale, None for a per-tensor one."""
    shape = r.shape_of(scale)
    return axis if shape and len(shape) == 1 and shape[0] > 1 else None


def _qlinear_conv(r: _Rewriter, node: Any) -> list[Any] | None:
    x, xs, xz, w, ws, wz, ys, yz = (_input(node, i) for i in range(8))
    bias = _input(node, 8)
    dq_x, xf = r.dequantize(x, xs, xz, None)
    dq_w, wf = r.dequantize(w, ws, wz, _per_axis(r, ws, 0))
    nodes = [dq_x, dq_w]
    inputs = [xf, wf]
    if bias:
        scale_node, bias_scale = r.node("Mul", [xs, ws], "bias_scale")
        dq_b, bf = r.dequantize(bias, bias_scale, "", _per_axis(r, ws, 0))
        nodes += [scale_node, dq_b]
        inputs.append(bf)
    conv, y = r.node("Conv", inputs, node.output[0], **_attributes(node, _CONV_ATTRIBUTES))
    quantize = r.onnx.helper.make_node(
        "QuantizeLinear", [y, ys, yz], [node.output[0]], name=r.name("q")
    )
    return [*nodes, conv, quantize]


def _qlinear_matmul(r: _Rewriter, node: Any) -> list[Any] | None:
    a, az_s, az, b, bs, bz, ys, yz = (_input(node, i) for i in range(8))
    dq_a, af = r.dequantize(a, az_s, az, _per_axis(r, az_s, 0))
    dq_b, bf = r.dequantize(b, bs, bz, _per_axis(r, bs, 1))
    matmul, y = r.node("MatMul", [af, bf], node.output[0])
    quantize = r.onnx.helper.make_node(
        "QuantizeLinear", [y, ys, yz], [node.output[0]], name=r.name("q")
    )
    return [dq_a, dq_b, matmul, quantize]


def _qgemm(r: _Rewriter, node: Any) -> list[Any] | None:
    a, a_s, az, b, bs, bz, c, ys, yz = (_input(node, i) for i in range(9))
    attributes = _attributes(node, ("alpha", "transA", "transB"))
    trans_b = int(attributes.get("transB", 0))
    dq_a, af = r.dequantize(a, a_s, az, None)
    dq_b, bf = r.dequantize(b, bs, bz, _per_axis(r, bs, 0 if trans_b else 1))
    nodes = [dq_a, dq_b]
    inputs = [af, bf]
    if c:
        scale_node, c_scale = r.node("Mul", [a_s, bs], "bias_scale")
        dq_c, cf = r.dequantize(c, c_scale, "", _per_axis(r, bs, 0))
        nodes += [scale_node, dq_c]
        inputs.append(cf)
    if not ys:  # a float output
        gemm = r.onnx.helper.make_node(
            "Gemm", inputs, [node.output[0]], name=r.name("gemm"), **attributes
        )
        return [*nodes, gemm]
    gemm, y = r.node("Gemm", inputs, node.output[0], **attributes)
    quantize = r.onnx.helper.make_node(
        "QuantizeLinear", [y, ys] + ([yz] if yz else []), [node.output[0]], name=r.name("q")
    )
    return [*nodes, gemm, quantize]


def _integer_product(op: str) -> Callable[[_Rewriter, Any], list[Any] | None]:
    """MatMulInteger / ConvInteger: ``(a - a_zero) x (b - b_zero)`` as float, exact for integer
    levels; the int32 result becomes float (its consumer, a Cast to float, is then a no-op)."""

    def rewrite(r: _Rewriter, node: Any) -> list[Any] | None:
        a, b, az, bz = (_input(node, i) for i in range(4))
        nodes = []
        levels = []
        for value, zero, axis in ((a, az, None), (b, bz, 0 if op == "Conv" else 1)):
            shape = r.shape_of(zero) if zero else None
            per_axis = axis if shape and len(shape) == 1 and shape[0] > 1 else None
            ones = r.constant("one", np.ones(shape if per_axis is not None else (), np.float32))
            dq, level = r.dequantize(value, ones, zero, per_axis)
            nodes.append(dq)
            levels.append(level)
        attributes = _attributes(node, _CONV_ATTRIBUTES) if op == "Conv" else {}
        product = r.onnx.helper.make_node(
            op, levels, [node.output[0]], name=r.name(op.lower()), **attributes
        )
        return [*nodes, product]

    return rewrite


_REWRITES: dict[str, Callable[[_Rewriter, Any], list[Any] | None]] = {
    "QLinearConv": _qlinear_conv,
    "QLinearMatMul": _qlinear_matmul,
    "QGemm": _qgemm,
    "MatMulInteger": _integer_product("MatMul"),
    "ConvInteger": _integer_product("Conv"),
}


def qoperator_to_qdq(model: Any) -> int:
    """Rewrite the QOperator kernels of ``model`` (in place) whose weight is an initializer;
    returns how many were rewritten. Integer products whose result is not only cast to float
    are left alone (and listed as untraced by the loader)."""
    graph = model.graph
    r = _Rewriter(graph)
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    rewritten = 0
    nodes: list[Any] = []
    changed_types: set[str] = set()
    for node in graph.node:
        rewrite = _REWRITES.get(node.op_type)
        weight = _input(node, 1 if node.op_type.endswith("Integer") else 3)
        if rewrite is None or node.domain not in ("", "ai.onnx", "com.microsoft"):
            nodes.append(node)
            continue
        if node.op_type == "QGemm" and node.domain != "com.microsoft":
            nodes.append(node)
            continue
        if weight not in r.initializers:
            nodes.append(node)
            continue
        if node.op_type.endswith("Integer"):
            users = consumers.get(node.output[0], [])
            to_float = all(
                u.op_type == "Cast"
                and any(a.name == "to" and a.i == r.onnx.TensorProto.FLOAT for a in u.attribute)
                for u in users
            )
            if not users or not to_float:
                nodes.append(node)
                continue
            changed_types.add(node.output[0])
        replacement = rewrite(r, node)
        if replacement is None:
            nodes.append(node)
            continue
        nodes.extend(replacement)
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
        stale = [v for v in graph.value_info if v.name in changed_types]
        for value in stale:
            graph.value_info.remove(value)
    return rewritten
