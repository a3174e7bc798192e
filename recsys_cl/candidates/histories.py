"""Per-user inputs of a run: history windows (the user tower's input) and seen sets (filtered out).

A user's history is all of their clicks up to the end of the run date, time-ordered.

Letters: U users, L history length, S seen clicks in total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from recsys_cl.candidates.window import DAY, CandidatesError, Window
from recsys_cl.features.sequences import Sequences
from recsys_cl.features.spec import FeatureSpec
from recsys_cl.features.vocab import Vocab


def check_clicks(history: pl.DataFrame, spec: FeatureSpec, window: Window) -> dict[str, float]:
    """What the model can read of the window's clicks; refuse clicks from another id space.

    Args:
        history: clicks up to the end of the run date (``user_id``, ``item_id``, ``timestamp``).
        window: the run's active-user window.

    Returns:
        ``{"window_clicks", "known_item_share", "clicks_on_run_date"}``: clicks in the window, the
        share of them on items the model knows (others cannot feed the user tower), and clicks on
        the run date itself (0 = the click log may be late).

    Raises:
        CandidatesError: id columns of another type than the model's vocabularies (integer or
            string ids, as trained), or no click of the window on an item the model knows (the wrong
            data set or id space).
    """
    for col, vocab in (("user_id", spec.users), ("item_id", spec.items)):
        got, want = history.schema[col], vocab.ids.dtype
        trained_on_strings = want.kind in "UO"  # a saved String vocabulary loads back as numpy objects
        if (got == pl.String) != trained_on_strings:
            raise CandidatesError(
                f"the click log's {col} column holds {got} ids but the model was trained on "
                f"{'string' if trained_on_strings else want} ids; "
                f"point data.path at clicks in the model's id space (or cast {col} to the training type)"
            )
    recent = history.filter(pl.col("timestamp") >= window.start)
    known = spec.items.encode(recent["item_id"]) >= 0  # (N,)
    if recent.height and not known.any():
        sample = recent["item_id"].unique().head(3).to_list()
        raise CandidatesError(
            f"none of the {recent.height} clicks in the window {window} is on an item the model knows "
            f"(e.g. item ids {sample}; the model has {len(spec.items)} items such as {spec.items.ids[:3].tolist()}); "
            "these clicks come from another data set or id space: check data.path"
        )
    on_day = int((recent["timestamp"] >= window.end - DAY).sum())
    return {"window_clicks": float(recent.height), "known_item_share": float(known.mean()) if len(known) else 1.0,
            "clicks_on_run_date": float(on_day)}


@dataclass(frozen=True)
class UserBatch:
    """Inputs for U users.

    Attributes:
        user_ids: (U,) original ids.
        user_index: (U,) user-vocab index (-1 = unknown to the model).
        windows: (U, L) most recent clicked items first (item-vocab indices), -1 padded.
        seen_offsets: (U + 1,) CSR offsets into ``seen_items``.
        seen_items: (S,) item-vocab indices each user clicked up to the run date.
    """

    user_ids: np.ndarray
    user_index: np.ndarray
    windows: np.ndarray
    seen_offsets: np.ndarray
    seen_items: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)


class UserHistories:
    """Time-ordered clicks (up to the run date) with per-user offsets, for chunked lookups."""

    def __init__(self, clicks: pl.DataFrame, spec: FeatureSpec) -> None:
        self.spec = spec
        self.seq = Sequences.from_clicks(clicks, spec.items, spec.users)
        uid = self.seq.user_ids
        n = len(uid)
        is_first = np.ones(n, dtype=bool)
        if n > 1:
            is_first[1:] = uid[1:] != uid[:-1]
        self.first = np.nonzero(is_first)[0]  # (U_all,)
        self.end = np.append(self.first[1:], n)  # (U_all,) exclusive
        self.users = uid[self.first]  # (U_all,) sorted

    def batch(self, user_ids: np.ndarray, length: int) -> UserBatch:
        """Inputs for ``user_ids`` (each must have clicks here)."""
        user_ids = np.asarray(user_ids)
        pos = np.minimum(np.searchsorted(self.users, user_ids), max(len(self.users) - 1, 0))
        if len(user_ids) and (len(self.users) == 0 or not np.array_equal(self.users[pos], user_ids)):
            raise CandidatesError("some users have no clicks up to the run date")
        windows, offsets, seen = _windows_and_seen(self.seq.item_index, self.first[pos], self.end[pos], length)
        return UserBatch(
            user_ids=user_ids,
            user_index=self.spec.users.encode(user_ids),
            windows=windows,
            seen_offsets=offsets,
            seen_items=seen,
        )


def batch_from_lists(histories: Any, items: Vocab, length: int) -> UserBatch:
    """Inputs for one list of item ids per row (oldest first), e.g. a serving request's ``history`` column.

    Unlike :meth:`UserHistories.batch` the rows are anonymous (``user_index`` -1): the user tower reads
    only the last ``length`` items, but every item of a row is in its seen set, so none is recommended
    back. Ids the model does not know are -1 in the window and left out of the seen set; a missing
    (null) row is an empty history.

    Args:
        histories: a sequence of U lists / arrays of item ids (a pandas Series, a list, an Arrow list
            array), in the id type of ``items``.

    Raises:
        TypeError: ids of another type than the vocabulary's (e.g. strings for a model of integer ids).
    """
    lists = histories if isinstance(histories, (pa.Array, pa.ChunkedArray)) else pa.array(histories)
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    if pa.types.is_null(lists.type):  # no rows, or only missing ones
        lists = lists.cast(pa.list_(pa.int64()))
    if not pa.types.is_list(lists.type) and not pa.types.is_large_list(lists.type):
        raise TypeError(f"each history must be a list of item ids, got {lists.type} values")
    offsets = lists.offsets.to_numpy().astype(np.int64)  # (U + 1,)
    offsets -= offsets[0]
    raw = lists.flatten().to_numpy(zero_copy_only=False)  # (C,)
    if len(raw) == 0:
        index = np.zeros(0, dtype=np.int64)
    else:  # strings arrive as objects; for a <U vocabulary as a <U array of their own width (a cast
        # to the vocabulary's width would cut them), for an object one as they are
        index = items.encode(raw.astype(str) if raw.dtype.kind == "O" and items.ids.dtype.kind == "U" else raw)
    windows, seen_offsets, seen = _windows_and_seen(index, offsets[:-1], offsets[1:], length)
    n = len(offsets) - 1
    return UserBatch(
        user_ids=np.arange(n),
        user_index=np.full(n, -1, dtype=np.int64),
        windows=windows,
        seen_offsets=seen_offsets,
        seen_items=seen,
    )


def _windows_and_seen(
    item_index: np.ndarray, first: np.ndarray, end: np.ndarray, length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's window and seen set from their clicks ``item_index[first[u]:end[u]]`` (time-ordered).

    Args:
        item_index: (C_all,) item-vocab indices, -1 outside the vocabulary.
        first, end: (U,) each user's first and one-past-last position in ``item_index``.

    Returns:
        (windows (U, L) most recent first, -1 padded; seen_offsets (U + 1,); seen_items (S,)).
    """
    # a user without clicks reads a value that np.where discards; only an empty array needs a stand-in
    src = item_index if len(item_index) else np.full(1, -1, dtype=np.int64)
    # (U, L): positions end-1, end-2, ... down to the user's first click (as Sequences.last_windows)
    p = end[:, None] - np.arange(1, length + 1)[None, :]
    windows = np.where(p >= first[:, None], src[np.clip(p, 0, None)], -1).astype(np.int64)
    counts = end - first  # (U,) clicks per user
    row = np.repeat(np.arange(len(first)), counts)  # (C,)
    flat = np.repeat(first, counts) + (np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts))
    items = src[flat]  # (C,)
    keep = items >= 0
    offsets = np.zeros(len(first) + 1, dtype=np.int64)
    np.cumsum(np.bincount(row[keep], minlength=len(first)), out=offsets[1:])
    return windows, offsets, items[keep].astype(np.int64)
