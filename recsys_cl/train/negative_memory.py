"""Negatives beyond the batch: the queue of recent batches' items and MoCo's momentum item tower.

Owned by the training loop, outside the loss: :meth:`NegativeMemory.columns` *reads* the queue
before a step, :meth:`NegativeMemory.update` *writes* it after the optimiser step (after the
backward pass that used the queued tensors).

What enters the queue after each step: the batch's B positives (item ids, the in-batch source),
embedded under ``no_grad`` by

* ``cross_batch`` — the online item tower, just updated (cross-batch memory, Wang et al. 2020);
* ``moco`` — the momentum item tower, first moved towards the online one with
  ``theta_k <- m * theta_k + (1 - m) * theta_q`` (He et al. 2020). MoCo computes the keys just
  before the step; here they come just after it, one optimiser step later (a 1 - m change).

logQ of queued columns (same per-source convention as in-batch columns): the queue is its own
source of F draws from the click stream (F filled slots), so column j gets the log expected count
``log F + log p_j``, where ``log p_j`` is the per-click log probability stored at enqueue time:
``batch.log_q - log B`` (exactly ``log p`` for ``loss.logq: counting``; the streaming estimate of
the inclusion probability divided by B for ``streaming``).

In a distributed run every rank holds the same global batch and identical towers, so every
rank enqueues the same entries and the queues stay identical without communication.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from recsys_cl.config import QueueConfig
from recsys_cl.losses import NegativeQueue, momentum_copy, momentum_update
from recsys_cl.train.batches import TrainingData
from recsys_cl.train.steps import Batch, QueuedNegatives


class NegativeMemory:
    """Queue (+ momentum item tower for MoCo) for ``negatives.queue.kind`` != ``none``.

    Args:
        cfg: the ``negatives.queue`` section.
        item_tower: the online item tower (copied for MoCo).
        dim: embedding dimension D.
        data: the run's training data (for the user-history mask of queued columns).
    """

    def __init__(self, cfg: QueueConfig, item_tower: nn.Module, dim: int, data: TrainingData) -> None:
        if cfg.kind not in ("cross_batch", "moco"):
            raise ValueError(f"NegativeMemory needs queue kind cross_batch or moco, got {cfg.kind!r}")
        self.kind = cfg.kind
        self.momentum = cfg.momentum
        self.queue = NegativeQueue(cfg.size, dim)
        self.key_tower = momentum_copy(item_tower) if cfg.kind == "moco" else None
        self.data = data
        self.logq = data.log_p is not None or data.estimator is not None

    def columns(self, batch: Batch) -> QueuedNegatives | None:
        """The queue as extra negative columns of ``batch``; None while it is empty."""
        if len(self.queue) == 0:
            return None
        items, ids, log_p = self.queue.negatives()  # (F, D), (F,), (F,)
        log_q = log_p + math.log(len(ids)) if self.logq else None  # log(F * p_j)
        return QueuedNegatives(items, ids, log_q, self.data.user_clicked(batch.user_index, ids))

    @torch.no_grad()
    def update(self, item_tower: nn.Module, batch: Batch) -> None:
        """Enqueue the batch's positives, embedded by the online (cross-batch) or momentum (MoCo)
        item tower; call after ``optimizer.step()``."""
        B = batch.size
        positives = batch.candidates[:B]  # (B,)
        if self.key_tower is not None:
            momentum_update(item_tower, self.key_tower, self.momentum)
            emb = self.key_tower(positives)  # (B, D) keys
        else:
            emb = item_tower(positives)  # (B, D)
        log_p = batch.log_q[:B] - math.log(B) if batch.log_q is not None else None  # per-click
        self.queue.enqueue(emb, positives, log_p)

    def state_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue.state_dict(),
            "key_tower": None if self.key_tower is None else self.key_tower.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue.load_state_dict(state["queue"])
        if self.key_tower is not None and state.get("key_tower") is not None:
            self.key_tower.load_state_dict(state["key_tower"])
