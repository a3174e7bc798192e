"""split_clicks: exact small cases, and no-leakage properties on fixtures and synthetic logs."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys_cl.config import DataConfig, SplitConfig
from recsys_cl.data.errors import DataError
from recsys_cl.data.io import load_click_log
from recsys_cl.data.splits import Split, split_clicks
from recsys_cl.data.synthetic import generate_click_log

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LLO = SplitConfig(kind="leave_last_out")
TEMPORAL = SplitConfig(kind="temporal", val_quantile=0.6, test_quantile=0.8)


def frame(rows: list[tuple[int, int, int]]) -> pl.DataFrame:
    """(user, item, timestamp) rows in file order."""
    u, i, t = zip(*rows)
    return pl.DataFrame({"user_id": u, "item_id": i, "timestamp": t, "row_order": range(len(rows))},
                        schema={"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64,
                                "row_order": pl.Int64})


def key(df: pl.DataFrame) -> pl.Series:
    """Position in the global (timestamp, row_order) order, comparable across frames."""
    return df["timestamp"] * 1_000_000_000 + df["row_order"]


def assert_no_leakage(clicks: pl.DataFrame, split: Split) -> None:
    """Every history click (val: train; test: train + val) precedes the user's first target."""
    parts = (split.train, split.val, split.test)
    assert sum(p.height for p in parts) <= clicks.height
    assert pl.concat(parts)["row_order"].is_unique().all()  # disjoint
    for history, targets in ((split.train, split.val), (split.test_history(), split.test)):
        first_target = targets.with_columns(key(targets).alias("k")).group_by("user_id").agg(
            pl.col("k").min()
        )
        last_hist = history.with_columns(key(history).alias("h")).group_by("user_id").agg(
            pl.col("h").max()
        )
        joined = first_target.join(last_hist, on="user_id", how="inner")
        assert (joined["h"] < joined["k"]).all()
        assert joined.height == first_target.height  # every target user has a history


def test_leave_last_out_hand_worked() -> None:
    # user 1: 4 clicks, two tied at t=30 (row 3 is before row 4 in the file) -> test = item 13
    # user 2: 2 clicks -> all train; user 3: exactly 3 clicks
    clicks = frame([(1, 10, 10), (2, 20, 5), (1, 11, 20), (1, 12, 30), (1, 13, 30), (2, 21, 6),
                    (3, 30, 1), (3, 31, 2), (3, 32, 3)])
    s = split_clicks(clicks, LLO)
    assert s.protocol == "leave_last_out(ties=row_order)"
    assert s.test.select("user_id", "item_id").rows() == [(1, 13), (3, 32)]
    assert s.val.select("user_id", "item_id").rows() == [(1, 12), (3, 31)]
    assert s.train.select("user_id", "item_id").rows() == [(1, 10), (1, 11), (2, 20), (2, 21), (3, 30)]
    assert s.train.columns == clicks.columns
    assert_no_leakage(clicks, s)


def test_ties_follow_row_order_not_item_id() -> None:
    clicks = frame([(1, 99, 5), (1, 1, 5), (1, 50, 5)])  # all tied: file order decides
    s = split_clicks(clicks, LLO)
    assert (s.train["item_id"][0], s.val["item_id"][0], s.test["item_id"][0]) == (99, 1, 50)


def test_temporal_hand_worked() -> None:
    # timestamps 1..10: q=0.6 -> t_val = 6, q=0.8 -> t_test = 8 (lower interpolation)
    clicks = frame([(1, i, i) for i in range(1, 6)] + [(2, 6, 6), (1, 7, 7), (1, 8, 8), (2, 9, 9),
                                                       (3, 10, 10)])
    s = split_clicks(clicks, TEMPORAL)
    assert s.train["timestamp"].to_list() == [1, 2, 3, 4, 5]
    assert s.val["timestamp"].to_list() == [7]  # user 2 (t=6) has no train click: dropped
    assert s.test["timestamp"].to_list() == [8]  # users 2 and 3 have no train click: dropped
    assert "1970-01-01T00:00:06Z" in s.protocol and "1970-01-01T00:00:08Z" in s.protocol
    assert_no_leakage(clicks, s)


@pytest.mark.parametrize("cfg", [LLO, TEMPORAL], ids=["leave_last_out", "temporal"])
@pytest.mark.parametrize("fixture", ["ml-100k", "ml-1m"])
def test_no_leakage_on_fixtures(fixture: str, cfg: SplitConfig) -> None:
    clicks = load_click_log(DataConfig(path=str(FIXTURES / fixture))).clicks
    s = split_clicks(clicks, cfg)
    assert s.val.height > 0 and s.test.height > 0
    assert_no_leakage(clicks, s)
    if cfg.kind == "temporal":
        assert s.train["timestamp"].max() < s.val["timestamp"].min()  # type: ignore[operator]
        assert s.val["timestamp"].max() < s.test["timestamp"].min()  # type: ignore[operator]
    else:
        assert s.test.height == s.test["user_id"].n_unique() == s.val.height
        assert s.train.height + s.val.height + s.test.height == clicks.height


