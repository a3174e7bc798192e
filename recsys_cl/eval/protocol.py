"""The offline evaluation protocol: full ranking over the training catalogue, history masked.

Protocol (logged with every number through :func:`protocol_name`):

* **catalogue** = every item with at least one *training* click (an item :class:`Vocab` built from the
  train frame); the model ranks all ``M`` of them (full ranking, no sampled negatives);
* **history masked**: for each evaluated user, the catalogue items in their history (all their
  clicks strictly before the target) get score ``-inf`` and cannot be recommended;
* **targets outside the catalogue stay in the denominator** (``n_targets``) and count as misses;
  ``eval.catalogue=all_items`` ranks every item of the item table instead (:data:`ALL_CATALOGUE`), and
  the cold-start split only the items without training clicks (:data:`COLD_CATALOGUE`);
* validation: history = train clicks, targets = val frame; test: history = train + val clicks,
  targets = test frame (the caller concatenates; :class:`EvalSet` carries the result);
* users without any catalogue item in their history are skipped and counted (``n_skipped_users``);
* a target the user already clicked earlier (a repeat) is masked like the rest of the history: it
  stays in ``n_targets`` and can never be a hit;
* **ties** (e.g. items scored from the same genres only, or Popularity's equal counts) are ordered at
  random and the metrics are their exact expectations (:func:`evaluate`), never the order a sort
  happens to leave tied items in.

Letters: ``U`` evaluated users, ``M`` catalogue items, ``K`` list length, ``b`` users in a block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys_cl.eval import metrics
from recsys_cl.features.vocab import Vocab

CATALOGUE = "catalogue=train_items"
COLD_CATALOGUE = "catalogue=cold_items"
ALL_CATALOGUE = "catalogue=all_items"
EVAL_SET_SIZES = ("n_users", "n_skipped_users")
"""The keys of :func:`evaluate`'s result that count the evaluation set's users instead of measuring
the model: the same at every evaluation of one set."""
DEFAULT_KS: tuple[int, ...] = (10, 20, 50)


def protocol_name(split_protocol: str, stage: str | None = None, catalogue: str = CATALOGUE) -> str:
    """The protocol string to log next to every metric, e.g.
    ``full_ranking|catalogue=train_items|history_masked|split=leave_last_out(ties=row_order)``.

    ``stage`` ("val" or "test") appends which clicks form the history. ``catalogue`` names the
    ranked item set: :data:`CATALOGUE` (items with training clicks), :data:`COLD_CATALOGUE`
    (the cold-start split: items without any, ranked only among themselves) or :data:`ALL_CATALOGUE`
    (``eval.catalogue=all_items``: both together, as served).
    """
    name = f"full_ranking|{catalogue}|history_masked|split={split_protocol}"
    if stage is None:
        return name
    histories = {"val": "train", "test": "train+val"}
    if stage not in histories:
        raise ValueError(f"stage must be one of {sorted(histories)} or None, got {stage!r}")
    return f"{name}|stage={stage}(history={histories[stage]})"


@dataclass(frozen=True)
class EvalSet:
    """Everything :func:`evaluate` needs about the evaluated users; row ``u`` is one user.

    Attributes:
        user_ids: (U,) original user ids.
        user_index: (U,) int64 row in the *train* user vocab, -1 for users without train clicks.
        history: (U, M) float32 binary CSR — catalogue items in each user's history (masked).
        targets: (U, M) float32 binary CSR — catalogue items among each user's targets.
        n_targets: (U,) int64 number of distinct targets, including out-of-catalogue ones.
        protocol: the protocol string (see :func:`protocol_name`).
        n_skipped_users: users with targets but no catalogue item in their history (not in the set).
    """

    user_ids: np.ndarray
    user_index: np.ndarray
    history: sp.csr_matrix
    targets: sp.csr_matrix
    n_targets: np.ndarray
    protocol: str
    n_skipped_users: int = 0

    def __post_init__(self) -> None:
        u = len(self.user_ids)
        for name in ("user_index", "n_targets"):
            if np.shape(getattr(self, name)) != (u,):
                got = np.shape(getattr(self, name))
                raise ValueError(f"EvalSet.{name} must have shape ({u},), got {got}")
        if self.history.shape[0] != u or self.targets.shape != self.history.shape:
            raise ValueError(
                f"EvalSet.history and .targets must both be ({u}, M); "
                f"got {self.history.shape} and {self.targets.shape}"
            )

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return int(self.history.shape[1])


def restrict_targets(eval_set: EvalSet, columns: np.ndarray) -> tuple[EvalSet, np.ndarray]:
    """The same users and histories with only the targets in ``columns``, e.g. new items' targets.

    Args:
        columns: (M,) bool, the ranked columns whose targets are kept.
    Returns:
        (the EvalSet of the users with at least one such target, their rows in ``eval_set``): score
        it with ``lambda rows: score_fn(kept_rows[rows])``. ``n_targets`` counts the kept targets only;
        targets outside the ranked set belong to no part and are dropped.
    """
    if np.shape(columns) != (eval_set.n_items,):
        raise ValueError(f"columns must be a ({eval_set.n_items},) bool mask, got shape {np.shape(columns)}")
    targets = (eval_set.targets @ sp.diags(np.asarray(columns, dtype=np.float32))).tocsr()
    targets.eliminate_zeros()
    n_targets = np.diff(targets.indptr).astype(np.int64)
    rows = np.flatnonzero(n_targets)
    part = EvalSet(
        user_ids=eval_set.user_ids[rows], user_index=eval_set.user_index[rows], history=eval_set.history[rows],
        targets=targets[rows], n_targets=n_targets[rows], protocol=eval_set.protocol,
    )
    return part, rows


def _require_columns(frame: pl.DataFrame, what: str, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} frame is missing column(s) {missing}; it has {frame.columns}. "
            "Pass a clicks frame with user_id and item_id columns."
        )


def _binary_csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
    m.sum_duplicates()
    m.data[:] = 1.0  # repeated clicks on one item count once
    return m


def interaction_matrix(clicks: pl.DataFrame, user_vocab: Vocab, item_vocab: Vocab) -> sp.csr_matrix:
    """Binary (len(user_vocab), len(item_vocab)) float32 CSR of ``clicks``; rows whose user or item
    is not in the vocabularies are dropped. Use it to build a baseline's training matrix."""
    _require_columns(clicks, "clicks", ("user_id", "item_id"))
    u = user_vocab.encode(clicks["user_id"])
    i = item_vocab.encode(clicks["item_id"])
    keep = (u >= 0) & (i >= 0)
    return _binary_csr(u[keep], i[keep], (len(user_vocab), len(item_vocab)))


