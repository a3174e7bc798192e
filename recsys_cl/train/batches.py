"""Vectorised batch assembly: flat click arrays -> :class:`~recsys_cl.train.steps.Batch`.

No Python loop per interaction: histories are gathered with one fancy-index per batch, the
user-clicked mask with one ``searchsorted`` over B*C keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from recsys_cl.data.item_stats import StreamingFrequencyEstimator, expected_count_log_q
from recsys_cl.data.negatives import NegativeSampler, user_item_mask
from recsys_cl.features.sequences import Sequences
from recsys_cl.train.steps import Batch


@dataclass
class TrainingData:
    """Inputs of one training run.

    Attributes:
        sequences: the training clicks, time-ordered per user.
        positions: (n_train,) flat positions used as targets (each has >= 1 earlier click).
        history_length: L.
        log_p: (M,) per-click log probability of each item in the training stream (counting
            logQ), or None.
        estimator: streaming frequency estimator (streaming logQ), or None. Exactly one of
            ``log_p``/``estimator`` is set when logQ is on.
        sampler: extra negatives shared by the batch, or None.
        user_item_keys: training clicks as a (num_users, M) CSR (or sorted ``user * M + item``
            keys), to mask the user's own clicks as negatives; None = no such masking.
        in_batch: whether other rows' positives are negatives.
    """

    sequences: Sequences
    positions: np.ndarray
    history_length: int
    num_items: int
    log_p: np.ndarray | None = None
    estimator: StreamingFrequencyEstimator | None = None
    sampler: NegativeSampler | None = None
    num_sampled: int = 0
    user_item_keys: np.ndarray | sp.csr_matrix | None = None
    in_batch: bool = True

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self.positions) // batch_size)

    def user_clicked(self, users: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor | None:
        """(B, C) bool: the row's user clicked the candidate in training; None when the run does
        not mask the user's history (``user_item_keys`` is None)."""
        if self.user_item_keys is None:
            return None
        return user_item_mask(users, candidates, self.user_item_keys, self.num_items)

    def batches(
        self, batch_size: int, generator: torch.Generator, start_step: int = 0
    ) -> Iterator[Batch]:
        """One epoch of shuffled batches; ``start_step`` is the global step of the first batch."""
        order = torch.randperm(len(self.positions), generator=generator).numpy()
        seq = self.sequences
        for b, s in enumerate(range(0, len(order), batch_size)):
            pos = self.positions[order[s : s + batch_size]]  # (B,)
            B = len(pos)
            history = seq.history_before(pos, self.history_length)  # (B, L)
            items = seq.item_index[pos]  # (B,)
            users = seq.user_index[pos]  # (B,)
            cand = items
            log_q = None
            if self.log_p is not None:
                log_q = expected_count_log_q(self.log_p[items], B)  # log(B * p_i)
            elif self.estimator is not None:
                self.estimator.update(items, start_step + b)
                log_q = self.estimator.log_prob(items)
            if self.sampler is not None:
                neg, neg_log_q = self.sampler.sample(self.num_sampled, generator)
                cand = np.concatenate([items, neg.numpy()])
                if log_q is not None:
                    log_q = np.concatenate([np.asarray(log_q), neg_log_q.numpy()])
            C = len(cand)
            extra = None
            if self.user_item_keys is not None:
                extra = user_item_mask(users, cand, self.user_item_keys, self.num_items)
                extra = torch.as_tensor(extra, dtype=torch.bool)
            if not self.in_batch:
                off = ~torch.eye(B, dtype=torch.bool)
                block = torch.zeros(B, C, dtype=torch.bool)
                block[:, :B] = off
                extra = block if extra is None else (extra | block)
            yield Batch(
                history=torch.from_numpy(history),
                user_index=torch.from_numpy(users),
                candidates=torch.from_numpy(np.ascontiguousarray(cand, dtype=np.int64)),
                log_q=None if log_q is None else torch.as_tensor(log_q, dtype=torch.float32),
                extra_mask=extra,
            )
