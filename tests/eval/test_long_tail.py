"""recsys_cl.eval.long_tail: head/tail from training clicks, stratified recall and the tail's share of the lists."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_cl.eval.long_tail import head_definition, head_items, long_tail_metrics
from recsys_cl.eval.protocol import EvalSet


def _eval_set(history: list[list[int]], targets: list[list[int]], n_items: int,
              n_targets: list[int] | None = None) -> EvalSet:
    def csr(rows: list[list[int]]) -> sp.csr_matrix:
        r = [u for u, items in enumerate(rows) for _ in items]
        c = [i for items in rows for i in items]
        return sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(len(rows), n_items))

    u = len(targets)
    return EvalSet(
        user_ids=np.arange(u), user_index=np.arange(u), history=csr(history), targets=csr(targets),
        n_targets=np.array(n_targets if n_targets is not None else [len(t) for t in targets], dtype=np.int64),
        protocol="test",
    )


def test_hand_worked_head_tail_recall_and_tail_share() -> None:
    # training clicks 6, 3, 2, 1, 0 (12 in all): item 0 alone holds half of them -> head {0}, tail {1, 2, 3, 4}
    counts = np.array([6, 3, 2, 1, 0])
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0])  # the same order for everyone: 0 > 1 > 2 > 3 > 4
    eval_set = _eval_set(
        history=[[], [0], [1]],
        targets=[[0, 3], [2], [4]],
        n_items=5,
        n_targets=[2, 1, 2],  # user 2 also has a target outside the catalogue: in no stratum
    )
    # top 2, history masked: user 0 {0, 1} (hits 0, misses 3); user 1 {1, 2} (hits 2); user 2 {0, 2} (misses 4)
    out = long_tail_metrics(lambda rows: np.tile(scores, (len(rows), 1)), eval_set, counts, 0.5, k=2)
    assert out["head_items/n"] == 1 and out["head_items/train_click_share"] == pytest.approx(6 / 12)
    assert out["head_targets/n_users"] == 1 and out["head_targets/recall@2"] == 1.0  # user 0: 1 of 1
    assert out["tail_targets/n_users"] == 3
    assert out["tail_targets/recall@2"] == pytest.approx((0 + 1 + 0) / 3)  # users 0, 1, 2: 0/1, 1/1, 0/1
    # tail slots: user 0 {1}, user 1 {1, 2}, user 2 {2}: 4 of 6
    assert out["tail_share@2"] == pytest.approx(4 / 6)


def test_head_boundary_ties_go_to_the_head_whatever_the_item_order() -> None:
    # 20 clicks, half = 10: the running share reaches it at the second 3, which ties with two more 3s
    counts = np.array([8, 3, 1, 3, 3, 1, 1, 0])
    np.testing.assert_array_equal(head_items(counts, 0.5), counts >= 3)
    rng = np.random.default_rng(0)
    for _ in range(5):  # membership depends on an item's count only, not on its position
        perm = rng.permutation(len(counts))
        np.testing.assert_array_equal(head_items(counts[perm], 0.5), head_items(counts, 0.5)[perm])
    # reaching the share exactly stops there; no tie, no overshoot
    np.testing.assert_array_equal(head_items(np.array([3, 2, 1]), 0.5), [True, False, False])
    # never-clicked items are tail; no clicks at all, no head
    assert not head_items(np.array([5, 0, 0]), 0.99)[1:].any()
    assert not head_items(np.zeros(4, dtype=np.int64), 0.5).any()
    with pytest.raises(ValueError, match=r"head_share must be in \(0, 1\), got 1"):
        head_items(counts, 1.0)


def test_head_definition_names_the_share() -> None:
    assert head_definition(0.5) == ("head=top_train_clicks_holding_0.5_of_train_clicks(boundary_ties_in_head)"
                                    "|tail=other_ranked_items")


def _loop_reference(scores: np.ndarray, history: list[list[int]], targets: list[list[int]], counts: np.ndarray,
                    head_share: float, k: int) -> dict[str, float]:
    """The same metrics with Python loops: head by walking the items in decreasing count, then each user."""
    order = sorted(range(len(counts)), key=lambda i: -counts[i])
    running, boundary = 0, None
    for i in order:
        running += counts[i]
        if running >= head_share * counts.sum():
            boundary = counts[i]
            break
    head = {i for i in range(len(counts)) if boundary is not None and counts[i] >= boundary}
    recalls: dict[str, list[float]] = {"head_targets": [], "tail_targets": []}
    tail_slots = slots = 0
    for u in range(len(targets)):
        ranked = [i for i in np.argsort(-scores[u]) if i not in history[u]][:k]
        slots += len(ranked)
        tail_slots += sum(i not in head for i in ranked)
        for name, part in (("head_targets", [t for t in targets[u] if t in head]),
                           ("tail_targets", [t for t in targets[u] if t not in head])):
            if part:
                recalls[name].append(sum(t in ranked for t in part) / len(part))
    out = {f"tail_share@{k}": tail_slots / slots, "head_items/n": float(len(head))}
    for name, values in recalls.items():
        out[f"{name}/n_users"] = float(len(values))
        out[f"{name}/recall@{k}"] = float(np.mean(values))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_long_tail_metrics_match_a_loop_reference_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_items, k = 25, 40, 7
    counts = rng.poisson(2.0, n_items) * rng.integers(1, 4, n_items)  # many ties and some zeros
    scores = rng.normal(size=(n_users, n_items))  # continuous: no ties in the lists
    history = [list(rng.choice(n_items, rng.integers(0, 10), replace=False)) for _ in range(n_users)]
    # targets may repeat the history (masked, so a miss), as the protocol allows
    targets = [list(rng.choice(n_items, rng.integers(1, 5), replace=False)) for _ in range(n_users)]
    eval_set = _eval_set(history, targets, n_items)
    out = long_tail_metrics(lambda rows: scores[rows], eval_set, counts, 0.5, k=k, batch_size=4)
    expected = _loop_reference(scores, history, targets, counts, 0.5, k)
    for key, value in expected.items():
        assert out[key] == pytest.approx(value), key
