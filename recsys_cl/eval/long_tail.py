"""Popularity-stratified evaluation: how well the long tail is retrieved, and how much of the lists it gets.

Head and tail (:func:`head_items`) come from the **training** clicks only: the most-clicked ranked items
that together hold ``head_share`` of all training clicks are the head, every other ranked item is the
tail. Work on popularity bias (e.g. Abdollahpouri, Burke and Mobasher, "Managing Popularity Bias in
Recommender Systems with Personalized Re-ranking", FLAIRS 2019, arXiv:1901.07555) separates a short head
of popular items from the long tail, by a share of the items or by a share of the interactions; the
thresholds vary from paper to paper. We take a share of the interactions because

* it is the quantity logQ correction acts on: an item's in-batch sampling probability is its share of
  training clicks, so "the items that hold half the clicks" is the half that logQ down-weights;
* a share of items moves with the catalogue's size: items added with one click each (or the new items of
  ``eval.catalogue=all_items``, with none) enlarge a "top 20% of items" head, not a click-share head;
* the default ``head_share`` = 0.5 splits the click mass in two halves, so both strata have enough
  test targets for a recall to mean something.

Ties at the boundary: every item with as many training clicks as the item that takes the running share
to ``head_share`` is head too. Membership depends only on an item's own count, never on its id or row
order, and the head holds at least ``head_share`` of the clicks (``head_items/train_click_share`` logs how
much). Items without training clicks are always tail.

Letters: ``U`` evaluated users, ``M`` ranked items, ``K`` list length.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from recsys_cl.eval.protocol import EvalSet, part_recall, slot_share

DEFAULT_HEAD_SHARE = 0.5


def head_definition(head_share: float) -> str:
    """The head definition as one string, logged with the metrics (the ``popularity_strata`` tag), e.g.
    ``head=top_train_clicks_holding_0.5_of_train_clicks(boundary_ties_in_head)|tail=other_ranked_items``."""
    return (f"head=top_train_clicks_holding_{head_share:g}_of_train_clicks(boundary_ties_in_head)"
            "|tail=other_ranked_items")


def head_items(train_counts: np.ndarray, head_share: float) -> np.ndarray:
    """(M,) bool: the head, the most-clicked items that together hold ``head_share`` of the training clicks.

    Args:
        train_counts: (M,) training clicks of each ranked item (>= 0).
        head_share: in (0, 1).
    Returns:
        ``train_counts >= c``, where ``c`` is the count of the item at which the running share of clicks
        (items in decreasing count) first reaches ``head_share``; all False when there are no clicks.
    """
    if not 0 < head_share < 1:
        raise ValueError(f"head_share must be in (0, 1), got {head_share}")
    counts = np.asarray(train_counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"train_counts must be a (M,) array of counts >= 0, got shape {counts.shape}")
    total = int(counts.sum())
    if total == 0:
        return np.zeros(len(counts), dtype=bool)
    desc = np.sort(counts)[::-1]  # (M,) counts, most clicked first
    reached = np.cumsum(desc) >= head_share * total  # (M,) monotone; its first True is the boundary item
    boundary = int(desc[int(np.argmax(reached))])  # > 0: the running sum only grows at clicked items
    return counts >= boundary


def long_tail_metrics(
    score_fn: Callable[[np.ndarray], Any],
    eval_set: EvalSet,
    train_counts: np.ndarray,
    head_share: float = DEFAULT_HEAD_SHARE,
    k: int = 20,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Recall@k on the head and on the tail targets, and the tail's share of the top-k slots.

    Args:
        score_fn, eval_set, batch_size: as for :func:`~recsys_cl.eval.protocol.evaluate`.
        train_counts: (M,) training clicks of each ranked item (column j of ``eval_set``).
        head_share: see :func:`head_items`.
    Returns:
        ``{head,tail}_targets/recall@k`` and ``{head,tail}_targets/n_users``: Recall@k on the targets in
        that stratum, over the users who have one (:func:`~recsys_cl.eval.protocol.part_recall`, as
        for new and warm items); ``tail_share@k``: of every user's filled top-k slots, the share
        tail items hold (the exposure side); ``head_items/n`` and ``head_items/train_click_share``: the
        head's size and the share of training clicks it actually holds (>= ``head_share``, by ties).
    """
    counts = np.asarray(train_counts, dtype=np.int64)
    if counts.shape != (eval_set.n_items,):
        raise ValueError(f"train_counts must have one count per ranked item ({eval_set.n_items},), "
                         f"got shape {counts.shape}")
    is_head = head_items(counts, head_share)  # (M,)
    out = {
        "head_items/n": float(is_head.sum()),
        "head_items/train_click_share": float(counts[is_head].sum() / max(int(counts.sum()), 1)),
        f"tail_share@{k}": slot_share(score_fn, eval_set, ~is_head, k, batch_size),
    }
    out.update(part_recall(score_fn, eval_set, {"head_targets": is_head, "tail_targets": ~is_head}, k, batch_size))
    return out
