"""``ftaudit inspect``: what a model file is and which of its weights a crossbar would store."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ftaudit.evaluation import layer_infos, model_provenance
from ftaudit.models import load_model
from ftaudit.results.inspect import ModelSummary


def inspect_model(
    path: Path | str,
    *,
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    output: str | None = None,
) -> ModelSummary:
    """Load a model read-only and describe it; layer globs mark which layers eval would perturb."""
    model = load_model(path, output=output)
    selected = model.select_layers(layers, exclude) if (layers or exclude) else model.layers
    return ModelSummary(
        model=model_provenance(model),
        metadata=model.metadata,
        layers=layer_infos(model, [layer.name for layer in selected]),
    )
