import math

import numpy as np
import pytest

from recsys_cl.eval import metrics

# 3 users, top-3 lists; user 0 has 2 targets, user 1 has 1 (missed), user 2 has 3 (one found).
HITS = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=bool)
N_TARGETS = np.array([2, 1, 3])


def test_recall_at_k():
    # @1: u0 1/2, u1 0/1, u2 0/3 ; @3: u0 2/2, u1 0/1, u2 1/3
    np.testing.assert_allclose(metrics.recall_at_k(HITS, N_TARGETS, 1), [0.5, 0, 0])
    np.testing.assert_allclose(metrics.recall_at_k(HITS, N_TARGETS, 3), [1.0, 0, 1 / 3])


def test_recall_counts_unrankable_targets_as_misses():
    # one hit but 4 targets (3 of them outside the catalogue): 1/4
    np.testing.assert_allclose(metrics.recall_at_k(np.array([[1, 0]], bool), np.array([4]), 2), [0.25])


def test_precision_and_hit_rate():
    # precision@3: 2/3, 0/3, 1/3 ; hit_rate@1: only u0 ; hit_rate@3: u0 and u2
    np.testing.assert_allclose(metrics.precision_at_k(HITS, 3), [2 / 3, 0, 1 / 3])
    np.testing.assert_allclose(metrics.hit_rate_at_k(HITS, 1), [1, 0, 0])
    np.testing.assert_allclose(metrics.hit_rate_at_k(HITS, 3), [1, 0, 1])


def test_precision_divides_by_k_not_by_the_list_width():
    # the hit matrix is 3 wide; precision@1: 1/1, 0/1, 0/1 ; @2: 1/2, 0/2, 1/2
    np.testing.assert_allclose(metrics.precision_at_k(HITS, 1), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(metrics.precision_at_k(HITS, 2), [0.5, 0.0, 0.5])


def test_users_without_targets_score_zero_not_nan():
    # a row with n_targets = 0 (e.g. every target dropped by a restriction): 0 by definition
    hits, n = np.array([[0, 0], [1, 0]], bool), np.array([0, 1])
    np.testing.assert_array_equal(metrics.recall_at_k(hits, n, 2), [0.0, 1.0])
    np.testing.assert_array_equal(metrics.ndcg_at_k(hits, n, 2), [0.0, 1.0])


def test_dcg_discounts_are_one_over_log2_of_rank_plus_one():
    # ranks 1, 2, 3, 4: 1/log2(2) = 1, 1/log2(3), 1/log2(4) = 0.5, 1/log2(5)
    np.testing.assert_allclose(metrics.dcg_discounts(4), [1.0, 1 / np.log2(3), 0.5, 1 / np.log2(5)])


def test_ndcg_at_k():
    # u0: DCG = 1/log2(2) + 1/log2(4) = 1 + 0.5 = 1.5; ideal with min(2,3)=2 hits = 1 + 1/log2(3)
    # u1: 0
    # u2: DCG = 1/log2(3); ideal with min(3,3)=3 hits = 1 + 1/log2(3) + 1/log2(4)
    l3 = 1 / np.log2(3)
    expected = [1.5 / (1 + l3), 0.0, l3 / (1 + l3 + 0.5)]
    np.testing.assert_allclose(metrics.ndcg_at_k(HITS, N_TARGETS, 3), expected)
    np.testing.assert_allclose(expected, [0.91972, 0.0, 0.29608], atol=1e-5)


def test_ndcg_ideal_is_capped_at_k():
    # 5 targets, top-2 both hits: DCG = ideal DCG over min(5, 2) = 2 ranks -> 1
    np.testing.assert_allclose(metrics.ndcg_at_k(np.array([[1, 1]], bool), np.array([5]), 2), [1.0])
    # only rank 2 is a hit, 1 target: (1/log2(3)) / 1
    got = metrics.ndcg_at_k(np.array([[0, 1]], bool), np.array([1]), 2)
    np.testing.assert_allclose(got, [1 / np.log2(3)])


def _rr_loop(higher, n_tied, t_tied):
    """Slow reference: sum over the first target's position j in the tied block, exact binomials."""
    out = []
    for h, n, t in zip(higher, n_tied, t_tied):
        if n == 0:
            out.append(0.0)
            continue
        out.append(sum(math.comb(n - j, t - 1) / math.comb(n, t) / (h + j) for j in range(1, n - t + 2)))
    return np.array(out)


def test_reciprocal_rank_by_hand():
    # no ties: ranks 1 and 4; none rankable -> 0
    np.testing.assert_allclose(metrics.reciprocal_rank(np.array([0, 0, 3]), np.array([1, 0, 1]), np.array([1, 0, 1])),
                               [1.0, 0.0, 0.25])
    # a target tied with 2 others below 1 higher item: ranks 2, 3, 4 each 1/3
    got = metrics.reciprocal_rank(np.array([1]), np.array([3]), np.array([1]))[0]
    assert got == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)
    # a constant score over n items, one target: H_n / n, not 1 / E[rank] = 2 / (n + 1)
    n = 9742
    assert metrics.reciprocal_rank(np.array([0]), np.array([n]), np.array([1]))[0] == pytest.approx(
        np.sum(1 / np.arange(1, n + 1)) / n, rel=1e-12)
    for bad in ([-1], [0]):  # higher < 0; a tie block with no target
        with pytest.raises(ValueError, match="t_tied"):
            metrics.reciprocal_rank(np.array(bad), np.array([2]), np.array([0 if bad == [0] else 1]))


