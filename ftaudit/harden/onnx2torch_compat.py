"""The ONNX -> torch conversion for training: onnx2torch converters for the operator versions
torch's default (dynamo) exporter writes, and the preparation of the training copy of a graph
(Identity bypass, constant folding, one error naming every unconvertible operator).

torch.onnx.export writes opset 18 and later; onnx2torch 1.5 stops at earlier versions of several
operators whose newer versions change nothing a converter depends on (Reshape-19/21 add types,
Gelu-20 is new but is torch's own GELU) or move a constant attribute to an input (the Reduce*
ops in opset 18 take ``axes`` as an input). Registering them here lets ``harden`` train those
files; the exported model keeps the original graph, only initializer values change. Each
converter is registered once, and only where onnx2torch has none.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ftaudit.errors import UserError

#: operator -> (the version whose converter is reused, newer versions it also covers)
_SAME_SEMANTICS: dict[str, tuple[int, tuple[int, ...]]] = {
    "Shape": (15, (19, 21, 23, 24)),
    "Constant": (13, (19, 21, 23, 24)),
    "Cast": (13, (19, 21, 23, 24)),
    "Identity": (16, (19, 21, 23, 24)),
    "Transpose": (13, (21, 23, 24)),
    "Squeeze": (13, (21, 23, 24)),
    "Unsqueeze": (13, (21, 23, 24)),
    "ConstantOfShape": (9, (20, 21, 23, 24)),
}
#: Reduce* operators whose opset-18 (and later) versions take ``axes`` as an input
_REDUCE_AXES_INPUT: dict[str, tuple[int, ...]] = {
    "ReduceMean": (18,),
    "ReduceMax": (18, 20),
    "ReduceMin": (18, 20),
    "ReduceProd": (18,),
    "ReduceL1": (18,),
    "ReduceL2": (18,),
    "ReduceLogSum": (18,),
    "ReduceLogSumExp": (18,),
    "ReduceSumSquare": (18,),
}
#: element-wise operators onnx2torch lacks (transformers exports compare and test masks with
#: them), by version: the torch function of the same meaning
_ELEMENTWISE: dict[str, tuple[tuple[int, ...], str]] = {
    "GreaterOrEqual": ((12, 16), "greater_equal"),
    "LessOrEqual": ((12, 16), "less_equal"),
    "IsNaN": ((9, 13, 20), "isnan"),
    "IsInf": ((10, 20), "isinf"),
}
_registered = False


def register_converters() -> None:
    """Add the converters above to onnx2torch's registry (idempotent)."""
    global _registered
    if _registered:
        return
    from onnx2torch.node_converters import registry

    table = registry._CONVERTER_REGISTRY

    def add(op: str, version: int, converter: Any) -> None:
        key = registry.OperationDescription(domain="", operation_type=op, version=version)
        if key not in table:
            table[key] = converter

    for op, (base, versions) in _SAME_SEMANTICS.items():
        key = registry.OperationDescription(domain="", operation_type=op, version=base)
        if key in table:
            for version in versions:
                add(op, version, table[key])
    for op, versions in _REDUCE_AXES_INPUT.items():
        for version in versions:
            add(op, version, _reduce_axes_input)
    add("Gelu", 20, _gelu)
    for op, (versions, function) in _ELEMENTWISE.items():
        for version in versions:
            if op == "IsInf":  # onnx2torch's IsInf-10 ignores detect_negative/detect_positive
                key = registry.OperationDescription(domain="", operation_type=op, version=version)
                table[key] = _elementwise(op, function)
            add(op, version, _elementwise(op, function))
    for version in (15, 19, 21, 23, 24):
        add("CastLike", version, _cast_like)
    add("Split", 18, _split)
    average_pool = table.get(
        registry.OperationDescription(domain="", operation_type="AveragePool", version=11)
    )
    if average_pool is not None:  # 19 adds dilations (torch's default exporter writes 20)
        for version in (19, 22):
            add("AveragePool", version, _without_dilations(average_pool))
    table[  # scikit-learn's row normalisation (skl2onnx's multi-class probabilities)
        registry.OperationDescription(domain="ai.onnx.ml", operation_type="Normalizer", version=1)
    ] = _normalizer
    for version in (1, 9, 11, 13, 21, 23, 24):  # replaces onnx2torch's, wrong at axis = rank
        table[
            registry.OperationDescription(domain="", operation_type="Flatten", version=version)
        ] = _flatten
    for version in (14, 19, 21, 23, 24):  # replaces onnx2torch's, which refuses allowzero=1
        table[
            registry.OperationDescription(domain="", operation_type="Reshape", version=version)
        ] = _reshape
    _name_modules_without_dots()
    # onnx2torch's Slice indexes with a list, which torch warns about on every batch of
    # training (a deprecation in torch, not a problem of the user's model)
    warnings.filterwarnings(
        "ignore", category=UserWarning, module=r"onnx2torch\.node_converters\.slice"
    )
    _registered = True


