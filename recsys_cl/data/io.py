"""Load a click log (a MovieLens flavour or a generic Parquet/CSV file) into one validated contract.

Every reader ends in :func:`validate_clicks` / :func:`validate_items`, so bad input fails here, at
the boundary, with a :class:`DataError` that names the file, the column, how many rows are affected,
an example row (with its line number) and the fix. Raw polars errors never reach the caller.

Example::

    log = load_click_log(DataConfig(path="data/ml-latest-small"))
    log.clicks.columns  # ['user_id', 'item_id', 'timestamp', 'rating', 'row_order']
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import polars as pl

from recsys_cl.config import DataConfig
from recsys_cl.data.errors import DataError

log = logging.getLogger(__name__)

MS_THRESHOLD = 1e11
"""Numeric timestamps above this are milliseconds (1e11 s is the year 5138; 1e11 ms is 1973)."""
ML_100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip
_KEYS = ("user_id", "item_id", "timestamp")
_LINE = "_line"  # internal: 1-based line of each row in its file, for error messages


@dataclass(frozen=True)
class ClickLog:
    """A validated click log and its optional item table.

    Attributes:
        clicks: one row per click, columns ``user_id``, ``item_id`` (both Int64, or both String for
            generic logs with string ids), ``timestamp`` (Int64 unix seconds, UTC), ``rating``
            (Float64, only when the source has one), ``event_type`` (String, only when configured)
            and ``row_order`` (Int64, ``0 .. n-1`` in source-file order; the tie-breaker for equal
            timestamps).
        items: ``item_id`` (same dtype as in ``clicks``, unique) plus optional ``title`` (String),
            ``genres`` / ``tags`` (List(String)) and other columns; None when the source has no item
            table. Every clicked item is in it.
        source: where the clicks came from, e.g. ``movielens-latest:data/ml-latest-small``.
    """

    clicks: pl.DataFrame
    items: pl.DataFrame | None
    source: str


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def load_click_log(cfg: DataConfig) -> ClickLog:
    """Read, validate and normalise the click log that ``cfg`` describes.

    Raises:
        DataError: the path is missing, a file cannot be parsed, or the data breaks the contract.
    """
    t0 = time.perf_counter()
    path = Path(cfg.path)
    if not path.exists():
        raise DataError(
            f"data.path {str(path)!r} does not exist (working directory {str(Path.cwd())!r}); "
            "point data.path at a MovieLens folder or a Parquet/CSV click-log file"
        )
    fmt = cfg.format
    if fmt == "movielens":
        fmt = _detect_movielens(path)
    elif fmt in ("ml-latest", "ml-100k", "ml-1m") and not path.is_dir():
        raise DataError(f"data.format={fmt} needs data.path to be a MovieLens folder; {path} is a file")
    readers = {"ml-latest": _read_ml_latest, "ml-100k": _read_ml_100k, "ml-1m": _read_ml_1m}
    if fmt in readers:
        clicks, clicks_file, items, items_file, names = readers[fmt](path)
        ids_must_be_int, numeric_ts, source = True, True, f"movielens-{fmt[3:]}:{path}"
    else:
        clicks, clicks_file, items, items_file, names = _read_generic(cfg, path)
        ids_must_be_int, numeric_ts, source = False, False, f"{fmt}:{path}"

    clicks = _validate_clicks(
        clicks, clicks_file, names, cfg.timestamp_unit, cfg.drop_duplicates, ids_must_be_int, numeric_ts
    )
    if items is not None:
        items = validate_items(items, items_file or "item table", id_dtype=clicks["item_id"].dtype)
        _check_items_cover_clicks(clicks, items, clicks_file, items_file or "item table")
    if cfg.min_rating is not None:
        if "rating" not in clicks.columns:
            raise DataError(
                f"data.min_rating={cfg.min_rating} is set but {clicks_file} has no rating column; "
                "set data.columns.rating to the rating column, or data.min_rating=null"
            )
        kept = clicks.filter(pl.col("rating") >= cfg.min_rating)
        if kept.height == 0:
            raise DataError(
                f"{clicks_file}: no rating is >= data.min_rating={cfg.min_rating} "
                f"(max rating {clicks['rating'].max()}); lower data.min_rating or set it to null"
            )
        clicks = kept
    clicks = clicks.drop(_LINE, strict=False).with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("row_order")  # renumber after dropped rows
    )
    log.info("loaded %s: %d clicks (%.2fs)", source, clicks.height, time.perf_counter() - t0)
    return ClickLog(clicks=clicks, items=items, source=source)


# --------------------------------------------------------------------------------------------
# Readers: each returns (clicks, clicks file, items | None, items file | None, contract -> file names)
# --------------------------------------------------------------------------------------------

_Read = tuple[pl.DataFrame, str, "pl.DataFrame | None", "str | None", dict[str, str]]


def _detect_movielens(path: Path) -> str:
    if not path.is_dir():
        raise DataError(
            f"data.format=movielens needs data.path to be a MovieLens folder, but {path} is a file; "
            "for a single click-log file set data.format=csv or data.format=parquet"
        )
    if (path / "ratings.csv").is_file() and (path / "movies.csv").is_file():
        return "ml-latest"
    if (path / "u.data").is_file():
        return "ml-100k"
    if (path / "ratings.dat").is_file():
        return "ml-1m"
    found = sorted(p.name for p in path.iterdir())
    shown = found[:20] + (["..."] if len(found) > 20 else [])
    raise DataError(
        f"{path} is not a MovieLens folder: found {shown or 'nothing'}; expected ratings.csv + "
        "movies.csv (latest), u.data (100K) or ratings.dat (1M/10M). Point data.path at the unzipped "
        "folder, or set data.format=csv|parquet for another click log"
    )


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        found = sorted(p.name for p in path.parent.iterdir())[:20]
        raise DataError(f"{what}: {path} does not exist (the folder holds {found}); check data.path")


def _read_ml_latest(folder: Path) -> _Read:
    ratings = folder / "ratings.csv"
    _require_file(ratings, "data.format=ml-latest")
    names = {"user_id": "userId", "item_id": "movieId", "rating": "rating", "timestamp": "timestamp"}
    fix = "expected the MovieLens header userId,movieId,rating,timestamp"
    clicks = _select(_read_csv(ratings, infer=False), names, str(ratings), fix)
    movies = folder / "movies.csv"
    if not movies.is_file():
        return clicks, str(ratings), None, None, names
    fix = "expected the MovieLens header movieId,title,genres"
    items = _select(
        _read_csv(movies, infer=False),
        {"item_id": "movieId", "title": "title", "genres": "genres"}, str(movies), fix,
    ).with_columns(_split_genres(pl.col("genres")))
    tags_file = folder / "tags.csv"
    if tags_file.is_file():
        tags = _select(_read_csv(tags_file, infer=False), {"item_id": "movieId", "tag": "tag"},
                       str(tags_file), "expected the MovieLens header userId,movieId,tag,timestamp")
        tags = (
            tags.with_columns(_as_int(tags, "item_id", str(tags_file), {"item_id": "movieId"}))
            .with_columns(pl.col("tag").str.strip_chars().str.to_lowercase())
            .filter(pl.col("tag").is_not_null() & (pl.col("tag") != ""))
            .group_by("item_id")
            .agg(pl.col("tag").unique().sort().alias("tags"))
        )
        items = (
            items.with_columns(_as_int(items, "item_id", str(movies), {"item_id": "movieId"}))
            .join(tags, on="item_id", how="left")
            .with_columns(pl.col("tags").fill_null(pl.lit([], dtype=pl.List(pl.String))))
        )
    return clicks, str(ratings), items, str(movies), names


def _read_ml_100k(folder: Path) -> _Read:
    data = folder / "u.data"
    _require_file(data, "data.format=ml-100k")
    cols = ("user_id", "item_id", "rating", "timestamp")
    clicks = _read_fields(data, "\t", cols)
    names = {c: f"{c} (field {k + 1})" for k, c in enumerate(cols)}
    item_file = folder / "u.item"
    if not item_file.is_file():
        return clicks, str(data), None, None, names
    flags = [f"g{k}" for k in range(len(ML_100K_GENRES))]
    raw = _read_fields(item_file, "|", ("item_id", "title", "release", "video", "url", *flags))
    genres = pl.concat_list(
        [pl.when(pl.col(f) == "1").then(pl.lit(g)) for f, g in zip(flags, ML_100K_GENRES) if g != "unknown"]
    ).list.drop_nulls()
    items = raw.select(_LINE, "item_id", "title", genres.alias("genres"))
    return clicks, str(data), items, str(item_file), names


def _read_ml_1m(folder: Path) -> _Read:
    data = folder / "ratings.dat"
    _require_file(data, "data.format=ml-1m")
    cols = ("user_id", "item_id", "rating", "timestamp")
    clicks = _read_fields(data, "::", cols)
    names = {c: f"{c} (field {k + 1})" for k, c in enumerate(cols)}
    item_file = folder / "movies.dat"
    if not item_file.is_file():
        return clicks, str(data), None, None, names
    items = _read_fields(item_file, "::", ("item_id", "title", "genres"))
    items = items.with_columns(_split_genres(pl.col("genres")))
    return clicks, str(data), items, str(item_file), names


def _read_generic(cfg: DataConfig, path: Path) -> _Read:
    if path.is_dir():
        raise DataError(
            f"data.format={cfg.format} needs data.path to be a file, but {path} is a folder; "
            "point it at the click-log file, or set data.format=movielens for a MovieLens folder"
        )
    c = cfg.columns
    names = {"user_id": c.user_id, "item_id": c.item_id, "timestamp": c.timestamp}
    names |= {k: v for k, v in (("rating", c.rating), ("event_type", c.event_type)) if v}
    raw = _read_table(path, cfg.format)
    missing = [k for k, v in names.items() if v not in raw.columns]
    fix = "set " + ", ".join(f"data.columns.{k}" for k in missing) + " to the matching column name"
    clicks = _select(raw, names, str(path), fix)
    if not cfg.items_path:
        return clicks, str(path), None, None, names
    items_path = Path(cfg.items_path)
    if not items_path.is_file():
        raise DataError(f"data.items_path {str(items_path)!r} does not exist; fix the path or set it to null")
    items = _read_table(items_path, "parquet" if items_path.suffix in (".parquet", ".pq") else "csv")
    if "item_id" not in items.columns and c.item_id in items.columns:
        items = items.rename({c.item_id: "item_id"})
    if "genres" in items.columns and items["genres"].dtype == pl.String:
        items = items.with_columns(_split_genres(pl.col("genres")))
    return clicks, str(path), items, str(items_path), names


def _split_genres(col: pl.Expr) -> pl.Expr:
    """'A|B' -> ['A', 'B']; '(no genres listed)', '' and null -> []."""
    listed = col.str.split("|").list.eval(
        pl.element().str.strip_chars().filter((pl.element() != "") & (pl.element() != "(no genres listed)"))
    )
    return listed.fill_null(pl.lit([], dtype=pl.List(pl.String))).alias("genres")


# --------------------------------------------------------------------------------------------
# Low-level file reading (every parse error becomes a DataError)
# --------------------------------------------------------------------------------------------


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # ML-100K u.item and ML-1M movies.dat are ISO-8859-1


def _read_fields(path: Path, sep: str, names: tuple[str, ...]) -> pl.DataFrame:
    """A headerless file with ``len(names)`` ``sep``-separated fields per line, as String columns."""
    text = _decode(path)
    lines = (
        pl.DataFrame({"text": [text]})
        .select(pl.col("text").str.split("\n"))
        .explode("text")
        .with_row_index(_LINE, offset=1)
        .with_columns(pl.col(_LINE).cast(pl.Int64), pl.col("text").str.strip_suffix("\r"))
        .filter(pl.col("text").str.strip_chars() != "")
    )
    if lines.height == 0:
        raise DataError(f"{path} is empty (zero rows); expected lines like {sep.join(names)!r}")
    parts = lines["text"].str.split(sep)
    bad = parts.list.len() != len(names)
    if bad.any():
        i = int(bad.arg_true()[0])
        raise DataError(
            f"{path}: {int(bad.sum())} of {lines.height} lines do not have {len(names)} fields "
            f"separated by {sep!r} (first at line {lines[_LINE][i]}: {lines['text'][i]!r} has "
            f"{parts.list.len()[i]} fields); expected {sep.join(names)!r}. Fix or remove those lines"
        )
    return lines.select(_LINE).with_columns(
        [parts.list.get(k).str.strip_chars().alias(n) for k, n in enumerate(names)]
    )


def _read_csv(path: Path, infer: bool) -> pl.DataFrame:
    try:
        if infer:
            df = pl.read_csv(path, infer_schema_length=None)
        else:
            df = pl.read_csv(path, infer_schema=False)
    except pl.exceptions.NoDataError as e:
        raise DataError(f"{path} is empty (zero rows); expected a header line and click rows") from e
    except (pl.exceptions.PolarsError, OSError) as e:
        reason = str(e).strip().splitlines()[0]
        raise DataError(
            f"{path} could not be parsed as CSV ({reason}); check it is comma-separated UTF-8 with "
            "one header line and the same number of fields on every line"
        ) from e
    df = df.with_row_index(_LINE, offset=2).with_columns(pl.col(_LINE).cast(pl.Int64))
    return df.filter(~pl.all_horizontal(pl.exclude(_LINE).is_null()))  # blank lines


def _read_table(path: Path, fmt: str) -> pl.DataFrame:
    if fmt == "csv":
        return _read_csv(path, infer=True)
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"{path} could not be read as Parquet ({reason}); check the file, or set data.format=csv"
        ) from e


def _select(df: pl.DataFrame, names: Mapping[str, str], file: str, fix: str) -> pl.DataFrame:
    """Keep the file columns ``names.values()`` (plus the line index), renamed to the contract."""
    missing = [v for v in names.values() if v not in df.columns]
    if missing:
        found = [c for c in df.columns if c != _LINE]
        raise DataError(f"{file}: missing column(s) {missing} (found columns {found}); {fix}")
    extra = [_LINE] if _LINE in df.columns else []
    return df.select(*extra, *[pl.col(v).alias(k) for k, v in names.items()])


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


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
    where = f"line {row[_LINE]}" if _LINE in row else f"row {row.get('row_order', i)}"
    example = ", ".join(f"{names.get(k, k)}={v!r}" for k, v in row.items() if k not in (_LINE, "row_order"))
    raise DataError(
        f"{file}: column {column!r} has {n} {problem} out of {df.height} rows "
        f"(first at {where}: {example}); {fix}"
    )


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
    return out.drop(_LINE, strict=False)


def _validate_clicks(
    df: pl.DataFrame, file: str, names: Mapping[str, str], unit: str, drop_duplicates: bool,
    integer_ids: bool, numeric_timestamps: bool,
) -> pl.DataFrame:
    names = {k: names.get(k, k) for k in (*_KEYS, "rating", "event_type")}
    missing = [k for k in _KEYS if k not in df.columns]
    if missing:
        raise DataError(f"{file}: missing column(s) {missing} (found columns {df.columns}); "
                        "rename them to user_id, item_id, timestamp")
    if df.height == 0:
        raise DataError(f"{file} is empty (zero click rows); point data.path at a non-empty click log")
    if "row_order" not in df.columns:
        df = df.with_row_index("row_order")
    df = df.with_columns(pl.col("row_order").cast(pl.Int64)).sort("row_order")
    for col in (*_KEYS, "rating"):
        if col in df.columns:
            _fail(df, df[col].is_null(), file, names[col], "null values",
                  "drop or fill those rows before loading", names)
    for col in ("user_id", "item_id"):
        df = df.with_columns(_as_id(df, col, file, names, integer_ids))
    df = df.with_columns(_as_seconds(df, file, names, unit, numeric_timestamps))
    if "rating" in df.columns:
        df = df.with_columns(_as_float(df, "rating", file, names))
    if "event_type" in df.columns:
        df = df.with_columns(pl.col("event_type").cast(pl.String))

    repeat = ~df.select(pl.struct(_KEYS).is_first_distinct()).to_series()
    if repeat.any() and drop_duplicates:
        log.info("%s: dropped %d duplicate (user, item, timestamp) rows", file, int(repeat.sum()))
        df = df.filter(~repeat)
    else:
        key = "(" + ", ".join(names[k] for k in _KEYS) + ")"
        _fail(df, repeat, file, key, "duplicate rows (same user, item and timestamp as an earlier row)",
              "set data.drop_duplicates=true to keep the first of each, or deduplicate the file", names)
    cols = [c for c in (*_KEYS, "rating", "event_type", "row_order", _LINE) if c in df.columns]
    return df.select(cols)


def _as_int(df: pl.DataFrame, col: str, file: str, names: Mapping[str, str] | None = None) -> pl.Series:
    """Integer, float or string column -> Int64, raising on values that are not integers."""
    names = names or {}
    s, shown = df[col], names.get(col, col)
    if s.dtype.is_integer():
        return s.cast(pl.Int64)
    if s.dtype.is_float():
        _fail(df, s.is_nan() | (s != s.floor()), file, shown, "non-integer values",
              "ids must be whole numbers", names)
        return s.cast(pl.Int64)
    if s.dtype not in (pl.String, pl.Categorical):
        _fail(df, pl.Series([True] * df.height), file, shown, f"values of dtype {s.dtype}",
              "ids must be integers or strings; cast the column before loading", names)
    conv = s.cast(pl.String).str.strip_chars().cast(pl.Int64, strict=False)
    _fail(df, conv.is_null() & s.is_not_null(), file, shown, "non-integer values",
          "this source needs integer ids; fix or remove those rows", names)
    return conv


def _as_id(df: pl.DataFrame, col: str, file: str, names: Mapping[str, str], integer_ids: bool) -> pl.Series:
    if df[col].dtype in (pl.String, pl.Categorical) and not integer_ids:
        return df[col].cast(pl.String)
    return _as_int(df, col, file, names)


def _as_float(df: pl.DataFrame, col: str, file: str, names: Mapping[str, str]) -> pl.Series:
    s = df[col]
    conv = s.cast(pl.String).cast(pl.Float64, strict=False) if s.dtype == pl.String else s.cast(
        pl.Float64, strict=False)
    _fail(df, conv.is_null() | conv.is_nan(), file, names[col], "non-numeric values",
          f"{col} must be a number; fix or remove those rows", names)
    return conv


def _parse_dates(s: pl.Series) -> pl.Series:
    """Date strings -> Float64 unix seconds; null where a value is not a date."""
    try:
        return s.str.to_datetime(strict=False, time_unit="ms").dt.epoch("s").cast(pl.Float64)
    except pl.exceptions.PolarsError:  # no recognisable date format at all
        return pl.Series([None] * len(s), dtype=pl.Float64)


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
    return secs.floor().cast(pl.Int64).alias("timestamp")


def validate_items(items: pl.DataFrame, source: str, *, id_dtype: pl.DataType = pl.Int64) -> pl.DataFrame:
    """Check an item table: an ``item_id`` column of ``id_dtype``, no nulls, no duplicates.

    String ``title`` stays, list columns (``genres``, ``tags``) are kept as List(String).

    Raises:
        DataError: naming the file, the column, how many rows, an example and the fix.
    """
    if "item_id" not in items.columns:
        found = [c for c in items.columns if c != _LINE]
        raise DataError(f"{source}: missing column 'item_id' (found columns {found}); "
                        "rename the item id column to item_id")
    if items.height == 0:
        raise DataError(f"{source} is empty (zero item rows); add the items or drop the item table")
    _fail(items, items["item_id"].is_null(), source, "item_id", "null ids", "drop those rows")
    if id_dtype == pl.String:
        items = items.with_columns(pl.col("item_id").cast(pl.String))
    else:
        items = items.with_columns(_as_int(items, "item_id", source))
    _fail(items, items["item_id"].is_duplicated(), source, "item_id", "rows with a repeated id",
          "keep one row per item")
    for col in ("genres", "tags"):
        if col in items.columns and isinstance(items[col].dtype, pl.List):
            items = items.with_columns(pl.col(col).cast(pl.List(pl.String)))
    return items.drop(_LINE, strict=False)


def _check_items_cover_clicks(clicks: pl.DataFrame, items: pl.DataFrame, clicks_file: str,
                              items_file: str) -> None:
    orphan = clicks.join(items.select("item_id"), on="item_id", how="anti")
    if orphan.height == 0:
        return
    first = orphan.sort("row_order").row(0, named=True)
    where = f"line {first[_LINE]}" if _LINE in first else f"row {first['row_order']}"
    raise DataError(
        f"{clicks_file}: {orphan.height} clicks on {orphan['item_id'].n_unique()} item ids are absent "
        f"from the item table {items_file} (first at {where}: user_id={first['user_id']!r}, "
        f"item_id={first['item_id']!r}); add those items to {items_file} or drop those clicks"
    )
