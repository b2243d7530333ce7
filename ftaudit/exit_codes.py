"""Exit codes of every command: UserError -> one stderr line and 2, GateFailure -> 1, Ctrl-C
-> 130, SIGTERM -> 143 (both naming the checkpoint kept and the command that resumes it).

Library warnings (numpy casts, Pillow) are held while a command runs: after bad input the one
error line is all stderr shows, after a normal end they are shown as usual.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from ftaudit.errors import GateFailure, UserError
from ftaudit.text import printable

#: the arguments ``ftaudit.cli.run`` was called with (``sys.argv`` when None)
_ARGV: list[str] | None = None


def set_run_argv(argv: list[str] | None) -> None:
    global _ARGV
    _ARGV = None if argv is None else list(argv)


def run_argv() -> list[str]:
    """The command's arguments (after ``ftaudit``), as recorded in reports."""
    return list(sys.argv[1:] if _ARGV is None else _ARGV)


F = TypeVar("F", bound=Callable[..., Any])


def exit_codes(command: F) -> F:
    """Turn UserError into one stderr line + exit 2, GateFailure into exit 1, Ctrl-C into 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import warnings

        # library warnings (numpy casts, Pillow) are held back: after bad input the one error
        # line is all stderr shows; after a run that ends normally they are shown as usual
        result, error = None, None
        with warnings.catch_warnings(record=True) as held:
            try:
                result = command(*args, **kwargs)
            except BaseException as exc:  # re-raised below, once the warnings are sorted
                error = exc
        if not isinstance(error, UserError):
            _show_warnings(held)
        if error is not None:
            raise error
        return result

    return _exit_codes(wrapper)  # type: ignore[return-value]


def _show_warnings(held: list[Any]) -> None:
    import warnings

    for item in held:
        warnings.showwarning(item.message, item.category, item.filename, item.lineno)


def _exit_codes(command: F) -> F:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            print(f"ftaudit: error: {printable(str(exc))}", file=sys.stderr)
            raise typer.Exit(2) from None
        except GateFailure as exc:
            for line in exc.lines:
                print(f"ftaudit: {printable(line)}", file=sys.stderr)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            what = "terminated (SIGTERM)" if terminated else "interrupted"
            print(f"ftaudit: {what}; {_kept(kwargs.get('checkpoint_dir'))}", file=sys.stderr)
            raise typer.Exit(143 if terminated else 130) from None

    return wrapper  # type: ignore[return-value]


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: checkpoints are written, no report is, exit 143."""


def on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _kept(checkpoint_dir: Path | None) -> str:
    """What an interrupted run leaves: the checkpoint and the command that continues it."""
    import shlex

    from ftaudit.eval_checkpoint import checkpoint_file
    from ftaudit.harden.checkpoint import checkpoint_path

    if checkpoint_dir is None or not any(
        path.is_file()
        for path in (checkpoint_file(checkpoint_dir), checkpoint_path(checkpoint_dir))
    ):
        return "no output was written"
    argv = run_argv()
    if "--resume" not in argv:
        argv.append("--resume")
    return (
        f"checkpoint kept in {printable(str(checkpoint_dir))}; continue with: "
        f"{printable(shlex.join(['ftaudit', *argv]))}"
    )
