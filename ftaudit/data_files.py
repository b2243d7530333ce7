"""Bounded readers of .npz and IDX files: sizes come from headers, are checked against the
file before any data is read, and only the first ``limit`` records are read (decompressed).

A 3 MB .npz can hold gigabytes of zeros and an IDX header can promise any size; these readers
never allocate more than the records kept (capped by ``ftaudit.limits.check_memory``).
"""

from __future__ import annotations

import gzip
import math
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ftaudit.errors import UserError
from ftaudit.limits import check_memory, read_exactly

# IDX type codes (third magic byte) -> big-endian numpy dtype, from the MNIST file format.
IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"

#: shape, Fortran order, dtype and header size of one .npy entry
NpyHeader = tuple[tuple[int, ...], bool, Any, int]


def npz_header(archive: zipfile.ZipFile, key: str, path: Path) -> NpyHeader:
    """Shape, Fortran order and dtype of one array, read from its .npy header alone; pickled
    object arrays and headers that promise more bytes than the entry holds are refused."""
    info = archive.getinfo(f"{key}.npy")
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(member)
            header_size = member.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise UserError(
            f"cannot read array {key} from {path}: {exc}",
            hint="the file looks corrupt; save it again with np.savez",
        ) from exc
    if dtype.hasobject:
        raise UserError(
            f"array {key} in {path} holds pickled Python objects, and ftaudit never "
            "unpickles data (it can run arbitrary code)",
            hint="save plain numeric arrays with np.savez(path, x=inputs, y=labels)",
        )
    declared = math.prod(shape) * dtype.itemsize
    if header_size + declared != info.file_size:
        raise UserError(
            f"array {key} in {path} declares shape {shape} ({declared} bytes) but its entry "
            f"holds {info.file_size - header_size} data bytes",
            hint="the file is corrupt or was edited; save it again with np.savez",
        )
    return tuple(shape), fortran_order, dtype, header_size


def read_npz_rows(archive: zipfile.ZipFile, key: str, path: Path, limit: int | None) -> np.ndarray:
    """The first ``limit`` rows of one array, decompressing only the bytes they need."""
    shape, fortran_order, dtype, header_size = npz_header(archive, key, path)
    rows = shape[0] if limit is None or fortran_order else min(limit, shape[0])
    row_bytes = math.prod(shape[1:]) * dtype.itemsize
    check_memory(
        rows * row_bytes,
        f"array {key} of {path} (shape {shape})",
        hint="pass --limit N to read only the first N samples",
    )
    try:
        with archive.open(f"{key}.npy") as member:
            read_exactly(member, header_size)  # skip to the data
            data = read_exactly(member, rows * row_bytes)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise UserError(
            f"cannot read array {key} from {path}: {exc}",
            hint="the file looks corrupt; save it again with np.savez",
        ) from exc
    if len(data) != rows * row_bytes:
        raise UserError(f"array {key} in {path} is truncated", hint="save it again with np.savez")
    if fortran_order:
        array = np.frombuffer(data, dtype=dtype).reshape(shape[::-1]).transpose()
        return array[:limit]
    return np.frombuffer(data, dtype=dtype).reshape((rows, *shape[1:]))


