"""Where towers meet losses: one training batch -> scalar loss, and batched embedding helpers.

The correction pipeline reads as a recipe, one named step per line (TFRS ``Retrieval.call``):
scores = u @ vᵀ -> / tau -> logQ correction -> mask accidental hits -> mask out-of-scope
candidates -> loss. Letters: B batch, N sampled negatives, C = B + N candidates, D dim, L history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from recsys_cl.config import LossConfig
from recsys_cl.losses import (
    debiased_contrastive_loss,
    logq_correction,
    mask_accidental_hits,
    mask_by,
    retrieval_logits,
    sampled_softmax_loss,
    triplet_loss,
)
from recsys_cl.towers.two_tower import TwoTower


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


def batch_loss(model: TwoTower, batch: Batch, cfg: LossConfig) -> Tensor:
    """Scalar training loss for ``batch`` under ``cfg`` (softmax, debiased or triplet)."""
    B = batch.size
    user, items = model(batch.history, batch.user_index, batch.candidates)  # (B, D), (C, D)
    if cfg.kind == "triplet":
        scores = user @ items.T  # (B, C) raw cosine scores, no temperature, no logQ
        valid = _valid_negatives(scores, batch, cfg)
        return triplet_loss(scores, margin=cfg.margin, valid=valid)

    logits = retrieval_logits(user, items, temperature=cfg.temperature)  # (B, C)
    if batch.log_q is not None:
        logits = logq_correction(logits, batch.log_q)  # s / tau - log q
    if cfg.mask_accidental_hits:
        logits = mask_accidental_hits(logits, batch.candidates[:B], batch.candidates)
    if batch.extra_mask is not None:
        logits = mask_by(logits, batch.extra_mask)
    if cfg.kind == "debiased":
        return debiased_contrastive_loss(logits, tau_plus=cfg.tau_plus, temperature=cfg.temperature)
    return sampled_softmax_loss(logits)


def _valid_negatives(scores: Tensor, batch: Batch, cfg: LossConfig) -> Tensor:
    """(B, C) bool: True for candidates that count as negatives of the row (triplet loss)."""
    B, C = scores.shape
    valid = torch.ones(B, C, dtype=torch.bool, device=scores.device)
    valid[torch.arange(B), torch.arange(B)] = False  # the positive itself
    if cfg.mask_accidental_hits:
        valid &= batch.candidates[:B, None] != batch.candidates[None, :]
    if batch.extra_mask is not None:
        valid &= ~batch.extra_mask
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
        h = torch.from_numpy(history[s : s + batch_size])
        u = torch.from_numpy(user_index[s : s + batch_size])
        out.append(model.user_tower(h, u))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.item_tower.dim)
