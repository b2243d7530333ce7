"""Checkpoints of a Monte Carlo run: which samples are counted, per sigma, and their counts.

A killed ``ftaudit eval --checkpoint-dir DIR`` restarted with ``--resume`` skips the samples
already counted and ends with the same numbers, since sample i's draws depend only on
(seed, i). The file is plain ``.npz`` (no pickles) with a JSON fingerprint of the run, so a
checkpoint of another model, data set or setting is refused instead of mixed in.
"""

from __future__ import annotations

import json
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ftaudit.errors import UserError
from ftaudit.fileio import atomic_write
from ftaudit.limits import require_regular_file
from ftaudit.montecarlo import Progress

CHECKPOINT_NAME = "ftaudit-eval.ckpt.npz"
#: at most one write per this many seconds while running (the last chunk is always written)
MIN_INTERVAL_S = 1.0


def checkpoint_file(directory: Path | str) -> Path:
    return Path(directory) / CHECKPOINT_NAME


def check_checkpoint_dir(directory: Path | str) -> Path:
    """The checkpoint folder, created if missing; a UserError when it cannot hold files."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(
            f"--checkpoint-dir {directory} is a file", hint="pass a folder (it is created)"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create --checkpoint-dir {directory}: {exc.strerror}",
            hint="pass a writable folder",
        ) from exc
    return directory


def load_progress(
    directory: Path | str, fingerprint: dict[str, Any], shape: tuple[int, int]
) -> Progress | None:
    """The saved progress of this run, None when there is none; another run's is an error."""
    path = checkpoint_file(directory)
    if not path.exists():
        return None
    try:
        require_regular_file(path, "checkpoint")
        with np.load(path, allow_pickle=False) as saved:
            stored = json.loads(str(saved["fingerprint"]))
            counts, done = saved["counts"], saved["done"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise UserError(
            f"checkpoint {path} is unreadable ({exc.__class__.__name__})",
            hint="delete it to start over, or pass another --checkpoint-dir",
        ) from exc
    if not isinstance(stored, dict):
        raise UserError(
            f"checkpoint {path} is damaged (its fingerprint is not a table)",
            hint="delete it to start over",
        )
    if stored != fingerprint:
        differing = sorted(
            k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k)
        )
        raise UserError(
            f"checkpoint {path} is from another run (differs in: {', '.join(differing)})",
            hint="use the same model, data and options as the interrupted run, or another "
            "--checkpoint-dir",
        )
    _check_progress(path, counts, done, shape, fingerprint.get("data", {}).get("n"))
    return Progress(counts=counts.astype(np.int64), done=done)


def _check_progress(
    path: Path, counts: np.ndarray, done: np.ndarray, shape: tuple[int, int], n_data: Any
) -> None:
    """A checkpoint's arrays must be what this run could have written: shape, dtype, and counts
    of correct answers between 0 and the number of inputs."""
    problem = None
    if counts.shape != shape or done.shape != shape:
        problem = f"arrays of shape {counts.shape}/{done.shape}, expected {shape}"
    elif done.dtype != bool or not np.issubdtype(counts.dtype, np.integer):
        problem = f"arrays of dtype {counts.dtype}/{done.dtype}"
    elif counts.size and int(counts.min()) < 0:
        problem = f"a negative count ({int(counts.min())})"
    elif isinstance(n_data, int) and counts.size and int(counts.max()) > n_data:
        problem = f"a count of {int(counts.max())} correct out of {n_data} inputs"
    if problem is not None:
        raise UserError(
            f"checkpoint {path} is damaged or was edited ({problem})",
            hint="delete it to start over",
        )


class CheckpointWriter:
    """Writes the run's progress atomically, at most once a second (and always at the end)."""

    def __init__(self, directory: Path | str, fingerprint: dict[str, Any]) -> None:
        self.path = checkpoint_file(directory)
        self.fingerprint = json.dumps(fingerprint, sort_keys=True)
        self._last = 0.0

    def __call__(self, progress: Progress, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < MIN_INTERVAL_S:
            return
        self._last = now

        def write(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.savez(
                    handle,
                    counts=progress.counts,
                    done=progress.done,
                    fingerprint=np.array(self.fingerprint),
                )

        atomic_write(self.path, write)
