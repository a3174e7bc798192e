import numpy as np
import polars as pl

from recsys_cl.features.sequences import Sequences
from recsys_cl.features.vocab import Vocab


def _clicks() -> pl.DataFrame:
    # user 1 clicks 10,11,12 at t=1,2,3 (rows given out of order); user 2 clicks 10, 13.
    return pl.DataFrame({
        "user_id": [1, 2, 1, 1, 2],
        "item_id": [12, 10, 10, 11, 13],
        "timestamp": [3, 1, 1, 2, 2],
        "row_order": [0, 1, 2, 3, 4],
    })


def test_windows_are_strictly_earlier_same_user() -> None:
    c = _clicks()
    s = Sequences.from_clicks(c, Vocab.from_values(c["item_id"]), Vocab.from_values(c["user_id"]))
    # flat order: u1: 10,11,12 | u2: 10,13 ; item indices 10->0, 11->1, 12->2, 13->3
    assert list(s.item_index) == [0, 1, 2, 0, 3]
    assert list(s.training_positions()) == [1, 2, 4]
    w = s.history_before(np.array([2, 4, 3]), 2)
    assert w.tolist() == [[1, 0], [0, -1], [-1, -1]]  # never crosses into another user


def test_ties_broken_by_row_order() -> None:
    c = pl.DataFrame({"user_id": [1, 1], "item_id": [5, 6], "timestamp": [7, 7], "row_order": [1, 0]})
    s = Sequences.from_clicks(c, Vocab.from_values(c["item_id"]), Vocab.from_values(c["user_id"]))
    assert list(s.item_index) == [1, 0]  # row_order 0 (item 6) comes first


def test_last_windows_for_known_and_unknown_users() -> None:
    c = _clicks()
    s = Sequences.from_clicks(c, Vocab.from_values(c["item_id"]), Vocab.from_values(c["user_id"]))
    w = s.last_windows(np.array([2, 9, 1]), 3)
    assert w.tolist() == [[3, 0, -1], [-1, -1, -1], [2, 1, 0]]


def test_out_of_catalogue_items_are_padding() -> None:
    c = _clicks()
    items = Vocab.from_values([10, 11])  # 12 and 13 unknown
    s = Sequences.from_clicks(c, items, Vocab.from_values(c["user_id"]))
    assert list(s.item_index) == [0, 1, -1, 0, -1]
    assert list(s.training_positions()) == [1]  # unknown targets are not trained on
