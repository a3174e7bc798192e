"""User tower: the user's most recent L clicks, embedded and pooled with recency information.

Letters: B batch, L history length, D embedding dim. History index -1 means "no item" (padding,
or an item outside the catalogue); position 0 is the most recent click.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys_cl.towers.item_tower import mlp


class UserTower(nn.Module):
    """History items (+ recency) pooled by mean or attention, optional user-ID embedding.

    Args:
        item_embedding: table used to embed history items; pass the item tower's ID table to
            share it, or a fresh ``nn.Embedding(num_items, D)``.
        history_length: L.
        pooling: ``mean`` (masked mean) or ``attention`` (a learned query attends over history
            embeddings plus recency embeddings; the masked mean is added so that attention only
            has to learn what to emphasise).
        num_users: size of the user-ID table (0 = no user-ID embedding). Index -1 (a user unseen
            in training) uses a shared fallback vector.
    """

    def __init__(
        self,
        item_embedding: nn.Embedding,
        dim: int,
        history_length: int,
        pooling: Literal["mean", "attention"] = "attention",
        num_users: int = 0,
        hidden_dims: Sequence[int] = (),
        dropout: float = 0.0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if item_embedding.embedding_dim != dim:
            raise ValueError(
                f"item_embedding has dim {item_embedding.embedding_dim}, the tower expects {dim}"
            )
        self.item_embedding = item_embedding
        self.pooling = pooling
        self.history_length = history_length
        self.position = nn.Embedding(history_length, dim)
        nn.init.normal_(self.position.weight, std=0.02)
        if pooling == "attention":
            self.attn_key = nn.Linear(dim, dim)
            self.attn_query = nn.Parameter(torch.zeros(dim))
        self.user_embedding = nn.Embedding(num_users + 1, dim) if num_users > 0 else None
        if self.user_embedding is not None:
            nn.init.normal_(self.user_embedding.weight, std=0.02)
        # A linear map after pooling (identity at init): without it the user vector is a plain
        # mix of history embeddings and always scores the history items themselves highest.
        self.project = nn.Linear(dim, dim)
        with torch.no_grad():
            self.project.weight.copy_(torch.eye(dim))
            self.project.bias.zero_()
        self.mlp = mlp(dim, hidden_dims, dropout)
        self.dropout = nn.Dropout(dropout)
        self.normalize = normalize

    def forward(self, history: Tensor, user_index: Tensor | None = None) -> Tensor:
        """history: (B, L) int64, most recent first, -1 = none; user_index: (B,) or None -> (B, D)."""
        valid = history >= 0  # (B, L)
        h = self.item_embedding(history.clamp(min=0))  # (B, L, D)
        h = self.dropout(h) * valid.unsqueeze(-1)
        count = valid.sum(1, keepdim=True).clamp(min=1)  # (B, 1)
        pooled = h.sum(1) / count  # (B, D) masked mean
        if self.pooling == "attention":
            L = history.shape[1]
            hp = h + self.position.weight[:L].unsqueeze(0)  # (B, L, D) add recency
            score = torch.tanh(self.attn_key(hp)) @ self.attn_query  # (B, L)
            score = score.masked_fill(~valid, float("-inf"))
            weight = torch.softmax(score, dim=1).nan_to_num(0.0)  # rows with no history -> 0
            pooled = pooled + (weight.unsqueeze(-1) * hp).sum(1)  # (B, D)
        if self.user_embedding is not None:
            if user_index is None:
                raise ValueError("this UserTower has a user-ID embedding: pass user_index")
            pooled = pooled + self.user_embedding(user_index + 1)  # -1 -> fallback row 0
        x = self.mlp(self.project(pooled))
        return F.normalize(x, dim=-1) if self.normalize else x
