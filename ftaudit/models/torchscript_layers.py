"""A TorchScript module's crossbar layers: the weights of the modules a crossbar stores (Conv,
Linear, Bilinear, the recurrent layers, MultiheadAttention), then every other parameter its graph
feeds to a product, by ``ftaudit.models.torch_products``' rules; what cannot be mapped is listed
as untraced, never skipped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ftaudit.models.base import CrossbarLayer
from ftaudit.models.onnx_graph import UntracedOp
from ftaudit.models.torch_products import (
    DERIVING,
    RECURRENT_MODULES,
    RECURRENT_WEIGHT,
    SCALINGS,
    TRANSPARENT,
    Operand,
    ProductScan,
)

#: TorchScript module types whose ``weight`` a crossbar stores -> the op shown
CROSSBAR_MODULES = {
    **{f"Conv{d}d": f"Conv{d}d" for d in (1, 2, 3)},
    **{f"ConvTranspose{d}d": f"ConvTranspose{d}d" for d in (1, 2, 3)},
    "Linear": "Linear",
    # MultiheadAttention's out_proj (a Linear subclass)
    "NonDynamicallyQuantizableLinear": "Linear",
    "Bilinear": "Bilinear",
}
#: MultiheadAttention's input projections: one packed matrix, or one per query/key/value
ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
#: TorchScript types of a number (a weight scaled by one is still that weight, computed)
_NUMBERS = ("IntType", "FloatType", "NumberType")


def attr_path(value: Any) -> str | None:
    """``conv1.weight`` for a value read by a chain of prim::GetAttr from the module itself."""
    node, parts = value.node(), []
    while node.kind() == "prim::GetAttr":
        parts.append(node.s("name"))
        node = node.inputsAt(0).node()
    return ".".join(reversed(parts)) if node.kind() == "prim::Param" and parts else None


def _walk(block: Any) -> Iterator[Any]:
    """Every node of a graph, those inside If/Loop blocks included."""
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _walk(inner)


def _operand(params: dict[str, Any]) -> Operand:
    """Trace a value back to the parameter it is, through the calls ``torch_products`` knows
    (the names without ``aten::``; transparent copies left out of the list)."""

    def operand(value: Any) -> tuple[str, list[str]] | None:
        via: list[str] = []
        for _ in range(32):
            name = attr_path(value)
            if name is not None:
                return (name, via) if name in params else None
            node = value.node()
            call = node.kind().partition("::")[2]
            if call == "permute" and node.inputsAt(1).toIValue() in ([0, 1], [-2, -1]):
                call = "contiguous"  # a permute that changes nothing
            if call not in TRANSPARENT and call not in DERIVING:
                return None
            if call in SCALINGS and node.inputsAt(1).type().kind() not in _NUMBERS:
                return None
            if call not in TRANSPARENT:
                via.append(call)
            value = node.inputsAt(0)
        return None

    return operand


def _elements(value: Any) -> list[Any]:
    """The values of a list built in the graph (prim::ListConstruct), else none."""
    node = value.node()
    return list(node.inputs()) if node.kind() == "prim::ListConstruct" else []


def module_weights(module: Any, params: dict[str, Any]) -> dict[str, str]:
    """Parameter name -> op for the weights of the modules a crossbar stores."""
    found: dict[str, str] = {}
    for prefix, sub in module.named_modules():
        kind = getattr(sub, "original_name", type(sub).__name__)
        dot = f"{prefix}." if prefix else ""
        if kind in CROSSBAR_MODULES:
            attrs = {"weight": CROSSBAR_MODULES[kind]}
        elif kind in RECURRENT_MODULES:
            attrs = {
                attr: RECURRENT_MODULES[kind]
                for attr, _ in sub.named_parameters(recurse=False)
                if RECURRENT_WEIGHT.fullmatch(attr)
            }
        elif kind == "MultiheadAttention":
            attrs = dict.fromkeys(ATTENTION_WEIGHTS, "MultiheadAttention")
        else:
            continue
        for attr, op in attrs.items():
            if f"{dot}{attr}" in params:
                found[f"{dot}{attr}"] = op
    return found


def script_layers(module: Any) -> tuple[list[CrossbarLayer], list[UntracedOp]]:
    """The crossbar layers of a loaded TorchScript module (in parameter order) and the products
    whose parameter operand cannot be mapped, with why."""
    params = {name: p for name, p in module.named_parameters() if p.dtype.is_floating_point}
    chosen = {name: (op, False) for name, op in module_weights(module, params).items()}
    scan = ProductScan(
        ranks={name: p.dim() for name, p in params.items()},
        operand=_operand(params),
        elements=_elements,
        constant=lambda value: value.toIValue(),
    )
    try:
        nodes = list(_walk(module.inlined_graph))
    except RuntimeError:  # a module without a forward
        nodes = []
    for k, node in enumerate(nodes):
        kind = node.kind()
        if kind.startswith("aten::"):
            scan.node(kind.removeprefix("aten::"), list(node.inputs()), f"{kind}#{k}", kind)
    for name, role in scan.mapped.items():
        chosen.setdefault(name, role)
    layers = []
    for name, tensor in params.items():
        if name not in chosen:
            continue
        op, transposed = chosen[name]
        layers.append(
            CrossbarLayer(
                name=name,
                op=op,
                index=len(layers),
                shape=tuple(tensor.shape),
                dtype=str(tensor.dtype).removeprefix("torch."),
                transposed=transposed,
            )
        )
    untraced = [op for name, op in scan.unmapped.items() if name not in chosen]
    return layers, untraced
