"""Rich rendering of ``ftaudit inspect``: the model's interface and its crossbar layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.table import Table

from ftaudit.text import escape

if TYPE_CHECKING:
    from ftaudit.results.inspect import ModelSummary


def _shape(shape: list[int | None] | None) -> str:
    if shape is None:
        return "not declared"
    dims = [str(d) if d is not None else "N" if i == 0 else "?" for i, d in enumerate(shape)]
    return "(" + ", ".join(dims) + ")"


def inspect_renderable(summary: ModelSummary) -> RenderableType:
    """A header table (format, producer, opset, I/O) and a per-layer table with totals."""
    model = summary.model
    head = Table(
        show_header=False, box=None, title=escape(str(model["path"])), title_justify="left"
    )
    head.add_column(style="bold")
    head.add_column()
    head.add_row("format", str(model["format"]))
    head.add_row("producer", escape(str(model.get("producer") or "unknown")))
    if model.get("opset") is not None:
        head.add_row("opset", str(model["opset"]))
    head.add_row("sha256", str(model["sha256"]))
    fed = model["input"].get("packed_inputs") or [model["input"]]
    for spec in fed:
        head.add_row(
            "input", f"{escape(str(spec['name']))} {_shape(spec['shape'])} {spec['dtype']}"
        )
    if len(fed) > 1:
        head.add_row("", f"(fed as one packed array {_shape(model['input']['shape'])})")
    spec = model["output"]
    text = f"{escape(str(spec['name']))} {_shape(spec['shape'])} {spec['dtype']}"
    if spec.get("binary_output"):  # one score per input, read as two classes
        head.add_row("output", f"{escape(str(spec['binary_output']))}: one score per input")
        head.add_row("", f"(read as two classes: {text}, [0, logit])")
    else:
        head.add_row("output", text)
    if spec.get("other_outputs"):  # features or a second head: never read by the audit
        others = ", ".join(str(name) for name in spec["other_outputs"])
        head.add_row("not evaluated", escape(others))

    layers = Table(title="crossbar layers", title_justify="left")
    for column in ("#", "weight", "op", "shape", "params", "max |w|", "MACs/input", "selected"):
        layers.add_column(
            column, justify="right" if column in ("#", "params", "MACs/input") else "left"
        )
    for i, layer in enumerate(summary.layers):
        layers.add_row(
            str(i),
            escape(layer.name),
            layer.op,
            "x".join(str(d) for d in layer.shape),
            f"{layer.params:,}",
            f"{layer.max_abs:.4g}",
            "n/a" if layer.macs is None else f"{layer.macs:,}",
            "yes" if layer.selected else "no",
        )
    totals = summary.totals()
    macs = totals["macs_per_input"]
    layers.caption = (
        f"{totals['selected_layers']}/{totals['layers']} layers selected, "
        f"{totals['selected_params']:,}/{totals['params']:,} crossbar weights; "
        f"MACs per input: {'n/a' if macs is None else f'{macs:,}'}"
    )
    untraced = model.get("untraced") or []
    if not untraced:
        return Group(head, layers)
    skipped = Table(title="operators reading stored weights NOT perturbed", title_justify="left")
    for column in ("node", "op", "reason"):
        skipped.add_column(column, style="yellow" if column == "node" else None)
    for op in untraced:
        skipped.add_row(escape(op["node"]), op["op"], escape(op["reason"]))
    return Group(head, layers, skipped)
