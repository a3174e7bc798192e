"""Real-data cross-check on MovieLens latest-small (slow; run with --runslow, or as a script).

Protocol: every rating is a click; leave-last-out by timestamp (ties by file order); full ranking
over the train catalogue; history masked (val: train clicks, test: train + val clicks).
Reference numbers: EXPECTED_RECALL20 below, measured with this code. Run ``python tests/baselines/test_real_data.py``
to print the whole table.
"""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import pytest

from recsys_cl.baselines import tune_and_evaluate
from recsys_cl.eval.protocol import build_eval_set, interaction_matrix, protocol_name
from recsys_cl.features.vocab import Vocab

RATINGS = Path(__file__).resolve().parents[2] / "data" / "ml-latest-small" / "ratings.csv"
SPLIT = "leave_last_out(ties=row_order)"
GRIDS = {
    "popularity": None,
    "itemknn": {"k": [20]},
    "ease": {"lam": [10, 50, 100, 200, 500, 1000]},
}
# measured with this code (see the report); the test allows +-0.02 on test recall@20
EXPECTED_RECALL20 = {"popularity": 0.070, "ease": 0.151}


def leave_last_out(path: Path = RATINGS) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    clicks = (
        pl.read_csv(path)
        .rename({"userId": "user_id", "movieId": "item_id"})
        .with_row_index("row_order")
        .with_columns(pl.col("row_order").cast(pl.Int64))
        .sort("user_id", "timestamp", "row_order")
    )
    # 0 for each user's last click, 1 for the second-last, ...
    from_end = pl.col("row_order").cum_count().reverse().over("user_id") - 1
    clicks = clicks.with_columns(from_end.alias("from_end"))
    test = clicks.filter(pl.col("from_end") == 0)
    val = clicks.filter(pl.col("from_end") == 1)
    train = clicks.filter(pl.col("from_end") >= 2)
    return train, val, test


def run(names: tuple[str, ...] = tuple(GRIDS)) -> dict[str, dict]:
    train, val, test = leave_last_out()
    items = Vocab.from_values(train["item_id"], name="item_id")
    users = Vocab.from_values(train["user_id"], name="user_id")
    train_csr = interaction_matrix(train, users, items)
    val_set = build_eval_set(train, val, items, users, protocol_name(SPLIT, "val"))
    test_set = build_eval_set(pl.concat([train, val]), test, items, users, protocol_name(SPLIT, "test"))
    return {n: tune_and_evaluate(n, train_csr, val_set, test_set, GRIDS[n], ks=(10, 20, 50)) for n in names}


@pytest.mark.slow
@pytest.mark.skipif(not RATINGS.exists(), reason="data/ml-latest-small not present")
def test_movielens_small_matches_measured() -> None:
    res = run(("popularity", "ease"))
    for name, expected in EXPECTED_RECALL20.items():
        got = res[name]["test"]["recall@20"]
        assert abs(got - expected) <= 0.02, f"{name}: test recall@20 {got:.4f}, expected {expected} +- 0.02"
    assert res["ease"]["test"]["n_users"] == 610


if __name__ == "__main__":
    t0 = time.perf_counter()
    for name, r in run().items():
        print(name, r["params"], f"fit {r['fit_seconds']:.1f}s")
        print("  val ", {k: round(v, 4) for k, v in r["val"].items()})
        print("  test", {k: round(v, 4) for k, v in r["test"].items()})
        if len(r["val_by_params"]) > 1:
            print("  grid", [(p, round(v["ndcg@10"], 4)) for p, v in r["val_by_params"]])
    print(f"total {time.perf_counter() - t0:.1f}s")
    print(r["protocol_test"])
