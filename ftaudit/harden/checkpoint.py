"""Per-epoch checkpoints for ``harden``: written atomically, loaded without unpickling code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftaudit._optional import require_torch
from ftaudit.errors import UserError
from ftaudit.fileio import atomic_write
from ftaudit.limits import require_regular_file

CHECKPOINT_NAME = "ftaudit-harden.ckpt"


def checkpoint_path(directory: Path) -> Path:
    return Path(directory) / CHECKPOINT_NAME


def save_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically into ``directory``."""
    torch = require_torch("harden checkpoints")
    atomic_write(checkpoint_path(directory), lambda tmp: torch.save(state, tmp))


def load_checkpoint(directory: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint in ``directory`` if it belongs to this run (same model, data, method and
    settings), None if there is none; a checkpoint of another run is a UserError."""
    torch = require_torch("harden checkpoints")
    path = checkpoint_path(directory)
    if not path.exists():
        return None
    require_regular_file(path, "checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt archives
        raise UserError(
            f"checkpoint {path} is unreadable ({exc.__class__.__name__})",
            hint="delete it to start over, or point --checkpoint-dir elsewhere",
        ) from exc
    try:
        saved = json.loads(state.get("fingerprint", "{}")) if isinstance(state, dict) else None
    except (TypeError, ValueError):
        saved = None
    if not isinstance(saved, dict):
        raise UserError(
            f"checkpoint {path} is damaged (no fingerprint table)", hint="delete it to start over"
        )
    if saved != fingerprint:
        differing = sorted(
            k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k)
        )
        raise UserError(
            f"checkpoint {path} is from another model or run (differs in: {', '.join(differing)})",
            hint="use the same command as the interrupted run, or another --checkpoint-dir",
        )
    return state
