"""Counting and streaming (Yi et al. 2019) item-frequency estimates for logQ."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys_cl.data.item_stats import (
    StreamingFrequencyEstimator,
    expected_count_log_q,
    item_log_prob_counting,
)


# ----------------------------------------------------------------------------- counting
def test_counting_hand_worked() -> None:
    clicks = np.array([0, 0, 0, 1, 2, 2])  # counts [3, 1, 2, 0] of 6 clicks
    log_p = item_log_prob_counting(clicks, num_items=4)
    assert log_p.dtype == np.float32 and log_p.shape == (4,)
    # item 3 was never clicked: it gets the smallest observed probability, 1/6
    np.testing.assert_allclose(np.exp(log_p), [3 / 6, 1 / 6, 2 / 6, 1 / 6], rtol=1e-6)


def test_counting_additive_smoothing() -> None:
    clicks = np.array([0, 0, 0, 1, 2, 2])
    # (count + 1) / (6 + 4): [4, 2, 3, 1] / 10
    log_p = item_log_prob_counting(clicks, num_items=4, smoothing=1.0)
    np.testing.assert_allclose(np.exp(log_p), [0.4, 0.2, 0.3, 0.1], rtol=1e-6)


def test_counting_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        item_log_prob_counting(np.array([0, 3]), num_items=3)
    with pytest.raises(ValueError, match="empty"):
        item_log_prob_counting(np.array([], dtype=np.int64), num_items=3)


def test_expected_count_log_q_numpy_and_torch() -> None:
    log_p = np.log(np.array([0.5, 0.01], dtype=np.float32))
    np.testing.assert_allclose(np.exp(expected_count_log_q(log_p, 100)), [50.0, 1.0], rtol=1e-5)
    out = expected_count_log_q(torch.from_numpy(log_p), 100)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out.exp(), torch.tensor([50.0, 1.0]))


# ----------------------------------------------------------------------------- streaming
def _stationary_stream(
    probs: np.ndarray, steps: int, seed: int
) -> tuple[StreamingFrequencyEstimator, np.ndarray]:
    """Item k is in each batch with probability probs[k] (with random repeats inside a batch)."""
    rng = np.random.default_rng(seed)
    est = StreamingFrequencyEstimator(num_buckets=1 << 16, num_hashes=2, alpha=0.05, seed=seed)
    for t in range(steps):
        present = np.flatnonzero(rng.random(len(probs)) < probs)
        batch = np.repeat(present, rng.integers(1, 4, size=len(present)))  # duplicates count once
        est.update(rng.permutation(batch), step=t)
    return est, np.exp(est.log_prob(np.arange(len(probs))))


def test_streaming_converges_to_inclusion_probability() -> None:
    groups = [0.5, 0.2, 0.05]
    probs = np.repeat(groups, 100)  # 300 items
    _, p_hat = _stationary_stream(probs, steps=3000, seed=0)
    for g, p in enumerate(groups):
        est = p_hat[g * 100 : (g + 1) * 100]
        assert np.mean(est) == pytest.approx(p, rel=0.1), f"group p={p}"
        assert np.median(np.abs(est / p - 1)) < 0.25, f"group p={p}"


def test_streaming_ranks_popular_above_rare() -> None:
    probs = np.array([0.9, 0.5, 0.2, 0.1, 0.03])
    _, p_hat = _stationary_stream(probs, steps=4000, seed=1)
    assert np.all(np.diff(p_hat) < 0), p_hat


def test_streaming_hand_worked_updates() -> None:
    est = StreamingFrequencyEstimator(num_buckets=1 << 12, num_hashes=3, alpha=0.5, seed=0)
    est.update(np.array([7, 7]), step=10)  # first sighting: gap = 10 - 10 + 1 = 1
    assert np.exp(est.log_prob(np.array([7])))[0] == pytest.approx(1.0)
    est.update(np.array([7]), step=14)  # B = 0.5 * 1 + 0.5 * (14 - 10) = 2.5
    assert np.exp(est.log_prob(np.array([7])))[0] == pytest.approx(1 / 2.5)
    est.update(np.array([3]), step=15)  # first sighting of 3 at the 6th step: gap 6
    assert np.exp(est.log_prob(np.array([3])))[0] == pytest.approx(1 / 6)
    # never seen: not in any of the 6 steps so far -> 1 / 7
    assert np.exp(est.log_prob(np.array([12345])))[0] == pytest.approx(1 / 7)


def test_streaming_inclusion_is_about_batch_size_times_click_probability() -> None:
    """Docstring claim: for rare items the per-batch estimate ~ 1 - (1 - p)^B ~ B * p."""
    rng = np.random.default_rng(0)
    p_click = np.array([0.3] + [0.7 / 140] * 140)  # one head item, 140 rare items
    B = 16
    est = StreamingFrequencyEstimator(num_buckets=1 << 16, alpha=0.02)
    for t in range(3000):
        est.update(rng.choice(len(p_click), size=B, p=p_click), step=t)
    p_hat = np.exp(est.log_prob(np.arange(len(p_click))))
    inclusion = 1 - (1 - p_click) ** B
    assert p_hat[0] == pytest.approx(inclusion[0], rel=0.05)  # saturates near 1, not 16 * 0.3
    assert np.mean(p_hat[1:]) == pytest.approx(np.mean(inclusion[1:]), rel=0.15)
    assert np.mean(p_hat[1:]) == pytest.approx(B * p_click[1], rel=0.2)


def test_streaming_accepts_tensors_and_keeps_shape() -> None:
    est = StreamingFrequencyEstimator(num_buckets=64, num_hashes=2)
    est.update(torch.tensor([1, 2, 3]), step=0)
    out = est.log_prob(torch.tensor([[1, 2], [3, 4]]))
    assert out.shape == (2, 2) and out.dtype == np.float32
    assert np.all(out <= 0) and np.all(np.isfinite(out))


def test_streaming_rejects_non_increasing_steps_and_negative_ids() -> None:
    est = StreamingFrequencyEstimator(num_buckets=64)
    est.update(np.array([1]), step=5)
    with pytest.raises(ValueError, match="strictly increase"):
        est.update(np.array([1]), step=5)
    with pytest.raises(ValueError, match=">= 0"):
        est.update(np.array([-1]), step=6)


def test_streaming_buckets_in_range_for_non_power_of_two() -> None:
    est = StreamingFrequencyEstimator(num_buckets=1000, num_hashes=4, seed=3)
    ids = np.arange(100_000)
    for k in range(4):
        b = est._buckets(ids, k)
        assert b.min() >= 0 and b.max() < 1000
        counts = np.bincount(b, minlength=1000)
        assert counts.min() > 50 and counts.max() < 160  # roughly uniform (mean 100)


def test_streaming_state_dict_round_trip() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 500, size=32) for _ in range(40)]
    a = StreamingFrequencyEstimator(num_buckets=256, num_hashes=2, seed=5)
    for t, b in enumerate(batches[:20]):
        a.update(b, step=t)
    state = a.state_dict()
    b_est = StreamingFrequencyEstimator(num_buckets=256, num_hashes=2, seed=99)  # other hashes
    b_est.load_state_dict(state)
    for t, b in enumerate(batches[20:], start=20):
        a.update(b, step=t)
        b_est.update(b, step=t)
    ids = np.arange(500)
    np.testing.assert_array_equal(a.log_prob(ids), b_est.log_prob(ids))
    with pytest.raises(ValueError, match="num_buckets"):
        StreamingFrequencyEstimator(num_buckets=128, num_hashes=2).load_state_dict(state)


def test_streaming_log_prob_before_any_update_is_zero() -> None:
    est = StreamingFrequencyEstimator(num_buckets=16)
    assert est.log_prob(np.array([0, 5])).tolist() == [0.0, 0.0]
    assert math.isfinite(float(est.log_prob(np.array([3]))[0]))
