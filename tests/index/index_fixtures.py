"""Vectors with a known answer for the index tests (imported by the tests; not fixtures)."""

from __future__ import annotations

import numpy as np


def clustered(m: int = 4000, d: int = 16, clusters: int = 40, q: int = 200, seed: int = 0,
              normalize: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M, D) items around ``clusters`` centres, (M,) non-contiguous ids, (Q, D) queries near centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    items = centres[rng.integers(0, clusters, m)] + 0.35 * rng.standard_normal((m, d))
    queries = centres[rng.integers(0, clusters, q)] + 0.35 * rng.standard_normal((q, d))
    if normalize:
        items /= np.linalg.norm(items, axis=1, keepdims=True)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = 1000 + 7 * rng.permutation(m)  # original ids: not row numbers, not sorted
    return items.astype(np.float32), ids.astype(np.int64), queries.astype(np.float32)


def brute_force_topk(items: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The known answer: full sort of every score (slow reference)."""
    scores = queries.astype(np.float64) @ items.astype(np.float64).T
    return ids[np.argsort(-scores, axis=1, kind="stable")[:, :k]]


def assert_exact_topk(got_ids: np.ndarray, items: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int,
                      atol: float = 1e-6) -> None:
    """``got_ids`` (Q, k) is the exact top k: at every rank its item scores what the full sort's does.

    Float32 search may swap two items whose float64 scores differ by less than float32 rounding
    (about 1e-7 here), so a near-tie may come in either order; any other difference fails.
    """
    assert got_ids.shape == (len(queries), k), (got_ids.shape, (len(queries), k))
    assert np.isin(got_ids, ids).all(), "an id that is not in the index was returned"
    order = np.argsort(ids)
    rows = order[np.searchsorted(ids, got_ids, sorter=order)]  # (Q, k) item rows
    scores = queries.astype(np.float64) @ items.astype(np.float64).T  # (Q, M)
    got = np.take_along_axis(scores, rows, axis=1)
    want = -np.sort(-scores, axis=1)[:, :k]
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    twice = (np.diff(np.sort(got_ids, axis=1), axis=1) == 0).any(axis=1)
    assert not twice.any(), f"queries {np.flatnonzero(twice)[:5].tolist()} got an item twice"
