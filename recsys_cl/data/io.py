"""Load a click log (a MovieLens flavour or a generic Parquet/CSV file) into one validated contract.

Every reader ends in :func:`~recsys_cl.data.validate.validate_clicks` / ``validate_items``, so bad
input fails here, at the boundary, with a :class:`DataError` (see ``validate.py``).

Example::

    log = load_click_log(DataConfig(path="data/ml-latest-small"))
    log.clicks.columns  # ['user_id', 'item_id', 'timestamp', 'rating', 'row_order']
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import polars as pl

from recsys_cl.config import DataConfig
from recsys_cl.data.errors import DataError
from recsys_cl.data.validate import (  # noqa: F401  (validate_clicks re-exported for callers)
    LINE,
    _as_int,
    _check_items_cover_clicks,
    _fail,
    _validate_clicks,
    validate_clicks,
    validate_items,
)

log = logging.getLogger(__name__)

ML_100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip


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
            table. Every clicked item is in it. ``tags`` holds every tag ever applied; see
            :meth:`items_as_of` for the tags known at a given time.
        source: where the clicks came from, e.g. ``movielens-latest:data/ml-latest-small``.
        item_tags: the time-stamped tags behind ``items["tags"]``, one row per application:
            ``item_id``, ``tag`` (stripped, lower-cased), ``timestamp`` (Int64 unix seconds); None
            when the source has no tag file (MovieLens ``tags.csv``).
    """

    clicks: pl.DataFrame
    items: pl.DataFrame | None
    source: str
    item_tags: pl.DataFrame | None = None

    def items_as_of(self, cutoff: int | None) -> pl.DataFrame | None:
        """The item table with ``tags`` rebuilt from the tags applied strictly before ``cutoff``.

        Tags are user actions with timestamps: a time-ordered evaluation must not read an item's
        text from tags applied after its training cutoff (for a cold item, every tag comes from the
        period the model is tested on). Titles, genres and other columns are catalogue metadata
        and are kept as they are. ``cutoff=None`` or a source without tags returns ``items``.
        """
        if cutoff is None or self.items is None or self.item_tags is None:
            return self.items
        return _with_tags(self.items.drop("tags", strict=False), self.item_tags.filter(pl.col("timestamp") < cutoff))


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
    fmt: str = cfg.format
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
    item_tags = None
    if fmt == "ml-latest" and items is not None and (path / "tags.csv").is_file():
        item_tags = _read_tags(path / "tags.csv")
        items = _with_tags(items.with_columns(_as_int(items, "item_id", items_file or "item table",
                                                      {"item_id": "movieId"})), item_tags)
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
                f"(max rating {clicks['rating'].max()!r}); lower data.min_rating or set it to null"
            )
        clicks = kept
    clicks = clicks.drop(LINE, strict=False).with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("row_order")  # renumber after dropped rows
    )
    log.info("loaded %s: %d clicks (%.2fs)", source, clicks.height, time.perf_counter() - t0)
    return ClickLog(clicks=clicks, items=items, source=source, item_tags=item_tags)


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
    if "ratings.csv" in found:
        raise DataError(f"{path} has ratings.csv but no movies.csv; MovieLens latest folders hold both "
                        "(movies.csv is the item table: titles and genres). Restore it from the same download")
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
    clicks = _select(_read_csv(ratings, infer=False, parquet_fix=ML_PARQUET_FIX), names, str(ratings), fix)
    _check_short_rows(clicks, ratings, names)
    movies = folder / "movies.csv"
    if not movies.is_file():
        return clicks, str(ratings), None, None, names
    fix = "expected the MovieLens header movieId,title,genres"
    items = _select(
        _read_csv(movies, infer=False, parquet_fix=ML_PARQUET_FIX, rows="movie rows"),
        {"item_id": "movieId", "title": "title", "genres": "genres"}, str(movies), fix,
    ).with_columns(_split_genres(pl.col("genres")))
    return clicks, str(ratings), items, str(movies), names


