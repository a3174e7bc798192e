"""Pure top-K ranking metrics on a hit matrix.

Every function takes ``hits: (U, K)`` — ``hits[u, r]`` is True when the item ranked ``r + 1`` for
user ``u`` is one of that user's targets — and returns one value per user, shape ``(U,)``.
``hits`` may also be fractional, in [0, 1]: the *probability* that rank ``r + 1`` holds a target
when tied scores are ordered at random (:func:`recsys_cl.eval.protocol.evaluate` passes these, so a
tie is worth its expected value); recall, precision and NDCG are linear in the hits, so they are
then exact expectations. :func:`hit_rate_at_k` is not linear: see there.
Averaging over users (and naming the protocol) is the caller's job: see
:func:`recsys_cl.eval.protocol.evaluate`.

``n_targets: (U,)`` is the number of *all* targets of each user, including targets the ranking
could never contain (e.g. items outside the catalogue): they stay in the denominator as misses.
Relevance is binary throughout.
"""

from __future__ import annotations

import numpy as np


def _check(hits: np.ndarray, k: int, n_targets: np.ndarray | None = None) -> np.ndarray:
    hits = np.asarray(hits)
    hits = hits if hits.dtype == bool else hits.astype(np.float64)
    if hits.ndim != 2:
        raise ValueError(f"hits must be a (U, K) matrix, got shape {hits.shape}")
    if not 1 <= k <= hits.shape[1]:
        raise ValueError(f"k must be in [1, {hits.shape[1]}] (the hit matrix width), got {k}")
    if n_targets is not None and np.shape(n_targets) != (hits.shape[0],):
        raise ValueError(
            f"n_targets must have one entry per hit-matrix row ({hits.shape[0]}), "
            f"got shape {np.shape(n_targets)}"
        )
    return hits[:, :k]


def recall_at_k(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    """|targets in the top k| / n_targets, per user; 0 where a user has no targets. (U,)"""
    top = _check(hits, k, n_targets)
    n = np.asarray(n_targets, dtype=np.float64)
    return np.divide(top.sum(1), n, out=np.zeros(len(n)), where=n > 0)


def precision_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """|targets in the top k| / k, per user. (U,)"""
    return np.asarray(_check(hits, k).sum(1) / float(k), dtype=np.float64)


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """1.0 where at least one target is in the top k, else 0.0. (U,)

    Fractional input is read as ``first_hit[u, r]`` = P(the *first* target is at rank ``r + 1``)
    (rows sum to at most 1), and the result is P(a target in the top k) = the sum over the first k
    ranks. (Expected hits would overcount: two targets tied in one block are not two chances.)
    """
    top = _check(hits, k)
    if top.dtype == bool:
        return np.asarray(top.any(1), dtype=np.float64)
    return np.minimum(top.sum(1), 1.0)


def dcg_discounts(k: int) -> np.ndarray:
    """``1 / log2(rank + 1)`` for ranks ``1 .. k``. (k,)"""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def ndcg_at_k(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    """Binary-relevance NDCG@k, per user. (U,)

    DCG = sum over ranks r <= k of hit_r / log2(r + 1); the ideal DCG puts ``min(n_targets, k)``
    hits in the first ranks. 0 where a user has no targets.
    """
    top = _check(hits, k, n_targets)
    disc = dcg_discounts(k)  # (k,)
    dcg = top.astype(np.float64) @ disc  # (U,)
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])  # ideal_cum[n] = best DCG with n hits
    n_ideal = np.minimum(np.asarray(n_targets, dtype=np.int64), k)
    idcg = ideal_cum[n_ideal]
    return np.divide(dcg, idcg, out=np.zeros(len(idcg)), where=idcg > 0)


def reciprocal_rank(best_rank: np.ndarray) -> np.ndarray:
    """1 / rank of the best-ranked target (full ranking), 0 where ``best_rank`` is 0 (no target
    could be ranked). (U,)"""
    r = np.asarray(best_rank, dtype=np.float64)
    if np.any(r < 0) or np.any((r > 0) & (r < 1)):
        raise ValueError("best_rank must be >= 1 (or 0 for 'no rankable target')")
    return np.divide(1.0, r, out=np.zeros(len(r)), where=r > 0)


def coverage(top_items: np.ndarray, n_items: int) -> float:
    """Distinct items appearing in any list / catalogue size. ``top_items: (U, K)`` item indices;
    negative entries (padding) are ignored."""
    top = np.asarray(top_items)
    if n_items <= 0:
        raise ValueError(f"n_items must be positive, got {n_items}")
    return float(len(np.unique(top[top >= 0]))) / n_items
