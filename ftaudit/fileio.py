"""File helpers shared by loaders and writers: hashing, output-path checks, atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ftaudit.errors import UserError


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes (streamed, so large models do not load twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_output_path(path: Path, *, what: str, protect: tuple[Path, ...] = ()) -> Path:
    """Validate an output path before any work starts: its folder exists, it is not an input."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(
            f"cannot write the {what} to {path}: folder {parent} does not exist",
            hint="create the folder first or choose another path",
        )
    if path.is_dir():
        raise UserError(
            f"cannot write the {what} to {path}: it is a folder", hint="give a file name"
        )
    for protected in protect:
        if path.exists() and protected.exists() and os.path.samefile(path, protected):
            raise UserError(
                f"refusing to write the {what} over the input file {protected}",
                hint="choose a different output path",
            )
    return path


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file in the target folder, then rename it over ``path``."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp creates 0600; give the file the permissions a plain open() would have
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes atomically (temp file then rename)."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically (temp file then rename)."""
    atomic_write_bytes(path, text.encode("utf-8"))
