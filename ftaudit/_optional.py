"""Lazy imports of optional extras with a one-line install hint when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from ftaudit.errors import MissingExtraError


def require_torch(feature: str) -> ModuleType:
    """Import torch or raise a UserError naming the ``torch`` extra."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise MissingExtraError(feature, "torch", "PyTorch") from exc


def require_matplotlib(feature: str) -> ModuleType:
    """Import matplotlib with the headless Agg backend, or raise naming the ``plot`` extra."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError as exc:
        raise MissingExtraError(feature, "plot", "matplotlib") from exc
    matplotlib.use("Agg", force=True)
    return importlib.import_module("matplotlib.pyplot")
