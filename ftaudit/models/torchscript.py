"""TorchScript models: crossbar weights are parameters (``models.torchscript_layers`` finds
them), overwritten in place."""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
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
from ftaudit.models.packed_inputs import packed_call, packed_spec
from ftaudit.models.torchscript_layers import attr_path, script_layers


def jit_load(raw: bytes, path: Path, map_location: str = "cpu") -> Any:
    """torch.jit.load from bytes, without TorchScript's deprecation warnings in users' output."""
    torch = require_torch("TorchScript models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.jit.load(io.BytesIO(raw), map_location=map_location)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise UserError(
                f"{path} is not a loadable TorchScript archive: {first}",
                hint="save the model with torch.jit.save(torch.jit.script(model), path)",
            ) from exc


def resolve_torch_device(device: str) -> str:
    """'cpu' or 'cuda', with a clear error when CUDA is not usable here."""
    torch = require_torch("TorchScript models")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "--device cuda was asked for, but torch sees no CUDA device here",
            hint="use a machine with an NVIDIA GPU and a CUDA build of torch, or --device cpu",
        )
    return device


#: ops whose integer argument makes the module's input a tensor of indices (token ids)
_INDEX_OPS = {"aten::embedding": 1, "aten::one_hot": 0, "aten::embedding_bag": 1}


def _data_inputs(module: Any, path: Path) -> tuple[TensorSpec, ...]:
    """The forward's arguments after ``self`` that have no default, as TensorSpecs without a
    shape (TorchScript keeps none). The dtype rule (TorchScript keeps no input dtype either):
    'int64' for an argument fed straight to an embedding or one_hot as its indices (token ids),
    'float32' for any other (a mask, compared or multiplied, takes 0.0/1.0 as well as 0/1)."""
    try:
        arguments = list(module.forward.schema.arguments)[1:]
        values = list(module.inlined_graph.inputs())[1:]  # the first is the module itself
    except (RuntimeError, AttributeError):  # no scripted forward to read
        return (TensorSpec("input", None, "float32"),)
    # the arguments without a default are fed; the others are left to their defaults
    fed = [(a, v) for a, v in zip(arguments, values, strict=False) if not a.has_default_value()]
    specs = []
    for argument, value in fed:
        if len(fed) > 1 and str(argument.type) != "Tensor":
            raise UserError(
                f"{path}'s forward takes {argument.name} of type {argument.type}; ftaudit feeds "
                "several inputs only when each is a tensor",
                hint="script a module whose forward takes the data tensors (give other "
                "arguments defaults)",
            )
        index = any(_INDEX_OPS.get(use.user.kind()) == use.offset for use in value.uses())
        specs.append(TensorSpec(argument.name, None, "int64" if index else "float32"))
    return tuple(specs) or (TensorSpec("input", None, "float32"),)


_SHAPE_OPS = {"aten::dim", "aten::size", "aten::len", "prim::shape"}
_CONV_KINDS = ("aten::_convolution", "aten::conv1d", "aten::conv2d", "aten::conv3d")


def _batchnorm_scales(module: Any) -> dict[str, np.ndarray]:
    """Conv weight name -> gamma / sqrt(var + eps) of the BatchNorm that alone takes the
    convolution's output (``ftaudit.models.folding``)."""
    from ftaudit.models.folding import fold_scale

    try:
        nodes = list(module.inlined_graph.nodes())
    except RuntimeError:
        return {}
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    found: dict[str, np.ndarray] = {}
    for node in nodes:
        if node.kind() != "aten::batch_norm":
            continue
        inputs = list(node.inputs())
        conv = inputs[0].node()
        # scripted BatchNorm also reads its input's dim() and size(): those compute nothing
        users = [u.user.kind() for u in inputs[0].uses()]
        if conv.kind() not in _CONV_KINDS or len([k for k in users if k not in _SHAPE_OPS]) != 1:
            continue
        if conv.kind() == "aten::_convolution" and conv.inputsAt(6).toIValue():
            continue  # a transposed convolution: its output channels are not the first axis
        weight, gamma, var = (attr_path(v) for v in (conv.inputsAt(1), inputs[1], inputs[4]))
        eps = inputs[7].toIValue()
        if weight is None or var not in tensors or not isinstance(eps, float):
            continue
        scale = fold_scale(
            None if gamma is None else tensors[gamma].detach().cpu().numpy(),
            tensors[var].detach().cpu().numpy(),
            eps,
            1,
        )
        if scale is not None:
            found[weight] = scale
    return found


