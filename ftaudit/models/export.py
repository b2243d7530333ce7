"""torch.export programs (``torch.export.save`` archives, .pt2): crossbar weights are the
parameters that convolution, linear, matrix-product, einsum, bilinear and recurrent calls of the
exported graph read as weights (``ftaudit.models.torch_products``), overwritten in place.

TorchScript is deprecated in torch 2.14; an ExportedProgram is its successor. The program's
graph is inspected, never re-traced; ``ExportedProgram.module()`` runs it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftaudit._optional import require_torch
from ftaudit.errors import UserError
from ftaudit.models.base import (
    AuditModel,
    CrossbarLayer,
    ModelRunner,
    TensorSpec,
    contiguous_input,
    torch_output_index,
)
from ftaudit.models.binary_head import output_activation, two_class_numpy
from ftaudit.models.onnx_graph import UntracedOp
from ftaudit.models.packed_inputs import packed_call, packed_spec
from ftaudit.models.torch_products import (
    DERIVING,
    SCALINGS,
    TRANSPARENT,
    Operand,
    ProductScan,
)

FEATURE = "torch.export programs"
#: aten operator name -> the op name shown for the layer (the weight is argument 1)
CROSSBAR_CALLS = {
    "aten.conv1d.default": "Conv1d",
    "aten.conv2d.default": "Conv2d",
    "aten.conv3d.default": "Conv3d",
    "aten.conv1d.padding": "Conv1d",
    "aten.conv2d.padding": "Conv2d",
    "aten.conv3d.padding": "Conv3d",
    "aten.convolution.default": "Conv",
    "aten.conv_transpose1d.default": "ConvTranspose1d",
    "aten.conv_transpose2d.input": "ConvTranspose2d",
    "aten.conv_transpose3d.input": "ConvTranspose3d",
    "aten.linear.default": "Linear",
}


def is_exported_program(names: Sequence[str]) -> bool:
    """Whether a zip archive's member names are a torch.export.save archive."""
    return any(n.endswith("/archive_format") for n in names) and any(
        "/models/" in n and n.endswith(".json") for n in names
    )


