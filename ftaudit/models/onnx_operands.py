"""Which operand of which ONNX operator a crossbar stores, and which stored tensors no rule
covers (so that they are reported, never skipped silently).

A crossbar layer is a matrix an operator multiplies its data by: Conv, ConvTranspose, DeformConv
and Gemm weights, a MatMul or Einsum constant, the input and recurrent matrices of LSTM, GRU and
RNN, and ONNX Runtime's fused forms of these (com.microsoft FusedConv, FusedGemm, FusedMatMul,
GemmFastGelu, Attention), which models saved after ORT's extended optimisations contain. Any
other operator that reads a stored matrix is either known not to multiply by it (norms, adds,
lookups: ``NOT_PRODUCTS``) or is reported as untraced with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_DOMAINS = ("", "ai.onnx")
ORT_DOMAIN = "com.microsoft"
NCHWC_DOMAIN = "com.microsoft.nchwc"


@dataclass(frozen=True)
class Operand:
    """One stored-weight operand of a product operator."""

    value: str
    #: the stored 2-D tensor is (in, out): the transpose of the canonical outputs-first layout
    transposed: bool
    #: the weight is the left operand (W @ x)
    on_left: bool = False
    #: the name's last part when the layer is named after its module (``lstm.weight_hh``)
    role: str = "weight"


def _attr(node: Any, name: str, default: int = 0) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


#: recurrent operators -> their (input index, role) matrices: W (input to gates) and R
#: (hidden state to gates), named as torch names them
RECURRENT = {"LSTM", "GRU", "RNN"}
_RECURRENT_ROLES = ((1, "weight_ih"), (2, "weight_hh"))

#: (domain, op) of convolution-like operators: the weight is input 1, outputs first
_CONV_LIKE = {
    ("", "Conv"),
    ("", "ConvTranspose"),
    ("", "DeformConv"),
    (ORT_DOMAIN, "FusedConv"),
}


def _domain(node: Any) -> str:
    return "" if node.domain in DEFAULT_DOMAINS else node.domain


def weight_operands(node: Any, constant: set[str]) -> list[Operand] | None:
    """The stored-weight operands of ``node`` (constant values only), or None when the
    operator is not a product this module knows (``unknown_matrix_reader`` then decides)."""
    key = (_domain(node), node.op_type)
    inputs = list(node.input)

    def const(i: int) -> bool:
        return len(inputs) > i and inputs[i] in constant

    if key in _CONV_LIKE:
        return [Operand(inputs[1], False)] if const(1) else []
    if key in (("", "Gemm"), (ORT_DOMAIN, "FusedGemm")):
        if const(1):
            return [Operand(inputs[1], not _attr(node, "transB"))]
        if const(0):  # W @ x: the weight is A, (out, in) unless transA
            return [Operand(inputs[0], bool(_attr(node, "transA")), on_left=True)]
        return []
    if key in (("", "MatMul"), (ORT_DOMAIN, "FusedMatMul")):
        if const(1):
            return [Operand(inputs[1], not _attr(node, "transB"))]
        if const(0):
            return [Operand(inputs[0], bool(_attr(node, "transA")), on_left=True)]
        return []  # activations times activations (attention scores): no stored weight
    if key in ((ORT_DOMAIN, "Attention"), (ORT_DOMAIN, "GemmFastGelu")):
        return [Operand(inputs[1], True)] if const(1) else []
    if key[0] == "" and node.op_type in RECURRENT:
        return [Operand(inputs[i], False, role=role) for i, role in _RECURRENT_ROLES if const(i)]
    if key == ("", "Einsum"):
        return [Operand(v, False) for v in inputs if v in constant]
    return None


_TWO_OPERANDS = {
    ("", "Gemm"),
    (ORT_DOMAIN, "FusedGemm"),
    ("", "MatMul"),
    (ORT_DOMAIN, "FusedMatMul"),
}


def weight_inputs(node: Any) -> tuple[str, ...]:
    """The inputs of a product operator that may hold a stored weight (both operands of a
    MatMul or Gemm, every operand of an Einsum); () for other operators."""
    key = (_domain(node), node.op_type)
    inputs = tuple(node.input)
    if key in _CONV_LIKE or key in ((ORT_DOMAIN, "Attention"), (ORT_DOMAIN, "GemmFastGelu")):
        return inputs[1:2]
    if key in (
        ("", "Gemm"),
        (ORT_DOMAIN, "FusedGemm"),
        ("", "MatMul"),
        (ORT_DOMAIN, "FusedMatMul"),
    ):
        return inputs[:2]
    if key[0] == "" and node.op_type in RECURRENT:
        return inputs[1:3]
    return inputs if key == ("", "Einsum") else ()


SHAPED_REASON = (
    "its weight is computed from the stored matrix '{root}' with indices taken from the data's "
    "shape (an exporter that did not fold constants, e.g. torch's dynamo exporter with "
    "optimize=False), so it cannot be fed; export with constant folding"
)

#: operators that read stored tensors without multiplying data by them as a matrix
NOT_PRODUCTS = frozenset(
    {
        # arithmetic and comparisons with a stored tensor (added biases, position embeddings)
        "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Mean", "Sum", "Where",
        "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor",
        "PRelu", "Clip", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
        # layout, indexing and lookups (embedding tables are read, not multiplied)
        "Reshape", "Expand", "Tile", "Concat", "Split", "Slice", "Gather", "GatherElements",
        "GatherND", "ScatterND", "ScatterElements", "Scatter", "Pad", "Transpose", "Squeeze",
        "Unsqueeze", "Flatten", "Identity", "Cast", "CastLike", "Shape", "Size",
        "ConstantOfShape", "Range", "CumSum", "Resize", "Upsample", "Trilu", "OneHot",
        "Compress", "ReverseSequence", "DepthToSpace", "SpaceToDepth", "Col2Im",
        # normalisation, activation and quantisation parameters
        "BatchNormalization", "LayerNormalization", "InstanceNormalization",
        "GroupNormalization", "RMSNormalization", "SimplifiedLayerNormalization",
        "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
        "EmbedLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "QuickGelu", "BiasAdd",
        "BiasSplitGelu", "BiasDropout", "BiasSoftmax", "RotaryEmbedding",
        "GroupQueryAttention", "MultiHeadAttention", "QuantizeLinear", "DequantizeLinear",
        "DynamicQuantizeLinear", "Dropout", "ReduceSum", "ReduceMean", "ReduceMax",
        "ReduceMin", "ReduceProd", "ArgMax", "ArgMin", "TopK", "NonZero",
        # the nchwc layout's data movers
        "ReorderInput", "ReorderOutput", "MaxPool", "AveragePool", "GlobalAveragePool",
        "GlobalMaxPool",
    }
)  # fmt: skip

#: (domain, op) of integer kernels whose weight operand is packed integer levels
INTEGER_KERNELS = {
    (ORT_DOMAIN, "MatMulNBits"): (1,),
    (ORT_DOMAIN, "MatMulIntegerToFloat"): (1,),
    (ORT_DOMAIN, "DynamicQuantizeMatMul"): (1,),
    (ORT_DOMAIN, "QAttention"): (1,),
    (ORT_DOMAIN, "QOrderedMatMul"): (3,),
    (ORT_DOMAIN, "DynamicQuantizeLSTM"): (1, 2),
}
INTEGER_KERNEL_REASON = (
    "an integer kernel computes it from packed integer levels (block-quantised or dynamically "
    "quantised weights) that cannot carry device noise; audit the float model, or one "
    "quantised with onnxruntime.quantization's QuantFormat.QDQ"
)
#: ai.onnx.ml operators that multiply by coefficients kept in node attributes
ATTRIBUTE_PRODUCTS = {"LinearClassifier", "LinearRegressor", "SVMClassifier", "SVMRegressor"}
ATTRIBUTE_REASON = (
    "its coefficients are node attributes (a scikit-learn linear or kernel model converted by "
    "skl2onnx), which ftaudit does not perturb; audit a model whose weights are tensors read "
    "by MatMul or Gemm (e.g. an MLPClassifier, or the same model written in torch)"
)
#: ai.onnx.ml tree ensembles: they compare features with thresholds and multiply by nothing
TREE_ENSEMBLES = {"TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble"}
TREE_REASON = (
    "a decision-tree ensemble compares features with thresholds and multiplies by no matrix, so "
    "it holds no crossbar weight to perturb; audit a model that multiplies by weight matrices "
    "(a neural network, or a linear model such as LogisticRegression)"
)
LOOKUP_REASON = (
    "its table '{value}' {shape} is looked up by index (an embedding), not multiplied by the "
    "data, so a crossbar does not store it and it stays exact"
)
NCHWC_REASON = (
    "the model was saved after ONNX Runtime's ORT_ENABLE_ALL layout optimisation, which stores "
    "this weight in a padded, blocked layout specific to the CPU that optimised it; audit the "
    "model as exported (or saved with ORT_ENABLE_EXTENDED at most)"
)
SUBGRAPH_REASON = (
    "it multiplies inside the body of this {op} (control flow), which ftaudit does not rewrite; "
    "export the model without data-dependent control flow (trace it, or unroll the loop)"
)
UNKNOWN_REASON = (
    "{op} ({domain}) reads the stored matrix '{value}' {shape}, and ftaudit does not know how "
    "it multiplies by it; export the layer as Conv, Gemm or MatMul"
)


def unknown_matrix_reader(node: Any, stored: Mapping[str, tuple[int, ...]]) -> str | None:
    """The reason to report ``node`` as untraced when it is no known product yet reads a stored
    float matrix (``stored``: value -> shape, for float tensors of 2+ axes of 2+ entries, traced
    back through weight-only re-layouts); None when it is known not to be a product."""
    if node.op_type in NOT_PRODUCTS:
        return None
    for value in node.input:
        shape = stored.get(value)
        if shape is not None:
            domain = _domain(node) or "ai.onnx"
            return UNKNOWN_REASON.format(op=node.op_type, domain=domain, value=value, shape=shape)
    return None


def node_macs(
    node: Any,
    weight: np.ndarray,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    batch: int = 1,
    weight_on_left: bool = False,
) -> int | None:
    """Multiply-accumulates per example; ``batch`` is the data input's fixed batch size, if any."""
    out = shapes.get(node.output[0]) if node.output and node.output[0] else None
    op = _MACS_AS.get(node.op_type, node.op_type)
    if op == "ConvTranspose":
        data = shapes.get(node.input[0])
        return None if data is None else int(np.prod(data[1:]) * np.prod(weight.shape[1:]))
    if out is None:
        return None
    if op == "Conv":
        return int(np.prod(out[1:]) * np.prod(weight.shape[1:]))
    # Gemm and MatMul outputs include the batch axis: divide by it to count per example
    if op == "Gemm":  # W @ x (weight on the left): one product per example's column
        return int(weight.size) if weight_on_left else int(out[0] * weight.size) // batch
    if op in ("LSTM", "GRU", "RNN"):  # every step multiplies by the whole matrix
        steps = out[1] if _attr(node, "layout") else out[0]
        return int(steps * weight.size)
    if op != "MatMul":
        return None
    # MatMul: every output element is a dot product over the contracted axis, which is the
    # weight's last axis when it is the left operand and its second-last when it is the right one
    if len(weight.shape) < 2:
        contracted = weight.shape[0]
    else:
        on_last = weight_on_left or _attr(node, "transB")
        contracted = weight.shape[-1] if on_last else weight.shape[-2]
    return int(np.prod(out) * contracted) // batch


#: fused and variant operators counted like the operator they extend
_MACS_AS = {"FusedConv": "Conv", "DeformConv": "Conv", "FusedGemm": "Gemm", "FusedMatMul": "MatMul"}
