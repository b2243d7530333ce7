"""The result of ``ftaudit.inspect_model``: what a model file is and its crossbar layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftaudit import __version__
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
