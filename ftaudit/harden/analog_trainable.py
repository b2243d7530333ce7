"""Trainable copies that run the analog forward pipeline (hardware-aware training).

The pipeline's torch twin (``ftaudit.analog.torch_pipeline``) replaces the forward of the
Linear and Conv modules of the graph it was calibrated on. An ONNX model's onnx2torch
conversion has those modules. A TorchScript or torch.export model has none that can be
re-bound (a scripted module runs its compiled graph; an exported program calls aten
functions), so it trains as its own in-memory ONNX export, the same graph ``eval`` runs it
through: the export names its initializers after the model's parameters and buffers, and the
hardened model is the input archive with the trained values written back by those names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ftaudit.analog.runner import transposed_layers
from ftaudit.errors import UserError
from ftaudit.harden.trainable import make_trainable, onnx_trainable
from ftaudit.harden.trainable_model import TrainableModel
from ftaudit.models.base import AuditModel

if TYPE_CHECKING:
    from ftaudit.analog.torch_pipeline import AnalogTraining
    from ftaudit.models.onnx import OnnxModel


def trainable_copy(
    model: AuditModel, analog: AnalogTraining | None = None, *, graph: OnnxModel | None = None
) -> TrainableModel:
    """A trainable copy of ``model``; with ``analog``, of the graph the pipeline runs, its
    crossbar Linear and Conv layers running the pipeline. ``graph`` (``export_graph``): a
    TorchScript or torch.export model trains as that in-memory ONNX export of itself, whose
    onnx2torch module a method can edit with torch.fx (BayesFT's dropout)."""
    exported = analog.model if analog is not None else graph
    if model.format == "onnx" or exported is None:
        trainable = make_trainable(model)
    else:
        trainable = _through_onnx(model, exported)
    if analog is not None:
        analog.attach(trainable)
    return trainable


def export_graph(model: AuditModel, x: Any) -> OnnxModel | None:
    """``model``'s in-memory ONNX export (None for an ONNX model, which is its own graph), made
    from the data batch ``x``'s first sample."""
    if model.format == "onnx":
        return None
    from ftaudit.analog.runner import as_onnx

    return as_onnx(model, x, selected=[])


def _through_onnx(model: AuditModel, exported: OnnxModel) -> TrainableModel:
    """The onnx2torch copy of ``model``'s ONNX export, writing back into ``model`` by name."""
    trainable = onnx_trainable(exported)
    names = _state_names(model)
    unknown = sorted(
        name
        for name, slot in trainable.slots.items()
        if name not in names and _is_parameter(trainable.module, slot.target)
    )
    if unknown:
        raise UserError(
            f"{model.path}'s ONNX export trains tensors that are not parameters of the model "
            f"({', '.join(unknown[:3])}), so their trained values could not be written back",
            hint="export the model to ONNX (torch.onnx.export) and harden the .onnx file",
        )
    trainable.source = model
    trainable.by_name = True
    trainable.graph = exported
    # a Linear on a 3-D input exports as MatMul of W^T: its arrays move in the source's layout
    for name in transposed_layers(model, exported):
        trainable.crossbar_transposed[name] = not trainable.crossbar_transposed.get(
            name, trainable.slots[name].transposed if name in trainable.slots else False
        )
    return trainable


def _state_names(model: AuditModel) -> set[str]:
    """Names of the parameters and buffers of a TorchScript or torch.export model."""
    raw = getattr(model, "raw", b"")
    if model.format == "torchscript":
        from ftaudit.models.torchscript import jit_load

        return set(jit_load(raw, model.path).state_dict())
    from ftaudit.models.export import load_program

    return set(load_program(raw, model.path).state_dict)


def _is_parameter(module: Any, target: str) -> bool:
    owner, _, attr = target.rpartition(".")
    return attr in dict(module.get_submodule(owner).named_parameters(recurse=False))
