"""A FIFO queue of item embeddings from recent batches, read as extra negative columns.

Stateful negatives live apart from the loss (lightly's ``MemoryBankModule``): the queue holds
``register_buffer`` storage, :meth:`NegativeQueue.enqueue` is its only mutation and the loss only
*reads* :meth:`NegativeQueue.negatives`. Next to each embedding the queue keeps the item id (for
accidental-hit and user-history masking by id) and a per-draw log probability (for the logQ
correction), so queued columns are treated exactly like in-batch ones.

Letters: S queue size (slots), F filled slots (F <= S), D embedding dim, B rows enqueued at once.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NegativeQueue(nn.Module):
    """FIFO ring buffer of (embedding, item id, log_q) triples; no gradient ever flows into it.

    The oldest entries are overwritten first. Until the queue has wrapped around once only the
    filled slots are returned. Everything is a buffer, so ``state_dict()`` carries the queue
    through checkpoints and ``.to(device)`` moves it.

    Args:
        size: S, number of slots, >= 1.
        dim: D, embedding dimension.
    """

    embeddings: Tensor
    ids: Tensor
    log_q: Tensor
    filled: Tensor
    pointer: Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be >= 1, got size={size}, dim={dim}")
        self.size = int(size)
        self.dim = int(dim)
        self.register_buffer("embeddings", torch.zeros(size, dim))  # (S, D)
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))  # (S,)
        self.register_buffer("log_q", torch.zeros(size))  # (S,)
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # F
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))  # next slot to write

    def __len__(self) -> int:
        return int(self.filled)

    @torch.no_grad()
    def enqueue(self, emb: Tensor, ids: Tensor, log_q: Tensor | None = None) -> None:
        """Write ``B`` entries at the pointer, wrapping around; the oldest are overwritten.

        When ``B > S`` only the last ``S`` entries are kept.

        Args:
            emb: embeddings (detached here). Shape: (B, D).
            ids: item id of each row. Shape: (B,), int.
            log_q: per-draw log sampling probability of each row (0 when None). Shape: (B,).
        """
        if emb.dim() != 2 or emb.shape[1] != self.dim or ids.shape != (emb.shape[0],):
            raise ValueError(
                f"enqueue needs emb of shape (B, {self.dim}) and ids of shape (B,), got "
                f"{tuple(emb.shape)} and {tuple(ids.shape)}"
            )
        if log_q is not None and log_q.shape != ids.shape:
            raise ValueError(f"log_q must have shape {tuple(ids.shape)}, got {tuple(log_q.shape)}")
        emb, ids = emb.detach()[-self.size :], ids[-self.size :]
        lq = torch.zeros(len(ids)) if log_q is None else log_q.detach()[-self.size :]
        n = len(ids)
        slots = (int(self.pointer) + torch.arange(n)) % self.size  # (B,) wrap-around
        slots = slots.to(self.embeddings.device)
        self.embeddings[slots] = emb.to(self.embeddings)
        self.ids[slots] = ids.to(self.ids)
        self.log_q[slots] = lq.to(self.log_q)
        self.pointer.fill_((int(self.pointer) + n) % self.size)
        self.filled.fill_(min(int(self.filled) + n, self.size))

    def negatives(self) -> tuple[Tensor, Tensor, Tensor]:
        """The filled slots, oldest first: ``(embeddings (F, D), ids (F,), log_q (F,))``.

        The returned tensors may share storage with the queue: call :meth:`enqueue` only after the
        backward pass that used them (autograd saves them for the user gradient).
        """
        f = int(self.filled)
        if f < self.size:
            return self.embeddings[:f], self.ids[:f], self.log_q[:f]
        order = (int(self.pointer) + torch.arange(self.size, device=self.ids.device)) % self.size
        return self.embeddings[order], self.ids[order], self.log_q[order]
