"""k-nearest-neighbour label agreement of frozen embeddings, shared by SimCLR and SimCSE evaluation.

Letters: N vectors, D dim, K neighbours, L labels.
"""

from __future__ import annotations

import numpy as np

from recsys_cl.index.exact import ExactIndex


def nearest_others(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of each row's ``k`` nearest *other* rows by inner product (through :class:`ExactIndex`).

    Args:
        vectors: (N, D); L2-normalise them first for cosine neighbours.
        k: neighbours per row, 1 <= k <= N - 1.

    Returns:
        ``(ids, keep)``, both (N, K + 1): ``ids`` are row numbers; ``keep`` marks the first ``k``
        entries of each row that are not the row itself (a tie can move the row off column 0).
    """
    n = len(vectors)
    if not 1 <= k <= n - 1:
        raise ValueError(f"k nearest other rows needs 1 <= k <= N - 1, got k={k} and N={n}")
    index = ExactIndex()
    index.build(vectors, np.arange(n, dtype=np.int64))
    ids, _ = index.query(vectors, k + 1)  # (N, K+1), usually the row itself first
    not_self = ids != np.arange(n)[:, None]
    keep = not_self & (np.cumsum(not_self, axis=1) <= k)
    return ids, keep


def shared_label_hits(vectors: np.ndarray, labels: np.ndarray, k: int = 10) -> np.ndarray:
    """Per row: the fraction of its ``k`` nearest other rows that share at least one label with it.

    With one label per row (one-hot ``labels``) this is same-class recall@k; with multi-hot labels
    (e.g. a movie's genres) a neighbour counts when the two label sets intersect.

    Args:
        vectors: (N, D), L2-normalised so that inner product = cosine.
        labels: (N, L) bool multi-hot; rows without any label count as misses, so drop them first.
        k: neighbours per row; clipped to N - 1.

    Returns:
        (N,) float64 in [0, 1]; its mean is :func:`shared_label_recall_at_k`.
    """
    n = len(vectors)
    if labels.shape[0] != n or labels.ndim != 2:
        raise ValueError(f"labels must be (N, L) with N={n} rows, got shape {labels.shape}")
    if n < 2:
        raise ValueError(f"recall@k needs at least 2 vectors, got {n}")
    k = min(k, n - 1)
    ids, keep = nearest_others(vectors, k)  # (N, K+1)
    labels = labels.astype(bool)
    shared = (labels[ids] & labels[:, None, :]).any(axis=2)  # (N, K+1)
    return (shared & keep).sum(axis=1) / k


def shared_label_recall_at_k(vectors: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Mean of :func:`shared_label_hits` over rows (same arguments)."""
    return float(shared_label_hits(vectors, labels, k).mean())


def label_pair_similarities(
    vectors: np.ndarray, labels: np.ndarray, n_pairs: int = 20_000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Cosine similarities of random pairs of *different* rows, split by whether they share a label.

    What the nearest-neighbour label metrics summarise, as two distributions: a good encoder puts
    pairs that share a label (a class, a genre) to the right of pairs that do not.

    Args:
        vectors: (N, D), L2-normalised, N >= 2.
        labels: (N, L) bool multi-hot; a pair shares a label when the two label sets intersect.
        n_pairs: P pairs drawn uniformly with replacement among ordered pairs (i, j), i != j.

    Returns:
        ``{"share a label": (P1,), "share no label": (P2,)}`` float64 cosines, P1 + P2 = P.
    """
    n = len(vectors)
    if n < 2 or labels.shape[0] != n or labels.ndim != 2:
        raise ValueError(f"need (N, D) vectors with N >= 2 and (N, L) labels, got {vectors.shape} and {labels.shape}")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, n_pairs)
    j = (i + rng.integers(1, n, n_pairs)) % n  # (P,), never i
    cos = np.einsum("pd,pd->p", vectors[i].astype(np.float64), vectors[j].astype(np.float64))
    shared = (labels[i].astype(bool) & labels[j].astype(bool)).any(axis=1)
    return {"share a label": cos[shared], "share no label": cos[~shared]}
