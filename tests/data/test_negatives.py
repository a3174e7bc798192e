"""Negative samplers (uniform, popularity) and the user-clicked mask."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys_cl.data.negatives import (
    PopularitySampler,
    UniformSampler,
    build_sampler,
    make_user_item_keys,
    user_item_mask,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- samplers
@pytest.mark.parametrize(
    "sampler",
    [UniformSampler(50), PopularitySampler(np.arange(50) % 7, alpha=0.75)],
    ids=["uniform", "popularity"],
)
def test_sampler_is_deterministic_by_seed(sampler: UniformSampler | PopularitySampler) -> None:
    a_items, a_log_q = sampler.sample(64, _gen(3))
    b_items, b_log_q = sampler.sample(64, _gen(3))
    c_items, _ = sampler.sample(64, _gen(4))
    assert torch.equal(a_items, b_items) and torch.equal(a_log_q, b_log_q)
    assert not torch.equal(a_items, c_items)
    assert a_items.dtype == torch.int64 and a_items.shape == (64,)
    assert a_log_q.dtype == torch.float32 and a_log_q.shape == (64,)
    assert a_items.min() >= 0 and a_items.max() < 50


def test_uniform_frequencies_and_log_q() -> None:
    M, N = 20, 200_000
    items, log_q = UniformSampler(M).sample(N, _gen(0))
    freq = np.bincount(items.numpy(), minlength=M) / N
    np.testing.assert_allclose(freq, 1 / M, atol=0.005)
    # log expected count among N draws: log(N / M)
    torch.testing.assert_close(log_q, torch.full((N,), math.log(N / M)))


def test_popularity_frequencies_and_log_q() -> None:
    counts = np.array([100, 10, 0, 1, 50])
    alpha, N = 0.5, 200_000
    q = np.array([10.0, math.sqrt(10), 0.0, 1.0, math.sqrt(50)])
    q /= q.sum()  # count^alpha over clicked items; item 2 (zero count) excluded
    sampler = PopularitySampler(counts, alpha)
    items, log_q = sampler.sample(N, _gen(1))
    freq = np.bincount(items.numpy(), minlength=5) / N
    np.testing.assert_allclose(freq, q, atol=0.005)
    assert freq[2] == 0.0  # never drawn
    expected = np.log(N * q[items.numpy()])
    np.testing.assert_allclose(log_q.numpy(), expected, rtol=1e-5)


def test_popularity_alpha_zero_is_uniform_over_clicked_items() -> None:
    sampler = PopularitySampler(np.array([5, 0, 1, 7]), alpha=0.0)
    expected = torch.tensor([1 / 3, 0.0, 1 / 3, 1 / 3], dtype=torch.float64)
    torch.testing.assert_close(sampler.probs, expected)


def test_sampler_errors() -> None:
    with pytest.raises(ValueError, match="at least one positive count"):
        PopularitySampler(np.zeros(4), alpha=1.0)
    with pytest.raises(ValueError, match=">= 1"):
        UniformSampler(5).sample(0, _gen(0))


def test_build_sampler() -> None:
    counts = np.array([3, 1, 0])
    assert build_sampler("none", counts, 0.75) is None
    uniform = build_sampler("uniform", counts, 0.75)  # uniform over clicked items only
    items, log_q = uniform.sample(1000, torch.Generator().manual_seed(0))
    assert set(items.tolist()) == {0, 1}
    assert torch.allclose(log_q, torch.full((1000,), math.log(1000 / 2)))
    popularity = build_sampler("popularity", counts, 0.75)
    assert isinstance(popularity, PopularitySampler) and popularity.num_items == 3
    with pytest.raises(ValueError, match="unknown sampler kind 'zipf'"):
        build_sampler("zipf", counts, 0.75)


# ----------------------------------------------------------------------------- user-item mask
def test_make_user_item_keys_sorted_unique() -> None:
    keys = make_user_item_keys(np.array([1, 0, 1, 0]), np.array([2, 3, 2, 0]), num_items=4)
    assert keys.tolist() == [0, 3, 6]  # 0*4+0, 0*4+3, 1*4+2 (duplicate click dropped)
    assert keys.dtype == np.int64


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_user_item_mask_matches_set_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    M, U = 30, 12
    users, items = rng.integers(0, U, 200), rng.integers(0, M, 200)
    keys = make_user_item_keys(users, items, M)
    clicked = set(zip(users.tolist(), items.tolist()))

    batch_users = torch.from_numpy(rng.integers(0, U, 8))  # (B,)
    cand = rng.integers(0, M, 13)  # (C,)
    mask = user_item_mask(batch_users, cand, keys, M)

    expected = [[(u, c) in clicked for c in cand.tolist()] for u in batch_users.tolist()]
    assert mask.dtype == torch.bool and mask.shape == (8, 13)
    assert mask.tolist() == expected


def test_user_item_mask_with_no_clicks() -> None:
    mask = user_item_mask(np.array([0, 1]), np.array([0, 1, 2]), np.array([], dtype=np.int64), 3)
    assert mask.shape == (2, 3) and not mask.any()


def test_user_item_mask_csr_path_matches_key_path() -> None:
    from recsys_cl.data.negatives import make_user_item_matrix

    rng = np.random.default_rng(0)
    u, i = rng.integers(0, 30, 400), rng.integers(0, 50, 400)
    keys = make_user_item_keys(u, i, 50)
    csr = make_user_item_matrix(u, i, 30, 50)
    bu, bi = rng.integers(0, 30, 64), rng.integers(0, 50, 80)
    assert torch.equal(user_item_mask(bu, bi, keys, 50), user_item_mask(bu, bi, csr, 50))
    assert user_item_mask(bu, bi, csr, 50).sum() > 0


def test_popularity_sampler_survives_a_large_alpha() -> None:
    """count ** alpha overflowed float64 (NaN probabilities, then torch.multinomial failed); in log
    space a large alpha is the limit it should be: all mass on the most clicked item."""
    counts = np.array([0, 10_000, 9_000, 3, 1], dtype=np.int64)
    for alpha in (0.75, 80.0, 500.0):
        q = PopularitySampler(counts, alpha=alpha).probs.numpy()
        assert np.isfinite(q).all() and q.sum() == pytest.approx(1.0) and q[0] == 0.0
        reference = np.where(counts > 0, (counts / counts.max()) ** alpha, 0.0)  # the closed form, rescaled
        np.testing.assert_allclose(q, reference / reference.sum(), rtol=1e-12, atol=1e-300)
    items, log_q = PopularitySampler(counts, alpha=500.0).sample(64, torch.Generator().manual_seed(0))
    assert (items == 1).all() and torch.isfinite(log_q).all()
