"""The harden method registry: one module per method, named after it, each with its help text."""

from __future__ import annotations

import pytest

from ftaudit.errors import UserError
from ftaudit.harden.methods import HARDEN_METHODS, HardenMethod, get_method


def test_one_module_per_method():
    assert list(HARDEN_METHODS) == ["erm", "noise", "trice", "bayesft"]
    for name, cls in HARDEN_METHODS.items():
        assert cls.name == name
        assert issubclass(cls, HardenMethod)
        assert cls.__module__ == f"ftaudit.harden.methods.{name}"
        assert (cls.__doc__ or "").strip(), name  # the help text


def test_unknown_method_suggests_the_closest():
    with pytest.raises(UserError, match="unknown harden method 'tirce'") as info:
        get_method("tirce")
    assert "did you mean 'trice'" in info.value.hint
    assert isinstance(get_method("noise"), HARDEN_METHODS["noise"])
