"""FeatureSpec: the vocabularies and item-aligned feature arrays the towers are built from.

``items`` holds every known item: clicked in training or listed in the item table. The
*catalogue* the evaluation protocol ranks is the subset with at least one training click; items
never clicked still get an embedding from their content (genres now, text/images later), which is
what the index and cold-start need.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys_cl.data.errors import DataError
from recsys_cl.features.vocab import Vocab


@dataclass(frozen=True)
class FeatureSpec:
    """Everything needed to rebuild the towers' input layers, and saved beside a checkpoint.

    Attributes:
        items: every known item (M items): clicked in training or in the item table.
        users: vocabulary of users with training clicks.
        genres: vocabulary of categorical values (empty when the item table has none).
        item_genres: (M, G) int64 genre indices per item, padded with -1.
        item_counts: (M,) int64 training clicks per item (0 = never clicked in training).
        content: item-aligned content arrays, row i = item i: frozen encoder outputs
            (``text``/``image``: (M, F) float32) or raw inputs of fine-tuned encoders (``text_ids``,
            ``text_mask``: (M, L); ``image_pixels``: (M, C, H, W) uint8). See
            :mod:`recsys_cl.towers.content`.
        content_meta: per content encoder: mode (frozen | trainable), source, feature_dim, architecture.
        train_clicks_until: unix seconds of the last training click (None: a spec saved before it
            was recorded). Serving on an earlier date means the model has seen that date's future.
    """

    items: Vocab
    users: Vocab
    genres: Vocab
    item_genres: np.ndarray
    item_counts: np.ndarray
    content: dict[str, np.ndarray] = field(default_factory=dict)
    content_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_clicks_until: int | None = None

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def catalogue(self) -> np.ndarray:
        """(M_cat,) indices into ``items`` of the items with >= 1 training click, ascending."""
        return np.nonzero(self.item_counts > 0)[0]

    @property
    def cold_items(self) -> np.ndarray:
        """(M_cold,) indices into ``items`` of the items without training clicks, ascending."""
        return np.nonzero(self.item_counts == 0)[0]

    @property
    def catalogue_vocab(self) -> Vocab:
        """Vocabulary of the ranked catalogue; its index j is ``items`` index ``catalogue[j]``."""
        return Vocab(self.items.ids[self.catalogue], name=self.items.name)

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.items.save(d / "items.parquet")
        self.users.save(d / "users.parquet")
        self.genres.save(d / "genres.parquet")
        np.save(d / "item_genres.npy", self.item_genres)
        np.save(d / "item_counts.npy", self.item_counts)
        for name, arr in self.content.items():
            np.save(d / f"content_{name}.npy", arr)
        (d / "spec.json").write_text(json.dumps({
            "num_items": self.num_items, "content": sorted(self.content), "content_meta": self.content_meta,
            "train_clicks_until": self.train_clicks_until,
        }))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "FeatureSpec":
        d = Path(directory)
        if not (d / "spec.json").is_file():
            raise FileNotFoundError(f"{d} holds no feature spec (spec.json missing)")
        info = json.loads((d / "spec.json").read_text())
        return cls(
            items=Vocab.load(d / "items.parquet"),
            users=Vocab.load(d / "users.parquet"),
            genres=Vocab.load(d / "genres.parquet"),
            item_genres=np.load(d / "item_genres.npy"),
            item_counts=np.load(d / "item_counts.npy"),
            content={name: np.load(d / f"content_{name}.npy") for name in info.get("content", [])},
            content_meta=info.get("content_meta", {}),
            train_clicks_until=info.get("train_clicks_until"),
        )


def build_feature_spec(
    train: pl.DataFrame, items: pl.DataFrame | None, genre_column: str = "genres"
) -> FeatureSpec:
    """Vocabularies from the training clicks and the item table; genres when the table has them."""
    if train.height == 0:
        raise DataError("the training split is empty: no clicks to learn from")
    item_ids = train["item_id"]
    if items is not None:
        item_ids = pl.concat([item_ids, items["item_id"].cast(item_ids.dtype)])
    item_vocab = Vocab.from_values(item_ids, name="item_id")
    user_vocab = Vocab.from_values(train["user_id"], name="user_id")
    counts = np.bincount(item_vocab.encode(train["item_id"]), minlength=len(item_vocab))
    if items is not None and genre_column in items.columns:
        exploded = (
            items.select("item_id", pl.col(genre_column).alias("g"))
            .explode("g")
            .drop_nulls("g")
        )
        genre_vocab = Vocab.from_values(exploded["g"].cast(pl.String), name="genre")
        row = item_vocab.encode(exploded["item_id"])
        keep = row >= 0
        row = row[keep]
        gidx = genre_vocab.encode(exploded["g"].cast(pl.String))[keep]
        order = np.lexsort((gidx, row))
        row, gidx = row[order], gidx[order]
        width = int(np.bincount(row, minlength=len(item_vocab)).max()) if len(row) else 0
        matrix = np.full((len(item_vocab), max(width, 1)), -1, dtype=np.int64)
        if len(row):
            first = np.searchsorted(row, row)  # start of each row's run
            col = np.arange(len(row)) - first
            matrix[row, col] = gidx
    else:
        genre_vocab = Vocab(np.array([], dtype=str), name="genre")
        matrix = np.full((len(item_vocab), 1), -1, dtype=np.int64)
    until = int(train["timestamp"].max()) if "timestamp" in train.columns else None  # type: ignore[arg-type]
    return FeatureSpec(item_vocab, user_vocab, genre_vocab, matrix, counts.astype(np.int64),
                       train_clicks_until=until)
