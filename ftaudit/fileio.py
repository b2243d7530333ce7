"""File helpers shared by loaders and writers: hashing, output-path checks, atomic writes.

Outputs are never written over an input or over another output, a special file (a device, a
FIFO, a /proc/self/fd link) is written in place instead of being replaced by a regular file,
and inside ``output_set()`` every output is staged first and renamed into place only once all
of them were written, so a late failure (a full disk) leaves none of them.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ftaudit.errors import UserError


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes (streamed, so large models do not load twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: folders whose links name open files (/dev/stdout, /dev/fd/3, /proc/self/fd/3): written in
#: place even when they lead to a regular file, so the data goes where the descriptor points
_IN_PLACE_FOLDERS = ("/dev/", "/proc/")


def _is_special(path: Path) -> bool:
    """An existing target that must be written in place: not a regular file once links are
    followed (a device, FIFO, socket), or a /dev or /proc link to an open file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if stat.S_ISDIR(mode):
        return False
    if not stat.S_ISREG(mode):
        return True
    return os.path.abspath(path).startswith(_IN_PLACE_FOLDERS) and os.path.islink(path)


def _real(path: Path) -> Path:
    """The path with links and ``..`` resolved (also for a path that does not exist yet)."""
    return Path(os.path.realpath(path))


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: equal after resolving links, or one inode (hard link)."""
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    return folder.is_dir() and _real(path).is_relative_to(_real(folder))


def check_output_path(path: Path, *, what: str, protect: tuple[Path, ...] = ()) -> Path:
    """Validate an output path before any work starts: its folder exists and is writable, it
    is not an input (nor inside an input folder)."""
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
        protected = Path(protected)
        if same_file(path, protected) or _inside(path, protected):
            where = "inside the input folder" if protected.is_dir() else "over the input file"
            raise UserError(
                f"refusing to write the {what} {path} {where} {protected}",
                hint="choose a different output path",
            )
    _check_writable(path, what)
    return path


def _check_writable(path: Path, what: str) -> None:
    """Refuse up front a target the run could not write at its end."""
    if _is_special(path):
        if not os.access(path, os.W_OK):
            raise UserError(f"cannot write the {what} to {path}: permission denied")
        return
    folder = _real(path).parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(
            f"cannot write the {what} to {path}: folder {folder} is not writable",
            hint="choose a writable folder",
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(
            f"cannot write the {what} to {path}: the file is read-only",
            hint="make it writable or choose another path",
        )


def check_outputs(
    outputs: Mapping[str, Path | str | None], *, inputs: tuple[Path | str | None, ...] = ()
) -> None:
    """Check every output against every input and every other output, before any work.
    ``None`` and '-' (stdout) are skipped."""
    given = {what: Path(p) for what, p in outputs.items() if p is not None and str(p) != "-"}
    protect = tuple(Path(p) for p in inputs if p is not None and str(p) != "-")
    for what, path in given.items():
        check_output_path(path, what=what, protect=protect)
    names = list(given)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            if same_file(given[first], given[second]):
                raise UserError(
                    f"the {first} and the {second} would both be written to {given[first]}",
                    hint="give each output its own path",
                )


# --- writing -------------------------------------------------------------------------------

#: outputs staged by ``output_set``: (temp file, target) pairs, renamed into place at the end
_STAGED: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar(
    "ftaudit_staged_outputs", default=None
)


def _write_error(path: Path, exc: OSError) -> UserError:
    reason = exc.strerror or str(exc) or exc.__class__.__name__
    return UserError(
        f"cannot write {path}: {reason}; no output was written",
        hint="free disk space or choose another folder, then run again",
    )


def _install(tmp: Path, path: Path) -> None:
    """Move a finished temp file to ``path``: a rename, or a copy into a special file."""
    if _is_special(path):
        with open(tmp, "rb") as source, open(path, "wb") as target:
            shutil.copyfileobj(source, target)
        tmp.unlink()
        return
    # mkstemp creates 0600; give the file the permissions a plain open() would have
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    # a link to a regular file keeps being a link: the file it points to is replaced
    os.replace(tmp, _real(path))


def _temp_for(path: Path) -> Path:
    """A temp file next to the target (same file system: rename is atomic), or in the temp
    folder for a special target (a device's folder is rarely writable)."""
    folder = None if _is_special(path) else _real(path).parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    return Path(tmp_name)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file, then rename it over ``path`` (or copy it into a
    special file). Inside ``output_set()`` the rename waits for the end of the set."""
    path = Path(path)
    staged = _STAGED.get()
    try:
        tmp = _temp_for(path)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        write(tmp)
        if staged is not None:
            staged.append((tmp, path))
            tmp = None  # type: ignore[assignment]
        else:
            _install(tmp, path)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


@contextmanager
def output_set() -> Iterator[None]:
    """Stage every ``atomic_write`` inside the block; install them all only if the block ends
    without an error, so a failed write leaves no partial set of outputs."""
    staged: list[tuple[Path, Path]] = []
    token = _STAGED.set(staged)
    try:
        yield
        _STAGED.reset(token)
        token = None
        for tmp, path in staged:
            try:
                _install(tmp, path)
            except OSError as exc:
                raise _write_error(path, exc) from exc
    finally:
        if token is not None:
            _STAGED.reset(token)
        for tmp, _ in staged:
            if tmp.exists():
                tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes atomically (temp file then rename)."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically (temp file then rename)."""
    atomic_write_bytes(path, text.encode("utf-8"))
