"""Item text for the text encoder: one string per item, built from the item table's columns.

Example (MovieLens ``ml-latest-small``, columns title / genres / tags)::

    item_texts(items)[0]
    # 'Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy. Tags: fun, pixar'

The ``title`` column is written as is; every other column as ``"<Name>: <value>"``, list columns
joined with ", ". Null, empty and ``(no genres listed)`` values are left out, and so is a part that
ends up empty. SimCSE's two "views" of a text are the same string passed twice through the encoder
with different dropout masks (see :mod:`recsys_cl.pretrain.simcse`), so no text augmentation lives here.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from recsys_cl.data.errors import DataError

DEFAULT_TEXT_COLUMNS = ("title", "genres", "tags")
PLACEHOLDERS = ("", "(no genres listed)")
"""Values that carry no information and are dropped (MovieLens writes the second for no genres)."""


def item_texts(
    items: pl.DataFrame, columns: Sequence[str] = DEFAULT_TEXT_COLUMNS, key: str = "data.text_columns"
) -> list[str]:
    """One text per row of ``items`` (same order), from ``columns`` in the order given.

    Args:
        items: the item table, e.g. ``ClickLog.items``: String and List(String) columns (other
            types are cast to String).
        columns: which columns to use; ``title`` unlabelled, the others as ``"Name: value"``.
        key: the config key that sets ``columns``, named in errors.

    Raises:
        DataError: a configured column is not in the table, or ``columns`` is empty.
    """
    if not columns:
        raise DataError(f"no text columns configured; choose {key} from {items.columns}")
    missing = [c for c in columns if c not in items.columns]
    if missing:
        raise DataError(
            f"item table has no column(s) {missing} configured as text (found columns {items.columns}); "
            f"choose {key} from the columns found"
        )
    parts = [_labelled(c, items.schema[c]) for c in columns]
    return items.select(pl.concat_str(parts, separator=". ", ignore_nulls=True).fill_null("")).to_series().to_list()


def _labelled(column: str, dtype: pl.DataType) -> pl.Expr:
    """The column as a String expression, null where it holds nothing; labelled unless it is the title."""
    if isinstance(dtype, pl.List):
        value = pl.col(column).list.eval(
            pl.element().cast(pl.String).str.strip_chars().filter(~pl.element().is_in(PLACEHOLDERS))
        ).list.join(", ")
    else:
        value = pl.col(column).cast(pl.String).str.strip_chars()
    value = pl.when(value.is_in(PLACEHOLDERS)).then(None).otherwise(value)
    if column == "title":
        return value
    return pl.lit(column.replace("_", " ").capitalize() + ": ") + value
