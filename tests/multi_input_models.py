"""A transformer-style classifier with three inputs (input_ids, attention_mask, token_type_ids),
built in plain torch with a random init (transformers itself is not a dependency), its padded
token data, and its exports."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
N, LENGTH, VOCAB = 160, 10, 50


class TinyEncoder(nn.Module):
    """Embeddings (token, segment, position), one masked attention block, masked mean pooling;
    padded positions are masked with -inf as transformers does."""

    def __init__(self, d: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.segment = nn.Embedding(2, d)
        self.position = nn.Embedding(LENGTH, d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.ff = nn.Linear(d, d)
        self.head = nn.Linear(d, classes)

    def forward(self, input_ids, attention_mask, token_type_ids):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        t = self.embed(input_ids) + self.segment(token_type_ids) + self.position(positions)
        scores = self.q(t) @ self.k(t).transpose(1, 2) / 4.0
        scores = scores.masked_fill(attention_mask[:, None, :] == 0, float("-inf"))
        t = t + torch.softmax(scores, dim=-1) @ self.v(t)
        t = t + torch.relu(self.ff(t))
        weights = attention_mask.unsqueeze(-1).to(t.dtype)
        return self.head((t * weights).sum(1) / weights.sum(1))


def encoder() -> TinyEncoder:
    torch.manual_seed(3)
    return TinyEncoder().eval()


def token_data() -> dict[str, np.ndarray]:
    """Padded token ids (id 0 after each sequence's end), their mask, two segments."""
    rng = np.random.default_rng(7)
    ids = rng.integers(1, VOCAB, size=(N, LENGTH)).astype(np.int64)
    lengths = rng.integers(3, LENGTH + 1, size=N)
    mask = (np.arange(LENGTH)[None, :] < lengths[:, None]).astype(np.int64)
    ids[mask == 0] = 0
    segments = (np.arange(LENGTH)[None, :] >= (lengths[:, None] // 2)).astype(np.int64) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": segments}


def torch_logits(model: nn.Module, data: dict[str, np.ndarray]) -> np.ndarray:
    """The model's own logits on ``data`` (missing mask: ones; missing segments: zeros)."""
    ids = torch.from_numpy(data["input_ids"])
    mask = torch.from_numpy(data.get("attention_mask", np.ones_like(data["input_ids"])))
    segments = torch.from_numpy(data.get("token_type_ids", np.zeros_like(data["input_ids"])))
    with torch.no_grad():
        return model(ids, mask, segments).numpy()


def export_encoder_onnx(model: nn.Module, path: Path, *, dynamo: bool = False) -> Path:
    data = token_data()
    example = tuple(torch.from_numpy(data[name][:2]) for name in INPUTS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=4096)
            sequence = torch.export.Dim("sequence", min=2, max=LENGTH)
            torch.onnx.export(
                model,
                example,
                str(path),
                input_names=list(INPUTS),
                output_names=["logits"],
                dynamic_shapes={name: {0: batch, 1: sequence} for name in INPUTS},
                verbose=False,
            )
        else:
            torch.onnx.export(
                model,
                example,
                str(path),
                dynamo=False,
                input_names=list(INPUTS),
                output_names=["logits"],
                dynamic_axes={name: {0: "n", 1: "length"} for name in INPUTS},
                opset_version=17,
            )
    return path