def _name_modules_without_dots() -> None:
    """onnx2torch names a node's module '<domain>/<name>' and replaces the dots in the name
    only; torch refuses the dots of a domain such as ai.onnx.ml."""
    from onnx2torch.onnx_graph import OnnxGraph

    generate = OnnxGraph.generate_node_name
    OnnxGraph.generate_node_name = staticmethod(  # type: ignore[method-assign]
        lambda node: generate(node).replace(".", "_")
    )


def _normalizer(node: Any, graph: Any) -> Any:
    """ONNX-ML Normalizer: each row divided by its max, its L1 norm or its L2 norm."""
    del graph
    import torch
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    norm = node.attributes.get("norm", "MAX")
    norm = norm.decode() if isinstance(norm, bytes) else str(norm)
    divisors = {
        "MAX": lambda x: x.amax(dim=-1, keepdim=True),
        "L1": lambda x: x.abs().sum(dim=-1, keepdim=True),
        "L2": lambda x: torch.sqrt((x * x).sum(dim=-1, keepdim=True)),
    }
    if norm not in divisors:
        raise NotImplementedError(f"Normalizer norm {norm}")
    divisor = divisors[norm]
    return OperationConverterResult(
        torch_module=_module("Normalizer", lambda x: x.to(torch.float32) / divisor(x)),
        onnx_mapping=onnx_mapping_from_node(node=node),
    )


def _flatten(node: Any, graph: Any) -> Any:
    """Flatten to (prod(shape[:axis]), prod(shape[axis:])) for any axis, negative or equal to
    the rank (transformers' legacy exports flatten a 2-D mask at axis 2, which onnx2torch's
    module cannot)."""
    del graph
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    axis = int(node.attributes.get("axis", 1))

    def flatten(x: Any) -> Any:
        cut = axis + x.dim() if axis < 0 else axis
        lead = 1
        for size in x.shape[:cut]:
            lead *= int(size)
        rest = 1
        for size in x.shape[cut:]:
            rest *= int(size)
        return x.reshape(lead, rest)

    return OperationConverterResult(
        torch_module=_module("Flatten", flatten), onnx_mapping=onnx_mapping_from_node(node=node)
    )


def _reshape(node: Any, graph: Any) -> Any:
    """Reshape with either ``allowzero``: 1 (torch's exporter's default) means a 0 in the shape
    is a zero-sized axis, which is what torch.reshape does."""
    del graph
    from onnx2torch.node_converters.reshape import OnnxReshape
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    module = OnnxReshape() if not node.attributes.get("allowzero", 0) else _ReshapeAllowZero()
    return OperationConverterResult(
        torch_module=module, onnx_mapping=onnx_mapping_from_node(node=node)
    )


def _ReshapeAllowZero() -> Any:  # builds the module class lazily (torch import)
    import torch

    return _module("ReshapeAllowZero", lambda x, shape: torch.reshape(x, [int(d) for d in shape]))


def _cast_like(node: Any, graph: Any) -> Any:
    """CastLike(x, like): x in like's dtype."""
    del graph
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    return OperationConverterResult(
        torch_module=_module("CastLike", lambda x, like: x.to(like.dtype)),
        onnx_mapping=onnx_mapping_from_node(node=node),
    )


