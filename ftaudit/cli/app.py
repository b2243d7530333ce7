"""The typer application: its name, help and ``--version``; the commands register in
``ftaudit.cli.main``."""

from __future__ import annotations

from typing import Annotated

import typer

from ftaudit import __version__

app = typer.Typer(
    name="ftaudit",
    help="Audit neural networks for analog compute-in-memory hardware under device variation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ftaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, metavar="", help="Show the version."
        ),
    ] = False,
) -> None:
    """Audit neural networks for analog compute-in-memory hardware under device variation."""
