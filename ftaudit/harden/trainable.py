"""Trainable torch copies of loaded models, and export of trained weights in the input's format.

ONNX models are converted with onnx2torch; every float initializer is then traced to the torch
tensor that holds it (by provenance, checked by exact value), so an export can write trained
values back into the ORIGINAL file's initializers and change nothing else. TorchScript models are
trained as loaded and saved with ``torch.jit.save``. The input file is never written.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ftaudit._optional import require_torch
from ftaudit.errors import MissingExtraError, UserError
from ftaudit.fileio import atomic_write, check_output_path
from ftaudit.harden.trainable_model import TensorSlot, TrainableModel, to_numpy
from ftaudit.models.base import AuditModel

if TYPE_CHECKING:
    from ftaudit.models.onnx import OnnxModel
    from ftaudit.models.torchscript import TorchScriptModel

FEATURE = "hardened models"

#: torch module type -> {attribute: ONNX node input index}: the initializers onnx2torch folds
#: into these modules as parameters and buffers instead of passing them as inputs
_WEIGHT_AND_BIAS = {"weight": 1, "bias": 2}
_ABSORBED_INPUTS: dict[str, dict[str, int]] = {
    **{f"{kind}{d}d": _WEIGHT_AND_BIAS for kind in ("Conv", "ConvTranspose") for d in (1, 2, 3)},
    **{f"InstanceNorm{d}d": _WEIGHT_AND_BIAS for d in (1, 2, 3)},
    **{
        f"BatchNorm{d}d": {**_WEIGHT_AND_BIAS, "running_mean": 3, "running_var": 4}
        for d in (1, 2, 3)
    },
    "Linear": _WEIGHT_AND_BIAS,
    "LayerNorm": _WEIGHT_AND_BIAS,
}

#: ONNX ops whose output, plus an initializer in an Add, makes that initializer a layer's bias
_CROSSBAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def make_trainable(model: AuditModel) -> TrainableModel:
    """A trainable copy of a loaded model, in eval mode; ``model`` itself is not modified."""
    maker = _MAKERS.get(model.format)
    if maker is None:
        raise UserError(
            f"ftaudit harden cannot train {model.format} models",
            hint=f"harden an {' or '.join(sorted(_MAKERS))} model",
        )
    return maker(model)


def export_hardened(trainable: TrainableModel, out: Path, *, metadata: dict[str, Any]) -> None:
    """Write the trained model to ``out`` in the source's format, atomically.

    ``metadata`` (JSON-serialisable) is stored as the ONNX metadata_props entry
    ``ftaudit.hardening`` or the TorchScript extra file ``ftaudit.json``. Refuses to write over
    the input file.
    """
    source = trainable.source
    out = check_output_path(Path(out), what="hardened model", protect=(source.path,))
    _refuse_non_finite(trainable)
    _EXPORTERS[source.format](trainable, out, metadata)


def _refuse_non_finite(trainable: TrainableModel) -> None:
    """Training that diverged (e.g. a huge --lr) leaves NaN/inf weights: never write them."""
    torch = require_torch(FEATURE)
    tensors = [*trainable.module.named_parameters(), *trainable.module.named_buffers()]
    for name, tensor in tensors:
        if name in trainable.non_finite_at_start:
            continue  # the model's own constant (a -inf attention mask), never trained
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(
                f"training diverged: weight {name} of the hardened model is NaN or infinite, "
                "so no model was written",
                hint="train again with a smaller --lr (or --sigma)",
            )


# ---------------------------------------------------------------------------------------------
# ONNX


def _import_onnx2torch() -> Any:
    try:
        import onnx2torch
    except ImportError as exc:
        raise MissingExtraError("hardened ONNX models", "torch", "onnx2torch") from exc
    from ftaudit.harden.onnx2torch_compat import register_converters

    register_converters()  # the opset 18+ versions torch's default exporter writes
    return onnx2torch


def onnx_trainable(model: AuditModel) -> TrainableModel:
    """onnx2torch conversion of ``model.proto`` with every float initializer traced."""
    import onnx

    from ftaudit.harden.onnx2torch_compat import (
        bypass_initializer_identities,
        check_convertible,
        fold_constants,
    )
    from ftaudit.models.onnx_io import select_output

    torch = require_torch(FEATURE)
    onnx2torch = _import_onnx2torch()
    proto = onnx.ModelProto()
    proto.CopyFrom(cast("OnnxModel", model).proto)
    graph = proto.graph
    # the module returns the evaluated output only, like the ONNX runner
    select_output(graph, model.output)
    read = {value for node in graph.node for value in node.input}
    bypass_initializer_identities(graph)
    model_roots = cast("OnnxModel", model).roots
    folded = fold_constants(proto, {model_roots.get(la.name, la.name) for la in model.layers})
    check_convertible(proto, model.path)
    try:
        module = onnx2torch.convert(proto, attach_onnx_mapping=True)
    except NotImplementedError as exc:  # raised by converters for unsupported attribute values
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "not implemented"
        raise UserError(
            f"onnx2torch cannot convert {model.path} to PyTorch for training: {first}",
            hint="re-export the model with simpler operators, or harden it as TorchScript",
        ) from exc

    stored = {  # folded constants are not in the file: they stay constants here
        t.name: onnx.numpy_helper.to_array(t)
        for t in graph.initializer
        if onnx.helper.tensor_dtype_to_np_dtype(t.data_type).kind == "f" and t.name not in folded
    }
    found = _trace_initializers(module, graph, stored)
    onnx_model = cast("OnnxModel", model)
    # each crossbar layer is its root initializer, as stored or transposed (Transpose(W))
    roots = {layer.name: onnx_model.roots.get(layer.name, layer.name) for layer in model.layers}
    swapped = {
        layer.name: _layout_of(onnx_model, layer.name, stored.get(roots[layer.name]))
        for layer in model.layers
    }
    crossbar_names = set(roots.values())
    missing = sorted(crossbar_names - found.keys())
    unread = [name for name in missing if name not in read]
    if unread:  # only another output reads them (a second head past a features output)
        raise UserError(
            f"{model.path}: the crossbar weight(s) {', '.join(unread)} do not feed the output "
            f"harden trains, '{model.output.name}' (the model's first real-valued output); "
            "only its other outputs read them",
            hint="re-export the model with the class scores as its first (or only) output",
        )
    if missing:
        raise UserError(
            f"{model.path}: the crossbar weight(s) {', '.join(missing)} do not appear unchanged "
            "in onnx2torch's conversion, so they cannot be trained and written back",
            hint="export the model without scaled weights (e.g. Gemm alpha != 1), or harden "
            "it as TorchScript",
        )
    trainable_names = crossbar_names | _crossbar_biases(graph, crossbar_names, stored)
    slots = {
        name: _tie(module, name, places, promote=name in trainable_names, torch=torch)
        for name, places in found.items()
    }
    module.eval()
    if model.input.dtype == "float16" or any(la.dtype == "float16" for la in model.layers):
        # a float16 model trains in float32 (the data is float32; Adam needs the precision);
        # the export casts the trained values back to the file's float16 initializers
        module.float()
        _cast_to_float32(module, torch)
    crossbar = {
        layer.name: _tensor_at(module, slots[roots[layer.name]].target) for layer in model.layers
    }
    transposed = {
        layer.name: slots[roots[layer.name]].transposed != swapped[layer.name]
        for layer in model.layers
    }
    return TrainableModel(
        module=module,
        source=model,
        crossbar=crossbar,
        slots=slots,
        crossbar_transposed=transposed,
    )


def _cast_to_float32(module: Any, torch: Any) -> None:
    """Retarget the module's Casts to float16 (onnx2torch's ``OnnxCast``) to float32, so a
    model converted with float32 inputs (a Cast into float16 after the input) runs in the
    float32 its weights now hold."""
    for child in module.modules():
        if getattr(child, "torch_dtype", None) == torch.float16:
            child.torch_dtype = torch.float32


def _layout_of(model: OnnxModel, name: str, root: np.ndarray | None) -> bool:
    """Whether crossbar layer ``name`` is its root initializer transposed (MatMul of
    Transpose(W)); a UserError when it is neither the initializer nor its transpose (a
    dequantised or re-typed weight, which training cannot write back)."""
    value = model.initializers[name]
    if root is not None and value.dtype == root.dtype:
        if _equal(value, root, False):
            return False
        if _equal(value, root, True):
            return True
    raise UserError(
        f"{model.path}: crossbar weight {name} is computed from initializer "
        f"{model.roots.get(name, name)} (dequantised, re-typed or reshaped), so trained values "
        "could not be written back into the file",
        hint="harden the float model before quantising or converting it",
    )


def _trace_initializers(
    module: Any, graph: Any, stored: Mapping[str, np.ndarray]
) -> dict[str, list[TensorSlot]]:
    """Float initializer name -> every torch tensor holding exactly its values.

    A tensor takes the initializer it was built from (module type and ONNX node input, or the
    order onnx2torch registers initializer buffers in) when the values agree exactly; otherwise
    the one initializer with equal values, if only one has them. Tensors matching none are left
    out (constants the conversion computed, e.g. a Gemm weight scaled by alpha); initializers
    left out keep their stored values on export.
    """
    hints = _provenance(module, graph, stored)
    tensors = {
        **dict(module.named_buffers(remove_duplicate=False)),
        **dict(module.named_parameters(remove_duplicate=False)),
    }
    found: dict[str, list[TensorSlot]] = {}
    for target, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        value = to_numpy(tensor)
        hint = hints.get(target)
        if hint is not None and _equal(value, stored[hint.target], hint.transposed):
            name, transposed = hint.target, hint.transposed
        else:
            # a symmetric matrix matches both ways: the stored orientation, written last, wins
            matches = {
                name: transposed
                for name, array in stored.items()
                for transposed in (True, False)
                if _equal(value, array, transposed)
            }
            if len(matches) != 1:
                continue  # no initializer has these values, or several: not traceable
            ((name, transposed),) = matches.items()
        found.setdefault(name, []).append(TensorSlot(target, transposed))
    return found


def _provenance(module: Any, graph: Any, stored: Mapping[str, np.ndarray]) -> dict[str, TensorSlot]:
    """Torch tensor name -> TensorSlot(initializer name, transposed) known from the conversion.

    Uses the ``onnx_mapping`` onnx2torch attaches to each node's module: absorbed parameters
    come from the node's inputs (``_ABSORBED_INPUTS``); initializers left as inputs become
    buffers ``initializers.onnx_initializer_<k>`` in the order the fx graph reads them.
    """
    nodes = {node.output[0]: node for node in graph.node if node.output}
    initializers = {t.name for t in graph.initializer}
    hints: dict[str, TensorSlot] = {}
    for call in module.graph.nodes:
        if call.op != "call_module":
            continue
        owner = module.get_submodule(call.target)
        mapping = getattr(owner, "onnx_mapping", None)
        node = nodes.get(mapping.outputs[0]) if mapping is not None and mapping.outputs else None
        if node is None:
            continue
        # initializers passed as inputs: fx get_attr arguments, in the order of the ONNX inputs
        read = [
            arg.target
            for arg in (*call.args, *call.kwargs.values())
            if getattr(arg, "op", None) == "get_attr"
        ]
        passed = [name for name in mapping.inputs if name in initializers]
        if len(read) == len(passed):
            for target, name in zip(read, passed, strict=True):
                if name in stored:
                    hints[target] = TensorSlot(name)
        # parameters folded into modules (also inside wrappers such as Sequential(pad, conv))
        for prefix, sub in owner.named_modules(prefix=call.target):
            inputs = _ABSORBED_INPUTS.get(type(sub).__name__, {})
            for attr, index in inputs.items():
                if index < len(node.input) and node.input[index] in stored:
                    transposed = node.op_type == "Gemm" and attr == "weight" and not _trans_b(node)
                    hints[f"{prefix}.{attr}"] = TensorSlot(node.input[index], transposed)
    return hints


def _trans_b(node: Any) -> bool:
    return bool(next((a.i for a in node.attribute if a.name == "transB"), 0))


def _crossbar_biases(graph: Any, crossbar: set[str], stored: Mapping[str, np.ndarray]) -> set[str]:
    """Initializers added to a crossbar op's output (MatMul + Add): trained like biases."""
    crossbar_outputs = {
        node.output[0]
        for node in graph.node
        if node.op_type in _CROSSBAR_OPS and any(name in crossbar for name in node.input)
    }
    biases = set()
    for node in graph.node:
        if node.op_type == "Add" and len(node.input) == 2:
            left, right = node.input
            if left in crossbar_outputs and right in stored:
                biases.add(right)
            elif right in crossbar_outputs and left in stored:
                biases.add(left)
    return biases