@pytest.mark.parametrize("cfg", [LLO, TEMPORAL], ids=["leave_last_out", "temporal"])
def test_no_leakage_on_synthetic_log(cfg: SplitConfig) -> None:
    clicks = generate_click_log(3_000, 500, seed=3).clicks.sample(fraction=1.0, shuffle=True, seed=0)
    s = split_clicks(clicks, cfg)
    assert_no_leakage(clicks, s)
    short = clicks.group_by("user_id").len().filter(pl.col("len") < 3)["user_id"]
    if cfg.kind == "leave_last_out":  # users with < 3 clicks keep everything in train
        assert not s.test["user_id"].is_in(short.implode()).any()


def test_test_history_is_train_plus_val() -> None:
    clicks = generate_click_log(500, 100, seed=1).clicks
    s = split_clicks(clicks, LLO)
    assert s.test_history().height == s.train.height + s.val.height
    assert s.sizes()["test_users"] == s.test["user_id"].n_unique()


def test_no_targets_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="no validation targets.*>= 3 clicks"):
        split_clicks(frame([(1, 1, 1), (1, 2, 2), (2, 1, 3)]), LLO)


def test_empty_log_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="empty"):
        split_clicks(frame([(1, 1, 1)]).clear(), LLO)


COLD = SplitConfig(kind="cold_start", val_quantile=0.6, test_quantile=0.8)


def test_cold_start_hand_worked() -> None:
    # user 1 clicks items 1..5 (train, t < 6), then 1 (warm) and 7 (cold) in val, 5 (warm), 8 and 7 in test
    clicks = frame([(1, i, i) for i in range(1, 6)] + [(1, 1, 6), (1, 7, 7), (1, 5, 8), (1, 8, 9),
                                                       (1, 7, 10)])
    s = split_clicks(clicks, COLD)
    assert s.cold_items is not None and s.cold_items.to_list() == [7, 8]
    assert s.val["item_id"].to_list() == [1, 7]  # the whole val period: test histories stay complete
    assert s.val_targets()["item_id"].to_list() == [7]
    assert s.test_targets()["item_id"].to_list() == [8, 7]
    assert s.test_history()["item_id"].to_list() == [1, 2, 3, 4, 5, 1, 7]
    assert s.protocol.startswith("cold_start(val>=1970-01-01T00:00:06Z")
    assert s.sizes()["cold_items_clicked"] == 2 and s.sizes()["test_clicks"] == 2
    assert s.train_end == 6  # t_val: item content is read as of this time
    assert_no_leakage(clicks, s)


def test_cold_start_item_clicked_only_in_the_validation_period_is_cold() -> None:
    # t_val = 6, t_test = 8 as above; item 7 is first clicked at t = 6 (val) and never in test,
    # item 8 only in test: both are cold, and 7 is the only validation target
    clicks = frame([(1, i, i) for i in range(1, 6)] + [(1, 7, 6), (1, 1, 7), (1, 8, 8), (1, 5, 9),
                                                       (1, 8, 10)])
    s = split_clicks(clicks, COLD)
    assert s.cold_items is not None and s.cold_items.to_list() == [7, 8]
    assert s.val_targets()["item_id"].to_list() == [7]
    assert s.test_targets()["item_id"].to_list() == [8, 8]
    assert_no_leakage(clicks, s)


def test_cold_start_targets_never_have_training_clicks() -> None:
    log = generate_click_log(300, 3000, seed=3)  # a long tail: many items are first clicked late
    s = split_clicks(log.clicks, SplitConfig(kind="cold_start"))
    warm = set(s.train["item_id"].to_list())
    for targets in (s.val_targets(), s.test_targets()):
        assert targets.height > 0 and not warm & set(targets["item_id"].to_list())
    temporal = split_clicks(log.clicks, SplitConfig(kind="temporal"))
    assert s.test.equals(temporal.test) and s.train.equals(temporal.train)


def test_cold_start_without_cold_clicks_is_a_clear_error() -> None:
    clicks = frame([(1, 1, t) for t in range(1, 11)])  # one item, always warm
    with pytest.raises(DataError, match="no validation targets.*cold_start needs clicks after the cutoffs"):
        split_clicks(clicks, COLD)


def test_train_end_is_the_training_cutoff_of_time_ordered_splits_only() -> None:
    clicks = frame([(1, i, i) for i in range(1, 11)] + [(2, i, i + 10) for i in range(1, 11)])
    temporal = split_clicks(clicks, SplitConfig(kind="temporal", val_quantile=0.6, test_quantile=0.8))
    assert temporal.train_end is not None
    assert temporal.train["timestamp"].max() < temporal.train_end <= temporal.val["timestamp"].min()
    assert split_clicks(clicks, LLO).train_end is None  # one cutoff per user, no global one


def test_temporal_targets_only_by_new_users_say_why_there_are_none() -> None:
    """Clicks after the test cutoff exist, but only by users with no training click: the message said
    only 'temporal needs clicks after the cutoffs', which they are."""
    clicks = frame([(1, 1, 1), (1, 2, 2), (2, 1, 3), (2, 2, 4), (3, 3, 5), (4, 1, 6), (5, 2, 7), (6, 3, 8), (7, 1, 9),
                    (8, 2, 10)])
    with pytest.raises(DataError, match="no validation targets.*temporal needs clicks after the cutoffs by users "
                                        "who also clicked before the first cutoff"):
        split_clicks(clicks, TEMPORAL)
