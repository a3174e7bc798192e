"""generate_click_log: contract, determinism, planted cluster structure, popularity skew."""

from __future__ import annotations

import polars as pl
import pytest

from recsys_cl.data.io import validate_clicks
from recsys_cl.data.synthetic import START, generate_click_log


def cluster_of_clicks(log: object) -> pl.DataFrame:
    clicks, items = log.clicks, log.items  # type: ignore[attr-defined]
    return clicks.join(items.select("item_id", pl.col("genres").list.first().alias("cluster")),
                       on="item_id")


def test_contract_and_validation() -> None:
    log = generate_click_log(200, 50, n_clusters=5, seed=0)
    c = log.clicks
    assert dict(c.schema) == {"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64,
                              "row_order": pl.Int64}
    assert validate_clicks(c, log.source, timestamp_unit="s").height == c.height
    assert log.items is not None and log.items.height == 50
    assert log.items.row(17, named=True) == {"item_id": 17, "title": "item 17",
                                             "genres": log.items["genres"][17].to_list()}
    assert log.items["genres"].list.len().eq(1).all()
    assert c["item_id"].is_in(log.items["item_id"].implode()).all()
    assert c["timestamp"].min() >= START  # type: ignore[operator]
    # timestamps non-decreasing per user, in row order
    assert c.select((pl.col("timestamp").diff().over("user_id") >= 0).fill_null(True).all()).item()


def test_deterministic_by_seed() -> None:
    a = generate_click_log(300, 80, seed=5)
    b = generate_click_log(300, 80, seed=5)
    c = generate_click_log(300, 80, seed=6)
    assert a.clicks.equals(b.clicks) and a.items is not None and b.items is not None
    assert a.items.equals(b.items)
    assert not a.clicks.equals(c.clicks)


def test_planted_structure_is_recoverable() -> None:
    log = generate_click_log(20_000, 5_000, n_clusters=20, clicks_per_user=20, seed=1)
    per_user = log.clicks.group_by("user_id").len()["len"]
    assert per_user.min() >= 1 and 17 < per_user.mean() < 23  # type: ignore[operator]
    clicks = cluster_of_clicks(log)
    # share of each user's clicks inside their 3 most-clicked clusters; random would be ~3/20
    share = (
        clicks.group_by("user_id", "cluster").len()
        .sort("len", descending=True)
        .group_by("user_id")
        .agg((pl.col("len").head(3).sum() / pl.col("len").sum()).alias("share"),
             pl.col("len").sum().alias("n"))
        .filter(pl.col("n") >= 10)
    )
    assert share["share"].mean() > 0.9  # type: ignore[operator]


@pytest.mark.parametrize("exponent", [0.0, 1.2])
def test_popularity_exponent_controls_skew(exponent: float) -> None:
    log = generate_click_log(5_000, 1_000, n_clusters=10, popularity_exponent=exponent, seed=2)
    counts = log.clicks.group_by("item_id").len()["len"].sort(descending=True)
    top_share = counts.head(50).sum() / counts.sum()  # top 5% of items
    if exponent == 0.0:
        assert top_share < 0.12
    else:
        assert top_share > 0.3


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_clusters"):
        generate_click_log(10, 5, n_clusters=6)
    with pytest.raises(ValueError, match="clicks_per_user"):
        generate_click_log(10, 5, n_clusters=2, clicks_per_user=0.5)
