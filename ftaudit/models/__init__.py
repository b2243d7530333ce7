"""Model loading: the format is sniffed from the file's content, not its extension."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from ftaudit.errors import UserError
from ftaudit.models.base import AuditModel, CrossbarLayer, ModelRunner, TensorSpec

__all__ = [
    "AuditModel",
    "CrossbarLayer",
    "ModelRunner",
    "TensorSpec",
    "load_model",
    "load_model_bytes",
    "sniff_format",
]


def sniff_format(path: Path, raw: bytes) -> str:
    """'torchscript' for a torch.jit.save zip archive, 'torch.export' for a torch.export.save
    archive (.pt2), 'onnx' otherwise (checked when parsed)."""
    if raw[:4] != b"PK\x03\x04":
        return "onnx"
    try:
        names = zipfile.ZipFile(io.BytesIO(raw)).namelist()
    except zipfile.BadZipFile as exc:
        raise UserError(
            f"{path} looks like a zip archive but is corrupt or truncated",
            hint="re-save the model with torch.jit.save",
        ) from exc
    if any("/code/" in n or n.startswith("code/") for n in names):
        return "torchscript"
    from ftaudit.models.export import is_exported_program

    if is_exported_program(names):
        return "torch.export"
    if any(n.endswith("data.pkl") for n in names):
        raise UserError(
            f"{path} is a torch.save checkpoint, not a TorchScript archive",
            hint="save a scripted model (torch.jit.save(torch.jit.script(model), path)) "
            "or export it to ONNX",
        )
    raise UserError(
        f"{path} is a zip archive that is neither TorchScript nor ONNX",
        hint="pass a .onnx file, a torch.export.save archive (.pt2) or a torch.jit.save archive",
    )


def load_model(path: Path | str, *, output: str | None = None) -> AuditModel:
    """Load an ONNX, torch.export or TorchScript model read-only; bad files raise UserError."""
    from ftaudit.limits import check_memory, require_regular_file

    path = Path(path)
    if not path.exists():
        raise UserError(f"model file {path} does not exist", hint="check the path")
    if path.is_dir():
        raise UserError(f"model path {path} is a folder", hint="pass the model file itself")
    size = require_regular_file(path, "model file")
    check_memory(size, f"model file {path}", hint="audit a smaller model, or on a larger machine")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read model file {path}: {exc.strerror}") from exc
    if not raw:
        raise UserError(f"model file {path} is empty", hint="re-export the model")
    return load_model_bytes(path, raw, output=output)


def load_model_bytes(path: Path | str, raw: bytes, *, output: str | None = None) -> AuditModel:
    """A model from its file's bytes (``path`` names it and anchors external data): how
    worker processes and Ray tasks rebuild a model without reading the file again."""
    path = Path(path)
    kind = sniff_format(path, raw)
    if kind == "torchscript":
        from ftaudit.models.torchscript import TorchScriptModel

        return TorchScriptModel.from_bytes(path, raw, output=output)
    if kind == "torch.export":
        from ftaudit.models.export import ExportedProgramModel

        return ExportedProgramModel.from_bytes(path, raw, output=output)
    from ftaudit.models.onnx import OnnxModel

    return OnnxModel.from_bytes(path, raw, output=output)
