"""Extra negatives shared by the whole batch, and the user-clicked (false-negative) mask.

A sampler draws N catalogue items with replacement and returns, with them, the log of each
item's *expected count* among the N draws, ``log N + log q_i`` — the ``log Q`` that sampled
softmax subtracts (TF candidate sampling), on the same scale as the in-batch columns'
``log B + log p_i`` (see :func:`recsys_cl.data.item_stats.expected_count_log_q`).

In-batch positives plus these sampled columns is mixed negative sampling (Yang et al., "Mixed
Negative Sampling for Learning Two-tower Neural Networks in Recommendations", WWW 2020).
Samplers are stateless; all randomness comes from the ``torch.Generator`` passed to
:meth:`NegativeSampler.sample`, so a seeded generator gives the same negatives.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor


class NegativeSampler(Protocol):
    """Draws negatives for a batch: ``sample(N, generator) -> (items (N,), log_q (N,))``."""

    num_items: int

    def sample(self, num: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Draw ``num`` items with replacement.

        Args:
            num: N, number of draws, >= 1.
            generator: source of randomness (CPU).

        Returns:
            ``(items, log_q)``: catalogue indices, shape (N,) int64; and the log expected count
            of each drawn item among the N draws, ``log N + log q_item``, shape (N,) float32.
        """
        ...