def _open_maybe_gzip(path: Path) -> Any:
    with open(path, "rb") as handle:
        compressed = handle.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def idx_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any], int, bool]:
    """Dims, dtype, header size and compression of an IDX file, from its header alone.

    A raw file must hold exactly the bytes its header promises (checked against its size before
    reading); a .gz file is checked as it is decompressed, never beyond what was promised."""
    try:
        with _open_maybe_gzip(path) as handle:
            compressed = isinstance(handle, gzip.GzipFile)
            head = read_exactly(handle, 4)
            if len(head) < 4 or head[:2] != b"\x00\x00":
                raise UserError(
                    f"{path} is not an IDX file (it does not start with the IDX magic bytes 00 00)",
                    hint="pass the original MNIST/Fashion-MNIST files",
                )
            code, ndim = head[2], head[3]
            if code not in IDX_DTYPES:
                raise UserError(
                    f"{path} has the unknown IDX data type code 0x{code:02x}",
                    hint="known codes: " + ", ".join(f"0x{known:02x}" for known in IDX_DTYPES),
                )
            raw_dims = read_exactly(handle, 4 * ndim)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(
            f"cannot decompress {path}: {exc}",
            hint="the file is corrupt or truncated; download it again",
        ) from exc
    if ndim == 0 or len(raw_dims) < 4 * ndim:
        raise UserError(
            f"{path} has a truncated or empty IDX header", hint="download the file again"
        )
    dims = tuple(int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
    dtype = IDX_DTYPES[code]
    header_size = 4 + 4 * ndim
    if not compressed:
        expected = math.prod(dims) * dtype.itemsize
        actual = path.stat().st_size - header_size
        if actual != expected:
            _idx_size_error(path, dims, expected, actual)
    return dims, dtype, header_size, compressed


def _idx_size_error(path: Path, dims: tuple[int, ...], expected: int, actual: int) -> None:
    problem = "is truncated" if actual < expected else "has trailing bytes"
    raise UserError(
        f"{path} {problem}: its header promises {expected} data bytes for shape {dims} "
        f"but it holds {actual}",
        hint="download the file again",
    )


def read_idx(path: Path, limit: int | None) -> np.ndarray:
    """The first ``limit`` records of an IDX file, reading (decompressing) only those."""
    dims, dtype, header_size, compressed = idx_header(path)
    rows = dims[0] if limit is None else min(limit, dims[0])
    row_bytes = math.prod(dims[1:]) * dtype.itemsize
    expected = math.prod(dims) * dtype.itemsize
    check_memory(
        rows * row_bytes,
        f"IDX file {path} (shape {dims})",
        hint="pass --limit N to read only the first N samples",
    )
    try:
        with _open_maybe_gzip(path) as handle:
            read_exactly(handle, header_size)
            data = read_exactly(handle, rows * row_bytes)
            if len(data) < rows * row_bytes:
                raise UserError(
                    f"{path} is truncated: its header promises {expected} data bytes for shape "
                    f"{dims} but the data ends sooner",
                    hint="download the file again",
                )
            if compressed and rows == dims[0] and handle.read(1):
                _idx_size_error(path, dims, expected, expected + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(
            f"cannot decompress {path}: {exc}",
            hint="the file is corrupt or truncated; download it again",
        ) from exc
    return np.frombuffer(data, dtype=dtype).reshape((rows, *dims[1:]))


def read_npz(
    path: Path, limit: int | None
) -> tuple[np.ndarray | None, np.ndarray, dict[str, np.ndarray | str]]:
    """x (None when the file has no x but other arrays with one row per label: a model with
    several inputs, each saved under its own name), y as stored, and the other arrays by name:
    each cut to its first ``limit`` rows, or why it cannot be an input."""
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"{path} is not a valid .npz archive (not a zip file, or truncated)",
            hint="save the data with np.savez(path, x=inputs, y=labels)",
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = {name[:-4] for name in archive.namelist() if name.endswith(".npy")}
            present = ", ".join(sorted(names)) or "none"
            if "y" not in names:
                raise UserError(
                    f"{path} has no array 'y' (arrays present: {present})",
                    hint="save the inputs as x and the labels as y: "
                    "np.savez(path, x=inputs, y=labels)",
                )
            y_shape = npz_header(archive, "y", path)[0]
            if len(y_shape) != 1:
                raise UserError(
                    f"array y in {path} has shape {y_shape}; it must be 1-D class indices",
                    hint="for one-hot labels save y.argmax(axis=1)",
                )
            others = sorted(names - {"x", "y"})
            if "x" not in names:
                inputs = _per_sample_arrays(archive, others, y_shape, path, limit)
                if not any(isinstance(a, np.ndarray) for a in inputs.values()):
                    raise UserError(
                        f"{path} has no array 'x' (arrays present: {present})",
                        hint="save the inputs as x and the labels as y: np.savez(path, "
                        "x=inputs, y=labels) (a model with several inputs: each under its "
                        "input name)",
                    )
                return None, read_npz_rows(archive, "y", path, limit), inputs
            x_shape = npz_header(archive, "x", path)[0]
            if len(x_shape) == 0:
                raise UserError(
                    f"array x in {path} is a single number, not a batch of inputs",
                    hint="x must have the batch axis first: shape (N, ...)",
                )
            if x_shape[0] != y_shape[0]:
                raise UserError(
                    f"{path} holds {x_shape[0]} inputs (x) but {y_shape[0]} labels (y)",
                    hint="x and y must have one entry per sample along the first axis",
                )
            x = read_npz_rows(archive, "x", path, limit)
            y = read_npz_rows(archive, "y", path, limit)
            inputs = _per_sample_arrays(archive, others, x_shape[:1], path, limit)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
        raise UserError(
            f"cannot read {path}: {exc}",
            hint="the file looks corrupt; save it again with np.savez",
        ) from exc
    return x, y, inputs


def _per_sample_arrays(
    archive: zipfile.ZipFile, names: list[str], n: tuple[int, ...], path: Path, limit: int | None
) -> dict[str, np.ndarray | str]:
    """The archive's other arrays with ``n`` rows (further model inputs), by name; for one that
    cannot be an input, why (another row count, pickled objects), said only if a model asks
    for it."""
    found: dict[str, np.ndarray | str] = {}
    for name in names:
        try:
            shape = npz_header(archive, name, path)[0]
        except UserError as exc:
            found[name] = str(exc)
            continue
        if shape[:1] == n:
            found[name] = read_npz_rows(archive, name, path, limit)
        else:
            rows = f"{shape[0]} rows" if shape else "a single number"
            found[name] = f"array {name} in {path} has {rows}, not one per label ({n[0]})"
    return found
