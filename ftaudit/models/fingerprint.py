"""A loaded model's identity: its file's bytes (how workers rebuild it) and its sha256 (reports,
``--resume`` and harden checkpoints tell a changed model by it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ftaudit.fileio import sha256_file
from ftaudit.models.base import AuditModel


def model_bytes(model: AuditModel) -> bytes:
    """The model file's bytes, as loaded (workers rebuild the model from them)."""
    raw = getattr(model, "raw", None)
    return raw if isinstance(raw, bytes) else Path(model.path).read_bytes()


def model_sha256(model: AuditModel) -> str:
    """sha256 of the model file; with external weight data, of the file's and those files'
    sha256s, so a changed weights file is a changed model (reports, --resume)."""
    raw = getattr(model, "raw", None)
    digest = (
        hashlib.sha256(raw).hexdigest()
        if isinstance(raw, bytes)
        else sha256_file(Path(model.path))  # streamed: a large model is not read whole again
    )
    external = getattr(model, "external_files", ())
    if not external:
        return digest
    combined = hashlib.sha256(f"{Path(model.path).name}\0{digest}\n".encode())
    for file in external:
        combined.update(f"{Path(file).name}\0{sha256_file(Path(file))}\n".encode())
    return combined.hexdigest()
