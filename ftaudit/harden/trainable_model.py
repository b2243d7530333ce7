"""The trainable torch copy of a loaded model, and where its crossbar weights live in it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ftaudit._optional import require_torch
from ftaudit.models.base import AuditModel
from ftaudit.models.binary_head import train_on_log, two_class_tensor
from ftaudit.models.packed_inputs import packed_call
from ftaudit.models.tensor_spec import TensorSpec

if TYPE_CHECKING:
    import torch

FEATURE = "hardened models"


@dataclass(frozen=True)
class TensorSlot:
    """Where one ONNX initializer lives in the converted module.

    ``target`` is the parameter's or buffer's qualified name; ``transposed`` says the torch
    tensor is the 2-D transpose of the stored initializer (a Gemm with transB=0 becomes a
    ``Linear`` whose weight is (out, in)).
    """

    target: str
    transposed: bool = False


@dataclass
class TrainableModel:
    """A trainable torch copy of ``source`` whose crossbar weights can be read and written.

    ``crossbar`` maps each crossbar layer name to the tensor holding it (an ``nn.Parameter``
    for ONNX; a grad-requiring tensor from ``named_parameters`` for TorchScript). ``slots``
    (ONNX only) maps every float initializer that was traced into the module to its tensor; the
    export writes those back. ``module.to(device)`` keeps these tensors' identity.
    """

    module: torch.nn.Module
    source: AuditModel
    crossbar: dict[str, torch.Tensor]
    slots: dict[str, TensorSlot] = field(default_factory=dict)
    #: crossbar layer name -> its torch tensor is the 2-D transpose of the layer's layout
    crossbar_transposed: dict[str, bool] = field(default_factory=dict)
    #: trained as the source's own ONNX export (the analog pipeline's graph, for TorchScript and
    #: torch.export sources): ``slots`` carry the source's parameter and buffer names, and the
    #: export writes the trained values back into the source by those names
    by_name: bool = False
    #: the ONNX model ``module`` was converted from when it is not ``source`` (a TorchScript or
    #: torch.export source trained as its in-memory export): what graph edits read
    graph: Any = None
    #: the source's data inputs when the module takes them as separate arguments (a TorchScript
    #: or torch.export module fed packed data); () when it takes the batch as is
    split_inputs: tuple[TensorSpec, ...] = ()
    #: float tensors already NaN/inf before training (a transformer's -inf mask constant): not
    #: a sign of divergence when the trained model is checked before export
    non_finite_at_start: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        torch = require_torch(FEATURE)
        tensors = [*self.module.named_parameters(), *self.module.named_buffers()]
        self.non_finite_at_start = frozenset(
            name
            for name, tensor in tensors
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
        )

    def forward(self, batch: Any) -> Any:
        """The module's output for one batch of (packed) data; one score per input as the
        two-class logits the engine counts (``models.binary_head``)."""
        out = packed_call(self.module, batch, self.split_inputs)
        if isinstance(out, (tuple, list)) and out:
            out = out[self.source.output_index]
        torch = require_torch(FEATURE)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            activation = self.source.output_activation
            if activation == "softmax":  # cross-entropy over log-probabilities, not over p
                return train_on_log(torch, out)
            return two_class_tensor(torch, out, activation == "sigmoid")
        return out

    def _transposed(self, name: str) -> bool:
        if name in self.crossbar_transposed:
            return self.crossbar_transposed[name]
        slot = self.slots.get(name)
        return slot is not None and slot.transposed

    def crossbar_arrays(self) -> dict[str, np.ndarray]:
        """Current crossbar weights as fresh arrays in the source's stored layout and dtype."""
        dtypes = {layer.name: np.dtype(layer.dtype) for layer in self.source.layers}
        arrays = {}
        for name, tensor in self.crossbar.items():
            value = to_numpy(tensor)
            if self._transposed(name):
                value = value.T
            arrays[name] = np.array(value, dtype=dtypes[name], order="C", copy=True)
        return arrays

    def set_crossbar_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Write arrays (stored layout; any subset of the layers) into the tensors in place."""
        torch = require_torch(FEATURE)
        with torch.no_grad():
            for name, array in arrays.items():
                tensor = self.crossbar[name]
                contiguous = np.ascontiguousarray(array)
                if not contiguous.flags.writeable:  # torch.from_numpy warns on read-only arrays
                    contiguous = contiguous.copy()
                value = torch.from_numpy(contiguous)
                if self._transposed(name):
                    value = value.T
                if tuple(value.shape) != tuple(tensor.shape):
                    # copy_ would broadcast silently; a wrong shape is a caller's bug
                    raise ValueError(
                        f"crossbar layer {name}: an array of shape {np.shape(array)} does not "
                        f"fit the layer's tensor of shape {tuple(tensor.shape)} "
                        f"(transposed: {self._transposed(name)})"
                    )
                tensor.copy_(value)

    def slot_values(self) -> dict[str, np.ndarray]:
        """Every traced initializer's current value, in its stored layout."""
        values = {}
        for name, slot in self.slots.items():
            owner, _, attr = slot.target.rpartition(".")
            value = to_numpy(getattr(self.module.get_submodule(owner), attr))
            values[name] = value.T if slot.transposed else value
        return values

    def state_dict(self) -> dict[str, Any]:
        """The module's state (parameters and buffers) for checkpoints."""
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`, in place (tensor identities are kept)."""
        self.module.load_state_dict(state)


def to_numpy(tensor: Any) -> np.ndarray:
    """A tensor's values on the CPU (bfloat16, which numpy lacks, as float32)."""
    value = tensor.detach()
    if str(value.dtype) == "torch.bfloat16":
        value = value.float()
    return value.cpu().numpy()