def _read_tags(tags_file: Path) -> pl.DataFrame:
    """MovieLens ``tags.csv`` -> ``item_id`` (Int64), ``tag`` (stripped, lower-cased), ``timestamp`` (Int64).

    Empty tags are dropped; the line index is kept for error messages until the ids are checked.
    """
    names = {"item_id": "movieId", "tag": "tag", "timestamp": "timestamp"}
    file = str(tags_file)
    raw = _select(_read_csv(tags_file, infer=False, parquet_fix=ML_PARQUET_FIX, rows="tag rows"), names, file,
                  "expected the MovieLens header userId,movieId,tag,timestamp")
    _check_short_rows(raw, tags_file, {k: v for k, v in names.items() if k != "tag"})
    ts = raw["timestamp"].str.strip_chars().cast(pl.Int64, strict=False)
    _fail(raw, ts.is_null(), file, "timestamp", "values that are not integer unix seconds",
          "every tag needs the time it was applied (MovieLens writes unix seconds); fix or remove those rows",
          names)
    return (
        raw.with_columns(_as_int(raw, "item_id", file, names), ts,
                         pl.col("tag").str.strip_chars().str.to_lowercase())
        .filter(pl.col("tag").is_not_null() & (pl.col("tag") != ""))
        .select("item_id", "tag", "timestamp")
    )


def _with_tags(items: pl.DataFrame, item_tags: pl.DataFrame) -> pl.DataFrame:
    """``items`` (Int64 ``item_id``) plus ``tags``: each item's distinct tags in ``item_tags``, sorted."""
    tags = item_tags.group_by("item_id").agg(pl.col("tag").unique().sort().alias("tags"))
    return items.join(tags, on="item_id", how="left", maintain_order="left").with_columns(
        pl.col("tags").fill_null(pl.lit([], dtype=pl.List(pl.String)))
    )


def _read_ml_ratings(data: Path, sep: str, fmt: str) -> tuple[pl.DataFrame, dict[str, str]]:
    """``user item rating timestamp`` rows without a header (100K ``u.data``, 1M/10M ``ratings.dat``)."""
    _require_file(data, f"data.format={fmt}")
    cols = ("user_id", "item_id", "rating", "timestamp")
    return _read_fields(data, sep, cols), {c: f"{c} (field {k + 1})" for k, c in enumerate(cols)}


def _read_ml_100k(folder: Path) -> _Read:
    data = folder / "u.data"
    clicks, names = _read_ml_ratings(data, "\t", "ml-100k")
    item_file = folder / "u.item"
    if not item_file.is_file():
        return clicks, str(data), None, None, names
    flags = [f"g{k}" for k in range(len(ML_100K_GENRES))]
    raw = _read_fields(item_file, "|", ("item_id", "title", "release", "video", "url", *flags))
    genres = pl.concat_list(
        [pl.when(pl.col(f) == "1").then(pl.lit(g)) for f, g in zip(flags, ML_100K_GENRES) if g != "unknown"]
    ).list.drop_nulls()
    items = raw.select(LINE, "item_id", "title", genres.alias("genres"))
    return clicks, str(data), items, str(item_file), names


def _read_ml_1m(folder: Path) -> _Read:
    data = folder / "ratings.dat"
    clicks, names = _read_ml_ratings(data, "::", "ml-1m")
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
    raw = _read_table(path, cfg.format, parquet_fix="set data.format=parquet", text=(c.user_id, c.item_id))
    missing = [k for k, v in names.items() if v not in raw.columns]
    fix = "set " + ", ".join(f"data.columns.{k}" for k in missing) + " to the matching column name"
    clicks = _select(raw, names, str(path), fix)
    if cfg.format == "csv":
        _check_short_rows(clicks, path, {k: v for k, v in names.items() if k != "event_type"})
        clicks = clicks.with_columns(_csv_ids(clicks, "user_id", str(path), names),
                                     _csv_ids(clicks, "item_id", str(path), names))
    if not cfg.items_path:
        return clicks, str(path), None, None, names
    items_path = Path(cfg.items_path)
    if not items_path.is_file():
        raise DataError(f"data.items_path {str(items_path)!r} does not exist; fix the path or set it to null")
    items_fmt = "parquet" if items_path.suffix.lower() in (".parquet", ".pq") else "csv"
    items = _read_table(items_path, items_fmt, text=("item_id", c.item_id),
                        rows="item rows (add the items, or set data.items_path=null)",
                        parquet_fix="rename it to end in .parquet (data.items_path is read as Parquet by its suffix)")
    _check_named_once(items, ("item_id", c.item_id), str(items_path))
    if "item_id" not in items.columns and c.item_id in items.columns:
        items = items.rename({c.item_id: "item_id"})
    if items_fmt == "csv" and "item_id" in items.columns:
        items = items.with_columns(_csv_ids(items, "item_id", str(items_path)))
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
        .with_row_index(LINE, offset=1)
        .with_columns(pl.col(LINE).cast(pl.Int64), pl.col("text").str.strip_suffix("\r"))
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
            f"separated by {sep!r} (first at line {lines[LINE][i]}: {lines['text'][i]!r} has "
            f"{parts.list.len()[i]} fields); expected {sep.join(names)!r}. Fix or remove those lines"
        )
    return lines.select(LINE).with_columns(
        [parts.list.get(k).str.strip_chars().alias(n) for k, n in enumerate(names)]
    )


