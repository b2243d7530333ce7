"""Harden methods, one module each, registered by name: erm (plain fine-tuning), noise
(NoiseTrain), trice and bayesft. Each builds on ``base`` (the context a method gets, its
result, resume from a checkpoint, the plain one-model loop); adding a method is a module here
and its line in ``HARDEN_METHODS``. A method declares its options (``HardenMethod.options``)
and checks them (``check_options``); ``check_method_options`` refuses another method's.

Each method trains from the input model's weights and returns the model to export plus what
it chose; the shared loop, noise and evaluation live in ``ftaudit.harden.training``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ftaudit.errors import UserError
from ftaudit.harden.methods.base import (
    EVAL_KEY,
    EpochCallback,
    HardenContext,
    HardenMethod,
    MethodResult,
    StageProgress,
    _restore,
)
from ftaudit.harden.methods.bayesft import BayesftMethod
from ftaudit.harden.methods.erm import ErmMethod
from ftaudit.harden.methods.noise import NoiseMethod
from ftaudit.harden.methods.trice import TriceMethod

__all__ = [
    "EVAL_KEY",
    "HARDEN_METHODS",
    "BayesftMethod",
    "EpochCallback",
    "ErmMethod",
    "HardenContext",
    "HardenMethod",
    "MethodResult",
    "NoiseMethod",
    "StageProgress",
    "TriceMethod",
    "_restore",
    "check_method_options",
    "foreign_options",
    "get_method",
    "method_option_names",
]


#: name -> method; the docstring's first line is the help text
HARDEN_METHODS: dict[str, type[HardenMethod]] = {
    cls.name: cls for cls in (ErmMethod, NoiseMethod, TriceMethod, BayesftMethod)
}


def flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def method_option_names() -> list[str]:
    """Every method's options, in registry order (each is a ``harden`` keyword)."""
    return [name for cls in HARDEN_METHODS.values() for name in cls.options]


def foreign_options(method: str) -> set[str]:
    """The options of every method but ``method`` (none for an unknown name)."""
    if method not in HARDEN_METHODS:
        return set()
    own = HARDEN_METHODS[method].options
    return {name for cls in HARDEN_METHODS.values() for name in cls.options if name not in own}


def check_method_options(
    method: HardenMethod,
    values: dict[str, Any],
    *,
    sigma: float,
    protect: Sequence[Path] = (),
) -> dict[str, Any]:
    """``method``'s own options from ``values`` (harden's keywords), checked by the method; an
    option of another method given away from its default is refused, naming its method."""
    for other in HARDEN_METHODS.values():
        for name, default in other.options.items():
            if name not in method.options and values.get(name, default) != default:
                raise UserError(
                    f"{flag(name)} is used only by --method {other.name}, not {method.name}",
                    hint=f"drop {flag(name)} (or pass --method {other.name})",
                )
    own = {name: values.get(name, default) for name, default in method.options.items()}
    return method.check_options(own, sigma=sigma, protect=protect)


def get_method(name: str) -> HardenMethod:
    """A harden method by name, with a 'did you mean' for typos."""
    cls = HARDEN_METHODS.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, list(HARDEN_METHODS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(
            f"unknown harden method '{name}'",
            hint=f"{hint}choose one of {', '.join(HARDEN_METHODS)}",
        )
    return cls()
