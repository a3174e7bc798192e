"""Stable id <-> index maps, persisted next to checkpoints.

Ids may be integers or strings; indices are dense ``0 .. len-1`` in sorted-id order, so the same
set of ids always gives the same map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl


class Vocab:
    """A sorted array of unique ids; ``encode`` maps ids to indices (-1 for unknown ids)."""

    def __init__(self, ids: np.ndarray, name: str = "id") -> None:
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"Vocab {name!r}: ids must be 1-D, got shape {ids.shape}")
        if len(ids) > 1 and not np.all(ids[1:] > ids[:-1]):
            raise ValueError(f"Vocab {name!r}: ids must be sorted and unique")
        self.ids = ids
        self.name = name

    @classmethod
    def from_values(cls, values: Any, name: str = "id") -> "Vocab":
        arr = values.to_numpy() if isinstance(values, pl.Series) else np.asarray(values)
        return cls(np.unique(arr), name=name)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Vocab({self.name!r}, size={len(self)})"

    def encode(self, values: Any) -> np.ndarray:
        """Indices of ``values`` as int64, -1 where an id is not in the vocabulary."""
        arr = values.to_numpy() if isinstance(values, pl.Series) else np.asarray(values)
        if len(self.ids) == 0:
            return np.full(len(arr), -1, dtype=np.int64)
        if arr.dtype.kind != self.ids.dtype.kind and not (
            arr.dtype.kind in "iu" and self.ids.dtype.kind in "iu"
        ):
            raise TypeError(
                f"Vocab {self.name!r} holds {self.ids.dtype} ids but got {arr.dtype} values; "
                "clicks and items must use the same id type"
            )
        pos = np.searchsorted(self.ids, arr)
        pos_c = np.minimum(pos, len(self.ids) - 1)
        found = self.ids[pos_c] == arr
        return np.where(found, pos_c, -1).astype(np.int64)

    def decode(self, index: np.ndarray) -> np.ndarray:
        return self.ids[np.asarray(index, dtype=np.int64)]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        pl.DataFrame({self.name: self.ids}).write_parquet(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        df = pl.read_parquet(path)
        return cls(df.to_series(0).to_numpy(), name=df.columns[0])
