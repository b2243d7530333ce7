"""The old home of the device effects, kept so code importing from here keeps working.

The effects are small classes in the noise family (``ftaudit.noise.drift``, ``.stuck``,
``.compensation``, composed in ``ftaudit.noise.effects``), the Monte Carlo step that applies
them is ``ftaudit.effects_engine``, their option resolution ``ftaudit.options.resolve_effects``
and the option parsers ``ftaudit.units``. Nothing in ftaudit imports this module.
"""

from __future__ import annotations

from ftaudit.effects_engine import DECAY_BUDGET as DECAY_BUDGET
from ftaudit.effects_engine import EffectsEngine as EffectsEngine
from ftaudit.effects_engine import SampleEffects as SampleEffects
from ftaudit.noise.compensation import CALIBRATION_STREAM as CALIBRATION_STREAM
from ftaudit.noise.compensation import CALIBRATION_VECTORS as CALIBRATION_VECTORS
from ftaudit.noise.compensation import COMPENSATION_ALIASES as COMPENSATION_ALIASES
from ftaudit.noise.compensation import COMPENSATION_CHOICES as COMPENSATION_CHOICES
from ftaudit.noise.compensation import COMPENSATIONS as COMPENSATIONS
from ftaudit.noise.drift import DRIFT_STREAM as DRIFT_STREAM
from ftaudit.noise.drift import DriftModel as DriftModel
from ftaudit.noise.effects import Condition as Condition
from ftaudit.noise.effects import DeviceEffects as DeviceEffects
from ftaudit.noise.stuck import STUCK_STREAM as STUCK_STREAM
from ftaudit.noise.stuck import StuckAt as StuckAt
from ftaudit.options import resolve_effects as resolve_effects
from ftaudit.units import TIME_UNITS as TIME_UNITS
from ftaudit.units import format_time as format_time
from ftaudit.units import parse_stuck_at as parse_stuck_at
from ftaudit.units import parse_time as parse_time
from ftaudit.units import parse_times as parse_times
