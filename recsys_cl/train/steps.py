"""Where towers meet losses: one training batch -> scalar loss, and batched embedding helpers.

The correction pipeline reads as a recipe, one named step per line (TFRS ``Retrieval.call``):
scores = u @ vᵀ -> / tau -> logQ correction (``loss.logq_weight`` times log q) -> mask accidental
hits -> mask out-of-scope candidates -> hard negatives -> loss. Letters: B batch, N sampled
negatives, C = B + N candidates, S queued negatives, D dim, L history.

Queued negatives (a queue of recent batches' items, see :mod:`recsys_cl.train.negative_memory`)
are appended as columns ``C:C+S`` with their item ids and logQ, so every later step treats them
exactly like in-batch and sampled columns.

Distributed (``torch.distributed`` initialised): every rank holds the same global batch; it
encodes its shard of the rows and of the candidate columns and gathers the shards with
:func:`recsys_cl.utils.dist.all_gather_with_grad`, so the in-batch negatives are the global
batch and the loss is the single-process loss of that batch. Without a process group
:func:`encode_batch` is ``model(history, user_index, candidates)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from recsys_cl.config import HardNegativesConfig, LossConfig
from recsys_cl.losses import (
    append_mochi_negatives,
    debiased_contrastive_loss,
    hard_negative_topk,
    logq_correction,
    mask_accidental_hits,
    mask_by,
    retrieval_logits,
    sampled_softmax_loss,
    triplet_loss,
)
from recsys_cl.towers.two_tower import TwoTower
from recsys_cl.utils import dist

if TYPE_CHECKING:
    import polars as pl

    from recsys_cl.features.spec import FeatureSpec


@dataclass
class Batch:
    """One training batch.

    Attributes:
        history: (B, L) int64 catalogue indices, most recent first, -1 = none.
        user_index: (B,) int64 user-vocab index.
        candidates: (C,) int64 catalogue indices; the first B are the rows' positives, the rest
            sampled negatives shared by all rows.
        log_q: (C,) float32 log expected count of each candidate in the batch, or None (no logQ).
        extra_mask: (B, C) bool, True where a candidate must not count as a negative for the
            row (the user's own training clicks; in-batch columns when in-batch negatives are
            off), or None.
    """

    history: Tensor
    user_index: Tensor
    candidates: Tensor
    log_q: Tensor | None = None
    extra_mask: Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.history.shape[0])


@dataclass
class QueuedNegatives:
    """Extra negative columns shared by every row of a batch (a queue of recent batches' items).

    Attributes:
        items: embeddings, no gradient. Shape: (S, D).
        ids: catalogue index of each column (accidental-hit masking). Shape: (S,), int64.
        log_q: log expected count of each column among the queue's S draws, or None (no logQ).
            Shape: (S,).
        out_of_scope: True where the row's user clicked the column's item in training, or None.
            Shape: (B, S), bool.
    """

    items: Tensor
    ids: Tensor
    log_q: Tensor | None = None
    out_of_scope: Tensor | None = None


def batch_loss(
    model: TwoTower | torch.nn.Module,
    batch: Batch,
    cfg: LossConfig,
    queued: QueuedNegatives | None = None,
    hard: HardNegativesConfig | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Scalar training loss for ``batch`` under ``cfg`` (softmax, debiased or triplet).

    Args:
        model: the two towers (or their DistributedDataParallel wrapper).
        queued: extra negative columns from a queue, or None.
        hard: hard-negative mining on the corrected, masked logits (``topk`` or ``mochi``), or None.
        generator: randomness of MoCHi's mixing.
    """
    B = batch.size
    user, items = encode_batch(model, batch)  # (B, D), (C, D)
    items, ids, log_q, out_of_scope = append_queued(batch, items, queued)  # (C', D), (C',), ...
    if cfg.kind == "triplet":
        scores = user @ items.T  # (B, C') raw cosine scores, no temperature, no logQ
        valid = _valid_negatives(scores, ids, out_of_scope, cfg)
        return triplet_loss(scores, margin=cfg.margin, valid=valid)

    logits = retrieval_logits(user, items, temperature=cfg.temperature)  # (B, C')
    if log_q is not None:
        logits = logq_correction(logits, log_q, cfg.logq_weight)  # s / tau - w log q
    if cfg.mask_accidental_hits:
        logits = mask_accidental_hits(logits, ids[:B], ids)
    if out_of_scope is not None:
        logits = mask_by(logits, out_of_scope)
    if hard is not None and hard.kind == "topk":
        logits = hard_negative_topk(logits, hard.topk.k)  # positive + k hardest
    if hard is not None and hard.kind == "mochi":
        weighted = None if log_q is None else cfg.logq_weight * log_q  # (C',) mixes on the same w log q scale
        logits = append_mochi_negatives(  # (B, C' + S') synthetic hard negatives
            logits, user, items, weighted, cfg.temperature, hard.mochi.n_hard, hard.mochi.n_mix,
            hard.mochi.n_query_mix, hard.mochi.beta_max, generator,
        )
    if cfg.kind == "debiased":
        return debiased_contrastive_loss(logits, tau_plus=cfg.tau_plus, temperature=cfg.temperature)
    return sampled_softmax_loss(logits)


def encode_batch(model: TwoTower | torch.nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """(B, D) user and (C, D) candidate embeddings of the (global) batch.

    With a process group, this rank encodes its contiguous shard of the rows and of the
    candidates, and the shards of all ranks are gathered in rank order, keeping this rank's
    autograd graph (gradients from every rank's copy of the loss are summed into the shard).
    """
    if dist.world_size() == 1:
        return model(batch.history, batch.user_index, batch.candidates)
    B, C = batch.size, int(batch.candidates.shape[0])
    rows, cols = dist.shard(B), dist.shard(C)
    user, items = model(batch.history[rows], batch.user_index[rows], batch.candidates[cols])
    user = dist.all_gather_with_grad(user, dist.shard_sizes(B))  # (B, D)
    items = dist.all_gather_with_grad(items, dist.shard_sizes(C))  # (C, D)
    return user, items


def append_queued(
    batch: Batch, items: Tensor, queued: QueuedNegatives | None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Candidate columns of the batch followed by the queued ones.

    Returns:
        ``(items (C + S, D), ids (C + S,), log_q (C + S,) | None, out_of_scope (B, C + S) | None)``;
        the batch's own columns unchanged when ``queued`` is None.
    """
    if queued is None or len(queued.ids) == 0:
        return items, batch.candidates, batch.log_q, batch.extra_mask
    if (batch.log_q is None) != (queued.log_q is None):
        raise ValueError(
            "batch and queue disagree on logQ: both or neither must carry log_q "
            f"(batch: {batch.log_q is not None}, queue: {queued.log_q is not None})"
        )
    B, C, S = batch.size, int(batch.candidates.shape[0]), int(queued.ids.shape[0])
    items = torch.cat([items, queued.items.to(items)])  # (C + S, D)
    ids = torch.cat([batch.candidates, queued.ids.to(batch.candidates)])  # (C + S,)
    log_q = None
    if batch.log_q is not None and queued.log_q is not None:
        log_q = torch.cat([batch.log_q, queued.log_q.to(batch.log_q)])  # (C + S,)
    mask = None
    if batch.extra_mask is not None or queued.out_of_scope is not None:
        left = batch.extra_mask if batch.extra_mask is not None else torch.zeros(B, C, dtype=torch.bool)
        right = queued.out_of_scope if queued.out_of_scope is not None else torch.zeros(B, S, dtype=torch.bool)
        mask = torch.cat([left, right.to(left.device)], dim=1)  # (B, C + S)
    return items, ids, log_q, mask


def _valid_negatives(
    scores: Tensor, ids: Tensor, out_of_scope: Tensor | None, cfg: LossConfig
) -> Tensor:
    """(B, C) bool: True for candidates that count as negatives of the row (triplet loss)."""
    B, C = scores.shape
    valid = torch.ones(B, C, dtype=torch.bool, device=scores.device)
    valid[torch.arange(B), torch.arange(B)] = False  # the positive itself
    if cfg.mask_accidental_hits:
        valid &= ids[:B, None] != ids[None, :]
    if out_of_scope is not None:
        valid &= ~out_of_scope
    return valid


@torch.no_grad()
def embed_items(model: TwoTower, num_items: int, batch_size: int = 8192) -> Tensor:
    """(M, D) embeddings of the whole catalogue, computed in blocks, in eval mode."""
    was_training = model.training
    model.eval()
    out = [
        model.item_tower(torch.arange(s, min(s + batch_size, num_items)))
        for s in range(0, num_items, batch_size)
    ]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.item_tower.dim)


@torch.no_grad()
def embed_users(
    model: TwoTower, history: np.ndarray, user_index: np.ndarray, batch_size: int = 4096
) -> Tensor:
    """(U, D) user embeddings from (U, L) histories and (U,) user indices, in blocks."""
    was_training = model.training
    model.eval()
    out = []
    for s in range(0, len(history), batch_size):
        # torch.tensor copies: the arrays may be read-only views (Arrow buffers on Spark executors),
        # which torch.from_numpy accepts only with a warning. A block is (batch_size, L) ints.
        h = torch.tensor(history[s : s + batch_size])
        u = torch.tensor(user_index[s : s + batch_size])
        out.append(model.user_tower(h, u))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.item_tower.dim)


def fold_in_history(
    model: TwoTower, spec: FeatureSpec, history: pl.DataFrame, items: Tensor, rows: np.ndarray, length: int,
    step: float,
) -> Tensor:
    """(R, D) ``items`` (the vectors of items ``rows``, indices into ``spec.items``) with their clicks
    in ``history`` folded in (:func:`recsys_cl.towers.fold_in.fold_in_clicks`): each clicker's user
    vector, from their last ``length`` clicks in ``history``, times ``step``, added once per click.

    Raises:
        ValueError: one of ``rows`` has training clicks (its ID vector has learned from them already).
    """
    from recsys_cl.features.sequences import Sequences
    from recsys_cl.features.vocab import Vocab
    from recsys_cl.towers.fold_in import fold_in_clicks

    warm = ~np.isin(rows, spec.cold_items)
    if warm.any():
        raise ValueError(
            f"fold-in is for items without training clicks, but {int(warm.sum())} of the {len(rows)} items "
            "given have some (their ID vectors learned from those clicks); fold in only items the model has "
            "no ID vector for (split.kind=cold_start, or items new since training)"
        )
    col = Vocab(spec.items.ids[rows], name=spec.items.name).encode(history["item_id"])  # (N,) -1: other items
    hit = col >= 0
    if not hit.any():
        return items
    clickers, click_user = np.unique(history["user_id"].to_numpy()[hit], return_inverse=True)
    windows = Sequences.from_clicks(history, spec.items, spec.users).last_windows(clickers, length)
    vectors = embed_users(model, windows, spec.users.encode(clickers))  # (C, D)
    return fold_in_clicks(items, vectors, torch.from_numpy(col[hit]).long(), torch.from_numpy(click_user).long(), step)


FIT_MAX_CLICKS = 20_000
"""``fold_in: fit`` reads about this many clicks of its window (:func:`fit_click_sample`) unless told
otherwise (:attr:`FoldIn.max_clicks`; the candidates jobs' ``candidates.fold_in_max_clicks``)."""


def fit_click_sample(on_new: np.ndarray, users: np.ndarray, cap: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Which of a window's clicks ``fit`` uses, and their weights, when it has more than ``cap``.

    Clicks on new items are what the fit learns from, and a new item may have one: all of them are
    kept (while they fill at most half of ``cap``; beyond that a uniform sample of them). The other
    items' clicks only act as negatives and fill the rest, ``budget`` clicks on average: a seeded
    uniform sample of their users (``budget`` x users / clicks of them), each with all their other
    clicks. ``fit`` costs per distinct clicker (:func:`recsys_cl.towers.fold_in.softmax_gradient`), so
    the same number of clicks costs less as whole users. Each kept click is weighted by the inverse
    of its group's sampling rate (of clicks, or of users), so the weighted loss is an unbiased
    estimate of the loss on every click of the window. A window of at most ``cap`` clicks is kept
    whole, weights 1.

    Args:
        on_new: (N,) bool, whether each click of the window is on a new item.
        users: (N,) the clicker of each click (any ids).

    Returns:
        ((K,) sorted positions of the kept clicks, (K,) float64 weights); K is about ``cap`` (exactly
        when the new items' clicks fill it), and the sample's distinct clickers are at most ``cap``.
    """
    cap = max(int(cap), 1)
    new, other = np.nonzero(on_new)[0], np.nonzero(~on_new)[0]
    k_new = min(len(new), max(cap // 2, cap - len(other)))
    budget = cap - k_new
    rng = np.random.default_rng(seed)
    keep, weights = [], []
    if k_new:
        keep.append(new if k_new == len(new) else rng.choice(new, k_new, replace=False))
        weights.append(np.full(k_new, len(new) / k_new))
    if budget and len(other):
        if len(other) <= budget:
            chosen, weight = other, 1.0
        else:  # m users drawn uniformly: each user in the sample with probability m / n_users
            user_of = np.unique(users[other], return_inverse=True)[1].reshape(-1)
            n_users = int(user_of.max()) + 1
            m = min(max(round(budget * n_users / len(other)), 1), n_users)
            chosen = other[np.isin(user_of, rng.choice(n_users, m, replace=False))]
            weight = n_users / m
        keep.append(chosen)
        weights.append(np.full(len(chosen), weight))
    if not keep:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    pos, w = np.concatenate(keep), np.concatenate(weights)
    order = np.argsort(pos, kind="stable")
    return pos[order], w[order]


@dataclass(frozen=True)
class FoldIn:
    """How items without training clicks take in their clicks (``item_tower.fold_in_*``)."""

    method: str = "sum"
    """``sum``: :func:`recsys_cl.towers.fold_in.fold_in_clicks`; ``fit``:
    :func:`recsys_cl.towers.fold_in.fit_new_items`."""
    step: float = 1.0
    """``sum`` only: the weight of one click (0 = off)."""
    temperature: float = 0.1
    """``fit`` only: the training loss's softmax temperature."""
    normalize: bool = True
    """``fit`` only: keep fitted vectors unit-length (``model.normalize``)."""
    max_clicks: int = FIT_MAX_CLICKS
    """``fit`` only: a window with more clicks is sampled down to about this many (:func:`fit_click_sample`)."""

    @classmethod
    def from_config(cls, cfg: Any) -> FoldIn:
        """From a :class:`~recsys_cl.config.RunConfig`; ``auto`` is ``sum`` under ``split.kind=cold_start``
        (new items ranked among themselves), else ``fit`` (ranked with the trained items)."""
        it = cfg.item_tower
        method = it.fold_in_method
        if method == "auto":
            method = "sum" if cfg.split.kind == "cold_start" else "fit"
        return cls(method, it.fold_in_step, cfg.loss.temperature, cfg.model.normalize)

    @property
    def active(self) -> bool:
        return self.method == "fit" or self.step > 0


def fold_in_items(
    model: TwoTower, spec: FeatureSpec, history: pl.DataFrame, vectors: Tensor, length: int, fold: FoldIn,
    since: int | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """(M, D) item ``vectors`` with the clicks in ``history`` on items without training clicks taken
    in (``fold``), and what was: ``{"method", "clicks", "items"}`` (+ ``"step"`` for sum,
    ``"window_clicks"`` for fit). Items with training clicks keep their vectors; so do cold items without clicks.

    ``sum`` adds the clickers' user vectors (all of ``history``). ``fit`` fits the clicked cold
    items' vectors to the clicks at or after ``since`` (epoch seconds; None: all of ``history``), all
    items' clicks, so the others act as negatives; above ``fold.max_clicks`` clicks it keeps the
    new items' clicks and a weighted sample of the other clicks' users (:func:`fit_click_sample`), and
    the info adds ``"fit_clicks"``, the clicks it read (``"max_clicks"``, the cap, is always there for
    ``fit``, so that a saved index's fold-in can be redone). User vectors come from each clicker's
    last ``length`` clicks in ``history``.
    """
    from recsys_cl.features.sequences import Sequences
    from recsys_cl.towers.fold_in import fit_new_items

    cold = spec.cold_items
    out = vectors.clone()
    if fold.method == "sum":
        idx = spec.items.encode(history["item_id"])
        on_cold = np.isin(idx, cold) if fold.step > 0 else np.zeros(len(idx), dtype=bool)
        info: dict[str, Any] = {"method": "sum", "step": float(fold.step), "clicks": int(on_cold.sum()),
                                "items": int(len(np.unique(idx[on_cold])))}
        if info["clicks"]:
            out[cold] = fold_in_history(model, spec, history, vectors[cold], cold, length, fold.step)
        return out, info
    window = history if since is None else history.filter(history["timestamp"] >= since)
    idx = spec.items.encode(window["item_id"])
    known = np.nonzero(idx >= 0)[0]
    on_new = np.isin(idx[known], cold)
    info = {"method": "fit", "window_clicks": int(len(known)), "clicks": int(on_new.sum()),
            "max_clicks": int(fold.max_clicks)}
    sample, weights = fit_click_sample(on_new, window["user_id"].to_numpy()[known], fold.max_clicks)
    keep, idx = known[sample], idx[known[sample]]
    rows = np.unique(idx[on_new[sample]])
    info["items"] = int(len(rows))
    if len(keep) < len(known):
        info["fit_clicks"] = int(len(keep))
    if not len(rows):
        return out, info
    clickers, click_user = np.unique(window["user_id"].to_numpy()[keep], return_inverse=True)
    windows = Sequences.from_clicks(history, spec.items, spec.users).last_windows(clickers, length)
    users = embed_users(model, windows, spec.users.encode(clickers))  # (C, D)
    out[torch.from_numpy(rows)] = fit_new_items(
        vectors, torch.from_numpy(rows), users, torch.from_numpy(idx).long(), torch.from_numpy(click_user).long(),
        fold.temperature, fold.normalize,
        click_weights=None if len(keep) == len(known) else torch.from_numpy(weights).to(vectors.dtype),
    )
    return out, info
