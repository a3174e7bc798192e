import itertools

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
import torch

from recsys_cl.eval.protocol import (
    EvalSet,
    build_eval_set,
    evaluate,
    interaction_matrix,
    masked_top_k,
    per_user_recall,
    protocol_name,
    random_expected_metrics,
    restrict_targets,
    top_k_items,
)
from recsys_cl.features.vocab import Vocab


def clicks(pairs):
    users, items = zip(*pairs)
    return pl.DataFrame(
        {"user_id": list(users), "item_id": list(items), "timestamp": list(range(len(pairs)))},
        schema_overrides={"item_id": pl.Int64, "timestamp": pl.Int64},
    )


def tiny_case():
    """3 evaluated users x 5 catalogue items, plus a 4th target user with no history."""
    train = clicks([("u1", 1), ("u1", 2), ("u2", 2), ("u2", 3), ("u3", 4), ("u3", 5)])
    targets = clicks([("u1", 3), ("u2", 9), ("u3", 3), ("u4", 1)])  # item 9 is not in the catalogue
    items = Vocab.from_values(train["item_id"], "item_id")
    users = Vocab.from_values(train["user_id"], "user_id")
    return train, targets, items, users


def test_build_eval_set_tiny_case():
    train, targets, items, users = tiny_case()
    es = build_eval_set(train, targets, items, users, "p")
    assert list(es.user_ids) == ["u1", "u2", "u3"]  # u4 has no history: skipped and counted
    assert es.n_skipped_users == 1
    np.testing.assert_array_equal(es.user_index, [0, 1, 2])
    np.testing.assert_array_equal(es.n_targets, [1, 1, 1])
    assert es.history.toarray().tolist() == [[1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 1, 1]]
    assert es.targets.toarray().tolist() == [[0, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0]]
    assert es.history.dtype == np.float32


def test_evaluate_tiny_case_by_hand():
    train, targets, items, users = tiny_case()
    es = build_eval_set(train, targets, items, users, "p")
    scores = np.array([5, 4, 3, 2, 1], dtype=np.float32)  # items 1..5, same for everyone
    out = evaluate(lambda rows: np.tile(scores, (len(rows), 1)), es, ks=(1, 3))
    # u1: history {1,2} masked -> ranking 3,4,5; target 3 at rank 1
    # u2: target 9 is outside the catalogue -> miss everywhere, rr 0; ranking 1,4,5
    # u3: history {4,5} masked -> ranking 1,2,3; target 3 at rank 3
    assert out["recall@1"] == pytest.approx(1 / 3)  # (1 + 0 + 0) / 3
    assert out["recall@3"] == pytest.approx(2 / 3)  # (1 + 0 + 1) / 3
    assert out["ndcg@3"] == pytest.approx(0.5)  # (1 + 0 + 1/log2(4)) / 3
    assert out["ndcg@1"] == pytest.approx(1 / 3)  # each K cuts its own list: (1 + 0 + 0) / 3
    assert out["hit_rate@3"] == pytest.approx(2 / 3)
    assert out["hit_rate@1"] == pytest.approx(1 / 3)
    assert out["mrr"] == pytest.approx(4 / 9)  # (1 + 0 + 1/3) / 3
    assert out["coverage@1"] == pytest.approx(2 / 5)  # top-1 items {3, 1, 1}
    assert out["coverage@3"] == pytest.approx(1.0)  # {3,4,5} | {1,4,5} | {1,2,3}
    assert out["n_users"] == 3 and out["n_skipped_users"] == 1