def _split(node: Any, graph: Any) -> Any:
    """Split-18: sizes from the ``split`` input, else ``num_outputs`` chunks of ceil(n / k)
    (the last one smaller), as torch's dynamo exporter writes ShuffleNet's channel split."""
    del graph
    import torch
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    axis = node.attributes.get("axis", 0)
    count = len(node.output_values)

    def split(x: Any, sizes: Any = None) -> Any:
        if sizes is not None:
            return torch.split(x, sizes.tolist(), dim=axis)
        return torch.split(x, -(-x.shape[axis] // count), dim=axis)

    return OperationConverterResult(
        torch_module=_module("Split", split), onnx_mapping=onnx_mapping_from_node(node=node)
    )


def _without_dilations(converter: Any) -> Any:
    """``converter`` (AveragePool-11's) for a later version, whose only new attribute,
    ``dilations``, it would ignore: refused unless every dilation is 1."""

    def convert(node: Any, graph: Any) -> Any:
        if any(d != 1 for d in node.attributes.get("dilations", ())):
            raise NotImplementedError(f"{node.operation_type} with dilations other than 1")
        return converter(node, graph)

    return convert


def _module(name: str, function: Any) -> Any:
    """A torch module whose forward is ``function`` (torch imported only when converting)."""
    import torch

    cls = type(name, (torch.nn.Module,), {"forward": lambda self, *args: function(*args)})
    return cls()


def _reduce_axes_input(node: Any, graph: Any) -> Any:
    """A Reduce* node whose ``axes`` is a constant input: onnx2torch's static-axes module."""
    import torch
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

    keepdims = node.attributes.get("keepdims", 1)
    axes = None
    if len(node.input_values) > 1 and node.input_values[1]:
        try:
            axes = get_const_value(node.input_values[1], graph)
        except KeyError as exc:
            raise NotImplementedError(
                f"{node.operation_type} with axes computed at run time"
            ) from exc
        axes = torch.as_tensor(axes).tolist()
    if not axes and node.attributes.get("noop_with_empty_axes", 0):
        raise NotImplementedError(f"{node.operation_type} with noop_with_empty_axes=1")
    return OperationConverterResult(
        torch_module=OnnxReduceStaticAxes(
            operation_type=node.operation_type, axes=axes or None, keepdims=keepdims
        ),
        onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values),
    )


def _elementwise(op: str, function: str) -> Any:
    """A converter for ``op``: torch's ``function`` of the node's inputs (IsInf's
    detect_negative/detect_positive attributes honoured)."""

    def convert(node: Any, graph: Any) -> Any:
        del graph
        import torch
        from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

        call = getattr(torch, function)
        if op == "IsInf":
            negative = node.attributes.get("detect_negative", 1)
            positive = node.attributes.get("detect_positive", 1)
            call = _is_inf(torch, bool(negative), bool(positive))
        return OperationConverterResult(
            torch_module=_module(op, call), onnx_mapping=onnx_mapping_from_node(node=node)
        )

    return convert


def _is_inf(torch: Any, negative: bool, positive: bool) -> Any:
    def is_inf(x: Any) -> Any:
        if negative and positive:
            return torch.isinf(x)
        if negative or positive:
            return torch.isneginf(x) if negative else torch.isposinf(x)
        return torch.zeros_like(x, dtype=torch.bool)

    return is_inf


def _gelu(node: Any, graph: Any) -> Any:
    """Gelu-20 is torch's GELU (``approximate`` 'none' or 'tanh')."""
    del graph
    import torch
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    approximate = node.attributes.get("approximate", "none")
    if isinstance(approximate, bytes):
        approximate = approximate.decode()
    return OperationConverterResult(
        torch_module=torch.nn.GELU(approximate=approximate),
        onnx_mapping=onnx_mapping_from_node(node=node),
    )


# --- the training copy of an ONNX graph, prepared for onnx2torch ----------------------------


def bypass_initializer_identities(graph: Any) -> None:
    """Feed initializers straight to the consumers of Identity nodes that copy them.

    onnx2torch folds Conv/Gemm weights into modules only when they are initializers; torch's
    exporter routes shared weights through Identity nodes. The export writes by initializer name,
    so this changes nothing there.
    """
    initializers = {t.name for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    renamed: dict[str, str] = {}
    kept = []
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
        if (
            node.op_type == "Identity"
            and node.domain in ("", "ai.onnx")
            and node.input[0] in initializers
            and node.output[0] not in graph_outputs
        ):
            renamed[node.output[0]] = node.input[0]
        else:
            kept.append(node)
    if renamed:
        del graph.node[:]
        graph.node.extend(kept)


def _cast_like_to_cast(proto: Any) -> None:
    """``CastLike(c, x)`` -> ``Cast(c, to=dtype of x)`` where x's type is known (torch's
    exporter builds zero biases as CastLike(0, input)), so constant folding can see through."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # best effort: shape inference fails on some valid models
        return
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type
    }
    types.update({t.name: t.data_type for t in proto.graph.initializer})
    for node in proto.graph.node:
        if node.op_type == "CastLike" and node.domain in ("", "ai.onnx") and node.input[1] in types:
            to = types[node.input[1]]
            node.op_type = "Cast"
            del node.input[1:]
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("to", to))


def fold_constants(proto: Any, weights: set[str]) -> set[str]:
    """Replace nodes that compute constants by initializers: integer ones (shapes and axes,
    e.g. dynamo's ``Reshape(Constant, Constant)`` feeding ReduceMean's axes) and float ones not
    computed from a crossbar weight in ``weights`` (a zero bias built by Expand); onnx2torch
    reads such inputs only as initializers. Values computed from crossbar weights
    (``Transpose(W)``) are left alone, so weights are still traced to the stored initializers."""
    from onnx import numpy_helper

    from ftaudit.models.onnx_graph import evaluate_values

    graph = proto.graph
    _cast_like_to_cast(proto)
    constant = {t.name for t in graph.initializer}
    candidates = []
    for node in graph.node:
        inputs = [v for v in node.input if v]
        if node.op_type == "Constant" or (inputs and all(v in constant for v in inputs)):
            constant.update(node.output)
            candidates.append(node)
    if not candidates:
        return set()
    values = evaluate_values(proto, [out for node in candidates for out in node.output])
    # float values computed from crossbar weights must stay traceable to their initializers
    stored = set(weights)
    folded = set()
    for node in candidates:
        arrays = [values[out] for out in node.output]
        integer = all(np.issubdtype(a.dtype, np.integer) for a in arrays)
        if not integer and any(v in stored for v in node.input):
            stored.update(node.output)
            continue
        for out, array in zip(node.output, arrays, strict=True):
            graph.initializer.append(numpy_helper.from_array(array, out))
        folded.add(id(node))
    kept = [node for node in graph.node if id(node) not in folded]
    del graph.node[:]
    graph.node.extend(kept)
    return {out for node in candidates if id(node) in folded for out in node.output}


def check_convertible(proto: Any, path: Path) -> None:
    """One UserError naming every operator that onnx2torch has no converter for."""
    from onnx2torch.node_converters import get_converter

    opsets = {o.domain: o.version for o in proto.opset_import}
    unsupported: dict[str, None] = {}
    for node in proto.graph.node:
        op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        version = opsets.get(node.domain)
        if version is None:
            unsupported[f"{op} (no opset imported for its domain)"] = None
            continue
        try:
            get_converter(domain=node.domain, operation_type=node.op_type, version=version)
        except NotImplementedError:
            unsupported[f"{op} (opset {version})"] = None
    if unsupported:
        raise UserError(
            f"{path} uses operator(s) that onnx2torch cannot convert to PyTorch (harden and "
            f"--batch-samples run the model in PyTorch): {', '.join(unsupported)}",
            hint="re-export the model without them (its supported operators are listed at "
            "https://github.com/ENOT-AutoDL/onnx2torch/blob/main/operators.md), evaluate with "
            "--batch-samples 1, or harden the PyTorch model saved as TorchScript",
        )
