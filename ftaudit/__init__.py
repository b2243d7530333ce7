"""ftaudit: audit and harden neural networks for analog compute-in-memory hardware.

``import ftaudit`` stays light: torch and onnxruntime load only when a model is evaluated.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("ftaudit")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from ftaudit.compare import compare
    from ftaudit.evaluation import audit
    from ftaudit.inspect import inspect_model
    from ftaudit.sensitivity import sensitivity

__all__ = ["__version__", "audit", "compare", "inspect_model", "sensitivity"]


def __getattr__(name: str) -> Any:
    if name == "audit":
        from ftaudit.evaluation import audit

        return audit
    if name == "inspect_model":
        from ftaudit.inspect import inspect_model

        return inspect_model
    if name == "compare":
        from ftaudit.compare import compare

        return compare
    if name == "sensitivity":
        from ftaudit.sensitivity import sensitivity

        return sensitivity
    raise AttributeError(f"module 'ftaudit' has no attribute {name!r}")
