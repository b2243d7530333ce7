"""``ftaudit inspect``: what a model file is and which of its weights a crossbar would store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftaudit import __version__
from ftaudit.evaluation import layer_infos, model_provenance
from ftaudit.models import load_model
from ftaudit.results import LayerInfo


@dataclass(frozen=True)
class ModelSummary:
    """Format, interface, crossbar layers and totals of one model file."""

    model: dict[str, Any]
    metadata: dict[str, Any]
    layers: list[LayerInfo]

    @property
    def selected(self) -> list[LayerInfo]:
        return [layer for layer in self.layers if layer.selected]

    def totals(self) -> dict[str, Any]:
        macs = [layer.macs for layer in self.layers]
        return {
            "layers": len(self.layers),
            "selected_layers": len(self.selected),
            "params": sum(layer.params for layer in self.layers),
            "selected_params": sum(layer.params for layer in self.selected),
            # MACs per input sample, when every layer's could be counted from static shapes
            "macs_per_input": None if any(m is None for m in macs) or not macs else sum(macs),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "ftaudit_version": __version__,
            "model": self.model,
            "metadata": self.metadata,
            "layers": [layer.to_dict() for layer in self.layers],
            "totals": self.totals(),
        }


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
