"""Several Monte Carlo samples per forward pass: the GPU path (``--batch-samples``).

An ONNX model is converted to torch (onnx2torch, the same conversion ``harden`` trains) and
``torch.func.vmap`` evaluates S perturbed weight sets over one data batch in a single call
(convolutions become grouped convolutions, linear layers batched matmuls), with the data and
labels kept on the device. On a GPU this turns S small launches into one large one. Logits come
from torch rather than ONNX Runtime, so they agree with the one-sample path to float rounding
(counts may differ on an exact tie), not bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ftaudit._optional import require_torch
from ftaudit.errors import UserError
from ftaudit.models.base import AuditModel, CrossbarLayer, ModelRunner, contiguous_input

FEATURE = "--batch-samples (several Monte Carlo samples per forward pass)"
#: samples per forward pass on a GPU when --batch-samples is not given
DEFAULT_CUDA_BATCH_SAMPLES = 16


def resolve_batch_samples(batch_samples: int | None, *, device: str, model_format: str) -> int:
    """The samples per forward pass to use: explicit, else 16 for ONNX on CUDA, else 1."""
    if batch_samples is not None:
        if batch_samples < 1:
            raise UserError(
                f"--batch-samples must be at least 1, got {batch_samples}",
                hint="e.g. --batch-samples 16",
            )
        if batch_samples > 1 and model_format != "onnx":
            raise UserError(
                f"--batch-samples needs an ONNX model; {model_format} modules cannot be "
                "evaluated for several weight sets at once (torch's stateless API refuses them)",
                hint="export the model to ONNX, or drop --batch-samples",
            )
        return batch_samples
    return DEFAULT_CUDA_BATCH_SAMPLES if device == "cuda" and model_format == "onnx" else 1


class BatchedTorchRunner(ModelRunner):
    """The model as a torch module; ``count_correct_many`` runs S weight sets in one vmap."""

    def __init__(
        self, model: AuditModel, selected: Sequence[CrossbarLayer], *, device: str
    ) -> None:
        self.torch = torch = require_torch(FEATURE)
        from ftaudit.harden.trainable import make_trainable
        from ftaudit.models.torchscript import resolve_torch_device

        self.device = resolve_torch_device(device)
        self.trainable = make_trainable(model)
        self.module = self.trainable.module.to(self.device).eval()
        names = {id(p): n for n, p in self.module.named_parameters()}
        names.update({id(b): n for n, b in self.module.named_buffers()})
        self.selected = [layer.name for layer in selected]
        #: crossbar weight -> (module parameter name, stored transposed)
        self.targets = {
            name: (names[id(self.trainable.crossbar[name])], self.trainable._transposed(name))
            for name in self.selected
        }
        self._batches: list[Any] = []
        self._labels_t: list[Any] = []
        self.runtime_errors = (RuntimeError,)
        #: why weight sets run one by one after all (an op torch cannot vmap), else None
        self.fallback: str | None = None
        self._call = torch.func.vmap(self._forward, in_dims=(0, None))

    def _forward(self, weights: dict[str, Any], x: Any) -> Any:
        out = self.torch.func.functional_call(self.module, weights, (x,))
        return out[0] if isinstance(out, (tuple, list)) else out

    def bind_data(self, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> None:
        x = contiguous_input(x)
        torch = self.torch
        self._batches = [
            torch.from_numpy(x[s : s + batch_size]).to(self.device)
            for s in range(0, len(x), batch_size)
        ]
        self._labels = np.asarray(y)
        self._labels_t = [
            torch.from_numpy(np.ascontiguousarray(self._labels[s : s + batch_size])).to(self.device)
            for s in range(0, len(x), batch_size)
        ]

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        self.trainable.set_crossbar_arrays(dict(weights))

    def logits(self) -> np.ndarray:
        outs = []
        with self.torch.no_grad():
            for batch in self._batches:
                out = self.module(batch)
                out = out[0] if isinstance(out, (tuple, list)) else out
                outs.append(out.float().cpu().numpy())
        return np.concatenate(outs) if len(outs) > 1 else outs[0]

    def count_correct_many(self, weight_sets: Sequence[Mapping[str, np.ndarray]]) -> list[int]:
        """Correct counts of several weight sets (stored layout), one vmapped pass per batch."""
        torch = self.torch
        stacked = {}
        for name in self.selected:
            target, transposed = self.targets[name]
            value = torch.from_numpy(np.stack([w[name] for w in weight_sets]))
            if transposed:
                value = value.transpose(-1, -2)
            stacked[target] = value.to(self.device, non_blocking=True)
        if self.fallback is not None:
            return super().count_correct_many(weight_sets)
        correct = torch.zeros(len(weight_sets), dtype=torch.int64, device=self.device)
        try:
            with torch.no_grad():
                for batch, labels in zip(self._batches, self._labels_t, strict=True):
                    logits = self._call(stacked, batch)  # (S, batch, classes)
                    correct += (logits.argmax(dim=-1) == labels).sum(dim=-1)
        except (RuntimeError, NotImplementedError) as exc:
            # an op with no batching rule: evaluate the weight sets one by one from now on
            # (the first pass already ran this module on the data, so the data is not at fault)
            text = str(exc).strip().splitlines()
            self.fallback = f"vmap failed, one sample per pass: {text[0][:200] if text else exc}"
            return super().count_correct_many(weight_sets)
        return [int(c) for c in correct.cpu()]