_FROZEN_REASON = (
    "the archive is frozen (torch.jit.freeze folded its weights into graph constants, which "
    "cannot be overwritten); save the scripted module before freezing it, or export it with "
    "torch.export or to ONNX"
)


def _frozen_ops(module: Any) -> list[Any]:
    """Convolution and linear calls of a module without parameters: a frozen archive."""
    from ftaudit.models.onnx_graph import UntracedOp

    if any(True for _ in module.parameters()):
        return []
    try:
        nodes = list(module.inlined_graph.nodes())
    except RuntimeError:
        return []
    kinds = ("aten::linear", "aten::conv", "aten::_convolution", "aten::matmul", "aten::addmm")
    return [
        UntracedOp(f"{node.kind()}#{i}", node.kind().removeprefix("aten::"), _FROZEN_REASON)
        for i, node in enumerate(nodes)
        if node.kind().startswith(kinds)
    ]


def _returned_count(module: Any) -> int:
    """How many tensors forward returns: a tuple's elements, else 1."""
    try:
        returned = module.forward.schema.returns[0].type
    except (AttributeError, IndexError, RuntimeError):  # no forward, or no schema
        return 1
    return len(returned.elements()) if type(returned).__name__ == "TupleType" else 1


def _others(count: int, requested: str | None) -> list[str]:
    """The outputs the audit does not read when none was chosen (``output[1]``, ...), so the
    user is told; none when ``--output`` chose."""
    return [] if requested is not None else [f"output[{i}]" for i in range(1, count)]


#: views that keep a sigmoid's values (walked through to the op that made the output)
_VIEW_OPS = ("view", "reshape", "squeeze", "unsqueeze", "flatten", "contiguous")


def _output_activation(module: Any) -> str | None:
    """'sigmoid' or 'softmax' when forward's output is that op's (probabilities)."""
    try:
        outputs = list(module.inlined_graph.outputs())
    except RuntimeError:
        return None
    node = outputs[0].node() if outputs else None
    kinds: list[str] = []
    while node is not None and node.kind().startswith("aten::"):
        kinds.append(node.kind())
        if node.kind().removeprefix("aten::") not in _VIEW_OPS:
            break
        node = node.inputsAt(0).node()
    return output_activation(kinds[-1:])


