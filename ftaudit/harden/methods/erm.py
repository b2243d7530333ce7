"""ERM: plain fine-tuning without noise (the 'w/o noise' baseline)."""

from __future__ import annotations

from ftaudit.harden.methods.base import HardenMethod


class ErmMethod(HardenMethod):
    """Plain fine-tuning without noise (the 'w/o noise' baseline)."""

    name = "erm"
