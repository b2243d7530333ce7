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


def check_scaled_weights_reach_every_product(model_path: Path, data_path: Path) -> None:
    """All crossbar weights x1.1, fed by ftaudit's runner, give the logits of the torch model
    with its Linear weights x1.1 (a layout-free twin of the fed weights)."""
    from ftaudit.data import load_dataset
    from ftaudit.models import load_model

    model = load_model(model_path)
    runner = model.runner(model.layers, device="cpu")
    dataset = load_dataset(data_path)
    runner.bind_data(model.input_array(dataset), dataset.y, batch_size=64)
    runner.set_weights({name: w * 1.1 for name, w in model.clean_weights().items()})
    twin = encoder()
    with torch.no_grad():
        for module in twin.modules():
            if isinstance(module, nn.Linear):
                module.weight.mul_(1.1)
    np.testing.assert_allclose(runner.logits(), torch_logits(twin, token_data()), atol=1e-4)


def harden_once(model_path: Path, data_path: Path, out: Path):
    """``harden`` (noise, one epoch) of ``model_path``; returns (source, written) models after
    checking the written crossbar weights are the source's layers with new values."""
    from ftaudit.harden.api import harden
    from ftaudit.models import load_model

    harden(
        model_path,
        data_path,
        output=out,
        method="noise",
        sigma=0.1,
        epochs=1,
        eval_samples=2,
        eval_sigmas=[0.1],
    )
    source, written = load_model(model_path), load_model(out)
    trained, clean = written.clean_weights(), source.clean_weights()
    assert trained.keys() == clean.keys()
    assert any(not np.array_equal(trained[k], clean[k]) for k in clean)
    return source, written
