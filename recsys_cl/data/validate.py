"""Validation of click logs and item tables at the boundary.

Each check raises :class:`DataError` naming the file, the column, how many rows are affected, an
example row (with its line number when known) and the fix. Raw polars errors never reach callers.
"""

from __future__ import annotations

import logging
import time
from typing import Mapping

import polars as pl

from recsys_cl.data.errors import DataError

log = logging.getLogger(__name__)

MS_THRESHOLD = 1e11
"""Numeric timestamps above this are milliseconds (1e11 s is the year 5138; 1e11 ms is 1973)."""
YEAR_1970_END = 365 * 86400
"""Unix seconds at 1971-01-01: a log whose numeric timestamps all fall before it is likely dates as
YYYYMMDD integers (20200102 s is 1970-08-22) or days since 1970, not seconds."""
RESERVED_ITEM_ID = -1
"""An integer item id the ANN index uses to pad short results (``recsys_cl.index.base.SENTINEL_ID``)."""
KEYS = ("user_id", "item_id", "timestamp")
LINE = "_line"  # internal: 1-based line of each row in its file, for error messages


def _fail(
    df: pl.DataFrame, bad: pl.Series, file: str, column: str, problem: str, fix: str,
    names: Mapping[str, str] | None = None,
) -> None:
    """Raise a DataError about the rows of ``df`` where ``bad`` is true (no-op when none are)."""
    bad = bad.fill_null(False)
    n = int(bad.sum())
    if n == 0:
        return
    i = int(bad.arg_true()[0])
    row = df.row(i, named=True)
    names = names or {}
    where = f"line {row[LINE]}" if LINE in row else _row_where(row.get("row_order", i))
    example = ", ".join(f"{names.get(k, k)}={_short_repr(v)}" for k, v in row.items() if k not in (LINE, "row_order"))
    raise DataError(
        f"{file}: column {column!r} has {n} {problem} out of {df.height} rows "
        f"(first at {where}: {example}); {fix}"
    )


def _row_where(row: int) -> str:
    """Where a row of a Parquet file (no line numbers) is: its 0-based index, as polars and pandas
    number rows, said so beside CSV errors' 1-based ``line N``."""
    return f"row {row} (counting from 0)"


def _short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a field of binary or a whole swallowed file must
    not flood the message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...(cut)"


def validate_clicks(
    df: pl.DataFrame,
    source: str,
    *,
    names: Mapping[str, str] | None = None,
    timestamp_unit: str = "auto",
    drop_duplicates: bool = False,
    integer_ids: bool = False,
    numeric_timestamps: bool = False,
) -> pl.DataFrame:
    """Check a click frame against the :class:`ClickLog` contract and normalise its dtypes.

    Args:
        df: clicks with contract column names (``user_id``, ``item_id``, ``timestamp``, optional
            ``rating`` / ``event_type`` / ``row_order``); values may still be strings.
        source: the file name used in error messages.
        names: contract column -> column name in the file, for error messages.
        timestamp_unit: ``auto`` (values > 1e11 are milliseconds), ``s`` or ``ms``.
        drop_duplicates: drop repeated (user, item, timestamp) rows instead of raising.
        integer_ids: ids must be integers (MovieLens); otherwise string ids stay String.
        numeric_timestamps: timestamps must be numbers; otherwise date strings are parsed too.

    Returns:
        The contract frame: user_id, item_id, timestamp (Int64 s), [rating], [event_type], row_order.

    Raises:
        DataError: naming the file, column, number of bad rows, an example row and the fix.
    """
    out = _validate_clicks(df, source, names or {}, timestamp_unit, drop_duplicates, integer_ids,
                           numeric_timestamps)
    return out.drop(LINE, strict=False)


