"""ftaudit.units: durations and fault fractions as users write them and reports print them."""

from __future__ import annotations

import pytest

from ftaudit import device_effects
from ftaudit.errors import UserError
from ftaudit.units import format_time, parse_stuck_at, parse_time, parse_times


@pytest.mark.parametrize(
    ("text", "seconds", "label"),
    [
        ("20", 20.0, "20s"),
        ("1.5h", 5400.0, "90min"),
        ("1d", 86400.0, "1d"),
        ("2w", 1209600.0, "2w"),
    ],
)
def test_durations_round_trip(text, seconds, label):
    assert parse_time(text) == seconds
    assert format_time(seconds) == label


def test_lists_and_faults():
    assert parse_times("1s,1y") == (1.0, 365 * 86400.0)
    assert parse_stuck_at("0.01,0.005") == (0.01, 0.005)
    with pytest.raises(UserError, match="negative"):
        parse_time("-1h")
    with pytest.raises(UserError, match="two fractions"):
        parse_stuck_at("0.1")


def test_old_home_still_exports_them():
    assert device_effects.parse_times is parse_times
    assert device_effects.format_time is format_time