def _read_csv(path: Path, infer: bool, parquet_fix: str = "set data.format=parquet",
              text: Sequence[str] = (), rows: str = "click rows") -> pl.DataFrame:
    """A comma-separated UTF-8 file with a header line, with the line index; ``parquet_fix`` is the
    advice given when the file turns out to be Parquet, ``rows`` what an empty file should have held.
    Columns named in ``text`` (when present) are read as String, whatever ``infer`` says."""
    if binary := _binary_kind(path, parquet_fix):
        raise DataError(f"{path} is {binary}")
    try:
        if infer:
            df = pl.read_csv(path, infer_schema_length=None, schema_overrides={c: pl.String for c in text})
        else:
            df = pl.read_csv(path, infer_schema=False)
    except pl.exceptions.NoDataError as e:
        raise DataError(f"{path} is empty (zero rows); expected a header line and {rows}") from e
    except (pl.exceptions.PolarsError, OSError) as e:
        if not_utf8 := _first_non_utf8_line(path):
            raise DataError(
                f"{path} is not UTF-8 text: {not_utf8}; save it as UTF-8 and reload, e.g. iconv -f latin1 -t utf-8 "
                f"{str(path)!r} > fixed.csv (latin1, or cp1252 for files from Excel on Windows: the encoding it was "
                "written in)"
            ) from e
        raise _csv_error(path, _first_bad_line(path) or str(e).strip().splitlines()[0]) from e
    df = df.with_row_index(LINE, offset=2).with_columns(pl.col(LINE).cast(pl.Int64))
    return df.filter(~pl.all_horizontal(pl.exclude(LINE).is_null()))  # blank lines


def _first_non_utf8_line(path: Path, limit: int = 120) -> str | None:
    """Where ``path`` first stops being UTF-8: the line, the offending byte and the line's text with
    each undecodable byte shown as U+FFFD. None when every line decodes or the file cannot be read.
    Runs only on error paths."""
    try:
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as e:
                    text = line.rstrip(b"\r\n").decode("utf-8", errors="replace")  # shown as U+FFFD
                    return (f"line {number} holds the byte {line[e.start]:#04x} (byte {e.start + 1} of the line), "
                            f"which UTF-8 does not allow there: {_excerpt(text, limit)}")
    except OSError:
        return None
    return None


def _csv_error(path: Path, reason: str) -> DataError:
    return DataError(
        f"{path} could not be parsed as CSV ({reason}); check it is comma-separated UTF-8 with "
        "one header line and the same number of fields on every line"
    )


ML_PARQUET_FIX = ("MovieLens folders hold CSV text: put back the file from the download, or point data.path at "
                  "this file and set data.format=parquet")
"""What to do when a MovieLens ``.csv`` is a Parquet file."""

MAGIC = {
    b"\x1f\x8b": "gzip-compressed (it starts with the bytes 1f 8b), not CSV text; decompress it (gunzip) and "
                 "load the .csv inside",
    b"PK\x03\x04": "a zip archive (it starts with PK), not CSV text; unzip it and load the .csv inside",
    b"\xff\xfe": "UTF-16 text (it starts with the byte-order mark ff fe), not UTF-8; save it as UTF-8 CSV",
    b"\xfe\xff": "UTF-16 text (it starts with the byte-order mark fe ff), not UTF-8; save it as UTF-8 CSV",
}
"""Leading bytes of files that are often handed in as CSV, and what each one is."""


