"""Checkpoints of a Monte Carlo run: which samples are counted, per sigma, and their counts.

A killed ``ftaudit eval --checkpoint-dir DIR`` restarted with ``--resume`` skips the samples
already counted and ends with the same numbers, since sample i's draws depend only on
(seed, i). The file is plain ``.npz`` (no pickles) with a JSON fingerprint of the run, so a
checkpoint of another model, data set or setting is refused instead of mixed in.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ftaudit.errors import UserError
from ftaudit.fileio import atomic_write
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
        with np.load(path, allow_pickle=False) as saved:
            stored = json.loads(str(saved["fingerprint"]))
            counts, done = saved["counts"], saved["done"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"checkpoint {path} is unreadable ({exc.__class__.__name__})",
            hint="delete it to start over, or pass another --checkpoint-dir",
        ) from exc
    if stored != fingerprint:
        differing = sorted(
            k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k)
        )
        raise UserError(
            f"checkpoint {path} is from another run (differs in: {', '.join(differing)})",
            hint="use the same model, data and options as the interrupted run, or another "
            "--checkpoint-dir",
        )
    if counts.shape != shape or done.shape != shape or done.dtype != bool:
        raise UserError(f"checkpoint {path} is damaged", hint="delete it to start over")
    return Progress(counts=counts.astype(np.int64), done=done)


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
