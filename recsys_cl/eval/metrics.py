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


_RR_CHUNK = 1 << 24  # summands of reciprocal_rank's tie sums per vectorised chunk (~0.5 GB of temporaries)


def reciprocal_rank(higher: np.ndarray, n_tied: np.ndarray, t_tied: np.ndarray) -> np.ndarray:
    """Expected 1 / rank of the best-ranked target when tied scores are ordered at random. (U,)

    Per user: ``higher`` items score strictly above the best target, whose score is shared by
    ``n_tied`` items (itself included), ``t_tied`` of them targets; ``n_tied == 0`` means no target
    could be ranked (0 is returned). The first target sits at position ``j`` of the tied block with
    probability ``C(n - j, t - 1) / C(n, t)``, so the result is
    ``sum_j C(n - j, t - 1) / C(n, t) / (higher + j)``: the mean of the reciprocal rank, E[1/rank],
    not 1 / E[rank] (for a constant score over n items and one target, H_n / n, not 2 / (n + 1)).
    Without ties it is ``1 / (higher + 1)``.
    """
    from scipy.special import gammaln

    h = np.asarray(higher, dtype=np.int64)
    n = np.asarray(n_tied, dtype=np.int64)
    t = np.asarray(t_tied, dtype=np.int64)
    if not h.shape == n.shape == t.shape or h.ndim != 1:
        raise ValueError(f"higher, n_tied and t_tied must be (U,) arrays of one shape, got "
                         f"{h.shape}, {n.shape}, {t.shape}")
    if np.any(h < 0) or np.any(t < 0) or np.any(t > n) or np.any((n > 0) & (t < 1)):
        raise ValueError("need higher >= 0 and 1 <= t_tied <= n_tied (n_tied = t_tied = 0 for "
                         "'no rankable target')")
    out = np.divide(1.0, h + 1.0, out=np.zeros(len(h)), where=n > 0)  # no tie above the target
    tie = np.flatnonzero(n > 1)
    terms = n[tie] - t[tie] + 1  # the first target's possible positions j = 1 .. n - t + 1
    start = 0
    while start < len(tie):  # a loop over chunks of users, each a flat vectorised sum
        stop = start + max(1, int(np.searchsorted(np.cumsum(terms[start:]), _RR_CHUNK)))
        u, size = tie[start:stop], terms[start:stop]
        owner = np.repeat(np.arange(len(u)), size)
        j = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size) + 1.0
        nn, tt = n[u][owner].astype(np.float64), t[u][owner].astype(np.float64)
        log_p = (gammaln(nn - j + 1) - gammaln(tt) - gammaln(nn - j - tt + 2)
                 - gammaln(nn + 1) + gammaln(tt + 1) + gammaln(nn - tt + 1))
        out[u] = np.bincount(owner, np.exp(log_p) / (h[u][owner] + j), minlength=len(u))
        start = stop
    return out


def coverage(top_items: np.ndarray, n_items: int) -> float:
    """Distinct items appearing in any list / catalogue size. ``top_items: (U, K)`` item indices;
    negative entries (padding) are ignored."""
    top = np.asarray(top_items)
    if n_items <= 0:
        raise ValueError(f"n_items must be positive, got {n_items}")
    return float(len(np.unique(top[top >= 0]))) / n_items