def test_reciprocal_rank_matches_a_loop_reference_across_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    n = rng.integers(0, 60, size=200)
    t = np.where(n > 0, rng.integers(1, 60, size=200) % np.maximum(n, 1) + 1, 0)
    h = rng.integers(0, 50, size=200)
    want = _rr_loop(h, n, t)
    np.testing.assert_allclose(metrics.reciprocal_rank(h, n, t), want, rtol=1e-10)
    monkeypatch.setattr(metrics, "_RR_CHUNK", 37)  # many chunks, some users bigger than one chunk
    np.testing.assert_allclose(metrics.reciprocal_rank(h, n, t), want, rtol=1e-10)


def test_coverage_ignores_padding():
    # items {0, 1} appear (-1 is padding) in a catalogue of 4 -> 2/4
    assert metrics.coverage(np.array([[0, 1], [1, -1]]), 4) == 0.5


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="k must be"):
        metrics.recall_at_k(HITS, N_TARGETS, 4)
    with pytest.raises(ValueError, match="one entry per"):
        metrics.recall_at_k(HITS, N_TARGETS[:2], 2)
    with pytest.raises(ValueError, match="n_items"):
        metrics.coverage(np.array([[0]]), 0)


def test_fractional_hits_are_expectations_and_hit_rate_reads_first_hit_probabilities():
    # one target, tied for ranks 2 and 3: expected hits [0, 1/2, 1/2]
    hits, n = np.array([[0.0, 0.5, 0.5]]), np.array([1])
    np.testing.assert_allclose(metrics.recall_at_k(hits, n, 2), [0.5])
    np.testing.assert_allclose(metrics.ndcg_at_k(hits, n, 3), [0.5 / np.log2(3) + 0.5 / np.log2(4)])
    # first-hit probabilities: 1/2 at rank 1, 1/3 at rank 2, 1/6 at rank 3
    first = np.array([[1 / 2, 1 / 3, 1 / 6]])
    np.testing.assert_allclose(metrics.hit_rate_at_k(first, 1), [1 / 2])
    np.testing.assert_allclose(metrics.hit_rate_at_k(first, 2), [5 / 6])
    np.testing.assert_allclose(metrics.hit_rate_at_k(first, 3), [1.0])
