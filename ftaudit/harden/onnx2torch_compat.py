"""onnx2torch converters for the operator versions torch's default (dynamo) exporter writes.

torch.onnx.export writes opset 18 and later; onnx2torch 1.5 stops at earlier versions of several
operators whose newer versions change nothing a converter depends on (Reshape-19/21 add types,
Gelu-20 is new but is torch's own GELU) or move a constant attribute to an input (the Reduce*
ops in opset 18 take ``axes`` as an input). Registering them here lets ``harden`` train those
files; the exported model keeps the original graph, only initializer values change. Each
converter is registered once, and only where onnx2torch has none.
"""

from __future__ import annotations

from typing import Any

#: operator -> (the version whose converter is reused, newer versions it also covers)
_SAME_SEMANTICS: dict[str, tuple[int, tuple[int, ...]]] = {
    "Shape": (15, (19, 21, 23, 24)),
    "Constant": (13, (19, 21, 23, 24)),
    "Cast": (13, (19, 21, 23, 24)),
    "Identity": (16, (19, 21, 23, 24)),
    "Transpose": (13, (21, 23, 24)),
    "Flatten": (13, (21, 23, 24)),
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
    for version in (15, 19, 21, 23, 24):
        add("CastLike", version, _cast_like)
    for version in (14, 19, 21, 23, 24):  # replaces onnx2torch's, which refuses allowzero=1
        table[
            registry.OperationDescription(domain="", operation_type="Reshape", version=version)
        ] = _reshape
    _registered = True


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