def _tie(
    module: Any, name: str, places: list[TensorSlot], *, promote: bool, torch: Any
) -> TensorSlot:
    """Make every tensor of one initializer the same object; returns the one kept.

    onnx2torch copies an initializer once per use (a shared weight becomes independent copies);
    tying keeps it one weight while training, as the file can store only one. ``promote`` turns
    a buffer into a Parameter so the optimiser sees it (weights and biases that onnx2torch left
    as plain inputs).
    """
    tensors = [_tensor_at(module, slot.target) for slot in places]
    parameters = [isinstance(t, torch.nn.Parameter) for t in tensors]
    # the buffers onnx2torch makes of initializers passed as inputs; other buffers (BatchNorm
    # running statistics) change on their own while training
    inputs = [slot.target.startswith("initializers.") for slot in places]
    tieable = (
        all(p or i for p, i in zip(parameters, inputs, strict=True))
        if promote
        else all(parameters) or all(inputs)
    )
    if (len(places) > 1 and not tieable) or len({slot.transposed for slot in places}) > 1:
        roles = ", ".join(slot.target for slot in places)
        raise UserError(
            f"initializer {name} is shared (directly or through Identity nodes) by tensors that "
            f"train differently ({roles}), so trained values could not be written back into it",
            hint="torch's exporter merges initializers with equal values (e.g. an untrained "
            "BatchNorm's weight and running variance): export a trained model, fold BatchNorm "
            "into the convolutions, or harden the model as TorchScript",
        )
    keep_index = parameters.index(True) if any(parameters) else 0
    keep, tensor = places[keep_index], tensors[keep_index]
    if promote and not isinstance(tensor, torch.nn.Parameter):
        tensor = torch.nn.Parameter(tensor.detach().clone())
    for slot, current in zip(places, tensors, strict=True):
        if current is tensor:
            continue
        owner_name, _, attr = slot.target.rpartition(".")
        owner = module.get_submodule(owner_name)
        delattr(owner, attr)
        if isinstance(tensor, torch.nn.Parameter):
            owner.register_parameter(attr, tensor)
        else:
            owner.register_buffer(attr, tensor)
    return keep