def _validate_clicks(
    df: pl.DataFrame, file: str, names: Mapping[str, str], unit: str, drop_duplicates: bool,
    integer_ids: bool, numeric_timestamps: bool,
) -> pl.DataFrame:
    names = {k: names.get(k, k) for k in (*KEYS, "rating", "event_type")}
    missing = [k for k in KEYS if k not in df.columns]
    if missing:
        raise DataError(f"{file}: missing column(s) {missing} (found columns {df.columns}); "
                        "rename them to user_id, item_id, timestamp")
    if df.height == 0:
        raise DataError(f"{file} is empty (zero click rows); point data.path at a non-empty click log")
    if "row_order" not in df.columns:
        df = df.with_row_index("row_order")
    df = df.with_columns(pl.col("row_order").cast(pl.Int64)).sort("row_order")
    for col in (*KEYS, "rating"):
        if col in df.columns:
            _fail(df, df[col].is_null(), file, names[col], "null values",
                  "drop or fill those rows before loading", names)
    for col in ("user_id", "item_id"):
        df = df.with_columns(_as_id(df, col, file, names, integer_ids))
    _check_reserved_item_id(df, file, names)
    df = df.with_columns(_as_seconds(df, file, names, unit, numeric_timestamps))
    if "rating" in df.columns:
        df = df.with_columns(_as_float(df, "rating", file, names))
    if "event_type" in df.columns:
        df = df.with_columns(pl.col("event_type").cast(pl.String))

    repeat = ~df.select(pl.struct(KEYS).is_first_distinct()).to_series()
    if repeat.any() and drop_duplicates:
        log.info("%s: dropped %d duplicate (user, item, timestamp) rows", file, int(repeat.sum()))
        df = df.filter(~repeat)
    else:
        key = "(" + ", ".join(names[k] for k in KEYS) + ")"
        _fail(df, repeat, file, key, "duplicate rows (same user, item and timestamp as an earlier row)",
              "set data.drop_duplicates=true to keep the first of each, or deduplicate the file", names)
    cols = [c for c in (*KEYS, "rating", "event_type", "row_order", LINE) if c in df.columns]
    return df.select(cols)


def _as_int(df: pl.DataFrame, col: str, file: str, names: Mapping[str, str] | None = None) -> pl.Series:
    """Integer, float or string column -> Int64, raising on values that are not integers."""
    names = names or {}
    s, shown = df[col], names.get(col, col)
    if s.dtype.is_integer() or s.dtype.is_float():
        if s.dtype.is_float():
            _fail(df, s.is_nan() | (s != s.floor()), file, shown, "non-integer values",
                  "ids must be whole numbers", names)
        conv = s.cast(pl.Int64, strict=False)  # UInt64 / Int128 / float values past 2**63 become null
        _fail(df, conv.is_null() & s.is_not_null(), file, shown, "values outside the 64-bit integer range",
              f"ids must lie in [-2**63, 2**63); store the ids as strings (cast {shown} to String)", names)
        return conv
    if s.dtype not in (pl.String, pl.Categorical):
        _fail(df, pl.Series([True] * df.height), file, shown, f"values of dtype {s.dtype}",
              "ids must be integers or strings; cast the column before loading", names)
    conv = s.cast(pl.String).str.strip_chars().cast(pl.Int64, strict=False)
    _fail(df, conv.is_null() & s.is_not_null(), file, shown, "non-integer values",
          "this source needs integer ids; fix or remove those rows", names)
    return conv


def _as_id(df: pl.DataFrame, col: str, file: str, names: Mapping[str, str], integer_ids: bool) -> pl.Series:
    if df[col].dtype in (pl.String, pl.Categorical) and not integer_ids:
        ids = df[col].cast(pl.String)
        _check_blank_ids(df, ids, file, names.get(col, col), names)
        return ids
    return _as_int(df, col, file, names)


def _check_blank_ids(df: pl.DataFrame, ids: pl.Series, file: str, shown: str,
                     names: Mapping[str, str] | None = None) -> None:
    """String ids must not be empty or blank: a missing value written as '' (the index also pads
    short results of string ids with '')."""
    _fail(df, ids.str.strip_chars() == "", file, shown, "empty or blank ids",
          "a missing id: drop or fill those rows", names)