def build_eval_set(
    history: pl.DataFrame,
    targets: pl.DataFrame,
    item_vocab: Vocab,
    user_vocab: Vocab,
    protocol: str,
    history_items: Vocab | None = None,
) -> EvalSet:
    """Build the :class:`EvalSet` for the users in ``targets``.

    Args:
        history: clicks before the targets (validation: train; test: train + val concatenated).
        targets: the held-out clicks (val or test frame); one row per target click.
        item_vocab: the catalogue — items with at least one training click.
        user_vocab: train user vocab, only used to fill ``user_index``.
        protocol: logged with the metrics (see :func:`protocol_name`).
        history_items: a user is evaluated when their history holds an item of this vocab
            (default: ``item_vocab``). The cold-start protocol ranks cold items, which no history
            holds before validation, so it passes every known item here.
    """
    _require_columns(history, "history", ("user_id", "item_id"))
    _require_columns(targets, "targets", ("user_id", "item_id"))
    if len(item_vocab) == 0:
        raise ValueError("item_vocab (the catalogue) is empty; build it from the train clicks")
    m = len(item_vocab)

    pairs = targets.select("user_id", "item_id").unique()  # distinct (user, target) pairs
    eval_users = Vocab.from_values(pairs["user_id"], name="eval_user")
    u_t = eval_users.encode(pairs["user_id"])
    n_targets = np.bincount(u_t, minlength=len(eval_users)).astype(np.int64)
    i_t = item_vocab.encode(pairs["item_id"])
    in_cat = i_t >= 0
    target_m = _binary_csr(u_t[in_cat], i_t[in_cat], (len(eval_users), m))

    u_h = eval_users.encode(history["user_id"])
    i_h = item_vocab.encode(history["item_id"])
    keep = (u_h >= 0) & (i_h >= 0)
    history_m = _binary_csr(u_h[keep], i_h[keep], (len(eval_users), m))

    if history_items is None:
        has_history = np.diff(history_m.indptr) > 0
    else:
        has_history = np.zeros(len(eval_users), dtype=bool)
        has_history[u_h[(u_h >= 0) & (history_items.encode(history["item_id"]) >= 0)]] = True
    rows = np.flatnonzero(has_history)
    user_ids = eval_users.ids[rows]
    return EvalSet(
        user_ids=user_ids,
        user_index=user_vocab.encode(user_ids),
        history=history_m[rows],
        targets=target_m[rows],
        n_targets=n_targets[rows],
        protocol=protocol,
        n_skipped_users=int((~has_history).sum()),
    )