def _tensor_at(module: Any, target: str) -> Any:
    owner_name, _, attr = target.rpartition(".")
    return getattr(module.get_submodule(owner_name), attr)


def _equal(value: np.ndarray, array: np.ndarray, transposed: bool) -> bool:
    """Exact equality of a torch tensor's values with an initializer (or its 2-D transpose)."""
    if transposed:
        if array.ndim != 2:
            return False
        array = array.T
    return value.shape == array.shape and bool(np.array_equal(value, array))


def _export_onnx(trainable: TrainableModel, out: Path, metadata: dict[str, Any]) -> None:
    """The original file with trained values in its initializers (or weight Constant nodes)."""
    import onnx

    from ftaudit.models.onnx import load_onnx_bytes
    from ftaudit.models.onnx_sklearn import attribute_targets, write_attribute

    source = trainable.source
    try:
        raw = source.path.read_bytes()
    except OSError as exc:
        raise UserError(
            f"cannot re-read the input model {source.path} to export it: {exc.strerror}"
        ) from exc
    model = load_onnx_bytes(source.path, raw)
    tensors = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:  # weights stored as Constant nodes are written there
        if node.op_type == "Constant" and not node.domain and node.output[0] not in tensors:
            value = [a for a in node.attribute if a.name == "value"]
            if value:
                tensors[node.output[0]] = value[0].t
    attributes = attribute_targets(model)  # a LinearClassifier's coefficients and intercepts
    for name, slot in trainable.slots.items():
        if name in attributes and name not in tensors:
            value = to_numpy(_tensor_at(trainable.module, slot.target))
            attribute, transposed = attributes[name]
            write_attribute(attribute, value.T if slot.transposed else value, transposed)
            continue
        if name not in tensors:
            raise UserError(
                f"{source.path} changed on disk since it was loaded: initializer {name} is gone",
                hint="harden again from the current file",
            )
        value = to_numpy(_tensor_at(trainable.module, slot.target))
        _overwrite_values(tensors[name], value.T if slot.transposed else value, source.path)
    kept = [p for p in model.metadata_props if not p.key.startswith("ftaudit.")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = "ftaudit.hardening"
    entry.value = json.dumps(metadata, sort_keys=True)
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    atomic_write(out, lambda tmp: tmp.write_bytes(data))


def _overwrite_values(tensor: Any, value: np.ndarray, path: Path) -> None:
    """Replace a TensorProto's values in place; its name, dtype and dims stay as they are."""
    from onnx import helper, numpy_helper

    if tuple(value.shape) != tuple(tensor.dims):
        raise UserError(
            f"{path} changed on disk since it was loaded: initializer {tensor.name} has shape "
            f"{tuple(tensor.dims)}, the trained tensor {tuple(value.shape)}",
            hint="harden again from the current file",
        )
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    encoded = numpy_helper.from_array(value.astype(dtype, copy=False), tensor.name)
    for name in ("float_data", "double_data", "int32_data", "int64_data", "uint64_data"):
        tensor.ClearField(name)
    tensor.raw_data = encoded.raw_data


# ---------------------------------------------------------------------------------------------
# TorchScript


def _torchscript_trainable(model: AuditModel) -> TrainableModel:
    """A fresh ScriptModule from the archive's bytes; crossbar names are parameter names."""
    from ftaudit.models.torchscript import jit_load

    if any(layer.dtype == "float16" for layer in model.layers):
        raise UserError(
            f"{model.path} is a float16 TorchScript model, which harden cannot train "
            "(training needs float32 weights)",
            hint="harden the float32 model and convert the result with .half(), or harden "
            "its float16 ONNX export",
        )
    module = jit_load(cast("TorchScriptModel", model).raw, model.path)
    module.eval()
    parameters = dict(module.named_parameters())
    crossbar = {layer.name: parameters[layer.name] for layer in model.layers}
    return TrainableModel(
        module=module, source=model, crossbar=crossbar, split_inputs=model.data_inputs
    )


def _export_torchscript(trainable: TrainableModel, out: Path, metadata: dict[str, Any]) -> None:
    """torch.jit.save of an eval-mode CPU copy, with the metadata as extra file ftaudit.json."""
    from ftaudit.models.torchscript import jit_load

    torch = require_torch(FEATURE)
    if trainable.by_name:  # trained as its ONNX export: the archive with the trained values
        module = jit_load(cast("TorchScriptModel", trainable.source).raw, trainable.source.path)
        _write_by_name(module.state_dict(), trainable.slot_values(), torch)
        module.eval()
    else:
        # a copy through bytes (deepcopy would clone parameters into non-leaf tensors): the
        # trainable module keeps its device and mode, the file is saved from the CPU in eval
        # mode so it loads anywhere and behaves like an inference model
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.save's deprecation notice
            torch.jit.save(trainable.module, buffer)
        module = jit_load(buffer.getvalue(), trainable.source.path).eval()
    extra = {"ftaudit.json": json.dumps(metadata, sort_keys=True)}

    def save(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(module, str(tmp), _extra_files=extra)

    atomic_write(out, save)


# ---------------------------------------------------------------------------------------------
# torch.export


def _program_trainable(model: AuditModel) -> TrainableModel:
    """``ExportedProgram.module()`` of the archive; crossbar names are parameter names.

    The exported graph is fixed in the mode it was exported in (eval: BatchNorm uses its running
    statistics, dropout is off), so training fine-tunes that graph; the module's ``train()``,
    which torch refuses for exported programs, only records the mode."""
    import types

    from ftaudit.models.export import load_program

    batch = model.input.shape[0] if model.input.shape else None
    if batch is not None:
        raise UserError(
            f"{model.path} was exported for batches of exactly {batch}, so it cannot be trained "
            "on mini-batches",
            hint="export with a dynamic batch axis: torch.export.export(model, (x,), "
            "dynamic_shapes=({0: torch.export.Dim('batch')},))",
        )
    module = load_program(cast("Any", model).raw, model.path).module()

    def record_mode(self: Any, mode: bool = True) -> Any:
        self.training = mode
        return self

    module.train = types.MethodType(record_mode, module)
    module.eval = types.MethodType(lambda self: self.train(False), module)
    parameters = dict(module.named_parameters())
    crossbar = {layer.name: parameters[layer.name] for layer in model.layers}
    return TrainableModel(
        module=module, source=model, crossbar=crossbar, split_inputs=model.data_inputs
    )


def _export_program(trainable: TrainableModel, out: Path, metadata: dict[str, Any]) -> None:
    """The original program with trained parameter values (same graph), torch.export.save'd
    with the metadata as extra file ftaudit.json."""
    from ftaudit.models.export import load_program

    torch = require_torch(FEATURE)
    source = trainable.source
    program = load_program(cast("Any", source).raw, source.path)
    trained = (
        trainable.slot_values()
        if trainable.by_name
        else {name: to_numpy(p) for name, p in trainable.module.named_parameters()}
    )
    _write_by_name(program.state_dict, trained, torch)
    extra = {"ftaudit.json": json.dumps(metadata, sort_keys=True)}

    # saved to memory: torch logs a warning for a file whose name (the temporary file's) does
    # not end in .pt2
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(program, buffer, extra_files=extra)
    atomic_write(out, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def _write_by_name(state: Mapping[str, Any], values: Mapping[str, np.ndarray], torch: Any) -> None:
    """Copy trained values into the tensors of a state dict that have their names."""
    with torch.no_grad():
        for name, tensor in state.items():
            if name in values:
                tensor.copy_(torch.from_numpy(np.ascontiguousarray(values[name])).to(tensor))


_MAKERS: dict[str, Callable[[AuditModel], TrainableModel]] = {
    "onnx": onnx_trainable,
    "torch.export": _program_trainable,
    "torchscript": _torchscript_trainable,
}
_EXPORTERS: dict[str, Callable[[TrainableModel, Path, dict[str, Any]], None]] = {
    "onnx": _export_onnx,
    "torch.export": _export_program,
    "torchscript": _export_torchscript,
}