def _binary_kind(path: Path, parquet_fix: str, sniff: int = 8192) -> str | None:
    """What ``path`` is, when its first ``sniff`` bytes show it is not CSV text: Parquet (``PAR1``),
    gzip, zip, UTF-16, or other binary (a NUL byte). None for text or an unreadable file (the CSV
    reader reports those). Only a short escaped excerpt of binary content is ever shown."""
    try:
        with open(path, "rb") as f:
            head = f.read(sniff)
    except OSError:
        return None
    if head.startswith(b"PAR1"):
        return f"a Parquet file (it starts with PAR1), not CSV; {parquet_fix}"
    for magic, what in MAGIC.items():
        if head.startswith(magic):
            return what
    if b"\x00" in head:
        return (f"binary, not CSV text (it holds NUL bytes; it starts with {head[:16]!r}); expected "
                "comma-separated UTF-8 text: check the path points at the CSV file")
    return None


def _read_table(path: Path, fmt: str, parquet_fix: str, text: Sequence[str] = (),
                rows: str = "click rows") -> pl.DataFrame:
    """A click log or item table in ``fmt``; a CSV's ``text`` columns (the ids) are read as String."""
    if fmt == "csv":
        return _read_csv(path, infer=True, parquet_fix=parquet_fix, text=text, rows=rows)
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"{path} could not be read as Parquet ({reason}); check the file, or set data.format=csv"
        ) from e


def _csv_ids(df: pl.DataFrame, col: str, file: str, names: Mapping[str, str] | None = None) -> pl.Series:
    """Column ``col`` of ids read as text from a CSV, typed the way the file means them: Int64 when
    every value is an integer (surrounding spaces and zero padding allowed; a ``.0`` float form such
    as ``2.0`` gives Float64, which validation checks is whole), else String. Integers past Int64 stay
    text instead of overflowing; an empty field (``""``) is null, so validation reports it.

    Raises:
        DataError: one number written two ways (``7`` and ``007``), which as integers would be one id.
    """
    text = df[col].str.strip_chars()
    text = pl.select(pl.when(text != "").then(text)).to_series().alias(col)
    as_int = text.cast(pl.Int64, strict=False)
    failed = as_int.is_null() & text.is_not_null()
    if not failed.any():
        spellings = pl.DataFrame({"n": as_int, "text": text}).group_by("n").agg(pl.col("text").n_unique())
        clash = spellings.filter(pl.col("text") > 1)["n"]
        _fail(df.with_columns(text), as_int.is_in(clash.implode()) & (text != as_int.cast(pl.String)), file,
              (names or {}).get(col, col), "ids that equal another id as numbers (e.g. '007' and '7')",
              "write each id one way (all zero-padded or none), or prefix them with a letter to keep them as text",
              names)
        return as_int
    if (failed & text.str.contains(r"^[+-]?[0-9]+$")).any():
        return text
    as_float = text.cast(pl.Float64, strict=False)
    return as_float if not (as_float.is_null() & text.is_not_null()).any() else text


def _first_bad_line(path: Path, until: int | None = None, limit: int = 200) -> str | None:
    """Where a CSV that polars refused first breaks: the first record whose field count differs from
    the header's, or that Python's csv module cannot parse (an unbalanced quote makes a record swallow
    the lines after it). Lines end at ``\\n`` (or ``\\r\\n``) as polars reads them: a lone ``\\r`` is
    part of its line. Stops after the record polars numbers line ``until``. Runs only on error paths.
    None when it finds nothing or cannot read."""
    import csv
    import itertools

    def physical_lines() -> Iterator[str]:
        # newline="\n": a lone \r does not end a line; csv would end the record there, so blank it
        with open(path, newline="\n", encoding="utf-8", errors="replace") as f:
            for line in f:
                body = line.removesuffix("\n").removesuffix("\r")
                yield body.replace("\r", " ") + line[len(body):]

    def line_text(number: int) -> str:
        with open(path, newline="\n", encoding="utf-8", errors="replace") as f:
            text = next(itertools.islice(f, number - 1, None), "").removesuffix("\n").removesuffix("\r")
        return _excerpt(text, limit)

    start = 2  # the line the next record starts on
    try:
        reader = csv.reader(physical_lines())
        header = next(reader, None)
        if header is None:
            return None
        for line, record in enumerate(reader, start=2):
            if record and len(record) != len(header):
                return f"line {start} has {len(record)} fields, the header {len(header)}: {line_text(start)}"
            if until is not None and line >= until:
                return None
            start = reader.line_num + 1
    except csv.Error as e:
        text = line_text(start)
        quote = "; an unbalanced quote there runs on into the next lines" if '"' in text else ""
        return f"line {start} does not parse ({e}): {text}{quote}"
    except OSError:
        return None
    return None