def _check_reserved_item_id(df: pl.DataFrame, file: str, names: Mapping[str, str] | None = None) -> None:
    """Integer item ids must not be :data:`RESERVED_ITEM_ID`: the index could not be built from them."""
    if df["item_id"].dtype == pl.Int64:
        _fail(df, df["item_id"] == RESERVED_ITEM_ID, file, (names or {}).get("item_id", "item_id"),
              f"reserved ids ({RESERVED_ITEM_ID})", f"the item index pads short results with {RESERVED_ITEM_ID}: "
              "renumber that item (in the click log and the item table alike)", names)


def _as_float(df: pl.DataFrame, col: str, file: str, names: Mapping[str, str]) -> pl.Series:
    s = df[col]
    conv = s.cast(pl.String).cast(pl.Float64, strict=False) if s.dtype == pl.String else s.cast(
        pl.Float64, strict=False)
    _fail(df, conv.is_null() | conv.is_nan(), file, names[col], "non-numeric values",
          f"{col} must be a number; fix or remove those rows", names)
    return conv


DATE_FORMAT_TRIES = 8
"""At most this many passes of date-format inference over one column (one pass per format)."""


def _parse_dates(s: pl.Series) -> pl.Series:
    """Date strings -> Float64 unix seconds (whole seconds); null where a value is not a date.

    Polars infers one format per call from the first value, so a column that mixes formats (dates
    with and without a UTC offset, dates with and without a time) is parsed in passes: each pass
    takes the values still unparsed, until none is left or a pass parses nothing. A value without
    a UTC offset is read as UTC.
    """
    out = pl.Series([None] * len(s), dtype=pl.Float64)
    todo = s.is_not_null()
    for _ in range(DATE_FORMAT_TRIES):
        if not todo.any():
            break
        part = pl.select(pl.when(todo).then(s)).to_series()
        try:
            got = part.str.to_datetime(strict=False, time_unit="ms").dt.epoch("s").cast(pl.Float64)
        except pl.exceptions.PolarsError:  # the first remaining value has no recognisable date format
            break
        new = got.is_not_null() & todo
        if not new.any():
            break
        out = pl.select(pl.when(new).then(got).otherwise(out)).to_series()
        todo = todo & ~new
    return out


def _as_seconds(df: pl.DataFrame, file: str, names: Mapping[str, str], unit: str,
                numeric_only: bool) -> pl.Series:
    """The timestamp column as Int64 unix seconds (numbers, numeric strings or date strings).

    Numeric values go through the unit logic (auto: all values > 1e11 means milliseconds);
    dates (Datetime/Date columns, or ISO strings in generic logs) are exact already.
    """
    s, col = df["timestamp"], names["timestamp"]
    none = pl.Series([None] * df.height, dtype=pl.Float64)
    if s.dtype == pl.Date:
        s = s.cast(pl.Datetime("ms"))
    if isinstance(s.dtype, pl.Datetime):
        num, dates = none, s.dt.epoch("s").cast(pl.Float64)
    elif s.dtype in (pl.String, pl.Categorical):
        s = s.cast(pl.String)
        num = s.str.strip_chars().cast(pl.Float64, strict=False)
        if numeric_only:
            _fail(df, num.is_null(), file, col, "non-numeric timestamps",
                  "timestamps must be integer unix seconds; fix or remove those rows", names)
            dates = none
        else:
            dates = _parse_dates(pl.select(pl.when(num.is_null()).then(s)).to_series())
            _fail(df, num.is_null() & dates.is_null(), file, col, "unparseable timestamps",
                  "use unix seconds/milliseconds or ISO-8601 dates like '2020-01-31 12:00:00'", names)
    elif s.dtype.is_numeric():
        num, dates = s.cast(pl.Float64), none
    else:
        _fail(df, pl.Series([True] * df.height), file, col, f"values of dtype {s.dtype}",
              "timestamps must be unix seconds, milliseconds or dates", names)
        raise AssertionError("unreachable")
    _fail(df, num.is_nan() | num.is_infinite(), file, col, "non-finite timestamps",
          "fix or remove those rows", names)
    big = num > MS_THRESHOLD
    n_num, n_big = int(num.is_not_null().sum()), int(big.sum())
    if unit == "s":
        _fail(df, big, file, col, "values above 1e11 that look like milliseconds",
              "set data.timestamp_unit=ms (or convert the column to seconds)", names)
    elif unit == "ms":
        _fail(df, num < MS_THRESHOLD, file, col, "values below 1e11 that look like seconds",
              "set data.timestamp_unit=s (or convert the column to milliseconds)", names)
    elif 0 < n_big < n_num:
        _fail(df, big, file, col, "values above 1e11 (milliseconds) while the others look like seconds",
              "convert the column to one unit and set data.timestamp_unit=s or ms", names)
    if unit == "ms" or (unit == "auto" and n_big > 0):
        num = num / 1000.0
    secs = num.fill_null(dates)
    now = time.time() + 86400.0
    _fail(df, secs < 0, file, col, "timestamps before 1970", "check the column and data.timestamp_unit",
          names)
    when = time.strftime("%Y-%m-%d", time.gmtime(now))
    _fail(df, secs > now, file, col, f"timestamps in the future (after {when})",
          "check data.timestamp_unit; microseconds/nanoseconds must be converted to seconds", names)
    latest = secs.max()
    if n_num and isinstance(latest, (int, float)) and latest < YEAR_1970_END:
        log.warning("%s: every timestamp in column %r falls in 1970 when read as unix seconds (the latest, %d s, "
                    "is %s): if they are dates as YYYYMMDD or days since 1970, convert them to unix seconds or "
                    "ISO-8601 dates, or splits and date windows will be wrong", file, col, int(latest),
                    time.strftime("%Y-%m-%d", time.gmtime(latest)))
    return secs.floor().cast(pl.Int64).alias("timestamp")


