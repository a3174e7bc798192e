"""Item frequency estimates for the logQ correction: exact counting and Yi et al.'s streaming sketch.

Two estimates of "how often is item y a candidate", on different scales:

* :func:`item_log_prob_counting` — ``log p_y``, the per-*click* probability that a training
  positive is item ``y`` (count / total), from one pass over the training clicks.
* :class:`StreamingFrequencyEstimator` — ``log P(y in batch)``, the per-*batch* inclusion
  probability, estimated online from the gaps between the steps at which ``y`` is seen
  (Yi et al., RecSys 2019, Section 5). For a rare item it is ``1 - (1 - p)^B ~ B * p``; it
  saturates at 1 for items that appear in (almost) every batch.

Sampled softmax wants the log *expected count* of the item among the candidates' draws (TF's
candidate-sampling note). :func:`expected_count_log_q` puts the counting estimate on that scale,
``log(B) + log p``, which is what the streaming estimate approximates for rare items. Constant
shifts of ``log_q`` cancel in the softmax, so only the relative scale within a batch matters.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, TypeVar

import numpy as np
import torch

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def item_log_prob_counting(
    item_index: np.ndarray, num_items: int, smoothing: float = 0.0
) -> np.ndarray:
    """Log probability that a training click is on each item: ``log(count_y / total)``.

    With ``smoothing = s > 0`` it is additive (Laplace) smoothing,
    ``p_y = (count_y + s) / (total + s * M)``. With ``s = 0`` (default, the exact frequencies) an
    item that was never clicked gets the smallest probability of a clicked item, so that every
    entry is finite; such an item is never an in-batch positive, so its value only matters if a
    caller uses it for another purpose.

    Args:
        item_index: catalogue index of every training click. Shape: (n_clicks,), int.
        num_items: M, the catalogue size; indices must lie in ``[0, M)``.
        smoothing: additive pseudo-count per item, >= 0.

    Returns:
        ``log p``, finite. Shape: (M,), float32.
    """
    item_index = np.asarray(item_index)
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    if item_index.size == 0 and smoothing == 0:
        raise ValueError("item_index is empty: no clicks to count (or pass smoothing > 0)")
    if item_index.size and (item_index.min() < 0 or item_index.max() >= num_items):
        raise ValueError(
            f"item_index must lie in [0, {num_items}), got values in "
            f"[{item_index.min()}, {item_index.max()}]"
        )
    counts = np.bincount(item_index.astype(np.int64), minlength=num_items).astype(np.float64)
    counts += smoothing  # (M,)
    p = counts / counts.sum()  # (M,)
    p[p == 0] = p[p > 0].min()  # unseen items: smallest observed probability
    return np.log(p).astype(np.float32)


def expected_count_log_q(log_p: ArrayOrTensor, num_draws: int) -> ArrayOrTensor:
    """Log of the expected number of times an item appears among ``num_draws`` draws.

    ``log E[count] = log(num_draws) + log p``. The training step adds ``log B`` to the counting
    estimate of the in-batch positives (B draws of the click stream) and a sampler returns
    ``log N + log q`` for its N draws, so in-batch and sampled columns share one scale, the
    one that sampled softmax's ``logit - log Q`` expects.

    Args:
        log_p: per-draw log probabilities (numpy array or tensor). Shape: any, e.g. (M,) or (B,).
        num_draws: number of draws, >= 1.

    Returns:
        ``log(num_draws) + log_p``, same type and shape as ``log_p``.
    """
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    return log_p + math.log(num_draws)


class StreamingFrequencyEstimator:
    """Streaming estimate of each item's per-batch inclusion probability (Yi et al. 2019).

    Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations",
    RecSys 2019, Algorithm 2 (with multiple hashings, Section 5.2). H hash functions map an item
    to one bucket in each of H arrays; per bucket, ``A`` holds the last step the bucket was seen
    and ``B`` a moving average of the gap between sightings. On seeing item ``y`` at step ``t``::

        B[h(y)] <- (1 - alpha) * B[h(y)] + alpha * (t - A[h(y)])
        A[h(y)] <- t
        p(y)    =  1 / max_h B_h[h(y)]          # collisions only shrink a gap, hence the max

    ``p(y)`` is the probability that ``y`` is in a batch (``~ B * p_click`` for rare items,
    saturating at 1), not a per-click probability; see :func:`expected_count_log_q`.

    Decisions:

    * An item is counted once per batch (duplicates within a batch are one sighting).
    * First sighting of a bucket: ``alpha = 1`` with the gap measured from the step before the
      estimator's first update, ``B = t - t0 + 1`` (one sighting in ``t - t0 + 1`` steps).
    * A never-seen item (any of its buckets never seen) gets ``p = 1 / (n_steps + 1)``: not seen
      in any of the ``n_steps`` steps so far.
    * Steps must strictly increase across :meth:`update` calls.

    Hashes are multiply-shift (Dietzfelbinger et al. 1997), ``h(x) = hi32(a*x + b mod 2^64) * K
    >> 32`` with odd 64-bit ``a`` and ``b`` drawn from ``numpy.random.default_rng(seed)``.

    State is explicit: :meth:`update` is the only mutation, and :meth:`state_dict` /
    :meth:`load_state_dict` carry it through checkpoints. Memory: ``H * K * 12`` bytes.

    Args:
        num_buckets: K, buckets per hash array (<= 2**32).
        num_hashes: H, independent hash functions, >= 1.
        alpha: learning rate of the gap's moving average, in (0, 1].
        seed: seed of the hash constants.
    """

    def __init__(
        self, num_buckets: int = 1 << 20, num_hashes: int = 2, alpha: float = 0.05, seed: int = 0
    ) -> None:
        if not 1 <= num_buckets <= 1 << 32:
            raise ValueError(f"num_buckets must be in [1, 2**32], got {num_buckets}")
        if num_hashes < 1:
            raise ValueError(f"num_hashes must be >= 1, got {num_hashes}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.num_buckets = int(num_buckets)
        self.num_hashes = int(num_hashes)
        self.alpha = float(alpha)
        rng = np.random.default_rng(seed)
        self._mult = rng.integers(0, 2**64, size=num_hashes, dtype=np.uint64) | np.uint64(1)
        self._add = rng.integers(0, 2**64, size=num_hashes, dtype=np.uint64)
        self.last_seen = np.full((num_hashes, num_buckets), -1, dtype=np.int64)  # A, -1 = never
        self.gap = np.zeros((num_hashes, num_buckets), dtype=np.float32)  # B
        self.first_step = -1  # t0: step of the first update, -1 before any
        self.step = -1  # step of the last update

    def _buckets(self, items: np.ndarray, k: int) -> np.ndarray:
        """Bucket of each item in hash array k. (n,) -> (n,) int64."""
        x = items.astype(np.uint64)
        h = x * self._mult[k] + self._add[k]  # wraps mod 2**64
        return (((h >> np.uint64(32)) * np.uint64(self.num_buckets)) >> np.uint64(32)).astype(
            np.int64
        )

    def update(self, item_ids: np.ndarray | torch.Tensor, step: int) -> None:
        """Record that the items of one batch were seen at global step ``step``.

        Args:
            item_ids: item ids (non-negative ints) in the batch; duplicates count once.
                Shape: (n,).
            step: global training step, strictly larger than the previous update's.
        """
        if step <= self.step:
            raise ValueError(
                f"steps must strictly increase: got step {step} after step {self.step}; pass the "
                "global step (epoch * steps_per_epoch + batch), or load_state_dict() the matching "
                "state before resuming"
            )
        if self.first_step < 0:
            self.first_step = int(step)
        items = _as_int_array(item_ids)
        t = int(step)
        for k in range(self.num_hashes):
            b = np.unique(self._buckets(items, k))  # (n_k,) one update per bucket
            last = self.last_seen[k, b]  # (n_k,)
            seen = last >= 0
            observed = np.where(seen, t - last, t - self.first_step + 1).astype(np.float32)
            old = self.gap[k, b]
            self.gap[k, b] = np.where(seen, (1 - self.alpha) * old + self.alpha * observed, observed)
            self.last_seen[k, b] = t
        self.step = t

    def log_prob(self, item_ids: np.ndarray | torch.Tensor) -> np.ndarray:
        """``log p(y) = -log max_h B_h[h(y)]``, the log per-batch inclusion probability.

        Args:
            item_ids: item ids. Shape: any, e.g. (B,).

        Returns:
            Log probabilities, <= 0 and finite. Shape: as ``item_ids``, float32.
        """
        items = _as_int_array(item_ids)
        n_steps = self.step - self.first_step + 1 if self.step >= 0 else 0
        unseen_gap = np.float32(n_steps + 1)
        gap = np.ones(items.shape, dtype=np.float32)  # (n,)
        for k in range(self.num_hashes):
            b = self._buckets(items, k)
            g = np.where(self.last_seen[k, b] >= 0, self.gap[k, b], unseen_gap)
            gap = np.maximum(gap, g)
        return (-np.log(gap)).astype(np.float32).reshape(np.shape(item_ids))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume; tensors and Python scalars only (``weights_only``-safe)."""
        return {
            "num_buckets": self.num_buckets,
            "num_hashes": self.num_hashes,
            "alpha": self.alpha,
            "mult": [int(v) for v in self._mult],
            "add": [int(v) for v in self._add],
            "last_seen": torch.from_numpy(self.last_seen.copy()),
            "gap": torch.from_numpy(self.gap.copy()),
            "first_step": self.first_step,
            "step": self.step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state written by :meth:`state_dict` (sizes must match this estimator)."""
        if (state["num_buckets"], state["num_hashes"]) != (self.num_buckets, self.num_hashes):
            raise ValueError(
                "estimator state has num_buckets={}, num_hashes={} but this estimator has {}, {}; "
                "build it with the checkpoint's loss.streaming_buckets/streaming_hashes".format(
                    state["num_buckets"], state["num_hashes"], self.num_buckets, self.num_hashes
                )
            )
        self.alpha = float(state["alpha"])
        self._mult = np.array(state["mult"], dtype=np.uint64)
        self._add = np.array(state["add"], dtype=np.uint64)
        self.last_seen = np.asarray(state["last_seen"], dtype=np.int64).copy()
        self.gap = np.asarray(state["gap"], dtype=np.float32).copy()
        self.first_step = int(state["first_step"])
        self.step = int(state["step"])


def _as_int_array(item_ids: np.ndarray | torch.Tensor) -> np.ndarray:
    """Flat int64 numpy copy of ids; rejects negative ids (padding must be removed first)."""
    if isinstance(item_ids, torch.Tensor):
        item_ids = item_ids.detach().cpu().numpy()
    items = np.asarray(item_ids).reshape(-1)
    if items.size and not np.issubdtype(items.dtype, np.integer):
        raise ValueError(f"item ids must be integers, got dtype {items.dtype}")
    items = items.astype(np.int64)
    if items.size and items.min() < 0:
        raise ValueError(f"item ids must be >= 0, got {items.min()} (drop padding ids first)")
    return items
