from pathlib import Path

import pytest

from recsys_cl.data.books import load_book_titles
from recsys_cl.data.errors import DataError

BUNDLED = Path(__file__).resolve().parents[2] / "data" / "goodbooks-10k" / "books.csv"


def test_titles_with_year_and_authors(tmp_path: Path) -> None:
    f = tmp_path / "books.csv"
    f.write_text(
        "book_id,authors,original_publication_year,title\n"
        '1,Suzanne Collins,2008.0,"The Hunger Games (The Hunger Games, #1)"\n'
        "2,Homer,-750.0,The Iliad\n"
        "3,,,Untitled Notes\n"
        "4,Nobody,1999.0,\n"
    )
    assert load_book_titles(f) == [
        "The Hunger Games (The Hunger Games, #1) (2008). Authors: Suzanne Collins",
        "The Iliad. Authors: Homer",  # no positive year: left out
        "Untitled Notes",
    ]  # the row without a title is dropped


def test_title_only_file(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("title\nA\nB\n")
    assert load_book_titles(tmp_path / "t.csv") == ["A", "B"]


def test_missing_file_and_column(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist.*data.extra_text"):
        load_book_titles(tmp_path / "nope.csv")
    (tmp_path / "b.csv").write_text("book_id,name\n1,x\n")
    with pytest.raises(DataError, match=r"missing column 'title' \(found columns \['book_id', 'name'\]\)"):
        load_book_titles(tmp_path / "b.csv")


@pytest.mark.skipif(not BUNDLED.is_file(), reason=f"{BUNDLED} not present")
def test_bundled_goodbooks_titles() -> None:
    titles = load_book_titles(BUNDLED)
    assert len(titles) == 10000
    assert titles[0] == "The Hunger Games (The Hunger Games, #1) (2008). Authors: Suzanne Collins"
    assert BUNDLED.read_text().splitlines()[0] == "book_id,authors,original_publication_year,title"
