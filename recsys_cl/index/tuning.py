"""Recall against exact search, queries/s, search-knob tuning and the ``auto`` backend choice.

Every approximate backend exposes one knob that trades speed for recall (Annoy ``search_k``,
faiss ``nprobe``) through ``knob_values(k)`` (increasing) and ``set_knob(value)``.
:func:`tune_search_k` walks the knob up until recall@K on a sample of real user embeddings reaches
the target; :func:`choose_backend` then picks the fastest tuned backend that meets it (exact
search always qualifies, so ``auto`` is never slower than exact on the sample it measured).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsys_cl.index.base import Index, sentinel_for


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of |approx ∩ exact| / |exact|, sentinel padding ignored. (Q, K), (Q, K) -> float."""
    if approx_ids.shape[0] != exact_ids.shape[0]:
        raise ValueError(f"need one row per query in both: got {approx_ids.shape} and {exact_ids.shape}")
    pad = sentinel_for(exact_ids)
    hits = 0
    total = 0
    for a, e in zip(approx_ids, exact_ids):
        e = e[e != pad]
        hits += np.intersect1d(a[a != pad], e, assume_unique=True).size
        total += e.size
    return hits / total if total else 1.0


def split_recall(
    approx_ids: np.ndarray, exact_ids: np.ndarray, subset: np.ndarray | None = None
) -> tuple[float, float | None]:
    """:func:`recall_at_k` on the whole sample, and on ``subset`` ((Q,) bool, e.g. the night's active
    users within a topped-up sample) alone: None without a subset or when it is empty, the whole
    sample's when it is all of it. (Q, K), (Q, K) -> (float, float | None)."""
    recall = recall_at_k(approx_ids, exact_ids)
    if subset is None or not subset.any():
        return recall, None
    return recall, recall if subset.all() else recall_at_k(approx_ids[subset], exact_ids[subset])


def sample_recall(approx_ids: np.ndarray, exact_ids: np.ndarray, also: np.ndarray | None = None) -> float:
    """:func:`recall_at_k` on the whole sample or, with ``also`` ((Q,) bool: a subset that must
    meet the target on its own, e.g. the night's active users within a topped-up sample), the lower
    of the whole sample's and that subset's (:func:`split_recall` gives both). (Q, K), (Q, K) -> float."""
    recall, subset_recall = split_recall(approx_ids, exact_ids, also)
    return recall if subset_recall is None else min(recall, subset_recall)


def measure(index: Index, queries: np.ndarray, k: int, min_seconds: float = 0.0) -> float:
    """Queries per second of ``index.query(queries, k)`` (repeated until ``min_seconds`` have passed)."""
    n = 0
    start = time.perf_counter()
    while True:
        index.query(queries, k)
        n += len(queries)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return n / max(elapsed, 1e-9)


@dataclass(frozen=True)
class TuneResult:
    knob: str
    value: int | None
    recall: float
    queries_per_s: float
    met_target: bool
    table: list[dict[str, float]] = field(default_factory=list)
    """One row per value tried: {knob: value, "recall": r, "queries_per_s": qps}."""


def tune_search_k(
    index: Index,
    exact: Index | np.ndarray,
    sample_queries: np.ndarray,
    k: int,
    target_recall: float = 0.95,
    also: np.ndarray | None = None,
) -> TuneResult:
    """Raise the index's knob (Annoy ``search_k``, faiss ``nprobe``) until recall@k >= target.

    ``exact`` is the oracle index, or its ids (Q, k) for ``sample_queries`` already computed.
    ``also``: (Q,) bool, queries that must reach the target by themselves too (:func:`sample_recall`).
    Leaves the index set to the smallest value meeting the target (or the largest tried when none
    does, with ``met_target=False``). Exact indexes return recall 1 without tuning.
    """
    exact_ids = exact if isinstance(exact, np.ndarray) else exact.query(sample_queries, k)[0]
    if index.is_exact:
        qps = measure(index, sample_queries, k)
        return TuneResult("none", None, 1.0, qps, True, [{"recall": 1.0, "queries_per_s": qps}])
    knob = str(index.tuning_knob)
    table: list[dict[str, float]] = []
    best: TuneResult | None = None
    for value in index.knob_values(k):  # type: ignore[attr-defined]
        index.set_knob(value)  # type: ignore[attr-defined]
        start = time.perf_counter()
        ids, _ = index.query(sample_queries, k)
        qps = len(sample_queries) / max(time.perf_counter() - start, 1e-9)
        recall = sample_recall(ids, exact_ids, also)
        table.append({knob: float(value), "recall": recall, "queries_per_s": qps})
        best = TuneResult(knob, int(value), recall, qps, recall >= target_recall, table)
        if recall >= target_recall:
            break
    assert best is not None
    return best


@dataclass(frozen=True)
class BackendChoice:
    index: Index
    reason: str
    table: list[dict[str, Any]]
    """One row per candidate: backend, params, recall, queries_per_s, qualifies."""


def choose_backend(
    candidates: Sequence[Index],
    sample_queries: np.ndarray,
    k: int,
    target_recall: float = 0.95,
    exact: Index | None = None,
    min_seconds: float = 0.2,
    also: np.ndarray | None = None,
) -> BackendChoice:
    """The fastest of ``candidates`` whose recall@k on the sample meets ``target_recall``.

    Approximate candidates should already be tuned (:func:`tune_search_k`). The exact oracle is
    taken from ``candidates`` (or built from nothing: pass ``exact``) and always qualifies.
    ``also``: (Q,) bool, queries that must meet the target by themselves too (:func:`sample_recall`);
    speed is measured on every query.
    """
    exacts = [c for c in candidates if c.is_exact]
    oracle = exact or (exacts[0] if exacts else None)
    if oracle is None:
        raise ValueError("choose_backend needs an exact index among the candidates (or exact=...) as the oracle")
    pool = list(candidates) if exacts else [*candidates, oracle]
    exact_ids = oracle.query(sample_queries, k)[0]
    table: list[dict[str, Any]] = []
    for c in pool:
        ids, _ = c.query(sample_queries, k)
        recall = 1.0 if c.is_exact else sample_recall(ids, exact_ids, also)
        qps = measure(c, sample_queries, k, min_seconds=min_seconds)
        table.append({"backend": c.name, "params": c.params(), "recall": recall, "queries_per_s": qps,
                      "qualifies": c.is_exact or recall >= target_recall})
    ok = [(row, c) for row, c in zip(table, pool) if row["qualifies"]]
    row, chosen = max(ok, key=lambda rc: rc[0]["queries_per_s"])
    exact_qps = next(r["queries_per_s"] for r, c in zip(table, pool) if c.is_exact)
    others = ", ".join(
        f"{r['backend']} recall {r['recall']:.3f} at {r['queries_per_s']:,.0f} q/s"
        for r in table if r is not row
    )
    where = f"{len(sample_queries)} sample queries"
    if also is not None and also.any() and not also.all():
        where += f" (and on the {int(also.sum())} served users alone)"
    reason = (
        f"{chosen.name}: fastest backend with recall@{k} >= {target_recall} on {where} "
        f"(recall {row['recall']:.3f}, {row['queries_per_s']:,.0f} q/s, "
        f"{row['queries_per_s'] / max(exact_qps, 1e-9):.1f}x exact); others: {others or 'none'}"
    )
    return BackendChoice(chosen, reason, table)