def load_program(raw: bytes, path: Path) -> Any:
    """torch.export.load from bytes, with one clear error for archives it cannot read."""
    torch = require_torch(FEATURE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.export.load(io.BytesIO(raw))
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise UserError(
                f"{path} is not a loadable torch.export archive: {first[:200]}",
                hint="save it with torch.export.save(torch.export.export(model, args), path) "
                "using this torch version",
            ) from exc


def _spec(node: Any, name: str) -> TensorSpec:
    value = node.meta.get("val")
    if value is None or not hasattr(value, "shape"):
        return TensorSpec(name, None, "float32")
    dims = tuple(int(d) if isinstance(d, int) else None for d in value.shape)
    return TensorSpec(name, dims, str(value.dtype).removeprefix("torch."))


@dataclass
class ExportedProgramModel(AuditModel):
    """A ``torch.export.save`` archive kept in memory; the file is never written back."""

    raw: bytes = b""

    @classmethod
    def from_bytes(
        cls, path: Path, raw: bytes, *, output: str | None = None
    ) -> ExportedProgramModel:
        torch = require_torch(FEATURE)
        program = load_program(raw, path)
        signature = program.graph_signature
        user_inputs = [n for n in program.graph.nodes if n.name in signature.user_inputs]
        if not user_inputs:
            raise UserError(
                f"{path} takes no input; ftaudit evaluates classifiers that take data",
                hint="export the model with its input tensor: torch.export.export(model, (x,))",
            )
        inputs = tuple(_spec(node, node.name) for node in user_inputs)
        layers, untraced = program_layers(program)
        shapes = {layer.name: layer.shape for layer in layers}
        fold_scales = {
            name: scale.reshape(-1, *([1] * (len(shapes[name]) - 1)))
            for name, scale in _batchnorm_scales(program).items()
            if name in shapes
        }
        output_nodes = [n for n in program.graph.nodes if n.op == "output"]
        outputs = output_nodes[0].args[0] if output_nodes else ()
        several = isinstance(outputs, (tuple, list)) and len(outputs) > 1
        index = torch_output_index(output, len(outputs) if several else 1, path)
        first_out = outputs[index] if isinstance(outputs, (tuple, list)) and outputs else None
        others = [f"output[{i}]" for i in range(1, len(outputs))] if several and not output else []
        return cls(
            path=path,
            format="torch.export",
            input=inputs[0] if len(inputs) == 1 else packed_spec(inputs, path),
            data_inputs=inputs if len(inputs) > 1 else (),
            output=_spec(first_out, f"output[{index}]" if several else "output")
            if first_out is not None
            else TensorSpec("output", None, "float32"),
            layers=layers,
            output_activation=_output_activation(first_out),
            output_index=index,
            metadata={
                "producer": f"torch {torch.__version__} (torch.export)",
                **({"other_outputs": others} if others else {}),
            },
            untraced=untraced,
            fold_scales=fold_scales,
            raw=raw,
        )

    def clean_weights(self) -> dict[str, np.ndarray]:
        state = load_program(self.raw, self.path).state_dict
        return {
            layer.name: state[layer.name].detach().cpu().numpy().copy() for layer in self.layers
        }

    def runner(
        self, selected: Sequence[CrossbarLayer], *, device: str, threads: int | None = None
    ) -> ExportedProgramRunner:
        from ftaudit.models.torchscript import resolve_torch_device

        return ExportedProgramRunner(self, selected, device=resolve_torch_device(device))


def _output_activation(node: Any) -> str | None:
    """'sigmoid' or 'softmax' when the program's output ``node`` is that op's (through views)."""
    views = {"view", "reshape", "squeeze", "unsqueeze", "flatten", "contiguous", "_unsafe_view"}
    kinds: list[str] = []
    while node is not None and getattr(node, "op", None) == "call_function":
        kinds.append(_call_name(node.target))
        if kinds[-1] not in views or not node.args:
            break
        node = node.args[0]
    return output_activation(kinds[-1:])


def _call_name(target: Any) -> str:
    """An aten call's name without namespace and overload (``aten.conv2d.padding``: conv2d);
    ``getitem`` for Python's item access."""
    text = str(target)
    if text.startswith("aten."):
        return text.split(".")[1]
    return getattr(target, "__name__", text)


def _operand(parameters: Mapping[str, str]) -> Operand:
    """Trace a graph argument back to the parameter it is (its state-dict name), through the
    calls ``torch_products`` knows (transparent copies left out of the list)."""

    def operand(arg: Any) -> tuple[str, list[str]] | None:
        via: list[str] = []
        for _ in range(32):
            if getattr(arg, "op", None) == "placeholder":
                name = parameters.get(arg.name)
                return (name, via) if name is not None else None
            if getattr(arg, "op", None) != "call_function" or not arg.args:
                return None
            call = _call_name(arg.target)
            if call == "permute" and list(arg.args[1]) in ([0, 1], [-2, -1]):
                call = "contiguous"  # a permute that changes nothing
            if call not in TRANSPARENT and call not in DERIVING:
                return None
            if call in SCALINGS and not isinstance(arg.args[1], (int, float)):
                return None
            if call not in TRANSPARENT:
                via.append(call)
            arg = arg.args[0]
        return None

    return operand


def program_layers(program: Any) -> tuple[list[CrossbarLayer], list[UntracedOp]]:
    """The crossbar layers of an exported program (in graph order) and the products whose
    parameter operand cannot be mapped, with why (``ftaudit.models.torch_products``)."""
    parameters = dict(program.graph_signature.inputs_to_parameters)
    state = program.state_dict
    floats = {fqn for fqn in parameters.values() if state[fqn].dtype.is_floating_point}
    chosen: dict[str, tuple[str, bool]] = {}
    scan = ProductScan(
        ranks={fqn: state[fqn].dim() for fqn in floats},
        operand=_operand({k: v for k, v in parameters.items() if v in floats}),
        elements=lambda arg: list(arg) if isinstance(arg, (list, tuple)) else [],
        constant=lambda arg: arg,
        fix=" (a decomposed program: export it without run_decompositions())",
        mapped=chosen,
    )
    computed: list[UntracedOp] = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        target = str(node.target)
        weight = node.args[1] if len(node.args) > 1 else None
        fqn = parameters.get(getattr(weight, "name", None)) if weight is not None else None
        if target in CROSSBAR_CALLS and fqn is not None:
            if fqn in floats:
                chosen.setdefault(fqn, (CROSSBAR_CALLS[target], False))
            continue
        scan.node(_call_name(node.target), list(node.args), node.name, target)
        if target in CROSSBAR_CALLS and scan.operand(weight) is None:
            computed.append(
                UntracedOp(
                    node.name,
                    target,
                    "its weight is not a parameter read directly (a decomposed or "
                    "computed weight); export without run_decompositions()",
                )
            )
    layers = [
        CrossbarLayer(
            name=fqn,
            op=op,
            index=k,
            shape=tuple(state[fqn].shape),
            dtype=str(state[fqn].dtype).removeprefix("torch."),
            transposed=transposed,
        )
        for k, (fqn, (op, transposed)) in enumerate(chosen.items())
    ]
    unmapped = [op for fqn, op in scan.unmapped.items() if fqn not in chosen]
    return layers, unmapped + computed


#: BatchNorm calls -> index of their eps argument
_BATCHNORM_EPS = {
    "aten.batch_norm.default": 7,
    "aten._native_batch_norm_legit_no_training.default": 6,
}


def _batchnorm_scales(program: Any) -> dict[str, np.ndarray]:
    """Conv weight name -> gamma / sqrt(var + eps) of the BatchNorm that alone takes the
    convolution's output (``ftaudit.models.folding``)."""
    from ftaudit.models.folding import fold_scale

    signature = program.graph_signature
    names = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    state = {**program.state_dict, **dict(program.named_buffers())}
    found: dict[str, np.ndarray] = {}
    for node in program.graph.nodes:
        eps_at = _BATCHNORM_EPS.get(str(node.target)) if node.op == "call_function" else None
        if eps_at is None or len(node.args) <= eps_at:
            continue
        conv = node.args[0]
        if (
            getattr(conv, "op", None) != "call_function"
            or not CROSSBAR_CALLS.get(str(conv.target), "").startswith("Conv")
            or "Transpose" in CROSSBAR_CALLS[str(conv.target)]
            or len(conv.users) != 1
        ):
            continue
        weight = names.get(getattr(conv.args[1], "name", None))
        gamma = names.get(getattr(node.args[1], "name", None))
        var = names.get(getattr(node.args[4], "name", None))
        if weight is None or var not in state:
            continue
        scale = fold_scale(
            None if gamma is None else state[gamma].detach().cpu().numpy(),
            state[var].detach().cpu().numpy(),
            float(node.args[eps_at]),
            1,
        )
        if scale is not None:
            found[weight] = scale
    return found


class ExportedProgramRunner(ModelRunner):
    """The program's module (``ExportedProgram.module()``) with parameters overwritten per
    sample; a fixed batch axis is padded like the ONNX runner's."""

    runtime_errors = (RuntimeError, AssertionError, ValueError)

    def __init__(
        self, model: ExportedProgramModel, selected: Sequence[CrossbarLayer], *, device: str
    ) -> None:
        self.torch = torch = require_torch(FEATURE)
        self.module = load_program(model.raw, model.path).module().to(device)
        self.device = device
        params = {
            **dict(self.module.named_parameters()),
            **dict(self.module.named_buffers()),
        }
        self.params = {layer.name: params[layer.name] for layer in selected}
        self.model = model
        self.fixed = model.input.shape[0] if model.input.shape else None
        self._batches: list[Any] = []
        self._n = 0
        self._grad = torch.no_grad

    def bind_data(self, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> None:
        torch = self.torch
        x = contiguous_input(x)
        size = self.fixed or batch_size
        batches = []
        for start in range(0, len(x), size):
            chunk = x[start : start + size]
            if self.fixed and len(chunk) < self.fixed:
                pad = np.zeros((self.fixed - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            batches.append(torch.from_numpy(chunk).to(self.device))
        self._batches = batches
        self._n = len(x)
        self._labels = np.asarray(y)

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        torch = self.torch
        with torch.no_grad():
            for name, array in weights.items():
                self.params[name].copy_(torch.from_numpy(np.ascontiguousarray(array)))

    def logits(self) -> np.ndarray:
        outs = []
        with self.torch.no_grad():
            for batch in self._batches:
                out = packed_call(self.module, batch, self.model.data_inputs)
                if isinstance(out, (tuple, list)):
                    out = out[self.model.output_index]
                outs.append(out.float().cpu().numpy())
        logits = np.concatenate(outs) if len(outs) > 1 else outs[0]
        return two_class_numpy(logits[: self._n], self.model.output_activation == "sigmoid")