class UniformSampler:
    """Uniform negatives over the whole catalogue: ``q_i = 1 / M``.

    Args:
        num_items: M, the catalogue size.
    """

    def __init__(self, num_items: int) -> None:
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        self.num_items = int(num_items)

    def sample(self, num: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        _check_num(num)
        items = torch.randint(0, self.num_items, (num,), generator=generator)  # (N,)
        log_q = torch.full((num,), math.log(num) - math.log(self.num_items))  # (N,) log(N / M)
        return items, log_q


class PopularitySampler:
    """Popularity negatives: ``q_i = count_i^alpha / sum_k count_k^alpha`` over clicked items.

    ``alpha = 1`` is the unigram distribution, ``alpha = 0.75`` the word2vec smoothing,
    ``alpha = 0`` uniform over clicked items. Items with zero count are **excluded**
    (``q_i = 0``, never drawn), whatever ``alpha``: they are never positives, and the
    uniform sampler covers them.

    Args:
        counts: training click count of each catalogue item. Shape: (M,).
        alpha: exponent, >= 0.
    """

    def __init__(self, counts: np.ndarray, alpha: float) -> None:
        counts = np.asarray(counts, dtype=np.float64)
        if counts.ndim != 1 or counts.size == 0:
            raise ValueError(f"counts must be a non-empty (M,) vector, got shape {counts.shape}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if (counts < 0).any() or not (counts > 0).any():
            raise ValueError("counts must be >= 0 with at least one positive count")
        self.num_items = int(counts.size)
        self.alpha = float(alpha)
        clicked = counts > 0
        # in log space, shifted by the largest: count ** alpha overflows float64 for large alpha
        # (a count of 10,000 at alpha 80 is 1e320) and the normalised q became NaN
        log_w = np.full_like(counts, -np.inf)  # (M,)
        log_w[clicked] = alpha * np.log(counts[clicked])
        weights = np.exp(log_w - log_w[clicked].max())  # (M,), in (0, 1] where clicked, 0 elsewhere
        self.probs = torch.from_numpy(weights / weights.sum())  # (M,) float64, q
        self._log_probs = torch.log(self.probs).to(torch.float32)  # (M,), -inf where q = 0

    def sample(self, num: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        _check_num(num)
        items = torch.multinomial(self.probs, num, replacement=True, generator=generator)  # (N,)
        log_q = self._log_probs[items] + math.log(num)  # (N,) log(N * q_i)
        return items, log_q


def build_sampler(kind: str, counts: np.ndarray, alpha: float = 0.75) -> NegativeSampler | None:
    """Sampler for ``negatives.sampled``: ``"none"`` -> None, ``"uniform"``, ``"popularity"``.

    Both draw only items with training clicks (the catalogue the protocol ranks): ``"uniform"``
    is ``PopularitySampler(counts, 0)``.

    Args:
        kind: one of ``"none"``, ``"uniform"``, ``"popularity"``.
        counts: training click count of each catalogue item (its length is M). Shape: (M,).
        alpha: popularity exponent (``"popularity"`` only).
    """
    if kind == "none":
        return None
    if kind == "uniform":
        # uniform over the ranked catalogue (items with training clicks), not over cold items
        return PopularitySampler(counts, 0.0)
    if kind == "popularity":
        return PopularitySampler(counts, alpha)
    raise ValueError(f"unknown sampler kind {kind!r}; expected 'none', 'uniform' or 'popularity'")


def make_user_item_keys(
    user_index: np.ndarray, item_index: np.ndarray, num_items: int
) -> np.ndarray:
    """Sorted unique ``user * M + item`` keys of (user, item) clicks, for :func:`user_item_mask`.

    Args:
        user_index: user of each click. Shape: (n_clicks,), int.
        item_index: item of each click, in ``[0, M)``. Shape: (n_clicks,), int.
        num_items: M.

    Returns:
        Sorted unique keys. Shape: (n_unique_pairs,), int64.
    """
    user_index = np.asarray(user_index, dtype=np.int64)
    item_index = np.asarray(item_index, dtype=np.int64)
    if user_index.shape != item_index.shape:
        raise ValueError(
            f"user_index and item_index must have the same shape, got {user_index.shape} and "
            f"{item_index.shape}"
        )
    if item_index.size and (item_index.min() < 0 or item_index.max() >= num_items):
        raise ValueError(f"item_index must lie in [0, {num_items})")
    return np.unique(user_index * np.int64(num_items) + item_index)


def make_user_item_matrix(
    user_index: np.ndarray, item_index: np.ndarray, num_users: int, num_items: int
) -> sp.csr_matrix:
    """Binary (num_users, M) CSR of training clicks: the fast input of :func:`user_item_mask`."""
    u = np.asarray(user_index, dtype=np.int64)
    i = np.asarray(item_index, dtype=np.int64)
    m = sp.csr_matrix((np.ones(len(u), dtype=bool), (u, i)), shape=(num_users, num_items))
    m.sum_duplicates()
    return m


def user_item_mask(
    user_index: np.ndarray | Tensor,
    cand_item_index: np.ndarray | Tensor,
    user_item_keys: np.ndarray | sp.csr_matrix,
    num_items: int,
) -> Tensor:
    """True where the row's user clicked the candidate in training (a likely false negative).

    With a CSR from :func:`make_user_item_matrix` (what training uses): one row gather for the
    batch's distinct users and one column gather for the candidates, ~1 ms for 1024 x 1024 (70x
    faster than the key path). With sorted keys ``user * M + item``: one ``searchsorted`` over the
    B*C keys. No Python loop either way. The row's own
    positive is normally a training click, so the diagonal is usually True;
    :func:`recsys_cl.losses.mask_by` never masks the diagonal.

    Args:
        user_index: user of each row. Shape: (B,), int.
        cand_item_index: item of each candidate column. Shape: (C,), int.
        user_item_keys: a (num_users, M) CSR from :func:`make_user_item_matrix`, or sorted keys
            from :func:`make_user_item_keys`. Shape: (n_pairs,), int64.
        num_items: M, the same as used to build the keys.

    Returns:
        Mask. Shape: (B, C), bool tensor.
    """
    users = _to_numpy(user_index)  # (B,)
    items = _to_numpy(cand_item_index)  # (C,)
    if sp.issparse(user_item_keys):
        distinct, row = np.unique(users, return_inverse=True)
        sub = user_item_keys[distinct][:, items].toarray()  # (B_distinct, C)
        return torch.from_numpy(np.ascontiguousarray(sub[row].astype(bool)))
    user_item_keys = np.asarray(user_item_keys, dtype=np.int64)
    keys = users[:, None] * np.int64(num_items) + items[None, :]  # (B, C)
    pos = np.searchsorted(user_item_keys, keys)  # (B, C)
    if len(user_item_keys) == 0:
        return torch.zeros(keys.shape, dtype=torch.bool)
    found = user_item_keys[np.minimum(pos, len(user_item_keys) - 1)] == keys  # (B, C)
    return torch.from_numpy(found)


def _to_numpy(x: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.int64).reshape(-1)


def _check_num(num: int) -> None:
    if num < 1:
        raise ValueError(f"number of sampled negatives must be >= 1, got {num}")
