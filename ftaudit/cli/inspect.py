"""``ftaudit inspect``: format, inputs/outputs and crossbar layers of a model."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ftaudit.cli.common import print_table
from ftaudit.cli.exit_codes import exit_codes
from ftaudit.cli.options import ExcludeOpt, LayersOpt, ModelArg, OutputOpt


@exit_codes
def inspect_command(
    model: ModelArg,
    layers: LayersOpt = None,
    exclude: ExcludeOpt = None,
    output: OutputOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Format, inputs/outputs, crossbar layers, parameter and MAC counts of MODEL."""
    from ftaudit.inspect import inspect_model

    summary = inspect_model(model, layers=layers, exclude=exclude, output=output)
    if as_json:
        import json

        from ftaudit.report.json_report import to_json_compatible

        payload = to_json_compatible(summary.to_dict())  # NaN (a broken weight) -> null
        sys.stdout.write(json.dumps(payload, indent=2, allow_nan=False) + "\n")
        return

    from ftaudit.report.inspect_table import inspect_renderable

    print_table(inspect_renderable(summary))
