"""BayesFT's dropout in the trainable copy: one seeded dropout module after each crossbar
layer's output but the last, inserted with torch.fx (the exported file never has them)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from ftaudit._optional import require_torch
from ftaudit.errors import UserError
from ftaudit.harden.trainable import TrainableModel
from ftaudit.models.base import CrossbarLayer

if TYPE_CHECKING:
    from ftaudit.models.onnx import OnnxModel

FEATURE = "the bayesft harden method"


@functools.cache
def _seeded_dropout_type() -> type:
    torch = require_torch(FEATURE)

    class SeededDropout(torch.nn.Dropout):
        """``nn.Dropout`` whose masks come from its own ``generator`` instead of torch's global
        RNG, so a run is a function of its seed (the global generator when none is set)."""

        def __init__(self, p: float = 0.0) -> None:
            super().__init__(p)
            self.generator: Any = None

        def forward(self, x: Any) -> Any:
            if not self.training or self.p == 0:
                return x
            if self.p >= 1:  # every activation dropped (as torch's dropout does at p = 1)
                return x * 0.0
            if self.generator is None:
                return super().forward(x)
            keep = torch.empty_like(x).bernoulli_(1.0 - self.p, generator=self.generator)
            return x * keep / (1.0 - self.p)

    return SeededDropout


def dropout_module(p: float = 0.0) -> Any:
    """A fresh seeded ``nn.Dropout`` (see ``SeededDropout``) with rate ``p``."""
    return _seeded_dropout_type()(p)


def crossbar_outputs(
    proto: Any, layers: Sequence[CrossbarLayer], feed_names: Mapping[str, str] | None = None
) -> dict[str, list[str]]:
    """Crossbar layer name -> the ONNX tensors that are that layer's output, one per use.

    The output of a Conv/ConvTranspose/Gemm node is its result (its bias is inside the node); a
    MatMul whose result feeds only an ``Add`` of an initializer (a bias) ends at that Add, so
    the dropout acts on the full affine output, like the Gemm case. Weights are found as the
    ONNX loader finds them (``onnx_graph.trace_crossbar_weights``); ``feed_names`` maps layer
    names to the values the operators read (``OnnxModel.feed_names``; the name by default).
    """
    from ftaudit.models.onnx_graph import source_value, trace_crossbar_weights

    graph = proto.graph
    feeds = feed_names or {}
    layer_of = {feeds.get(layer.name, layer.name): layer.name for layer in layers}
    initializers = {t.name for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    found: dict[str, list[str]] = {}
    for trace in trace_crossbar_weights(graph)[0]:
        weight = layer_of.get(trace.value)
        if weight is None:
            continue
        node = trace.node
        out = node.output[0]
        users = consumers.get(out, [])
        if node.op_type == "MatMul" and len(users) == 1 and users[0].op_type == "Add":
            add = users[0]
            other = [source_value(name, producers) for name in add.input if name != out]
            if len(other) == 1 and other[0] in initializers:
                out = add.output[0]
        found.setdefault(weight, []).append(out)
    return found


def insert_dropout(trainable: TrainableModel) -> dict[str, Any]:
    """Put a seeded dropout (rate 0) after every crossbar layer's output except the last one's.

    Edits the onnx2torch ``GraphModule`` with torch.fx: after the ``call_module`` node whose
    ``onnx_mapping`` outputs the layer's output tensor (see ``crossbar_outputs``), a call to a
    new submodule ``bayesft_dropout_<layer index>``; a weight used by several nodes gets one
    dropout module (one rate) after each use. Returns layer name -> its dropout module, in
    execution order. Dropout acts only in train mode, and the ONNX export writes initializer
    values back into the original file, so it never reaches the exported model.
    """
    source = trainable.source
    graph_model = trainable.graph if trainable.graph is not None else source
    if graph_model.format != "onnx":
        raise UserError(
            f"--method bayesft inserts dropout layers with torch.fx, which cannot edit "
            f"{source.format} models ({source.path})",
            hint="export the PyTorch model to ONNX (torch.onnx.export) and harden the .onnx file",
        )
    layers = sorted(source.layers, key=lambda layer: layer.index)
    if len(layers) < 2:
        raise UserError(
            f"{source.path} has {len(layers)} crossbar layer; BayesFT puts dropout after every "
            "crossbar layer but the last, so it needs at least two",
            hint="use --method trice or noise for this model",
        )
    module = trainable.module
    onnx_source = cast("OnnxModel", graph_model)
    outputs = crossbar_outputs(onnx_source.proto, layers[:-1], onnx_source.feed_names)
    producer = {}
    for node in module.graph.nodes:
        if node.op != "call_module":
            continue
        mapping = getattr(module.get_submodule(node.target), "onnx_mapping", None)
        for name in getattr(mapping, "outputs", ()):
            producer[name] = node
    dropouts: dict[str, Any] = {}
    graph = module.graph
    for layer in layers[:-1]:
        nodes = [producer.get(name) for name in outputs.get(layer.name, [])]
        if not nodes or any(node is None for node in nodes):
            raise UserError(
                f"cannot find the output of crossbar layer {layer.name} in onnx2torch's "
                "conversion, so no dropout can follow it",
                hint="use --method trice or noise for this model",
            )
        target = f"bayesft_dropout_{layer.index}"
        dropouts[layer.name] = dropout_module(0.0)
        module.add_submodule(target, dropouts[layer.name])
        for node in nodes:
            with graph.inserting_after(node):
                dropped = graph.call_module(target, (node,))
            node.replace_all_uses_with(
                dropped, delete_user_cb=lambda user, d=dropped: user is not d
            )
    graph.lint()
    module.recompile()
    return dropouts
