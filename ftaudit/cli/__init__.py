"""Command-line interface: parses options, calls the library, prints, and sets the exit code.

A package: ``app`` (the typer application), ``options`` (option aliases shared by the commands),
``common`` (settings, output checks, progress), one module per command, and ``main`` (the
entry point, registering the commands in help order). The ``ftaudit`` console script runs
``ftaudit.cli.main:main``.
"""

from __future__ import annotations

from ftaudit.cli.main import app, main, optional_ray_value, run

__all__ = ["app", "main", "optional_ray_value", "run"]