@dataclass
class TorchScriptModel(AuditModel):
    """A ``torch.jit.save`` archive, kept in memory; the file is never written back."""

    raw: bytes = b""

    @classmethod
    def from_bytes(cls, path: Path, raw: bytes, *, output: str | None = None) -> TorchScriptModel:
        module = jit_load(raw, path)
        count = _returned_count(module)
        index = torch_output_index(output, count, path)
        inputs = _data_inputs(module, path)
        layers, untraced = script_layers(module)
        if layers and all(layer.dtype == "float16" for layer in layers):
            # a model.half() archive reads float16 data (TorchScript declares no input dtype)
            inputs = tuple(
                replace(s, dtype="float16") if s.dtype == "float32" else s for s in inputs
            )
        shapes = {layer.name: layer.shape for layer in layers}
        return cls(
            fold_scales={
                name: scale.reshape(-1, *([1] * (len(shapes[name]) - 1)))
                for name, scale in _batchnorm_scales(module).items()
                if name in shapes
            },
            untraced=untraced if layers else untraced + _frozen_ops(module),
            path=path,
            format="torchscript",
            # TorchScript keeps no input signature: shapes are checked when data first runs
            input=replace(inputs[0], name="input")
            if len(inputs) == 1
            else packed_spec(inputs, path, declared=False),
            data_inputs=inputs if len(inputs) > 1 else (),
            output=TensorSpec("output" if count == 1 else f"output[{index}]", None, "float32"),
            output_index=index,
            output_activation=_output_activation(module),
            layers=layers,
            metadata={
                "producer": f"torch {require_torch('TorchScript models').__version__}",
                **({"other_outputs": others} if (others := _others(count, output)) else {}),
            },
            raw=raw,
        )

    def fit_input(self, x: np.ndarray) -> np.ndarray:
        """TorchScript declares no input shape: keep x if the model runs on it, else fit x to
        what the first crossbar layer takes (add a channel axis for Conv, flatten for Linear).
        Packed inputs (several) are never reshaped: the first real run reports a mismatch."""
        if not self.layers or self.data_inputs or self._runs_on(x[:2]):
            return x
        first = self.layers[0]
        if first.op.startswith("Conv") and not first.op.startswith("ConvTranspose"):
            spatial = int(first.op[4])  # Conv1d/2d/3d
            if x.ndim == spatial + 1 and first.shape[1] == 1:
                return x[:, None]
        elif first.op == "Linear" and int(np.prod(x.shape[1:])) == first.shape[1]:
            return x.reshape(len(x), -1)
        return x  # the first real run reports why the model rejects it

    def _runs_on(self, x: np.ndarray) -> bool:
        torch = require_torch("TorchScript models")
        module = jit_load(self.raw, self.path)
        try:
            with torch.no_grad():
                module(torch.from_numpy(self.typed_input(x)))
        except (RuntimeError, torch.jit.Error):
            return False
        return True

    def typed_input(self, x: np.ndarray) -> np.ndarray:
        """``x`` contiguous, float data in the float16 a half-precision model reads."""
        x = contiguous_input(x)
        if self.input.dtype == "float16" and x.dtype == np.float32:
            return x.astype(np.float16)
        return x

    def clean_weights(self) -> dict[str, np.ndarray]:
        module = jit_load(self.raw, self.path)
        params = dict(module.named_parameters())
        return {
            layer.name: params[layer.name].detach().cpu().numpy().copy() for layer in self.layers
        }

    def runner(
        self, selected: Sequence[CrossbarLayer], *, device: str, threads: int | None = None
    ) -> TorchScriptRunner:
        # torch's thread count is per process: worker processes set it (ftaudit.parallel)
        return TorchScriptRunner(self, selected, device=resolve_torch_device(device))


class TorchScriptRunner(ModelRunner):
    """A private copy of the module whose selected parameters are overwritten per sample."""

    runtime_errors: tuple[type[BaseException], ...] = (RuntimeError,)

    def __init__(
        self, model: TorchScriptModel, selected: Sequence[CrossbarLayer], *, device: str
    ) -> None:
        self.torch = require_torch("TorchScript models")
        # torch.jit.Error (a scripted `raise`) is not a RuntimeError
        self.runtime_errors = (RuntimeError, self.torch.jit.Error)
        self.module = jit_load(model.raw, model.path, map_location=device)
        self.module.eval()
        self.device = device
        params = dict(self.module.named_parameters())
        self.params = {layer.name: params[layer.name] for layer in selected}
        self.model = model
        self._batches: list[Any] = []

    def bind_data(self, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> None:
        torch = self.torch
        x = self.model.typed_input(x)
        self._batches = [
            torch.from_numpy(x[s : s + batch_size]).to(self.device)
            for s in range(0, len(x), batch_size)
        ]
        self._labels = np.asarray(y)

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        torch = self.torch
        with torch.no_grad():
            for name, array in weights.items():
                self.params[name].copy_(torch.from_numpy(np.ascontiguousarray(array)))

    def logits(self) -> np.ndarray:
        torch = self.torch
        outs = []
        with torch.no_grad():
            for batch in self._batches:
                out = packed_call(self.module, batch, self.model.data_inputs)
                if isinstance(out, (tuple, list)) and out:
                    out = out[self.model.output_index]
                outs.append(tensor_logits(torch, out))
        logits = np.concatenate(outs) if len(outs) > 1 else outs[0]
        return two_class_numpy(logits, self.model.output_activation == "sigmoid")


def tensor_logits(torch: Any, out: Any) -> np.ndarray:
    """A forward's output as float logits; anything else (a dict, ints, bools) is refused."""
    if not isinstance(out, torch.Tensor):
        raise UserError(
            f"the TorchScript model's forward returns a {type(out).__name__}, not a tensor of "
            "logits",
            hint="script a model whose forward returns the class scores (N, classes)",
        )
    if not out.is_floating_point():
        raise UserError(
            f"the model's output has dtype {str(out.dtype).removeprefix('torch.')}; ftaudit "
            "expects floating-point logits",
            hint="return the class scores, not the predicted classes",
        )
    return out.float().cpu().numpy()
