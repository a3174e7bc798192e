import numpy as np
import polars as pl
import pytest

from recsys_cl.features.vocab import Vocab


def test_encode_decode_ints_and_unknown() -> None:
    v = Vocab.from_values(pl.Series([30, 10, 20, 10]))
    assert list(v.ids) == [10, 20, 30]
    assert list(v.encode(np.array([20, 99, 10]))) == [1, -1, 0]
    assert list(v.decode(np.array([2, 0]))) == [30, 10]


def test_strings_and_save_load(tmp_path) -> None:
    v = Vocab.from_values(["b", "a", "c"], name="item_id")
    assert list(v.encode(["c", "zz"])) == [2, -1]
    v2 = Vocab.load(v.save(tmp_path / "v.parquet"))
    assert list(v2.ids) == ["a", "b", "c"] and v2.name == "item_id"


def test_type_mismatch_is_clear() -> None:
    v = Vocab.from_values([1, 2])
    with pytest.raises(TypeError, match="same id type"):
        v.encode(np.array(["1"]))
