"""TwoTower: a user tower and an item tower. ``forward`` returns embeddings, never a loss."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from recsys_cl.config import CONTENT_ENCODERS, ItemTowerConfig, ModelConfig, UserTowerConfig
from recsys_cl.data.errors import DataError
from recsys_cl.features.spec import FeatureSpec
from recsys_cl.towers.content import content_encoder
from recsys_cl.towers.item_tower import CategoricalEncoder, IdEncoder, ItemTower
from recsys_cl.towers.user_tower import UserTower


class TwoTower(nn.Module):
    def __init__(self, user_tower: UserTower, item_tower: ItemTower) -> None:
        super().__init__()
        self.user_tower = user_tower
        self.item_tower = item_tower

    def forward(
        self, history: Tensor, user_index: Tensor | None, item_index: Tensor
    ) -> tuple[Tensor, Tensor]:
        """history: (B, L), user_index: (B,) | None, item_index: (C,) -> ((B, D), (C, D))."""
        return self.user_tower(history, user_index), self.item_tower(item_index)


def build_two_tower(
    spec: FeatureSpec, model: ModelConfig, user: UserTowerConfig, item: ItemTowerConfig
) -> TwoTower:
    """Build both towers from a feature spec and config sections (plain arguments inside)."""
    dim = model.embedding_dim
    encoders: dict[str, nn.Module] = {}
    if "id" in item.encoders:
        encoders["id"] = IdEncoder(spec.num_items, dim, torch.from_numpy(spec.item_counts > 0), item.id_dropout)
    if "categorical" in item.encoders:
        if len(spec.genres) == 0:
            raise DataError(
                "item_tower.encoders includes 'categorical' but the item table has no genres "
                "(no 'genres' column, or it is empty); remove 'categorical' from "
                "item_tower.encoders or provide an item table with a genres column"
            )
        encoders["categorical"] = CategoricalEncoder(
            torch.from_numpy(spec.item_genres), len(spec.genres), dim
        )
    for name in CONTENT_ENCODERS:
        if name in item.encoders:
            encoders[name] = content_encoder(name, spec.content, spec.content_meta, dim)
    item_tower = ItemTower(encoders, dim, item.hidden_dims, item.dropout, model.normalize)
    table: nn.Embedding
    if user.share_item_embeddings and isinstance(encoders.get("id"), IdEncoder):
        table = encoders["id"].embedding  # type: ignore[assignment]
    else:
        table = nn.Embedding(spec.num_items, dim)
        nn.init.normal_(table.weight, std=0.1)
    user_tower = UserTower(
        table,
        dim,
        user.history_length,
        user.pooling,
        num_users=len(spec.users) if user.use_user_id else 0,
        hidden_dims=user.hidden_dims,
        dropout=user.dropout,
        normalize=model.normalize,
    )
    return TwoTower(user_tower, item_tower)
