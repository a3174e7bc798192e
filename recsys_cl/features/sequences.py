"""Users' click sequences as flat arrays, and vectorised history windows.

Clicks are sorted by (user, timestamp, row_order). For a click at flat position p, its history
is the clicks at p-1, p-2, ... within the same user: strictly earlier in that order, never later.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys_cl.features.vocab import Vocab


@dataclass(frozen=True)
class Sequences:
    """Flat, time-ordered click arrays.

    Attributes:
        user_ids: (n,) original user id per click.
        user_index: (n,) index into the user vocab (-1 when the user is unknown to it).
        item_index: (n,) catalogue index per click (-1 for items outside the catalogue).
        start: (n,) flat position of the first click of the same user.
    """

    user_ids: np.ndarray
    user_index: np.ndarray
    item_index: np.ndarray
    start: np.ndarray

    @classmethod
    def from_clicks(cls, clicks: pl.DataFrame, items: Vocab, users: Vocab) -> "Sequences":
        df = clicks.select("user_id", "item_id", "timestamp", "row_order").sort(
            "user_id", "timestamp", "row_order"
        )
        uid = df["user_id"].to_numpy()
        n = len(uid)
        new_user = np.ones(n, dtype=bool)
        if n > 1:
            new_user[1:] = uid[1:] != uid[:-1]
        start = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
        return cls(uid, users.encode(df["user_id"]), items.encode(df["item_id"]), start)

    def __len__(self) -> int:
        return len(self.item_index)

    def history_before(self, pos: np.ndarray, length: int) -> np.ndarray:
        """(B, L) items at positions pos-1, pos-2, ... of the same user as ``pos``; -1 padded."""
        return self._gather(pos, self.start[pos], length)

    def _gather(self, end: np.ndarray, first: np.ndarray, length: int) -> np.ndarray:
        """(B, L) items at end-1, end-2, ..., end-L that are >= first; -1 elsewhere."""
        pos = end[:, None] - np.arange(1, length + 1)[None, :]  # (B, L)
        valid = pos >= first[:, None]
        out = np.where(valid, self.item_index[np.clip(pos, 0, max(len(self) - 1, 0))], -1)
        return out.astype(np.int64)

    def training_positions(self, min_history: int = 1) -> np.ndarray:
        """Flat positions of clicks usable as targets: catalogue item, >= min_history earlier clicks."""
        p = np.arange(len(self))
        return p[(self.item_index >= 0) & (p - self.start >= min_history)]

    def last_windows(self, user_ids: np.ndarray, length: int) -> np.ndarray:
        """(U, L) most recent history of each given user (all of their clicks here); -1 padded."""
        n = len(self)
        if n == 0:
            return np.full((len(user_ids), length), -1, dtype=np.int64)
        is_last = np.ones(n, dtype=bool)
        is_last[:-1] = self.user_ids[1:] != self.user_ids[:-1]
        last_pos = np.nonzero(is_last)[0]
        last_uid = self.user_ids[last_pos]  # sorted (clicks are sorted by user)
        where = np.searchsorted(last_uid, user_ids)
        where_c = np.minimum(where, len(last_uid) - 1)
        found = last_uid[where_c] == user_ids
        last = last_pos[where_c]
        out = self._gather(last + 1, self.start[last], length)
        out[~found] = -1
        return out
