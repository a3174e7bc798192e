"""Item tower: a sum of per-input encoders -> optional MLP -> (L2-normalised) embedding.

Letters: B batch, M catalogue size, G max genres per item, D embedding dim.

Every encoder maps item indices ``(B,)`` to ``(B, D)``; the tower sums them. Content encoders
(text, image) plug in as further entries of ``encoders`` without touching the rest.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mlp(dim: int, hidden_dims: Sequence[int], dropout: float) -> nn.Module:
    """A residual-free MLP ``D -> hidden... -> D``; identity when ``hidden_dims`` is empty."""
    if not hidden_dims:
        return nn.Identity()
    layers: list[nn.Module] = []
    prev = dim
    for h in hidden_dims:
        layers += [nn.Linear(prev, h), nn.GELU(), nn.Dropout(dropout)]
        prev = h
    layers.append(nn.Linear(prev, dim))
    return nn.Sequential(*layers)


class IdEncoder(nn.Module):
    """One learned vector per item seen in training; zero for items never clicked.

    Args:
        known: (M,) bool, True for items with training clicks. Unknown items' rows start at zero
            and are masked in ``forward``, so a cold item's embedding comes from content alone.
        dropout: training only, probability of zeroing an item's whole vector (DropoutNet), so
            the other encoders learn to stand in for it, as they must for cold items.
    """

    def __init__(self, num_items: int, dim: int, known: Tensor | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout
        self.embedding = nn.Embedding(num_items, dim)
        nn.init.normal_(self.embedding.weight, std=0.1)
        known = torch.ones(num_items, dtype=torch.bool) if known is None else known.bool()
        self.register_buffer("known", known)
        with torch.no_grad():
            self.embedding.weight[~known] = 0.0  # also what the user tower sees when sharing

    def forward(self, item_index: Tensor) -> Tensor:
        """item_index: (B,) int64 -> (B, D)."""
        known: Tensor = self.known  # type: ignore[assignment]
        keep = known[item_index]  # (B,)
        if self.training and self.dropout > 0:
            keep = keep & (torch.rand(item_index.shape, device=item_index.device) >= self.dropout)
        return self.embedding(item_index) * keep.unsqueeze(-1)


class CategoricalEncoder(nn.Module):
    """Mean of the embeddings of an item's categorical values (e.g. its genres).

    Args:
        value_index: (M, G) int64, the item's values padded with -1 (held as a buffer so it
            travels with the state dict and the device).
        num_values: size of the value vocabulary.
    """

    def __init__(self, value_index: Tensor, num_values: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("value_index", value_index.long() + 1)  # 0 = padding
        self.embedding = nn.Embedding(num_values + 1, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.1)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def forward(self, item_index: Tensor) -> Tensor:
        """item_index: (B,) int64 -> (B, D); items with no values get a zero vector."""
        value_index: Tensor = self.value_index  # type: ignore[assignment]
        values = value_index[item_index]  # (B, G)
        summed = self.embedding(values).sum(1)  # (B, D); padding rows are zero
        count = (values > 0).sum(1, keepdim=True).clamp(min=1)  # (B, 1)
        return summed / count


class ItemTower(nn.Module):
    """Sum of encoders, then MLP, then optional L2 normalisation. Returns embeddings only."""

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        dim: int,
        hidden_dims: Sequence[int] = (),
        dropout: float = 0.0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if not encoders:
            raise ValueError("ItemTower needs at least one encoder (e.g. 'id')")
        self.encoders = nn.ModuleDict(dict(encoders))
        self.mlp = mlp(dim, hidden_dims, dropout)
        self.normalize = normalize
        self.dim = dim

    def forward(self, item_index: Tensor) -> Tensor:
        """item_index: (B,) int64 catalogue indices -> (B, D) item embeddings."""
        x = sum(enc(item_index) for enc in self.encoders.values())  # (B, D)
        x = self.mlp(x)
        return F.normalize(x, dim=-1) if self.normalize else x
