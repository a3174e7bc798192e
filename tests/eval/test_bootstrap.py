"""recsys_cl.eval.bootstrap.paired_bootstrap against a loop reference and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from recsys_cl.eval.bootstrap import expanded_tail, interval_metrics, interval_verdict, paired_bootstrap


def _loop_reference(after: np.ndarray, before: np.ndarray, n_boot: int, level: float, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(after), size=(n_boot, len(after)))
    means = []
    for r in range(n_boot):
        total = 0.0
        for i in rows[r]:
            total += after[i] - before[i]
        means.append(total / len(after))
    # expanded percentile (Hesterberg 2015): z_tail' sqrt((n - 1) / n) = t_{n-1}(tail)
    tail = float(stats.norm.cdf(stats.t.ppf((1 - level) / 2, len(after) - 1) / np.sqrt((len(after) - 1) / len(after))))
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def test_matches_a_loop_reference() -> None:
    rng = np.random.default_rng(1)
    before = rng.random(50)
    after = before + rng.normal(0.05, 0.1, 50)
    out = paired_bootstrap(after, before, n_boot=300, level=0.9, seed=7)
    low, high = _loop_reference(after, before, 300, 0.9, 7)
    assert out["low"] == pytest.approx(low) and out["high"] == pytest.approx(high)
    assert out["delta"] == pytest.approx(np.mean(after - before)) and out["n_boot"] == 300 and out["n"] == 50
    assert out["low"] < out["delta"] < out["high"]


def test_hand_worked_constant_difference_has_a_zero_width_interval() -> None:
    # every example gains exactly 0.25: whatever is resampled, the mean gain is 0.25
    out = paired_bootstrap(np.array([0.5, 0.75, 1.0]), np.array([0.25, 0.5, 0.75]))
    assert out["delta"] == out["low"] == out["high"] == pytest.approx(0.25)


def test_pairing_matters() -> None:
    # large spread across examples, tiny consistent gain: paired interval excludes 0
    before = np.linspace(0.0, 1.0, 200)
    out = paired_bootstrap(before + 0.01, before)
    assert out["low"] > 0.0


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap(np.zeros(3), np.zeros(3), level=1.0)


def test_interval_verdict() -> None:
    assert interval_verdict({"low": 0.001, "high": 0.02}) == "better"
    assert interval_verdict({"low": -0.0135, "high": -0.0023}) == "worse"
    assert interval_verdict({"low": -0.005, "high": 0.006}) == "no clear difference"
    assert interval_verdict({"low": 0.0, "high": 0.01}) == "no clear difference"  # 0 is inside
    same = paired_bootstrap(np.ones(5), np.ones(5))
    assert interval_verdict(same) == "no clear difference"


def test_interval_metrics_names_the_three_numbers() -> None:
    d = {"delta": -0.1, "low": -0.2, "high": 0.05, "n_boot": 2000.0}
    assert interval_metrics("delta/x@5", d) == {"delta/x@5_delta": -0.1, "delta/x@5_low": -0.2, "delta/x@5_high": 0.05}


def test_expanded_tail_by_hand() -> None:
    # 17 examples: t_16(0.025) = -2.1199, times sqrt(17 / 16) = -2.1851, Phi of that = 0.01444
    assert expanded_tail(0.025, 17) == pytest.approx(0.01444, abs=2e-5)
    assert expanded_tail(0.025, 1000) == pytest.approx(0.02480, abs=2e-5)  # barely moves for many
    assert expanded_tail(0.05, 1) == 0.05  # one example: no t quantile; the interval has no width anyway


def test_the_expanded_interval_covers_the_mean_of_17_examples_near_its_level() -> None:
    """Normal data, N = 17 (the cold-start test users): the plain percentile interval of the mean
    covers the true mean less often than 95%; the expanded one comes closer (seeded simulation)."""
    rng = np.random.default_rng(0)
    n, n_sets, n_boot = 17, 1000, 1000
    covered = {"plain": 0, "expanded": 0}
    for _ in range(n_sets):
        x = rng.normal(0.0, 1.0, n)
        out = paired_bootstrap(x, np.zeros(n), n_boot=n_boot, seed=int(rng.integers(1 << 31)))
        covered["expanded"] += out["low"] <= 0.0 <= out["high"]
        means = x[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
        lo, hi = np.quantile(means, [0.025, 0.975])
        covered["plain"] += lo <= 0.0 <= hi
    plain, expanded = covered["plain"] / n_sets, covered["expanded"] / n_sets
    assert plain < 0.94 and abs(expanded - 0.95) < abs(plain - 0.95), (plain, expanded)
