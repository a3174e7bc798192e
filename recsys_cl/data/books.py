"""Book titles of goodbooks-10k (``data/goodbooks-10k/books.csv``) as extra unlabelled text.

Example::

    load_book_titles("data/goodbooks-10k/books.csv")[0]
    # 'The Hunger Games (The Hunger Games, #1) (2008). Authors: Suzanne Collins'

Source, licence (CC BY-SA 4.0) and what was changed: ``data/goodbooks-10k/README.md``.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys_cl.data.errors import DataError


def load_book_titles(path: str | Path) -> list[str]:
    """One text per book: ``"<title> (<year>). Authors: <authors>"``, in file order.

    ``title`` is required; ``original_publication_year`` (left out when null or not a positive
    year) and ``authors`` are used when present. Rows without a title are dropped.

    Raises:
        DataError: the file is missing or unreadable, or has no ``title`` column.
    """
    return read_book_table(path)["text"].to_list()


def read_book_table(path: str | Path) -> pl.DataFrame:
    """``load_book_titles`` as a table, in file order: ``title`` (the file's title, stripped), ``heading``
    (title and year, as the text starts) and ``text``.

    The raw title lets a caller drop rows that name something held out (``load_simcse_data``).

    Raises:
        DataError: the file is missing or unreadable, or has no ``title`` column.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"book titles file {str(p)!r} does not exist (working directory {str(Path.cwd())!r}); point "
            "data.extra_text at goodbooks-10k's books.csv (shipped as data/goodbooks-10k/books.csv), or set it to null"
        )
    try:
        books = pl.read_csv(p, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{p} could not be parsed as CSV ({reason}); expected goodbooks-10k's books.csv") from e
    if "title" not in books.columns:
        raise DataError(
            f"{p}: missing column 'title' (found columns {books.columns}); expected goodbooks-10k's books.csv "
            "header with at least title (and optionally authors, original_publication_year)"
        )
    title = pl.col("title").str.strip_chars()
    if "original_publication_year" in books.columns:
        year = pl.col("original_publication_year").cast(pl.Float64, strict=False)
        year_text = pl.when(year > 0).then(pl.format(" ({})", year.cast(pl.Int64)))
        title = pl.concat_str([title, year_text], ignore_nulls=True)
    parts = [title]
    if "authors" in books.columns:
        parts.append(pl.lit("Authors: ") + pl.col("authors").str.strip_chars())
    return books.filter(pl.col("title").str.strip_chars().str.len_chars() > 0).select(
        pl.col("title").str.strip_chars(), title.alias("heading"),
        pl.concat_str(parts, separator=". ", ignore_nulls=True).alias("text"),
    )
