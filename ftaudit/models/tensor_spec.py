"""The name, shape and type of a model input or output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None for dynamic dimensions) and numpy dtype of a model input or output."""

    name: str
    shape: tuple[int | None, ...] | None
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": None if self.shape is None else list(self.shape),
            "dtype": self.dtype,
        }