def validate_items(items: pl.DataFrame, source: str, *, id_dtype: pl.DataType = pl.Int64()) -> pl.DataFrame:
    """Check an item table: an ``item_id`` column of ``id_dtype``, no nulls, no duplicates.

    String ``title`` stays, list columns (``genres``, ``tags``) are kept as List(String).

    Raises:
        DataError: naming the file, the column, how many rows, an example and the fix.
    """
    if "item_id" not in items.columns:
        found = [c for c in items.columns if c != LINE]
        raise DataError(f"{source}: missing column 'item_id' (found columns {found}); "
                        "rename the item id column to item_id")
    if items.height == 0:
        raise DataError(f"{source} is empty (zero item rows); add the items or drop the item table")
    _fail(items, items["item_id"].is_null(), source, "item_id", "null ids", "drop those rows")
    if id_dtype == pl.String:
        items = items.with_columns(pl.col("item_id").cast(pl.String))
        _check_blank_ids(items, items["item_id"], source, "item_id")
    else:
        items = items.with_columns(_as_int(items, "item_id", source))
    _check_reserved_item_id(items, source)
    _fail(items, items["item_id"].is_duplicated(), source, "item_id", "rows with a repeated id",
          "keep one row per item")
    if "genres" in items.columns and not isinstance(items["genres"].dtype, pl.List):
        raise DataError(
            f"{source}: column 'genres' has dtype {items['genres'].dtype}; expected a list of strings per item, or "
            "text separated by '|' such as 'Action|Comedy'; cast it, e.g. pl.col('genres').cast(pl.String) for one "
            "genre per item, or drop the column"
        )
    for col in ("genres", "tags"):
        if col in items.columns and isinstance(items[col].dtype, pl.List):
            items = items.with_columns(pl.col(col).cast(pl.List(pl.String)))
    return items.drop(LINE, strict=False)


def _check_items_cover_clicks(clicks: pl.DataFrame, items: pl.DataFrame, clicks_file: str,
                              items_file: str) -> None:
    orphan = clicks.join(items.select("item_id"), on="item_id", how="anti")
    if orphan.height == 0:
        return
    first = orphan.sort("row_order").row(0, named=True)
    where = f"line {first[LINE]}" if LINE in first else _row_where(first["row_order"])
    raise DataError(
        f"{clicks_file}: {orphan.height} clicks on {orphan['item_id'].n_unique()} item ids are absent "
        f"from the item table {items_file} (first at {where}: user_id={first['user_id']!r}, "
        f"item_id={first['item_id']!r}); add those items to {items_file} or drop those clicks"
    )
