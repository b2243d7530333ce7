"""The device effects as noise-family classes, composed by the effects engine.

The golden per-sample accuracies in tests/golden/device_effects_accuracies.json were recorded
before the effects moved out of ``ftaudit/device_effects.py`` (drift with a nu spread at several
times, stuck-at cells, global compensation; batched samples and worker processes; both normal
generators): the split must keep every sample's accuracy bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ftaudit
from ftaudit.errors import UserError
from ftaudit.models.base import CrossbarLayer
from ftaudit.noise import get_noise_model
from ftaudit.noise.compensation import compensation_modes
from ftaudit.noise.drift import DriftModel
from ftaudit.noise.stuck import StuckAt

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "device_effects_accuracies.json"
YEAR = 365 * 86400.0
#: the runs behind the golden file: ``samples=5, seed=7, limit=300`` on the sample LeNet
CASES = {
    "drift_stuck_both": {
        "sigmas": [0.0, 0.2],
        "times": [20.0, 3600.0, 86400.0, YEAR],
        "drift_nu_std": 0.03,
        "stuck_at": (0.01, 0.005),
    },
    "drift_global_batched": {
        "sigmas": [0.1, 0.3],
        "times": [3600.0, YEAR],
        "compensation": "global",
        "drift_nu": 0.08,
        "drift_nu_std": 0.02,
        "batch_samples": 3,
    },
    "rram_drift_stuck_batched": {
        "sigmas": [0.1],
        "noise": "rram",
        "times": [86400.0, YEAR],
        "stuck_at": (0.02, 0.01),
        "batch_samples": 2,
    },
    "stuck_only_workers": {"sigmas": [0.1, 0.2], "stuck_at": (0.03, 0.0), "workers": 2},
    "drift_none_workers": {
        "sigmas": [0.2],
        "times": [1.0, YEAR],
        "compensation": "none",
        "workers": 2,
        "drift_nu_std": 0.0,
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("rng", ["fast", "ziggurat"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_per_sample_accuracies_are_the_recorded_ones(case: str, rng: str) -> None:
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))[f"{case}/{rng}"]
    report = ftaudit.audit(
        ROOT / "sample_models" / "lenet.onnx",
        ROOT / "sample_models" / "fmnist_test_2000.npz",
        samples=5, seed=7, rng=rng, limit=300, **CASES[case],
    )  # fmt: skip
    rows = [[r.sigma, r.time_s, r.compensation, r.accuracies.tolist()] for r in report.results]
    assert rows == golden
    assert len({a for row in rows for a in row[3]}) > 3  # the samples differ: a real check


def test_compensation_modes() -> None:
    assert compensation_modes(None) == ("none", "global")
    assert compensation_modes("both") == ("none", "global")
    assert compensation_modes("gdc") == ("global",)
    assert compensation_modes("none") == ("none",)
    with pytest.raises(UserError, match="unknown compensation 'half'"):
        compensation_modes("half")


WEIGHT = np.linspace(-2, 1, 12, dtype=np.float32).reshape(3, 4)


def _layer() -> CrossbarLayer:
    return CrossbarLayer(name="w", op="Gemm", index=1, shape=(3, 4), dtype="float32")


def test_stuck_masks_are_disjoint_and_forced_to_the_extremes() -> None:
    layer = _layer()
    cells = get_noise_model("gaussian").prepare(WEIGHT).cells()
    low, high = StuckAt(0.3, 0.3).draw(5, 0, layer, cells.count)
    assert low.shape == high.shape == (cells.count, 3, 4)
    assert not np.any(low & high)
    again = StuckAt(0.3, 0.3).draw(5, 0, layer, cells.count)
    assert np.array_equal(again[0], low) and np.array_equal(again[1], high)
    assert low.any() and high.any()
    programmed = np.full((cells.count, 3, 4), 0.5, np.float32)
    StuckAt.apply(programmed, cells, low, high)
    # stuck low reads 0, stuck high the layer's largest magnitude with the weight's sign
    expected_high = np.where(WEIGHT < 0, -2.0, 2.0)[np.newaxis]
    assert np.all(programmed[low] == 0)
    assert np.array_equal(programmed[high], np.broadcast_to(expected_high, low.shape)[high])
    assert np.all(programmed[~(low | high)] == 0.5)


def test_drift_exponents_and_decay_follow_the_power_law() -> None:
    layer = _layer()
    nu = DriftModel(20.0, 0.05, 0.0).draw(1, 0, layer, 1)
    assert nu.shape == (1, 3, 4) and np.all(nu == np.float32(0.05))
    spread = DriftModel(20.0, 0.05, 0.5).draw(1, 0, layer, 1)
    assert np.all(spread >= 0) and len(np.unique(spread)) > 1  # clipped at 0, spread
    factor = DriftModel.decay(nu, DriftModel().log_ratio(YEAR))
    np.testing.assert_allclose(factor, (YEAR / 20.0) ** -0.05, rtol=1e-6)
    cells = np.full((1, 3, 4), 0.8, np.float32)
    drifted = DriftModel.apply(cells, factor, np.empty_like(cells))
    np.testing.assert_allclose(drifted, 0.8 * (YEAR / 20.0) ** -0.05, rtol=1e-6)
