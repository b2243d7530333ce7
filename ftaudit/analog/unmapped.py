"""What the analog rewrite maps onto tiles, and the one-line refusals for what it cannot."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ftaudit.errors import UserError
from ftaudit.models.onnx_graph import source_value
from ftaudit.models.onnx_operands import weight_operands

#: the crossbar ops the rewrite maps onto tiles (README: the analog pipeline's support table)
SUPPORTED_OPS = "Conv (any groups, 1-3-D), Gemm without transA, MatMul with a 2-D right weight"


def unmapped_reason(node: Any, weight: np.ndarray) -> str:
    if node.op_type == "Gemm":
        return "a Gemm with transA=1"
    if node.op_type == "MatMul":
        return f"a MatMul with a {weight.ndim}-D weight"
    return f"a {node.op_type}"


#: the op types whose weight operand the rewrite maps (others reading a layer are refused)
MAPPED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def refuse_unmapped_product(node: Any, by_value: Mapping[str, Any], producers: Mapping) -> None:
    """An operator the rewrite has no form for (LSTM, Einsum, ORT's fused ops, ...) that
    multiplies by a selected layer: refused, naming both."""
    for value in node.input:
        layer = by_value.get(source_value(value, producers))
        if layer is not None and weight_operands(node, {value}):
            domain = "" if node.domain in ("", "ai.onnx") else f"{node.domain} "
            raise UserError(
                f"the analog forward pipeline cannot map crossbar layer {layer.name} (read by "
                f"{domain}{node.op_type} '{node.name}')",
                hint=f"leave it digital with --layers (select the others) or drop the analog "
                f"flags; supported: {SUPPORTED_OPS}",
            )


def refuse_left_weight(node: Any, by_value: Mapping[str, Any], producers: Mapping) -> None:
    """A MatMul/Gemm whose first operand is a selected layer's weight (W @ x): refused."""
    layer = by_value.get(source_value(node.input[0], producers))
    if layer is not None and node.op_type in ("MatMul", "Gemm"):
        raise UserError(
            f"the analog forward pipeline cannot map crossbar layer {layer.name} "
            f"(the weight is the left operand of {node.op_type} '{node.name}')",
            hint="export with the weight as the right operand (x @ W), or leave the layer "
            "digital with --layers (select the others)",
        )