def test_per_user_recall_tiny_case_by_hand():
    train, targets, items, users = tiny_case()
    es = build_eval_set(train, targets, items, users, "p")
    scores = np.array([5, 4, 3, 2, 1], dtype=np.float32)
    fn = lambda rows: np.tile(scores, (len(rows), 1))  # noqa: E731
    # same rankings as above: u1 hits at rank 1, u2 never, u3 at rank 3
    np.testing.assert_array_equal(per_user_recall(fn, es, k=1), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(per_user_recall(fn, es, k=3, batch_size=2), [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="positive"):
        per_user_recall(fn, es, k=0)


def random_eval_set(n_users=50, n_items=40, seed=0):
    rng = np.random.default_rng(seed)
    h = (rng.random((n_users, n_items)) < 0.3).astype(np.float32)
    t = np.zeros_like(h)
    for u in range(n_users):  # one or two targets outside the history
        free = np.flatnonzero(h[u] == 0)
        t[u, rng.choice(free, size=1 + u % 2, replace=False)] = 1
    return EvalSet(
        user_ids=np.arange(n_users), user_index=np.arange(n_users), history=sp.csr_matrix(h),
        targets=sp.csr_matrix(t), n_targets=t.sum(1).astype(np.int64), protocol="p",
    )


def test_history_items_never_in_top_k():
    es = random_eval_set()
    rng = np.random.default_rng(1)
    # history items get the highest raw scores: without masking they would fill the lists
    scores = rng.random((es.n_users, es.n_items)) + 100 * es.history.toarray()
    idx, top = masked_top_k(scores.copy(), es.history, 10)
    h = es.history.toarray().astype(bool)
    assert not np.take_along_axis(h, idx, axis=1).any()
    assert np.all(np.diff(top, axis=1) <= 0)  # best first
    # same through evaluate: history boosted, targets next -> every target is found
    t = es.targets.toarray()
    out = evaluate(lambda rows: 100 * h[rows] + t[rows], es, ks=(2, 10))
    assert out["recall@2"] == 1.0 and out["mrr"] == 1.0


def test_a_target_in_the_history_is_masked_even_when_the_list_is_longer_than_the_rankable_items():
    """u re-clicks item 1 (a repeat, as leave_last_out allows); items 1 and 2 are masked, so only
    item 3 is rankable and the top-3 is [3, masked, masked]: the masked target is no hit and the
    masked padding recommends nothing."""
    train = clicks([("u", 1), ("u", 2), ("v", 3)])
    targets = clicks([("u", 1)])
    items = Vocab.from_values(train["item_id"], "item_id")
    es = build_eval_set(train, targets, items, Vocab.from_values(train["user_id"], "user_id"), "p")
    assert es.targets.toarray().tolist() == [[1, 0, 0]] and es.history.toarray().tolist() == [[1, 1, 0]]
    fn = lambda rows: np.array([[3.0, 2.0, 1.0]], np.float32)  # noqa: E731  the target scores best
    out = evaluate(fn, es, ks=(3,))
    assert out["recall@3"] == 0.0 and out["hit_rate@3"] == 0.0 and out["ndcg@3"] == 0.0
    assert out["mrr"] == 0.0  # no rankable target
    assert out["coverage@3"] == pytest.approx(1 / 3)  # only item 3 is recommended
    np.testing.assert_array_equal(top_k_items(fn, es, 3), [[2, -1, -1]])


def test_oracle_gets_perfect_scores_and_accepts_torch():
    es = random_eval_set()
    t = torch.from_numpy(es.targets.toarray())
    out = evaluate(lambda rows: t[torch.as_tensor(rows)], es, ks=(10, 20), batch_size=7)
    assert out["recall@10"] == 1.0 and out["ndcg@10"] == pytest.approx(1.0) and out["mrr"] == 1.0


def test_out_of_catalogue_targets_count_as_misses():
    train = clicks([(1, 10), (1, 11), (2, 11)])
    targets = clicks([(1, 12), (1, 99), (2, 10)])  # 99 never seen in train
    train = pl.concat([train, clicks([(3, 12)])])
    items = Vocab.from_values(train["item_id"])
    users = Vocab.from_values(train["user_id"])
    es = build_eval_set(train, targets, items, users, "p")
    np.testing.assert_array_equal(es.n_targets, [2, 1])
    t = es.targets.toarray()
    out = evaluate(lambda rows: t[rows], es, ks=(2,))
    assert out["recall@2"] == pytest.approx((1 / 2 + 1) / 2)  # user 1 finds 12 but not 99


def test_test_history_is_train_plus_val_and_unknown_users_get_minus_one():
    train = clicks([(1, 10), (1, 11), (2, 11), (2, 12)])
    val = clicks([(1, 12), (3, 10)])  # user 3 has no train clicks
    test = clicks([(1, 13), (3, 11)])
    train = pl.concat([train, clicks([(2, 13)])])
    items = Vocab.from_values(train["item_id"])
    users = Vocab.from_values(train["user_id"])
    es = build_eval_set(pl.concat([train, val]), test, items, users, "p")
    assert list(es.user_ids) == [1, 3]
    np.testing.assert_array_equal(es.user_index, [0, -1])
    assert es.history.toarray().tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]  # val click 12 masked


def test_duplicate_clicks_count_once():
    train = clicks([(1, 10), (1, 10), (1, 11)])
    targets = clicks([(1, 12), (1, 12)])
    train = pl.concat([train, clicks([(2, 12)])])
    items, users = Vocab.from_values(train["item_id"]), Vocab.from_values(train["user_id"])
    es = build_eval_set(train, targets, items, users, "p")
    assert es.history.data.tolist() == [1.0, 1.0]
    np.testing.assert_array_equal(es.n_targets, [1])
    assert interaction_matrix(train, users, items).toarray().tolist() == [[1, 1, 0], [0, 0, 1]]


def test_mrr_is_the_expected_reciprocal_rank_under_random_tie_order():
    """A constant score must not earn rank 1, nor 1 / E[rank]: MRR averages 1 / rank over the
    random orders of tied items."""
    def one_user(target_cols):
        hist = sp.csr_matrix((1, 4), dtype=np.float32)
        tgt = sp.csr_matrix((np.ones(len(target_cols), np.float32), ([0] * len(target_cols), target_cols)),
                            shape=(1, 4))
        return EvalSet(np.array(["u"]), np.array([0]), hist, tgt, np.array([len(target_cols)]), "p")

    const = lambda rows: np.zeros((len(rows), 4), np.float32)  # noqa: E731
    # one target among 4 tied items: rank 1..4 each with probability 1/4 (1 / E[rank] would be 0.4)
    assert evaluate(const, one_user([1]), ks=(1,))["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # two targets among 4: the first is at 1, 2, 3 with probability 3/6, 2/6, 1/6
    assert evaluate(const, one_user([1, 3]), ks=(1,))["mrr"] == pytest.approx(3 / 6 + 2 / 6 / 2 + 1 / 6 / 3)
    # one item strictly higher, the target tied with one other: rank 2 or 3
    scores = lambda rows: np.array([[3.0, 1.0, 1.0, 0.0]], np.float32)  # noqa: E731
    assert evaluate(scores, one_user([1]), ks=(1,))["mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    # no ties: plain 1 / (1 + strictly higher)
    distinct = lambda rows: np.array([[3.0, 1.0, 2.0, 0.0]], np.float32)  # noqa: E731
    assert evaluate(distinct, one_user([1]), ks=(1,))["mrr"] == pytest.approx(1 / 3)


def test_mrr_with_ties_equals_the_mean_over_every_order_of_the_tied_items():
    """Brute force: 7 items scored in 3 levels, 2 masked; evaluate's MRR equals the mean over all
    orders of 1 / rank of the first target, breaking ties by a random permutation."""
    scores = np.array([[2.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0]], np.float32)
    hist = sp.csr_matrix(([1.0, 1.0], ([0, 0], [0, 6])), shape=(1, 7), dtype=np.float32)  # item 0 masked
    for target_cols in ([2], [2, 4], [1, 3, 5], [5], [0, 5]):
        tgt = sp.csr_matrix((np.ones(len(target_cols), np.float32), ([0] * len(target_cols), target_cols)),
                            shape=(1, 7))
        es = EvalSet(np.array(["u"]), np.array([0]), hist, tgt, np.array([len(target_cols)]), "p")
        free = [i for i in range(7) if i not in (0, 6)]
        rr = []
        for perm in itertools.permutations(range(len(free))):
            order = sorted(free, key=lambda i: (-scores[0, i], perm[free.index(i)]))
            rr.append(next((1 / (r + 1) for r, i in enumerate(order) if i in target_cols), 0.0))
        got = evaluate(lambda rows: scores, es, ks=(1,))["mrr"]
        assert got == pytest.approx(np.mean(rr), abs=1e-12), target_cols


def test_random_expected_metrics_by_hand_and_by_simulation():
    from recsys_cl.eval.protocol import random_expected_metrics

    # one user, 4 items, 1 target, nothing masked: recall@1 = 1/4, hit@2 = 1/2, ndcg@2 = (1/4)(1 + 1/log2 3)
    hist = sp.csr_matrix((1, 4), dtype=np.float32)
    tgt = sp.csr_matrix(([1.0], ([0], [2])), shape=(1, 4), dtype=np.float32)
    es = EvalSet(np.array(["u"]), np.array([0]), hist, tgt, np.array([1]), "p")
    r = random_expected_metrics(es, ks=(1, 2))
    assert r["recall@1"] == pytest.approx(0.25) and r["hit_rate@2"] == pytest.approx(0.5)
    assert r["ndcg@2"] == pytest.approx(0.25 * (1 + 1 / np.log2(3)))

    # several users with masks and out-of-catalogue targets: matches the mean of random rankings
    rng = np.random.default_rng(0)
    m = 12
    hist = sp.random(5, m, density=0.25, random_state=1, format="csr", dtype=np.float32)
    hist.data[:] = 1
    tgt = sp.random(5, m, density=0.3, random_state=2, format="csr", dtype=np.float32)
    tgt.data[:] = 1
    n_targets = np.diff(tgt.indptr) + 1  # one extra, unrankable target each
    es = EvalSet(np.arange(5).astype(str), np.arange(5), hist, tgt, n_targets, "p")
    sims = [evaluate(lambda rows: rng.random((len(rows), m)), es, ks=(3, 5)) for _ in range(3000)]
    expected = random_expected_metrics(es, ks=(3, 5))
    for key in ("recall@3", "recall@5", "ndcg@5", "hit_rate@3"):
        assert np.mean([s[key] for s in sims]) == pytest.approx(expected[key], abs=0.01), key


def test_random_expected_metrics_equal_the_mean_over_every_ranking_when_k_exceeds_the_items():
    """Exact check by enumeration: 4 items, 2 masked (history {0, 1}), target item 2 plus
    ``extra`` out-of-catalogue targets. evaluate's mean over all 4! score orders is the random
    expectation. At K >= 2 = the rankable items, and at K = 10 > M = 4 where evaluate's list, and
    so its ideal DCG, holds at most M items: with 5 targets, ideal DCG@10 counts 4 hits, not 5.
    By hand for extra = 2 (3 targets), K = 4: the target is at rank 1 or 2 with probability 1/2,
    E[DCG] = (1 + 1/log2 3) / 2, ideal DCG = 1 + 1/log2 3 + 1/2."""
    hist = sp.csr_matrix(([1.0, 1.0], ([0, 0], [0, 1])), shape=(1, 4), dtype=np.float32)
    tgt = sp.csr_matrix(([1.0], ([0], [2])), shape=(1, 4), dtype=np.float32)
    ks = (1, 2, 4, 10)
    for extra in (2, 4):
        es = EvalSet(np.array(["u"]), np.array([0]), hist, tgt, np.array([1 + extra]), "p")
        exact = random_expected_metrics(es, ks)
        runs = [evaluate(lambda rows, s=np.array([perm], np.float32): s, es, ks)
                for perm in itertools.permutations(range(4))]
        for key in exact:
            assert exact[key] == pytest.approx(np.mean([r[key] for r in runs]), abs=1e-12), (extra, key)
    l3 = 1 / np.log2(3)
    es = EvalSet(np.array(["u"]), np.array([0]), hist, tgt, np.array([3]), "p")
    assert random_expected_metrics(es, (4,))["ndcg@4"] == pytest.approx((1 + l3) / 2 / (1 + l3 + 0.5))


def test_history_items_keeps_users_without_history_in_the_ranked_set():
    train, targets, items, users = tiny_case()
    cold = Vocab(np.array([3, 9]), "item_id")  # ranked set: only u2 has one (3) in their history
    default = build_eval_set(train, targets, cold, users, "p")
    assert list(default.user_ids) == ["u2"]
    known = Vocab.from_values(pl.concat([train["item_id"], targets["item_id"]]), "item_id")
    es = build_eval_set(train, targets, cold, users, "p", history_items=known)
    assert sorted(es.user_ids) == ["u1", "u2", "u3"]  # u4 has no history at all
    assert es.history.nnz == 1 and es.targets.nnz == 3  # u2's item 3 is masked
    assert protocol_name("x", catalogue="catalogue=cold_items").startswith("full_ranking|catalogue=cold_items|")


def test_per_user_recall_averages_to_evaluates_recall():
    es = random_eval_set(n_users=37, n_items=40, seed=3)
    scores = np.random.default_rng(3).normal(size=(37, 40))
    fn = lambda rows: scores[rows]  # noqa: E731
    out = evaluate(fn, es, ks=(5, 20), batch_size=8)
    for k in (5, 20):
        per_user = per_user_recall(fn, es, k, batch_size=8)
        assert per_user.shape == (37,)
        assert per_user.mean() == pytest.approx(out[f"recall@{k}"])


def test_restrict_targets_keeps_the_users_and_targets_of_some_columns_by_hand():
    """u1 targets items 1 and 4, u2 item 2, u3 item 4; keep the targets on items 3-5 ("new"): u1 with
    one target (4), u3 with one (4); u2 drops out. Scored through the parent's rows."""
    train = clicks([("u1", 2), ("u2", 3), ("u3", 5), ("u1", 3)])
    targets = clicks([("u1", 1), ("u1", 4), ("u2", 2), ("u3", 4)])
    items = Vocab.from_values(pl.Series([1, 2, 3, 4, 5]), "item_id")
    users = Vocab.from_values(train["user_id"], "user_id")
    es = build_eval_set(train, targets, items, users, "p")
    new = np.array([False, False, True, True, True])
    part, rows = restrict_targets(es, new)
    assert list(part.user_ids) == ["u1", "u3"] and rows.tolist() == [0, 2]
    np.testing.assert_array_equal(part.n_targets, [1, 1])
    assert part.targets.toarray().tolist() == [[0, 0, 0, 1, 0], [0, 0, 0, 1, 0]]
    assert (part.history != es.history[[0, 2]]).nnz == 0 and part.protocol == "p"
    # a score that differs per parent row: u1 ranks item 1 first, u3 item 4 first (history masked)
    per_row = np.array([[9, 1, 1, 2, 1], [1, 9, 1, 1, 1], [1, 1, 1, 9, 1]], dtype=np.float32)
    out = evaluate(lambda r: per_row[rows[r]], part, ks=(1, 2))
    assert out["recall@1"] == pytest.approx(0.5) and out["recall@2"] == pytest.approx(1.0)  # u1's item 4 is 2nd
    warm, warm_rows = restrict_targets(es, ~new)
    assert list(warm.user_ids) == ["u1", "u2"] and warm_rows.tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"columns must be a \(5,\) bool mask, got shape \(4,\)"):
        restrict_targets(es, new[:4])


def test_a_constant_score_earns_exactly_a_random_rankings_metrics():
    """All items tie: recall, NDCG and hit rate must be the exact expectation of a random ranking,
    not whatever order argpartition leaves tied items in (it used to give a constant model
    Recall@20 0.0153 on the cold-start split, against chance 0.0108)."""
    es = random_eval_set(n_users=60, n_items=40)
    const = lambda rows: np.zeros((len(rows), es.n_items), np.float32)  # noqa: E731
    got = evaluate(const, es, ks=(1, 5, 20), batch_size=7)
    want = random_expected_metrics(es, ks=(1, 5, 20))
    for key in ("recall@1", "recall@5", "recall@20", "ndcg@5", "ndcg@20", "hit_rate@1", "hit_rate@5", "hit_rate@20",
                "mrr"):
        assert got[key] == pytest.approx(want[key], rel=1e-9), key
    # the target argpartition would put first gets no credit for it
    row = np.zeros((1, 4), np.float32)
    first = int(np.argpartition(-row, 0, axis=1)[0, 0])
    one = EvalSet(np.array(["u"]), np.array([0]), sp.csr_matrix((1, 4), dtype=np.float32),
                  sp.csr_matrix(([1.0], ([0], [first])), shape=(1, 4), dtype=np.float32), np.array([1]), "p")
    out = evaluate(lambda rows: row, one, ks=(1,))
    assert out["recall@1"] == pytest.approx(0.25) and out["hit_rate@1"] == pytest.approx(0.25)


def test_ties_count_at_their_expected_value_by_hand():
    def one_user(scores, target_cols):
        tgt = sp.csr_matrix((np.ones(len(target_cols), np.float32), ([0] * len(target_cols), target_cols)),
                            shape=(1, len(scores)))
        es = EvalSet(np.array(["u"]), np.array([0]), sp.csr_matrix((1, len(scores)), dtype=np.float32), tgt,
                     np.array([len(target_cols)]), "p")
        return evaluate(lambda rows: np.array([scores], np.float32), es, ks=(1, 2, 3))

    # item 0 first; the target (1) tied with item 2 for ranks 2 and 3, each with probability 1/2
    out = one_user([3.0, 1.0, 1.0, 0.0], [1])
    assert out["recall@1"] == 0.0 and out["hit_rate@1"] == 0.0
    assert out["recall@2"] == pytest.approx(0.5) and out["hit_rate@2"] == pytest.approx(0.5)
    assert out["recall@3"] == pytest.approx(1.0) and out["hit_rate@3"] == pytest.approx(1.0)
    assert out["ndcg@2"] == pytest.approx(0.5 / np.log2(3))  # ideal DCG with one target: 1
    assert out["ndcg@3"] == pytest.approx(0.5 / np.log2(3) + 0.5 / np.log2(4))
    # four items tied, targets 1 and 3: 6 equally likely pairs of positions for the two targets.
    # The top 1 holds a target in 3 of them; the top 2 in 5 (all but {3, 4}); on average one
    # target in the top 2 of 2 targets: recall@2 = 1/2, which a hit rate of 5/6 must not double count
    out = one_user([1.0, 1.0, 1.0, 1.0], [1, 3])
    assert out["hit_rate@1"] == pytest.approx(3 / 6) and out["recall@1"] == pytest.approx(0.25)
    assert out["hit_rate@2"] == pytest.approx(5 / 6) and out["recall@2"] == pytest.approx(0.5)
    # ideal DCG@2 = 1 + 1/log2(3); each target is at rank 1 or 2 with probability 1/4 each
    assert out["ndcg@2"] == pytest.approx((0.5 * (1 + 1 / np.log2(3))) / (1 + 1 / np.log2(3)))


def test_tied_metrics_equal_the_mean_over_every_order_of_the_ties():
    """Reference: rank by (score, then one of all 6! column orders), score the list plainly, average."""
    rng = np.random.default_rng(3)
    n_users, m, ks = 5, 6, (1, 2, 4)
    scores = rng.integers(0, 3, size=(n_users, m)).astype(np.float32)  # many ties
    es = random_eval_set(n_users=n_users, n_items=m, seed=4)
    h, t = es.history.toarray().astype(bool), es.targets.toarray().astype(bool)
    got = evaluate(lambda rows: scores[rows], es, ks=ks)
    sums = {f"{name}@{k}": 0.0 for name in ("recall", "ndcg", "hit_rate") for k in ks}
    orders = list(itertools.permutations(range(m)))
    for order in orders:
        for u in range(n_users):
            free = [i for i in range(m) if not h[u, i]]
            ranked = sorted(free, key=lambda i: (-scores[u, i], order[i]))
            n_t = int(es.n_targets[u])
            for k in ks:
                found = [r for r, i in enumerate(ranked[:k]) if t[u, i]]
                sums[f"recall@{k}"] += len(found) / n_t
                ideal = sum(1 / np.log2(r + 2) for r in range(min(n_t, k)))
                sums[f"ndcg@{k}"] += sum(1 / np.log2(r + 2) for r in found) / ideal
                sums[f"hit_rate@{k}"] += float(bool(found))
    for key, total in sums.items():
        assert got[key] == pytest.approx(total / (len(orders) * n_users), rel=1e-9), key
