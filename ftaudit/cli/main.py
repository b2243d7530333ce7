"""The ``ftaudit`` entry point: every command registered on the app, in help order, and
``run``, which turns a command's outcome into the exit code.

Exit codes: 0 ok, 1 a CI gate failed, 2 bad input or usage, 3 internal error (a bug),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM); see ftaudit/cli/exit_codes.py.
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from pathlib import Path

import typer

try:  # typer vendors its own click (since 0.2x); older typers use click itself
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException, NoArgsIsHelpError

from ftaudit.cli import help
from ftaudit.cli.app import app
from ftaudit.cli.compare import compare_command
from ftaudit.cli.eval import eval_command
from ftaudit.cli.exit_codes import on_sigterm, set_run_argv
from ftaudit.cli.harden import harden_command
from ftaudit.cli.inspect import inspect_command
from ftaudit.cli.noise_models import noise_models_command
from ftaudit.cli.sensitivity import sensitivity_command

#: (name, function, worked examples under --help), in the order --help lists them
COMMANDS = (
    ("eval", eval_command, help.EVAL_EXAMPLES),
    ("inspect", inspect_command, help.INSPECT_EXAMPLES),
    ("harden", harden_command, help.HARDEN_EXAMPLES),
    ("noise-models", noise_models_command, None),
    ("compare", compare_command, help.COMPARE_EXAMPLES),
    ("sensitivity", sensitivity_command, help.SENSITIVITY_EXAMPLES),
)
for _name, _function, _epilog in COMMANDS:
    app.command(_name, cls=help.HelpfulCommand, epilog=_epilog)(_function)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit code (what ``main`` exits with)."""
    set_run_argv(argv)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main else None
    try:
        code = app(
            args=optional_ray_value(sys.argv[1:] if argv is None else argv),
            prog_name="ftaudit",
            standalone_mode=False,
        )
        return code if isinstance(code, int) else 0
    except NoArgsIsHelpError:  # the help is already printed
        return 2
    except ClickException as exc:  # usage: a wrong option, argument or value
        print(usage_error_line(exc), file=sys.stderr)
        return 2
    except typer.Abort:
        print("ftaudit: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except Exception:  # a bug, not bad input: keep the traceback, but never exit 1 (a gate)
        traceback.print_exc()
        print(
            "ftaudit: internal error (a bug in ftaudit, not in your input); please report it "
            "with the traceback above",
            file=sys.stderr,
        )
        return 3
    finally:
        set_run_argv(None)
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def usage_error_line(exc: ClickException) -> str:
    """A usage error as one line (typer prints a multi-line panel): what is wrong and where
    the command's options are listed."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if "--help" not in message:
        where = ctx.command_path if ctx is not None else "ftaudit"
        end = "" if message.endswith((".", "?")) else "."
        message = f"{message}{end} See '{where} --help'."
    return f"ftaudit: error: {message}"


def optional_ray_value(argv: list[str]) -> list[str]:
    """``--ray`` with no address (last, or followed by another option or by the model file)
    means a local cluster: typer options cannot have optional values, so it is rewritten."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        bare = i + 1 == len(out) or out[i + 1].startswith("-") or Path(out[i + 1]).is_file()
        if arg == "--ray" and bare:
            out[i] = "--ray=local"
    return out


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
