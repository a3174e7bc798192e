import polars as pl
import pytest

from recsys_cl.data.errors import DataError
from recsys_cl.features.text import item_texts

STR_LIST = pl.List(pl.String)


def _items() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_id": [1, 2, 3, 4],
            "title": ["Toy Story (1995)", "Heat (1995)", None, "  "],
            "genres": [["Adventure", "Animation"], ["(no genres listed)"], ["Drama", ""], []],
            "tags": [["pixar", "fun"], [], None, ["cult"]],
            "release_year": [1995, None, 2001, 1980],
        },
        schema={"item_id": pl.Int64, "title": pl.String, "genres": STR_LIST, "tags": STR_LIST,
                "release_year": pl.Int64},
    )


def test_item_texts_content() -> None:
    assert item_texts(_items()) == [
        "Toy Story (1995). Genres: Adventure, Animation. Tags: pixar, fun",
        "Heat (1995)",  # placeholder genre and empty tags left out
        "Genres: Drama",  # null title, empty genre and null tags left out
        "Tags: cult",  # blank title and empty genres left out
    ]


def test_column_choice_order_and_labels() -> None:
    assert item_texts(_items(), ["tags", "title", "release_year"])[:2] == [
        "Tags: pixar, fun. Toy Story (1995). Release year: 1995",
        "Heat (1995)",
    ]
    assert item_texts(_items(), ["title"]) == ["Toy Story (1995)", "Heat (1995)", "", ""]


def test_genres_as_a_pipe_free_string_column() -> None:
    items = pl.DataFrame({"title": ["A", "B"], "genres": ["Drama", "(no genres listed)"]})
    assert item_texts(items, ["title", "genres"]) == ["A. Genres: Drama", "B"]


def test_missing_column_is_a_clear_error() -> None:
    with pytest.raises(DataError, match=r"no column\(s\) \['plot'\].*found columns \['item_id', 'title', "
                                        r"'genres', 'tags', 'release_year'\].*choose data.text_columns"):
        item_texts(_items(), ["title", "plot"])
    with pytest.raises(DataError, match="no text columns configured"):
        item_texts(_items(), [])
