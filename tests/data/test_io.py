"""load_click_log: the three MovieLens flavours, generic logs, and one test per bad-input case."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from recsys_cl.config import ColumnsConfig, DataConfig
from recsys_cl.data.errors import DataError
from recsys_cl.data.io import ClickLog, load_click_log, validate_clicks

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
ML_LATEST_SMALL = ROOT / "data" / "ml-latest-small"
CONTRACT = {"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64, "rating": pl.Float64,
            "row_order": pl.Int64}


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def ml_latest(tmp_path: Path, ratings: str, movies: str | None = None) -> Path:
    folder = tmp_path / "ml"
    write(folder / "ratings.csv", ratings)
    write(folder / "movies.csv", movies or "movieId,title,genres\n1,A (1990),Comedy\n2,B (1991),Drama\n")
    return folder


def generic(tmp_path: Path, text: str, **kw: object) -> DataConfig:
    path = write(tmp_path / "clicks.csv", text)
    return DataConfig(path=str(path), format="csv", **kw)  # type: ignore[arg-type]


def raises(cfg: DataConfig, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        load_click_log(cfg)
    msg = str(info.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


# --------------------------------------------------------------------------------------------
# Good inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not ML_LATEST_SMALL.exists(), reason="data/ml-latest-small not present")
def test_bundled_ml_latest_small() -> None:
    log = load_click_log(DataConfig(path=str(ML_LATEST_SMALL)))
    assert isinstance(log, ClickLog) and log.source.startswith("movielens-latest:")
    c = log.clicks
    assert dict(c.schema) == CONTRACT
    assert c.height == 100_836
    assert c["user_id"].n_unique() == 610 and c["item_id"].n_unique() == 9_724
    assert c["row_order"].to_list() == list(range(c.height))
    assert log.items is not None and log.items.height == 9_742
    assert log.items.schema["genres"] == pl.List(pl.String)
    toy = log.items.filter(pl.col("item_id") == 1).row(0, named=True)
    assert toy["title"] == "Toy Story (1995)"
    assert toy["genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert "pixar" in toy["tags"]  # tags.csv aggregated, lowercased
    quoted = log.items.filter(pl.col("item_id") == 11)["title"][0]
    assert quoted == "American President, The (1995)"  # quoted title with a comma
    assert all(t == t.lower() for tags in log.items["tags"] for t in tags)
    assert log.item_tags is not None and log.item_tags.height == 3_683  # one row per tag application
    assert dict(log.item_tags.schema) == {"item_id": pl.Int64, "tag": pl.String, "timestamp": pl.Int64}


def test_ml_100k_fixture_latin1_and_genre_flags() -> None:
    log = load_click_log(DataConfig(path=str(FIXTURES / "ml-100k")))
    assert log.source.startswith("movielens-100k:")
    assert dict(log.clicks.schema) == CONTRACT and log.clicks.height == 48
    assert log.items is not None
    assert "Café au lait (1993)" in log.items["title"].to_list()
    toy = log.items.filter(pl.col("item_id") == 1)["genres"][0].to_list()
    assert toy == ["Action", "Adventure", "Children's"]
    assert log.items.filter(pl.col("item_id") == 12)["genres"][0].to_list() == []  # 'unknown' only
    assert load_click_log(DataConfig(path=str(FIXTURES / "ml-100k"), format="ml-100k")).clicks.equals(
        log.clicks
    )


def test_ml_1m_fixture() -> None:
    log = load_click_log(DataConfig(path=str(FIXTURES / "ml-1m")))
    assert log.source.startswith("movielens-1m:")
    assert dict(log.clicks.schema) == CONTRACT and log.clicks.height == 48
    first = log.clicks.row(0, named=True)
    assert (first["user_id"], first["item_id"], first["timestamp"]) == (1, 6, 978300500)
    assert log.items is not None
    row = log.items.filter(pl.col("item_id") == 2).row(0, named=True)
    assert row["title"] == "Crème brûlée (1993)" and row["genres"] == ["Comedy", "Romance"]


def test_ml_latest_crlf_quotes_and_no_genres(tmp_path: Path) -> None:
    folder = ml_latest(
        tmp_path,
        "userId,movieId,rating,timestamp\r\n1,1,4.0,964982703\r\n1,2,3.5,964982704\r\n",
        'movieId,title,genres\r\n1,"Dog, The (1990)",(no genres listed)\r\n2,B (1991),Drama|Crime\r\n',
    )
    log = load_click_log(DataConfig(path=str(folder)))
    assert log.items is not None and "tags" not in log.items.columns  # no tags.csv
    assert log.items["title"].to_list() == ["Dog, The (1990)", "B (1991)"]
    assert log.items["genres"].to_list() == [[], ["Drama", "Crime"]]
    assert log.clicks["timestamp"].to_list() == [964982703, 964982704]


def test_min_rating_filters_and_renumbers_row_order(tmp_path: Path) -> None:
    folder = ml_latest(tmp_path, "userId,movieId,rating,timestamp\n1,1,2.0,10\n1,2,4.0,11\n2,1,5,12\n")
    log = load_click_log(DataConfig(path=str(folder), min_rating=3.5))
    assert log.clicks["rating"].to_list() == [4.0, 5.0]
    assert log.clicks["row_order"].to_list() == [0, 1]


def test_generic_csv_string_ids_dates_and_items(tmp_path: Path) -> None:
    items = write(tmp_path / "items.csv", "item_id,title,genres\na,Apple,x|y\nb,Bean,\n")
    cfg = generic(
        tmp_path,
        "uid,iid,when,kind\nu1,a,2020-01-01 00:00:00,click\nu2,b,2020-01-02T00:00:00,buy\n",
        columns=ColumnsConfig(user_id="uid", item_id="iid", timestamp="when", event_type="kind"),
        items_path=str(items),
    )
    log = load_click_log(cfg)
    assert log.clicks.columns == ["user_id", "item_id", "timestamp", "event_type", "row_order"]
    assert log.clicks.schema["user_id"] == pl.String
    assert log.clicks["timestamp"].to_list() == [1577836800, 1577923200]
    assert log.items is not None and log.items["genres"].to_list() == [["x", "y"], []]


def test_generic_csv_mixed_date_formats(tmp_path: Path) -> None:
    # polars infers one format from the first value: the offset and date-only rows came back null
    # and were refused as "unparseable" although they are ISO-8601.
    cfg = generic(tmp_path, "user_id,item_id,timestamp\n1,2,2020-01-01 00:00:00\n1,3,2020-01-01T03:00:00+02:00\n"
                            "1,4,2020-01-02\n1,5,2020-01-01T00:00:09Z\n1,6,1577836805\n1,7,2020-01-01 00:00:01.750\n")
    log = load_click_log(cfg)
    assert log.clicks["timestamp"].to_list() == [1577836800, 1577840400, 1577923200, 1577836809, 1577836805,
                                                 1577836801]


def test_unparseable_timestamp_first_in_mixed_column(tmp_path: Path) -> None:
    raises(generic(tmp_path, "user_id,item_id,timestamp\n1,2,soon\n1,3,2020-01-01\n1,4,2020-01-01T00:00:00+01:00\n"),
           "1 unparseable timestamps", "line 2", "timestamp='soon'")


def test_generic_parquet_milliseconds_auto_converted(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pl.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "timestamp": [1_600_000_000_123, 1_600_000_001_999]}
                 ).write_parquet(path)
    log = load_click_log(DataConfig(path=str(path), format="parquet"))
    assert log.clicks["timestamp"].to_list() == [1_600_000_000, 1_600_000_001]
    assert log.items is None


def test_drop_duplicates_keeps_first(tmp_path: Path) -> None:
    cfg = generic(tmp_path, "user_id,item_id,timestamp\n1,2,100\n1,2,100\n1,3,101\n", drop_duplicates=True)
    assert load_click_log(cfg).clicks["item_id"].to_list() == [2, 3]


# --------------------------------------------------------------------------------------------
# Bad inputs: each message names the file, the column, the count, an example and the fix
# --------------------------------------------------------------------------------------------


def test_missing_path() -> None:
    raises(DataConfig(path="no/such/folder"), "data.path", "no/such/folder", "does not exist")


def test_folder_without_movielens_files(tmp_path: Path) -> None:
    write(tmp_path / "notes.txt", "hi")
    raises(DataConfig(path=str(tmp_path)), "notes.txt", "ratings.csv", "u.data", "ratings.dat")


def test_missing_column_lists_found_columns(tmp_path: Path) -> None:
    folder = ml_latest(tmp_path, "userId,movieId,rating\n1,1,4.0\n")
    raises(DataConfig(path=str(folder)), "ratings.csv", "missing column(s) ['timestamp']",
           "found columns ['userId', 'movieId', 'rating']")


def test_generic_missing_column_names_config_key(tmp_path: Path) -> None:
    raises(generic(tmp_path, "user,item_id,timestamp\n1,2,3\n"), "clicks.csv", "['user_id']",
           "data.columns.user_id")


def test_non_integer_user_id_in_movielens(tmp_path: Path) -> None:
    folder = ml_latest(tmp_path, "userId,movieId,rating,timestamp\n1,1,4.0,964982703\nbob,2,3.0,964982704\n")
    raises(DataConfig(path=str(folder)), "ratings.csv", "'userId'", "1 non-integer values", "line 3",
           "userId='bob'", "integer ids")


def test_non_numeric_timestamp_in_movielens(tmp_path: Path) -> None:
    folder = ml_latest(tmp_path, "userId,movieId,rating,timestamp\n1,1,4.0,yesterday\n1,2,3.0,x\n")
    raises(DataConfig(path=str(folder)), "ratings.csv", "'timestamp'", "2 non-numeric timestamps",
           "line 2", "unix seconds")


def test_null_values(tmp_path: Path) -> None:
    folder = ml_latest(tmp_path, "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,,3.0,964982704\n")
    raises(DataConfig(path=str(folder)), "ratings.csv", "'movieId'", "1 null values", "line 3",
           "drop or fill")


def test_unparseable_timestamps_in_generic_log(tmp_path: Path) -> None:
    raises(generic(tmp_path, "user_id,item_id,timestamp\n1,2,2020-01-01\n1,3,soon\n"), "clicks.csv",
           "'timestamp'", "1 unparseable timestamps", "line 3", "ISO-8601")


def test_timestamp_before_1970(tmp_path: Path) -> None:
    raises(generic(tmp_path, "user_id,item_id,timestamp\n1,2,-5\n1,3,100\n"), "clicks.csv",
           "1 timestamps before 1970", "line 2", "data.timestamp_unit")


def test_timestamp_in_future(tmp_path: Path) -> None:
    raises(generic(tmp_path, "user_id,item_id,timestamp\n1,2,99999999999\n"), "clicks.csv",
           "1 timestamps in the future", "line 2", "data.timestamp_unit")


def test_milliseconds_with_unit_seconds(tmp_path: Path) -> None:
    cfg = generic(tmp_path, "user_id,item_id,timestamp\n1,2,1600000000000\n", timestamp_unit="s")
    raises(cfg, "clicks.csv", "'timestamp'", "look like milliseconds", "data.timestamp_unit=ms")


def test_mixed_seconds_and_milliseconds(tmp_path: Path) -> None:
    cfg = generic(tmp_path, "user_id,item_id,timestamp\n1,2,1600000000\n1,3,1600000000000\n")
    raises(cfg, "clicks.csv", "1 values above 1e11", "line 3", "one unit")


def test_empty_file(tmp_path: Path) -> None:
    folder = tmp_path / "ml100k"
    write(folder / "u.data", "\n")
    raises(DataConfig(path=str(folder)), "u.data", "empty (zero rows)")


def test_header_only_csv(tmp_path: Path) -> None:
    raises(generic(tmp_path, "user_id,item_id,timestamp\n"), "clicks.csv", "empty (zero click rows)")


def test_duplicate_rows(tmp_path: Path) -> None:
    folder = ml_latest(tmp_path, "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,4.0,11\n1,1,2.0,10\n")
    raises(DataConfig(path=str(folder)), "ratings.csv", "(userId, movieId, timestamp)",
           "1 duplicate rows", "line 4", "data.drop_duplicates=true")


def test_clicked_items_absent_from_item_table(tmp_path: Path) -> None:
    folder = ml_latest(tmp_path, "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,7,4.0,11\n2,7,1.0,12\n")
    raises(DataConfig(path=str(folder)), "ratings.csv", "2 clicks on 1 item ids", "movies.csv",
           "line 3", "item_id=7", "drop those clicks")


def test_malformed_double_colon_line(tmp_path: Path) -> None:
    folder = tmp_path / "ml1m"
    write(folder / "ratings.dat", "1::2::5::978300760\n1::3::978300761\n")
    raises(DataConfig(path=str(folder)), "ratings.dat", "1 of 2 lines", "4 fields", "line 2",
           "'1::3::978300761'")


def test_malformed_tab_line(tmp_path: Path) -> None:
    folder = tmp_path / "ml100k"
    write(folder / "u.data", "1\t2\t5\t874965758\n\n1 3 4 874965759\n")
    raises(DataConfig(path=str(folder), format="ml-100k"), "u.data", "line 3", "'\\t'")


def test_ragged_csv_names_the_line(tmp_path: Path) -> None:
    folder = ml_latest(tmp_path, "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,4.0,11,extra\n")
    raises(DataConfig(path=str(folder)), "ratings.csv", "could not be parsed as CSV",
           "line 3 has 5 fields, the header 4: '1,2,4.0,11,extra'")


def test_unbalanced_quote_names_the_line_it_starts_on(tmp_path: Path) -> None:
    rows = "".join(f"1,{i},4.0,{i}\n" for i in range(3, 40_000))  # the quote swallows them all
    folder = ml_latest(tmp_path, 'userId,movieId,rating,timestamp\n1,1,4.0,10\n"1,2,4.0,11\n' + rows)
    raises(DataConfig(path=str(folder)), "ratings.csv", "could not be parsed as CSV", "line 3 does not parse",
           "'\"1,2,4.0,11'", "unbalanced quote")


def test_a_parquet_file_read_as_csv_says_set_format_parquet(tmp_path: Path) -> None:
    """It said 'could not be parsed as CSV (line 3 has 1 fields, the header 2: ...)' with hundreds of
    escaped binary bytes and no hint; the reverse case already suggests data.format=csv."""
    path = tmp_path / "clicks.csv"
    pl.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "timestamp": [10, 11]}).write_parquet(path)
    msg = raises(DataConfig(path=str(path), format="csv"),
                 f"{path} is a Parquet file (it starts with PAR1), not CSV; set data.format=parquet")
    assert "\\x" not in msg and len(msg) < 300
    folder = ml_latest(tmp_path, "")
    (folder / "ratings.csv").write_bytes(path.read_bytes())
    raises(DataConfig(path=str(folder)), "ratings.csv is a Parquet file (it starts with PAR1)",
           "put back the file from the download", "data.format=parquet")


@pytest.mark.parametrize("head, what", [
    (b"\x1f\x8b\x08\x00", "gzip-compressed (it starts with the bytes 1f 8b), not CSV text; decompress it"),
    (b"PK\x03\x04", "a zip archive (it starts with PK), not CSV text; unzip it"),
    ("user_id,item_id,timestamp\n1,2,3\n".encode("utf-16"), "UTF-16 text"),
    (b"\x07\x00\x00\x01" * 100, "binary, not CSV text (it holds NUL bytes; it starts with b'\\x07\\x00"),
], ids=["gzip", "zip", "utf-16", "nul-bytes"])
def test_binary_content_read_as_csv_says_what_it_is(tmp_path: Path, head: bytes, what: str) -> None:
    path = tmp_path / "clicks.csv"
    path.write_bytes(head + b"\x00\x01,\x02\n" * 100)
    msg = raises(DataConfig(path=str(path), format="csv"), what)
    assert len(msg) < 300  # a short escaped excerpt at most, never the file's bytes


def test_binary_in_a_bad_line_is_shown_as_a_short_excerpt(tmp_path: Path) -> None:
    head = "user_id,item_id,timestamp\n" + "1,2,3\n" * 2000  # past the first 8 KiB, no NUL: not sniffed
    msg = raises(generic(tmp_path, head + "1,2," + "\x01" * 1000 + ",4\n"),
                 "line 2002 has 4 fields, the header 3: '1,2,\\x01")
    assert len(msg) < 500 and "...'" in msg
    msg = raises(generic(tmp_path, head + "1,2," + "\x01" * 1000 + "\n"), "1 unparseable timestamps", "line 2002",
                 "timestamp='\\x01")
    assert len(msg) < 500 and "...(cut)" in msg


def test_a_truncated_row_says_how_many_fields_it_has(tmp_path: Path) -> None:
    """It said "column 'rating' has 1 null values ... line 3": right line, wrong problem."""
    folder = ml_latest(tmp_path, "userId,movieId,rating,timestamp\n1,1,4.0,10\n47,48385\n1,2,4.0,11\n")
    msg = raises(DataConfig(path=str(folder)), "ratings.csv could not be parsed as CSV",
                 "line 3 has 2 fields, the header 4: '47,48385'")
    assert "null" not in msg
    raises(generic(tmp_path, "user_id,item_id,timestamp\n1,2,3\n1,2\n"), "clicks.csv could not be parsed as CSV",
           "line 3 has 2 fields, the header 3: '1,2'")
    write(folder / "tags.csv", "userId,movieId,tag,timestamp\n1,1,fun,100\n1,1,odd\n")
    write(folder / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,10\n")
    raises(DataConfig(path=str(folder)), "tags.csv could not be parsed as CSV", "line 3 has 3 fields, the header 4")


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_an_empty_field_is_still_a_null_value_and_a_later_short_row_is_found(tmp_path: Path, eol: str) -> None:
    rows = ["userId,movieId,rating,timestamp", "1,1,4.0,10", "1,2,,11", "1,3,4.0,12", ""]
    raises(DataConfig(path=str(ml_latest(tmp_path, eol.join(rows)))), "'rating'", "1 null values", "line 3")
    rows[3] = "1,3"  # validation checks 'timestamp' before 'rating', so it would report this row
    raises(DataConfig(path=str(ml_latest(tmp_path, eol.join(rows)))), "line 4 has 2 fields, the header 4: '1,3'")


def test_crlf_files_report_the_right_line_and_text(tmp_path: Path) -> None:
    """ratings.csv ships with \\r\\n endings. A field appended after the \\r was reported one line late
    ("line 4 ... ',extra'"): the old scan ended lines at a lone \\r, polars does not."""
    rows = ["userId,movieId,rating,timestamp", "1,1,4.0,10", "1,2,4.0,11", "1,3,4.0,12\r,extra", "1,4,4.0,13", ""]
    raises(DataConfig(path=str(ml_latest(tmp_path, "\r\n".join(rows)))), "could not be parsed as CSV",
           "line 4 has 5 fields, the header 4: '1,3,4.0,12\\r,extra'")
    rows[3] = "1,3,4.0,12,extra"
    raises(DataConfig(path=str(ml_latest(tmp_path, "\r\n".join(rows)))),
           "line 4 has 5 fields, the header 4: '1,3,4.0,12,extra'")
    rows[3] = "47,48385"
    raises(DataConfig(path=str(ml_latest(tmp_path, "\r\n".join(rows)))),
           "line 4 has 2 fields, the header 4: '47,48385'")


def test_header_with_a_stray_carriage_return_says_so(tmp_path: Path) -> None:
    folder = ml_latest(tmp_path, "userId,movieId,rating,timestamp\r\r\n1,1,4.0,10\r\r\n")
    raises(DataConfig(path=str(folder)), "missing column(s) ['timestamp']", "carriage return", "dos2unix")


@pytest.mark.parametrize("sep, what", [(";", "semicolons (;)"), ("\t", "tabs (\\t)"), ("|", "pipes (|)")])
def test_a_file_separated_by_another_character_says_so(tmp_path: Path, sep: str, what: str) -> None:
    """It said only 'set data.columns.*', which cannot help: the whole header is one column."""
    text = sep.join(["user_id", "item_id", "rating", "timestamp"]) + "\n" + sep.join(["1", "2", "4", "10"]) + "\n"
    cfg = generic(tmp_path, text)
    msg = raises(cfg, "missing column(s) ['user_id', 'item_id', 'timestamp']",
                 f"the file looks separated by {what}, but it is read as comma-separated CSV")
    assert "data.columns" not in msg
    ratings = text.replace("user_id", "userId").replace("item_id", "movieId")
    movielens = DataConfig(path=str(ml_latest(tmp_path, ratings)))
    for config in (cfg, movielens):  # the command the message gives fixes the file, and the same config loads
        fix = re.search(r'python -c "(.*)", and rerun', raises(config, f"looks separated by {what}"))
        assert fix is not None
        exec(fix.group(1))
        assert load_click_log(config).clicks.height == 1


def test_a_header_quoted_whole_says_so(tmp_path: Path) -> None:
    raises(generic(tmp_path, '"user_id,item_id,timestamp"\n"1,2,10"\n'), "found columns ['user_id,item_id,timestamp']",
           "the header is one field holding commas: its lines look quoted whole", "remove the quotes around each line")


def test_folder_with_ratings_but_no_movies_names_the_missing_file(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,10\n")
    raises(DataConfig(path=str(tmp_path)), "has ratings.csv but no movies.csv")


def test_min_rating_without_rating_column(tmp_path: Path) -> None:
    raises(generic(tmp_path, "user_id,item_id,timestamp\n1,2,3\n", min_rating=4.0), "data.min_rating",
           "no rating column", "data.columns.rating")


def test_duplicate_item_ids_in_item_table(tmp_path: Path) -> None:
    folder = ml_latest(tmp_path, "userId,movieId,rating,timestamp\n1,1,4.0,10\n",
                       "movieId,title,genres\n1,A,Comedy\n1,A again,Drama\n")
    raises(DataConfig(path=str(folder)), "movies.csv", "'item_id'", "2 rows with a repeated id",
           "one row per item")


def test_validate_clicks_direct_call_reports_row() -> None:
    df = pl.DataFrame({"user_id": [1, 2], "item_id": [1, None], "timestamp": [10, 11]})
    with pytest.raises(DataError, match=r"events.parquet: column 'item_id' has 1 null values .*row 1"):
        validate_clicks(df, "events.parquet")


TAGS = "userId,movieId,tag,timestamp\n1,1, Funny ,100\n2,1,dark,300\n2,2,slow,200\n3,1,funny,400\n"


def test_tags_keep_their_timestamps_and_items_as_of_a_cutoff(tmp_path: Path) -> None:
    folder = ml_latest(tmp_path, "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,3.0,20\n")
    write(folder / "tags.csv", TAGS)
    log = load_click_log(DataConfig(path=str(folder)))
    assert log.items is not None and log.items["tags"].to_list() == [["dark", "funny"], ["slow"]]
    assert log.item_tags is not None and log.item_tags.height == 4
    as_of = log.items_as_of(300)  # strictly before 300: 'dark' (300) is not known yet
    assert as_of is not None and as_of["tags"].to_list() == [["funny"], ["slow"]]
    assert as_of.drop("tags").equals(log.items.drop("tags"))  # title, genres: unchanged, same order
    early = log.items_as_of(150)
    assert early is not None and early["tags"].to_list() == [["funny"], []]
    assert log.items_as_of(None) is log.items


def test_malformed_tag_timestamp_is_a_clear_error(tmp_path: Path) -> None:
    folder = ml_latest(tmp_path, "userId,movieId,rating,timestamp\n1,1,4.0,10\n")
    write(folder / "tags.csv", "userId,movieId,tag,timestamp\n1,1,fun,100\n1,1,odd,yesterday\n")
    raises(DataConfig(path=str(folder)), "tags.csv: column 'timestamp'", "not integer unix seconds",
           "first at line 3", "timestamp='yesterday'")
    write(folder / "tags.csv", "userId,movieId,tag\n1,1,fun\n")
    raises(DataConfig(path=str(folder)), "missing column(s) ['timestamp']", "userId,movieId,tag,timestamp")


def test_integer_ids_beyond_int64_are_a_data_error_not_a_polars_crash(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pl.DataFrame({"user_id": pl.Series([2**63 + 5, 1], dtype=pl.UInt64), "item_id": [2, 3],
                  "timestamp": [1_600_000_000, 1_600_000_001]}).write_parquet(path)
    raises(DataConfig(path=str(path), format="parquet"), "log.parquet", "'user_id'",
           "1 values outside the 64-bit integer range", "row 0 (counting from 0)", "store the ids as strings")


def test_csv_ids_written_two_ways_for_one_number_are_refused(tmp_path: Path) -> None:
    """'007' and '7' both read as the integer 7 merged two users silently."""
    raises(generic(tmp_path, "user_id,item_id,timestamp\n7,2,100\n007,3,101\n0012,4,102\n"), "clicks.csv",
           "'user_id'", "1 ids that equal another id as numbers", "line 3", "user_id='007'",
           "write each id one way")
    items = write(tmp_path / "items.csv", "item_id,title\n01,A\n1,B\n")
    raises(generic(tmp_path, "user_id,item_id,timestamp\n1,1,100\n", items_path=str(items)), "items.csv",
           "'item_id'", "line 2", "item_id='01'")
    padded = generic(tmp_path, "user_id,item_id,timestamp\n007,0002,100\n0012,0003,101\n")  # one way each: fine
    assert load_click_log(padded).clicks["user_id"].to_list() == [7, 12]


def test_csv_ids_beyond_int64_stay_text_and_plain_ids_stay_integers(tmp_path: Path) -> None:
    big = generic(tmp_path, "user_id,item_id,timestamp\n99999999999999999999,2,100\n1,3,101\n")
    assert load_click_log(big).clicks["user_id"].to_list() == ["99999999999999999999", "1"]
    plain = generic(tmp_path, "user_id,item_id,timestamp\n 1,2.0,100\n1 ,3,101\n")
    clicks = load_click_log(plain).clicks
    assert clicks.schema["user_id"] == pl.Int64 and clicks["user_id"].to_list() == [1, 1]
    assert clicks["item_id"].to_list() == [2, 3]


def test_an_empty_quoted_csv_id_is_a_null_value(tmp_path: Path) -> None:
    raises(generic(tmp_path, 'user_id,item_id,timestamp\nu1,2,100\n"",3,101\n'), "clicks.csv", "'user_id'",
           "1 null values", "line 3")


def test_non_utf8_csv_names_the_line_and_how_to_convert(tmp_path: Path) -> None:
    path = tmp_path / "clicks.csv"
    path.write_bytes(b"user_id,item_id,timestamp\nalice,2,100\n\xe9l\xe8ve,3,101\n")
    msg = raises(DataConfig(path=str(path), format="csv"), "clicks.csv", "not UTF-8", "line 3", "0xe9",
                 "iconv")
    assert "alice" not in msg


def test_item_table_genres_that_are_not_lists_or_text_are_a_data_error(tmp_path: Path) -> None:
    items = tmp_path / "items.parquet"
    pl.DataFrame({"item_id": [2, 3], "genres": [7, 8]}).write_parquet(items)
    cfg = generic(tmp_path, "user_id,item_id,timestamp\n1,2,100\n1,3,101\n", items_path=str(items))
    raises(cfg, "items.parquet", "'genres'", "Int64", "list of strings", "'Action|Comedy'",
           "cast(pl.String)")


def test_an_empty_item_table_is_named_as_the_item_table(tmp_path: Path) -> None:
    items = write(tmp_path / "items.csv", "")
    cfg = generic(tmp_path, "user_id,item_id,timestamp\n1,2,100\n", items_path=str(items))
    msg = raises(cfg, "items.csv is empty", "data.items_path")
    assert "click rows" not in msg


def test_numeric_timestamps_all_in_1970_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """YYYYMMDD integers (20200102 s is 1970-08-22) or days since 1970 load as seconds; say so."""
    cfg = generic(tmp_path, "user_id,item_id,timestamp\n1,2,20200101\n1,3,20200102\n")
    with caplog.at_level("WARNING", logger="recsys_cl.data.validate"):
        load_click_log(cfg)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "clicks.csv" in warned[0] and "20200102 s, is 1970-08-22" in warned[0], warned
    assert "YYYYMMDD" in warned[0] and "unix seconds" in warned[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="recsys_cl.data.validate"):
        load_click_log(generic(tmp_path, "user_id,item_id,timestamp\n1,2,1600000000\n1,3,2020-01-02\n"))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize("header, shown", [("user_id, item_id, timestamp", "' item_id'"),
                                           ("User_ID,Item_ID,Timestamp", "'User_ID'")])
def test_a_header_that_differs_only_in_spaces_or_case_says_so(tmp_path: Path, header: str, shown: str) -> None:
    raises(generic(tmp_path, f"{header}\n1,2,100\n"), "clicks.csv", shown, "differ only in spaces or case",
           "correct them in the header line")


def test_a_column_named_twice_in_the_header_is_refused(tmp_path: Path) -> None:
    """polars keeps the first and renames the second 'user_id_duplicated_0': which one is meant is a guess."""
    raises(generic(tmp_path, "user_id,item_id,timestamp,user_id\n1,2,100,3\n"), "clicks.csv",
           "the header names 'user_id' 2 times", "rename or remove")


def test_an_item_table_naming_item_id_twice_is_refused(tmp_path: Path) -> None:
    items = write(tmp_path / "items.csv", "item_id,title,item_id\n2,A,3\n")
    raises(generic(tmp_path, "user_id,item_id,timestamp\n1,2,100\n", items_path=str(items)), "items.csv",
           "the header names 'item_id' 2 times")


def test_item_id_minus_one_is_refused_at_load_not_after_training(tmp_path: Path) -> None:
    """-1 pads the ANN index's short results: a log with it trained, then build_index and
    generate_candidates failed with a raw 'item id -1 is reserved as the padding sentinel'."""
    raises(generic(tmp_path, "user_id,item_id,timestamp\n-1,2,100\n1,-1,101\n"), "clicks.csv", "'item_id'",
           "1 reserved ids (-1)", "line 3", "renumber")
    items = write(tmp_path / "items.csv", "item_id,title\n2,A\n-1,B\n")
    raises(generic(tmp_path, "user_id,item_id,timestamp\n1,2,100\n", items_path=str(items)), "items.csv",
           "'item_id'", "1 reserved ids (-1)", "line 3")


def test_an_item_table_with_an_upper_case_parquet_suffix_is_read_as_parquet(tmp_path: Path) -> None:
    """It was read as CSV, and the error said to rename ITEMS.PARQUET 'to end in .parquet'."""
    items = tmp_path / "ITEMS.PARQUET"
    pl.DataFrame({"item_id": [2, 3], "title": ["A", "B"]}).write_parquet(items)
    log = load_click_log(generic(tmp_path, "user_id,item_id,timestamp\n1,2,100\n", items_path=str(items)))
    assert log.items is not None and log.items["title"].to_list() == ["A", "B"]


@pytest.mark.parametrize("col,value", [("item_id", ""), ("user_id", "  ")])
def test_blank_string_ids_are_refused(tmp_path: Path, col: str, value: str) -> None:
    # a blank id is a missing value (CSV reads it as null; Parquet keeps ''); a blank item id also
    # failed late, at index build ('' pads string ids)
    rows = {"user_id": ["u1", "u2"], "item_id": ["a", "b"], "timestamp": [1577836800, 1577836801]}
    rows[col][1] = value
    path = tmp_path / "log.parquet"
    pl.DataFrame(rows).write_parquet(path)
    raises(DataConfig(path=str(path), format="parquet"), f"'{col}'", "1 empty or blank ids", "row 1 (counting from 0)",
           "drop or fill")


def test_blank_item_id_in_the_item_table_is_refused(tmp_path: Path) -> None:
    items = tmp_path / "items.parquet"
    pl.DataFrame({"item_id": ["a", ""], "title": ["Apple", "Blank"], "genres": [["x"], ["y"]]}).write_parquet(items)
    raises(generic(tmp_path, "user_id,item_id,timestamp\nu1,a,1577836800\n", items_path=str(items)),
           "items.parquet", "'item_id'", "1 empty or blank ids", "row 1 (counting from 0)")
