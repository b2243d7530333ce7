"""Bounded reads of untrusted files: regular files only, declared sizes checked against the
file before anything is read, and no allocation larger than the memory this machine has.

A FIFO or a device (a model symlinked to /dev/zero) would hang or fill memory, and a header
or a zip entry may promise any size: every loader asks here before it reads.
"""

from __future__ import annotations

import ctypes
import functools
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ftaudit.errors import UserError

#: environment variable capping, in bytes, what one read may allocate (default: the memory
#: the machine has available)
MEMORY_LIMIT_ENV = "FTAUDIT_MEMORY_LIMIT"


def require_regular_file(path: Path | str, what: str) -> int:
    """The size of ``path``, a regular file (links followed); a FIFO, device or socket is
    refused (reading one could hang or never end)."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist", hint="check the path") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{what} {path} is a folder", hint="pass the file itself")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device or socket"
        raise UserError(
            f"{what} {path} is {kind}, not a regular file",
            hint="ftaudit reads only regular files; copy the data into a file first",
        )
    return info.st_size


def available_memory() -> int:
    """Bytes one read may allocate: $FTAUDIT_MEMORY_LIMIT, else the machine's available memory."""
    limit = os.environ.get(MEMORY_LIMIT_ENV)
    if limit:
        try:
            return int(float(limit))
        except ValueError:
            raise UserError(
                f"{MEMORY_LIMIT_ENV}={limit!r} is not a number of bytes", hint="e.g. 8e9"
            ) from None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: no cap


def check_memory(nbytes: int, what: str, *, hint: str) -> None:
    """Refuse to allocate ``nbytes`` for ``what`` when the machine cannot hold it."""
    budget = available_memory()
    if nbytes > budget:
        raise UserError(
            f"{what} needs {_size(nbytes)} of memory, more than the {_size(budget)} available",
            hint=hint,
        )


def read_exactly(handle: IO[bytes], nbytes: int) -> bytes:
    """Up to ``nbytes`` from a stream, grown as data arrives (a lying size never allocates
    more than the stream really holds)."""
    parts: list[bytes] = []
    left = nbytes
    while left > 0:
        chunk = handle.read(min(left, 1 << 24))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _size(nbytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if nbytes < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on other C libraries."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Hand memory the C heap holds but no longer uses back to the system (glibc keeps it
    otherwise): called after the set-up steps that parse and optimise whole models, whose
    freed copies (protobuf, ONNX Runtime) would else add up to several times the model."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