def _to_numpy(scores: Any) -> np.ndarray:
    if hasattr(scores, "detach"):  # torch.Tensor, without importing torch here
        scores = scores.detach().cpu().numpy()
    arr = np.asarray(scores)
    dtype = np.float64 if arr.dtype == np.float64 else np.float32
    return np.array(arr, dtype=dtype, copy=True)  # we write -inf into it


def masked_top_k(scores: np.ndarray, history: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask history items to ``-inf`` **in place** and return the top ``k`` per row, best first.

    Args:
        scores: (b, M) float; modified in place.
        history: (b, M) CSR of items to mask.
    Returns:
        items (b, k) int64 and their scores (b, k); entries with score ``-inf`` are masked items that
        only appear because a row has fewer than ``k`` unmasked items.
    """
    b, m = scores.shape
    rows = np.repeat(np.arange(b), np.diff(history.indptr))
    scores[rows, history.indices] = -np.inf
    k = min(k, m)
    if k < m:
        idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (b, k) unordered
    else:
        idx = np.broadcast_to(np.arange(m), (b, m)).copy()
    top = np.take_along_axis(scores, idx, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(top, order, axis=1)


def _rank_targets(
    score_fn: Callable[[np.ndarray], Any], eval_set: EvalSet, k_max: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Score every EvalSet user in batches; ``(hits (U, K), first_hit (U, K), top_items (U, K),
    recip_rank (U,))``, all with tied scores ordered uniformly at random and counted at their
    expected value (a constant score_fn earns exactly a random ranking's metrics):

    * ``hits[u, r]``: expected number of targets at rank ``r + 1`` of the top ``k_max`` (history
      masked), in [0, 1]; 0/1 where no tie touches the targets;
    * ``first_hit[u, r]``: P(the best-ranked target is at rank ``r + 1``), for the hit rate;
    * ``top_items``: the top ``k_max`` items (-1 when masked), ties in argpartition's order (for
      coverage; it never looks at the targets);
    * ``recip_rank``: expected reciprocal full rank of the best-ranked target, E[1 / rank] (0 when
      none is rankable).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_users, m = eval_set.n_users, eval_set.n_items
    if n_users == 0:
        raise ValueError(
            f"eval set is empty ({eval_set.n_skipped_users} users skipped for having no history "
            "in the catalogue)"
        )
    hits = np.zeros((n_users, k_max), dtype=np.float64)
    first_hit = np.zeros((n_users, k_max), dtype=np.float64)
    top_items = np.zeros((n_users, k_max), dtype=np.int64)
    recip_rank = np.zeros(n_users, dtype=np.float64)
    for start in range(0, n_users, batch_size):
        rows = np.arange(start, min(start + batch_size, n_users))
        scores = _to_numpy(score_fn(rows))  # (b, M)
        if scores.shape != (len(rows), m):
            raise ValueError(
                f"score_fn returned shape {scores.shape}, expected ({len(rows)}, {m}) "
                "(one row per requested user, one column per catalogue item)"
            )
        if np.isnan(scores).any():
            raise ValueError("score_fn returned NaN scores; check the model for divergence")
        idx, top = masked_top_k(scores, eval_set.history[rows], k_max)
        top_items[rows] = np.where(top > -np.inf, idx, -1)
        target_rows = eval_set.targets[rows]
        hits[rows] = _expected_hits(scores, target_rows, top)
        target = target_rows.toarray().astype(bool)  # (b, M)

        best = np.where(target, scores, -np.inf).max(axis=1)  # (b,) masked targets are -inf
        higher = (scores > best[:, None]).sum(axis=1)
        tied = scores == best[:, None]  # (b, M) includes the best target itself
        rankable = best > -np.inf
        n_tied = np.where(rankable, tied.sum(axis=1), 0)
        t_tied = np.where(rankable, (tied & target).sum(axis=1), 0)
        recip_rank[rows] = metrics.reciprocal_rank(higher, n_tied, t_tied)
        first_hit[rows] = _first_hit_distribution(higher, n_tied, t_tied, rankable, k_max)
    return hits, first_hit, top_items, recip_rank


def _expected_hits(scores: np.ndarray, targets: sp.csr_matrix, top: np.ndarray) -> np.ndarray:
    """(b, K) expected targets at each of the first K ranks when ties are ordered at random.

    A target whose score ``v`` has ``g`` unmasked items strictly above it and ``e`` items equal to
    it (itself included) is equally likely at each rank ``g + 1 .. g + e``: it adds ``1 / e`` to each
    of them. Only targets at or above the K-th score can reach the top K.

    Args:
        scores: (b, M) with masked items at -inf.
        targets: (b, M) CSR of each row's targets.
        top: (b, K) the K highest scores of each row, best first (-inf padding).
    """
    b, k = top.shape
    m = scores.shape[1]
    out = np.zeros((b, k + 1), dtype=np.float64)  # a difference array; column k catches the overflow
    if k == 0:
        return out[:, :0]
    r = np.repeat(np.arange(b), np.diff(targets.indptr))  # (T,) row of each target
    v = scores[r, targets.indices]  # (T,)
    reach = (v > -np.inf) & (v >= top[r, -1])
    r, v = r[reach], v[reach]
    g = (top[r] > v[:, None]).sum(axis=1)  # (T',) every item above v is in the top K
    e = np.empty(len(r), dtype=np.int64)
    step = max(1, (1 << 24) // max(m, 1))  # bound the (step, M) comparison to ~16M entries
    for s in range(0, len(r), step):
        e[s:s + step] = (scores[r[s:s + step]] == v[s:s + step, None]).sum(axis=1)
    np.add.at(out, (r, g), 1.0 / e)
    np.add.at(out, (r, np.minimum(g + e, k)), -1.0 / e)
    return np.cumsum(out, axis=1)[:, :k]


def _first_hit_distribution(
    higher: np.ndarray, n_tied: np.ndarray, t_tied: np.ndarray, rankable: np.ndarray, k: int
) -> np.ndarray:
    """(b, K) P(the best-ranked target is at rank r + 1) when ties are ordered at random.

    The best target's score is shared by ``n_tied`` items, ``t_tied`` of them targets, below
    ``higher`` items that are not targets. The first target is at position ``j`` of that tied block
    with probability C(n_tied - j, t_tied - 1) / C(n_tied, t_tied).
    """
    from scipy.special import gammaln

    def log_comb(n: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.asarray(gammaln(n + 1) - gammaln(c + 1) - gammaln(n - c + 1))

    j = np.arange(1, k + 1)[None, :] - higher[:, None]  # (b, K) position within the tied block
    n, t = n_tied[:, None].astype(np.float64), t_tied[:, None].astype(np.float64)
    ok = rankable[:, None] & (j >= 1) & (j <= n - t + 1)
    jj = np.where(ok, j, 1).astype(np.float64)
    tt = np.maximum(t, 1.0)
    nn = np.where(ok, n, jj + tt)  # a valid stand-in where the probability is 0 anyway
    p = np.exp(log_comb(nn - jj, tt - 1) - log_comb(nn, tt))
    return np.where(ok, p, 0.0)


def evaluate(
    score_fn: Callable[[np.ndarray], Any],
    eval_set: EvalSet,
    ks: Iterable[int] = DEFAULT_KS,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Full-ranking metrics of ``score_fn`` on ``eval_set``, averaged over its users.

    Args:
        score_fn: maps EvalSet row positions ``(b,)`` to scores ``(b, M)`` over the catalogue
            (numpy array or torch tensor). Higher is better.
        eval_set: from :func:`build_eval_set`.
        ks: list lengths; reports ``recall@K``, ``ndcg@K``, ``hit_rate@K`` and ``coverage@K`` for each.
    Returns:
        ``{"recall@10": ..., "ndcg@10": ..., "hit_rate@10": ..., "coverage@10": ..., "mrr": ...,
        "n_users": ..., "n_skipped_users": ...}``. Tied scores are ordered uniformly at random and
        every metric but coverage is its exact expectation under that order, so a constant score
        earns a random ranking's metrics (:func:`random_expected_metrics`), not whatever order a
        sort leaves ties in. MRR is the mean over users of E[1 / full rank of the best-ranked
        target] (1 + unmasked items scoring strictly higher, ties at random;
        :func:`~recsys_cl.eval.metrics.reciprocal_rank`), 0 for users without a rankable target.
        Coverage counts the items of the top-K lists, whose ties are in
        argpartition's (target-blind) order.
    """
    ks = tuple(sorted(set(int(k) for k in ks)))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive list lengths, got {ks}")
    m = eval_set.n_items
    k_max = min(max(ks), m)
    hits, first_hit, top_items, recip_rank = _rank_targets(score_fn, eval_set, k_max, batch_size)

    out: dict[str, float] = {}
    for k in ks:
        kk = min(k, k_max)
        out[f"recall@{k}"] = float(metrics.recall_at_k(hits, eval_set.n_targets, kk).mean())
        out[f"ndcg@{k}"] = float(metrics.ndcg_at_k(hits, eval_set.n_targets, kk).mean())
        out[f"hit_rate@{k}"] = float(metrics.hit_rate_at_k(first_hit, kk).mean())
        out[f"coverage@{k}"] = metrics.coverage(top_items[:, :kk], m)
    out["mrr"] = float(recip_rank.mean())
    out["n_users"] = float(eval_set.n_users)
    out["n_skipped_users"] = float(eval_set.n_skipped_users)
    return out


def per_user_recall(
    score_fn: Callable[[np.ndarray], Any], eval_set: EvalSet, k: int, batch_size: int = 1024
) -> np.ndarray:
    """Recall@k of each EvalSet user (U,), in EvalSet row order; its mean is :func:`evaluate`'s
    ``recall@k``. For paired comparisons of two models on the same users
    (:func:`~recsys_cl.eval.bootstrap.paired_bootstrap`)."""
    if k < 1:
        raise ValueError(f"k must be a positive list length, got {k}")
    kk = min(k, eval_set.n_items)
    hits, _, _, _ = _rank_targets(score_fn, eval_set, kk, batch_size)
    return metrics.recall_at_k(hits, eval_set.n_targets, kk)


def top_k_items(
    score_fn: Callable[[np.ndarray], Any], eval_set: EvalSet, k: int, batch_size: int = 1024
) -> np.ndarray:
    """(U, k) catalogue indices of each evaluated user's top-k, history masked; -1 pads rows with
    fewer than k rankable items."""
    out = []
    for s in range(0, eval_set.n_users, batch_size):
        rows = np.arange(s, min(s + batch_size, eval_set.n_users))
        items, scores = masked_top_k(_to_numpy(score_fn(rows)), eval_set.history[rows], k)
        out.append(np.where(np.isfinite(scores), items, -1))
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def slot_share(
    score_fn: Callable[[np.ndarray], Any], eval_set: EvalSet, columns: np.ndarray, k: int, batch_size: int = 1024
) -> float:
    """Of the filled top-``k`` slots of every evaluated user (history masked), the share held by the
    ranked items in ``columns``: the exposure a group of items gets (new items, long-tail items).

    Args:
        columns: (M,) bool mask over the ranked items.
    Returns:
        the share in [0, 1]; 0 when no slot is filled. Tied scores are in argpartition's order, as
        for coverage (the share never looks at the targets).
    """
    if np.shape(columns) != (eval_set.n_items,):
        raise ValueError(f"columns must be a ({eval_set.n_items},) bool mask, got shape {np.shape(columns)}")
    top = top_k_items(score_fn, eval_set, k, batch_size)  # (U, k) ranked columns, -1 = empty slot
    filled = top >= 0
    return float(np.asarray(columns, dtype=bool)[top[filled]].mean()) if filled.any() else 0.0


def part_recall(
    score_fn: Callable[[np.ndarray], Any],
    eval_set: EvalSet,
    parts: dict[str, np.ndarray],
    k: int,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Recall@k on each part of the targets, each over the users with at least one target in it.

    Args:
        parts: ``{name: (M,) bool mask of ranked items}``, e.g. new and warm items, head and tail items.
    Returns:
        ``{"<name>/n_users": ..., "<name>/recall@<k>": ...}`` per part (recall left out for a part no
        user has targets in). The user's other targets are not in the part's denominator
        (:func:`restrict_targets`), and stay ranked, so they can take slots: the part's recall is
        what the user's full list recalls of that part.
    """
    out: dict[str, float] = {}
    for name, columns in parts.items():
        part, rows = restrict_targets(eval_set, columns)
        out[f"{name}/n_users"] = float(part.n_users)
        if part.n_users:
            def on_part(r: np.ndarray, rows: np.ndarray = rows) -> Any:
                return score_fn(rows[r])

            out[f"{name}/recall@{k}"] = float(per_user_recall(on_part, part, k, batch_size).mean())
    return out


def random_expected_metrics(eval_set: EvalSet, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Exact expected ``recall@K``, ``ndcg@K``, ``hit_rate@K`` and ``mrr`` of a uniformly random
    ranking.

    No sampling noise: for a user with ``A`` unmasked items of which ``t`` are targets (``T``
    targets in all), every unmasked item is at each of the first ``K' = min(K, A)`` ranks with
    probability ``1 / A``, so E[hits] = t K' / A, E[DCG] = (t / A) sum_{r <= K'} 1 / log2(r + 1),
    and P(no hit) = C(A - t, K') / C(A, K'); MRR is E[1 / rank of the first of t targets among A
    items] (:func:`~recsys_cl.eval.metrics.reciprocal_rank`). The ideal DCG puts ``min(T, K, M)``
    hits first, as :func:`evaluate` does, whose lists hold at most ``M`` items.
    """
    from scipy.special import gammaln

    ks = tuple(sorted(set(int(k) for k in ks)))
    m = eval_set.n_items
    h = np.diff(eval_set.history.indptr).astype(np.float64)  # masked items per user
    overlap = np.asarray(eval_set.targets.multiply(eval_set.history).sum(axis=1)).ravel()
    t = np.diff(eval_set.targets.indptr) - overlap  # rankable targets
    avail = m - h
    n = eval_set.n_targets.astype(np.float64)
    out: dict[str, float] = {}
    for k in ks:
        kk = np.minimum(k, avail)
        p = np.divide(t, avail, out=np.zeros_like(avail), where=avail > 0)
        out[f"recall@{k}"] = float(np.divide(p * kk, n, out=np.zeros_like(n), where=n > 0).mean())
        cum = np.concatenate([[0.0], np.cumsum(metrics.dcg_discounts(max(k, 1)))])
        # evaluate's lists, and so its ideal DCG, hold at most min(K, M) items
        idcg = cum[np.minimum(eval_set.n_targets, min(k, m))]
        dcg = p * cum[kk.astype(np.int64)]
        out[f"ndcg@{k}"] = float(np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0).mean())
        miss_ok = (avail - t) >= kk
        log_miss = np.where(
            miss_ok,
            gammaln(avail - t + 1) - gammaln(avail - t - kk + 1) - gammaln(avail + 1) + gammaln(avail - kk + 1),
            -np.inf,
        )
        out[f"hit_rate@{k}"] = float((1.0 - np.exp(log_miss)).mean())
    n_tied = np.where(t > 0, avail, 0).astype(np.int64)  # all A unmasked items tie
    t_tied = np.where(t > 0, t, 0).astype(np.int64)
    out["mrr"] = float(metrics.reciprocal_rank(np.zeros(len(t), np.int64), n_tied, t_tied).mean())
    out["n_users"] = float(eval_set.n_users)
    return out
