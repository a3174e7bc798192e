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


def test_numpy_unicode_values_encode_against_a_loaded_string_vocabulary(tmp_path) -> None:
    """A saved vocabulary of strings loads back as Python objects; an index returns its string ids as
    numpy unicode: the two are the same id type (encoding them raised 'holds object ids but got <U')."""
    v = Vocab.load(Vocab.from_values(["b", "a", "ccc"], name="item_id").save(tmp_path / "v.parquet"))
    assert v.ids.dtype.kind == "O"
    values = np.array(["ccc", "", "a", "cc", "cccc", "b"])
    for _ in range(2):  # the unicode copy of the ids is made once, then reused
        assert list(v.encode(values)) == [2, -1, 0, -1, -1, 1]
    assert list(v.encode(values.astype(object))) == [2, -1, 0, -1, -1, 1]
    assert list(Vocab(np.array(["a", "b"])).encode(np.array(["b", "bb"], dtype=object))) == [1, -1]
    with pytest.raises(TypeError, match="same id type"):
        v.encode(np.array([1]))


def test_type_mismatch_is_clear() -> None:
    v = Vocab.from_values([1, 2])
    with pytest.raises(TypeError, match="same id type"):
        v.encode(np.array(["1"]))


def _encode_by_search(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The binary-search encode, as a reference for the lookup-table path."""
    pos = np.minimum(np.searchsorted(ids, values), len(ids) - 1)
    return np.where(ids[pos] == values, pos, -1).astype(np.int64)


@pytest.mark.parametrize("id_dtype", [np.int64, np.int32, np.uint32])
@pytest.mark.parametrize("value_dtype", [np.int64, np.int32, np.uint64])
def test_encode_lookup_table_matches_binary_search(id_dtype: type, value_dtype: type) -> None:
    rng = np.random.default_rng(0)
    ids = np.unique(rng.integers(5, 5000, 700)).astype(id_dtype)
    v = Vocab(ids)
    values = np.concatenate([rng.integers(0, 5100, 20_000), ids[[0, -1]], [4, 5001]])
    values = values.astype(value_dtype)
    for _ in range(2):  # the first large encode builds the table, the second reuses it
        got = v.encode(values)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, _encode_by_search(ids, values))
    assert (v._table is not None) == (value_dtype != np.uint64)
    small = values[:3]  # a small encode on a fresh vocab keeps the binary search
    fresh = Vocab(ids)
    np.testing.assert_array_equal(fresh.encode(small), _encode_by_search(ids, small))
    assert fresh._table is None


def test_encode_lookup_table_extremes_and_pickle() -> None:
    import pickle

    big = np.iinfo(np.int64)
    v = Vocab(np.array([big.max - 2, big.max], dtype=np.int64))
    values = np.array([big.min, -1, 0, big.max - 2, big.max - 1, big.max] * 10, dtype=np.int64)
    np.testing.assert_array_equal(v.encode(values), np.tile([-1, -1, -1, 0, -1, 1], 10))
    assert v._table is not None
    v2 = pickle.loads(pickle.dumps(v))
    assert v2._table is None and list(v2.encode(values[:6])) == [-1, -1, -1, 0, -1, 1]