def _excerpt(text: str, limit: int) -> str:
    """``repr(text)`` cut to about ``limit`` characters (escapes count), ending in '...' when cut."""
    shown: list[str] = []
    size = 2
    for ch in text:
        size += len(repr(ch)) - 2
        if size > limit:
            return repr("".join(shown) + "...")
        shown.append(ch)
    return repr(text)


def _check_short_rows(df: pl.DataFrame, path: Path, names: Mapping[str, str]) -> None:
    """Raise the CSV parse error for a row with fewer fields than the header (``47,48385`` under
    ``userId,movieId,rating,timestamp``), which polars fills with nulls. Runs only when a column of
    ``names`` (contract names) has a null, and reads the file only as far as the last of the
    columns' first nulls: the null row that validation would report, whichever column it checks first."""
    firsts = df.select(pl.col(LINE).filter(pl.col(k).is_null()).min().alias(k) for k in names if k in df.columns).row(0)
    lines = [line for line in firsts if line is not None]
    if not lines:
        return
    reason = _first_bad_line(path, until=int(max(lines)))
    if reason is not None:
        raise _csv_error(path, reason)


SEPARATORS = {";": "semicolons (;)", "\t": "tabs (\\t)", "|": "pipes (|)"}
"""Field separators other than the comma that a one-column header gives away."""


def _one_column_hint(header: str, file: str) -> str | None:
    """Why a file read as CSV has the single column ``header``, when that shows: another separator
    (``user_id;item_id;timestamp``), or a header quoted whole (``"user_id,item_id,timestamp"``)."""
    counts = {sep: header.count(sep) for sep in SEPARATORS}
    sep = max(counts, key=lambda k: counts[k])
    if counts[sep]:
        return (f"the file looks separated by {SEPARATORS[sep]}, but it is read as comma-separated CSV: rewrite it "
                f"with commas where it is (keep a copy first if you need the original), e.g. python -c \"import "
                f"polars as pl; f = {file!r}; pl.read_csv(f, separator={sep!r}).write_csv(f)\", and rerun")
    if "," in header:
        return ("the header is one field holding commas: its lines look quoted whole (\"a,b,c\"); remove the quotes "
                "around each line")
    return None


def _check_named_once(df: pl.DataFrame, columns: Iterable[str], file: str) -> None:
    """Raise when the header named one of ``columns`` more than once (polars keeps the first and
    renames the others ``<name>_duplicated_<n>``), so that which one is read is not a silent guess."""
    for v in columns:
        if (copies := 1 + sum(c.startswith(f"{v}_duplicated_") for c in df.columns)) > 1:
            raise DataError(f"{file}: the header names {v!r} {copies} times, so which column is meant is a guess; "
                            "rename or remove the extra ones")


def _select(df: pl.DataFrame, names: Mapping[str, str], file: str, fix: str) -> pl.DataFrame:
    """Keep the file columns ``names.values()`` (plus the line index), renamed to the contract."""
    missing = [v for v in names.values() if v not in df.columns]
    if missing:
        found = [c for c in df.columns if c != LINE]
        near = [(c, m) for m in missing for c in found if c != m and c.strip().lower() == m.lower()]
        if any(c.endswith("\r") for c in found):
            fix = "the header ends in a carriage return (\\r): the file has \\r\\r or mixed line endings; " \
                  "convert it to \\n or \\r\\n line endings (e.g. dos2unix) and reload"
        elif near:
            pairs = ", ".join(f"{c!r} for {m!r}" for c, m in near)
            fix = f"the header has {pairs}: names that differ only in spaces or case; correct them in the header line"
        elif len(found) == 1 and (hint := _one_column_hint(found[0], file)):
            fix = hint
        raise DataError(f"{file}: missing column(s) {missing} (found columns {found}); {fix}")
    _check_named_once(df, names.values(), file)
    extra = [LINE] if LINE in df.columns else []
    return df.select(*extra, *[pl.col(v).alias(k) for k, v in names.items()])
