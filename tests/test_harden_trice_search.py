"""TRICE's quartile search (Algorithm 3 lines 4 and 20-27) on hand-computed steps and a stub KPP.

The interval updates are checked one step at a time against bounds worked out by hand from the
paper's rules, then the whole search is run on a unimodal stand-in for the KPP curve,
f(sigma_t) = -(sigma_t - 0.37)^2, which must stay bracketed and be converged on.
"""

from __future__ import annotations

import json

import pytest

from ftaudit.harden.trice_search import (
    DEFAULT_END_FACTOR,
    DEFAULT_START,
    DEFAULT_THRESHOLD,
    DEFAULT_TOLERANCE,
    DEFAULT_WARMUP,
    LEFT,
    MID,
    RIGHT,
    TriceSearch,
)

OPTIMUM = 0.37


def stub_kpp(sigma_t: float) -> float:
    """A unimodal KPP curve peaking at OPTIMUM, standing in for a trained model's KPP."""
    return -((sigma_t - OPTIMUM) ** 2)


def test_paper_defaults() -> None:
    assert (DEFAULT_START, DEFAULT_END_FACTOR, DEFAULT_THRESHOLD, DEFAULT_WARMUP) == (0, 2, 2, 5)
    assert DEFAULT_TOLERANCE == 1e-4
    search = TriceSearch.for_sigma(0.4)
    assert (search.start, search.end, search.warmup) == (0.0, 0.8, 5)
    assert search.trace == []


def test_candidates_are_the_quartiles() -> None:
    # bounds exact in binary, so the quartiles are exact too
    assert TriceSearch(start=0.0, end=1.0, warmup=0).candidates() == (0.25, 0.5, 0.75)
    assert TriceSearch(start=0.5, end=1.5, warmup=0).candidates() == (0.75, 1.0, 1.25)


# (kpps for left, mid, right) -> (winner, new start, new end), for [start, end] = [0.5, 1.5]
# whose quartiles are left = 0.75, mid = 1.0, right = 1.25
@pytest.mark.parametrize(
    ("kpps", "winner", "new_bounds"),
    [
        ((0.80, 0.90, 0.85), MID, (0.75, 1.25)),  # line 21: start, end = left, right
        ((0.90, 0.80, 0.85), LEFT, (0.5, 1.25)),  # line 23: end = right
        ((0.80, 0.85, 0.90), RIGHT, (0.75, 1.5)),  # line 25: start = left
    ],
)
def test_single_step_moves_bounds_as_algorithm_3(
    kpps: tuple[float, float, float], winner: int, new_bounds: tuple[float, float]
) -> None:
    search = TriceSearch(start=0.5, end=1.5, warmup=2)
    assert search.update(2, kpps) == winner
    assert (search.start, search.end) == new_bounds
    assert search.trace == [
        {
            "epoch": 2,
            "start": 0.5,
            "end": 1.5,
            "candidates": [0.75, 1.0, 1.25],
            "kpps": list(kpps),
            "winner": winner,
        }
    ]


@pytest.mark.parametrize(
    ("kpps", "winner"),
    [
        ((0.9, 0.9, 0.9), MID),  # mid is checked first
        ((0.9, 0.9, 0.1), MID),
        ((0.1, 0.9, 0.9), MID),
        ((0.9, 0.1, 0.9), LEFT),  # then left, before right
    ],
)
def test_ties_follow_the_paper_if_order(kpps: tuple[float, float, float], winner: int) -> None:
    assert TriceSearch(start=0.0, end=1.0, warmup=0).update(0, kpps) == winner


def test_warmup_is_respected() -> None:
    search = TriceSearch.for_sigma(0.4, warmup=5)
    assert not any(search.should_update(epoch) for epoch in range(5))
    assert search.should_update(5) and search.should_update(6)
    with pytest.raises(ValueError, match="warm-up"):
        search.update(4, (0.1, 0.2, 0.3))
    assert search.trace == [] and (search.start, search.end) == (0.0, 0.8)


def test_search_brackets_and_converges_on_unimodal_kpp() -> None:
    search = TriceSearch.for_sigma(0.4, warmup=DEFAULT_WARMUP)
    epoch = 0
    while not search.converged():
        assert epoch < 200, "the search did not converge"
        if search.should_update(epoch):
            width = search.end - search.start
            kpps = tuple(stub_kpp(s) for s in search.candidates())
            search.update(epoch, kpps)
            assert search.start <= OPTIMUM <= search.end
            assert search.end - search.start <= 0.75 * width + 1e-15  # shrinks every update
        epoch += 1

    assert search.end - search.start < DEFAULT_TOLERANCE
    assert search.scale == pytest.approx(OPTIMUM, abs=DEFAULT_TOLERANCE)
    assert not search.should_update(epoch)
    with pytest.raises(ValueError, match="converged"):
        search.update(epoch, (0.1, 0.2, 0.3))
    # every update after warm-up, one per epoch, and each winner is the best stub value
    assert [entry["epoch"] for entry in search.trace] == list(range(DEFAULT_WARMUP, epoch))
    for entry in search.trace:
        assert entry["kpps"][entry["winner"]] == max(entry["kpps"])
    # 0.8 wide to under 1e-4 needs at least log2(8000) ~ 13 halvings
    assert len(search.trace) >= 13


def test_converged_below_tolerance() -> None:
    assert TriceSearch(start=0.3, end=0.3, warmup=0).converged()
    assert TriceSearch(start=0.3, end=0.30005, warmup=0).converged()
    assert not TriceSearch(start=0.3, end=0.3002, warmup=0).converged()
    assert TriceSearch(start=0.3, end=0.3002, warmup=0, tolerance=1e-3).converged()


def test_round_trip_through_json() -> None:
    search = TriceSearch.for_sigma(0.25, warmup=1)
    search.update(1, (0.5, 0.7, 0.6))
    search.update(2, (0.72, 0.71, 0.6))
    data = json.loads(json.dumps(search.to_dict()))
    assert data["converged"] is False
    restored = TriceSearch.from_dict(data)
    assert restored == search
    assert restored.to_dict() == search.to_dict()
    # the restored search carries on exactly where the original left off
    assert restored.candidates() == search.candidates()
    assert restored.update(3, (0.1, 0.3, 0.2)) == search.update(3, (0.1, 0.3, 0.2))
    assert restored == search


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start": 0.5, "end": 0.2, "warmup": 0}, "start <= end"),
        ({"start": -0.1, "end": 0.2, "warmup": 0}, "start <= end"),
        ({"start": 0.0, "end": float("inf"), "warmup": 0}, "finite"),
        ({"start": 0.0, "end": 1.0, "warmup": -1}, "warm-up"),
        ({"start": 0.0, "end": 1.0, "warmup": 0, "tolerance": 0.0}, "tolerance"),
    ],
)
def test_rejects_invalid_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TriceSearch(**kwargs)


def test_rejects_malformed_kpps() -> None:
    search = TriceSearch(start=0.0, end=1.0, warmup=0)
    with pytest.raises(ValueError, match="3 KPP"):
        search.update(0, (0.1, 0.2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="numbers"):
        search.update(0, (0.1, float("nan"), 0.2))
    assert search.trace == []
