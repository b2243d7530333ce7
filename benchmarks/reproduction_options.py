"""The ``--rng`` option every reproduction script shares (imported by them, not run)."""

from __future__ import annotations

import argparse

#: every docs/reproductions/*.md file was generated before ``fast`` became ftaudit's default
PUBLISHED_RNG = "ziggurat"


def add_rng_option(parser: argparse.ArgumentParser, doc: str) -> None:
    """``--rng fast|ziggurat``, passed to every harden, eval and compare of the script; its
    default is the generator that produced ``doc``, so a rerun reproduces the published file."""
    parser.add_argument(
        "--rng",
        choices=("fast", "ziggurat"),
        default=PUBLISHED_RNG,
        help=f"normal generator of every harden, eval and compare (ftaudit --rng) "
        f"[{PUBLISHED_RNG}: {doc} was generated with it, so a rerun reproduces it; fast is "
        "ftaudit's default]",
    )


def rng_note(rng: str) -> str:
    """The line a reproduction file carries to say which generator produced it."""
    return (
        f"Normal generator: `{rng}` (the script's `--rng`, passed to every harden, eval and "
        "compare; `ziggurat`, numpy's, was ftaudit's only generator before `fast` became its "
        "default and is the scripts' default, so the command below reproduces a file made "
        "with it)."
    )
