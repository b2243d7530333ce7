"""Harden methods, one module each, registered by name: erm (plain fine-tuning), noise
(NoiseTrain), trice and bayesft. Each builds on ``base`` (the context a method gets, its
result, resume from a checkpoint, the plain one-model loop); adding a method is a module here
and its line in ``HARDEN_METHODS``.

Each method trains from the input model's weights and returns the model to export plus what
it chose; the shared loop, noise and evaluation live in ``ftaudit.harden.training``.
"""

from __future__ import annotations

import difflib

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
    "get_method",
]


#: name -> method; the docstring's first line is the help text
HARDEN_METHODS: dict[str, type[HardenMethod]] = {
    cls.name: cls for cls in (ErmMethod, NoiseMethod, TriceMethod, BayesftMethod)
}


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
