"""Candidate generation library: the date window, seen filtering, chunking, determinism, bad input."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from recsys_cl.candidates import (
    CandidatesError,
    UserHistories,
    Window,
    active_users,
    batch_from_lists,
    check_clicks,
    clicks_up_to,
    parse_run_date,
    partition_stats,
    read_partition,
    run,
    topk_unseen,
)
from recsys_cl.config import CandidatesConfig
from recsys_cl.features.sequences import Sequences
from recsys_cl.features.vocab import Vocab
from recsys_cl.index.exact import ExactIndex

LAST_DATE = "1997-09-23"  # the fixture's last click date (see conftest.py)

DAY = 86400
D0 = 1_700_006_400  # 2023-11-15 00:00 UTC


def _clicks(rows: list[tuple[int, int, int]]) -> pl.DataFrame:
    u, i, t = zip(*rows)
    return pl.DataFrame({"user_id": list(u), "item_id": list(i), "timestamp": list(t)},
                        schema={"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64}
                        ).with_row_index("row_order").with_columns(pl.col("row_order").cast(pl.Int64))


# -- dates and window ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["2024-13-01", "2024-02-30", "24-01-01", "2024/01/01", "2024-1-1", ""])
def test_malformed_date_names_the_format(bad: str) -> None:
    with pytest.raises(CandidatesError, match=r"expected YYYY-MM-DD"):
        parse_run_date(bad)


def test_window_bounds_are_utc_days() -> None:
    w = Window(date(2023, 11, 15), lookback_days=2)
    assert w.start == D0 - DAY and w.end == D0 + DAY
    assert "2023-11-14 00:00" in str(w) and "2023-11-16 00:00" in str(w)


def test_active_users_and_history_never_read_the_future() -> None:
    clicks = _clicks([
        (1, 10, D0 - 5 * DAY),        # user 1: only old clicks -> not active with lookback 2
        (2, 10, D0 - DAY),            # user 2: first second of the window -> active
        (3, 11, D0 + DAY - 1),        # user 3: last second of the run date -> active
        (4, 12, D0 + DAY),            # user 4: first second after the run date -> never read
        (3, 12, D0 + 3 * DAY),        # user 3's future click -> not in its history
    ])
    run_date = date(2023, 11, 15)
    assert list(active_users(clicks, run_date, 2)) == [2, 3]
    assert list(active_users(clicks, run_date, 6)) == [1, 2, 3]
    hist = clicks_up_to(clicks, run_date)
    assert hist["timestamp"].max() < Window(run_date, 1).end
    assert 12 not in hist["item_id"].to_list()


def test_empty_window_names_the_window_and_last_date() -> None:
    clicks = _clicks([(1, 10, D0)])
    with pytest.raises(CandidatesError, match=r"no clicks in the window \[2024-01-01 00:00, 2024-01-02 00:00\)"
                       r".*2023-11-15 \.\. 2023-11-15"):
        active_users(clicks, date(2024, 1, 1), 1)


def test_a_date_before_the_data_names_its_span() -> None:
    with pytest.raises(CandidatesError, match=r"no clicks on or before the run date 1990-01-01: the data spans "
                                              r"2023-11-15 \.\. 2023-11-15; pick --date"):
        clicks_up_to(_clicks([(1, 10, D0)]), date(1990, 1, 1))
    assert clicks_up_to(_clicks([(1, 10, D0)]).clear(), date(1990, 1, 1)).height == 0  # empty log: callers say so


@pytest.mark.parametrize("run_date, lookback", [(date(9999, 12, 31), 1), (date(1, 1, 1), 30)])
def test_dates_at_the_calendar_edge_are_a_clear_error(run_date: date, lookback: int) -> None:
    with pytest.raises(CandidatesError, match="leaves the calendar"):
        active_users(_clicks([(1, 10, D0)]), run_date, lookback)


# -- histories, seen filtering -------------------------------------------------------------------


class _Spec:
    def __init__(self, items: Vocab, users: Vocab) -> None:
        self.items, self.users = items, users
        self.train_clicks_until = None  # as a model saved before it was recorded


def test_check_clicks_reports_what_the_model_can_read() -> None:
    spec = _Spec(Vocab(np.arange(10, 14)), Vocab(np.arange(1, 4)))
    w = Window(date(2023, 11, 15), lookback_days=2)
    clicks = _clicks([(1, 10, D0 - 5 * DAY), (1, 11, D0 - DAY), (2, 99, D0 - DAY), (2, 12, D0 + 60), (3, 98, D0)])
    got = check_clicks(clicks, spec, w)  # type: ignore[arg-type]
    # the window holds 4 clicks (not the old one), 2 on known items, 2 on the run date itself
    assert got == {"window_clicks": 4.0, "known_item_share": 0.5, "clicks_on_run_date": 2.0}


def test_check_clicks_refuses_another_id_space() -> None:
    spec = _Spec(Vocab(np.arange(10, 14)), Vocab(np.arange(1, 4)))
    w = Window(date(2023, 11, 15), lookback_days=2)
    foreign = _clicks([(1, 10_000_010, D0), (2, 10_000_011, D0)])
    with pytest.raises(CandidatesError, match=r"none of the 2 clicks in the window .* is on an item the model knows "
                                              r"\(e\.g\. item ids \[10000010, 10000011\]; the model has 4 items"):
        check_clicks(foreign, spec, w)  # type: ignore[arg-type]
    strings = _clicks([(1, 10, D0)]).with_columns(pl.col("user_id").cast(pl.String))
    with pytest.raises(CandidatesError, match=r"user_id column holds String ids but the model was trained on int64"):
        check_clicks(strings, spec, w)  # type: ignore[arg-type]


def test_check_clicks_accepts_string_ids_of_a_saved_model(tmp_path: Path) -> None:
    """A saved String vocabulary loads back as numpy object ids (kind 'O', not 'U'): a model trained on
    string user ids refused its own click log ('holds String ids but ... trained on object ids'). String
    item ids are read like integer ones (they were refused, by name, before the job served them)."""
    users = Vocab.load(Vocab(np.array(["u1", "u2"], dtype=object), name="user_id").save(tmp_path / "users.parquet"))
    items = Vocab(np.arange(10, 14))
    assert users.ids.dtype.kind == "O"
    w = Window(date(2023, 11, 15), lookback_days=2)
    clicks = pl.DataFrame({"user_id": ["u1", "u2"], "item_id": [10, 99], "timestamp": [D0, D0]})
    got = check_clicks(clicks, _Spec(items, users), w)  # type: ignore[arg-type]
    assert got["known_item_share"] == 0.5
    with pytest.raises(CandidatesError, match=r"user_id column holds Int64 ids but the model was trained on string"):
        check_clicks(_clicks([(1, 10, D0)]), _Spec(items, users), w)  # type: ignore[arg-type]
    string_items = Vocab.load(Vocab(np.array(["i10", "i11"], dtype=object), name="item_id").save(tmp_path / "i.pq"))
    got = check_clicks(clicks.with_columns(pl.Series("item_id", ["i10", "i99"])),
                       _Spec(string_items, users), w)  # type: ignore[arg-type]
    assert got == {"window_clicks": 2.0, "known_item_share": 0.5, "clicks_on_run_date": 2.0}
    with pytest.raises(CandidatesError, match=r"item_id column holds Int64 ids but the model was trained on string"):
        check_clicks(clicks, _Spec(string_items, users), w)  # type: ignore[arg-type]


def test_health_fails_on_foreign_clicks_and_a_late_log(tmp_path: Path) -> None:
    from recsys_cl.candidates.health import health_check

    manifest = {"date": "2023-11-15", "served_share": 1.0, "catalogue_coverage": 1.0,
                "ann_recall": {"recall_at_k": 1.0}, "known_item_share": 0.4, "clicks_on_run_date": 0}
    _, failures = health_check(tmp_path, manifest, CandidatesConfig(), None)
    assert len(failures) == 2
    assert "0.400 of the window's clicks are on items the model knows < candidates.min_known_item_share" in failures[0]
    assert "no click on the run date 2023-11-15 itself: the click log looks late" in failures[1]
    relaxed = CandidatesConfig(min_known_item_share=0.3, require_clicks_on_run_date=False)
    assert health_check(tmp_path, manifest, relaxed, None)[1] == []


def test_health_fails_when_new_items_crowd_the_lists(tmp_path: Path) -> None:
    from recsys_cl.candidates.health import health_check

    manifest = {"date": "2023-11-15", "served_share": 1.0, "catalogue_coverage": 1.0,
                "ann_recall": {"recall_at_k": 1.0}, "known_item_share": 1.0, "clicks_on_run_date": 5,
                "new_item_share": 0.3}
    health, failures = health_check(tmp_path, manifest, CandidatesConfig(), None)
    assert failures == [] and health["new_item_share"] == 0.3
    summed = {**manifest, "new_item_share": 0.97, "fold_in": {"method": "sum", "clicks": 40, "items": 9}}
    _, failures = health_check(tmp_path, summed, CandidatesConfig(), None)
    assert failures == ["0.970 of the rows recommend items without training clicks > candidates.max_new_item_share "
                        "0.5 (candidates.fold_in=sum grows their vectors with every click: use fit)"]
    _, failures = health_check(tmp_path, {**manifest, "new_item_share": 0.6}, CandidatesConfig(), None)
    assert len(failures) == 1 and "retrain the model on recent clicks" in failures[0]
    assert health_check(tmp_path, summed, CandidatesConfig(max_new_item_share=1.0), None)[1] == []
    assert health_check(tmp_path, {k: v for k, v in manifest.items() if k != "new_item_share"},
                        CandidatesConfig(), None)[1] == []  # an older manifest without the figure


def test_health_after_a_partition_of_another_id_type_has_no_overlap(tmp_path: Path) -> None:
    """The first night of a model of string item ids after one of integer ids: the two partitions
    share no user (the join on ids of two types raised a polars SchemaError)."""
    import json

    from recsys_cl.candidates.health import health_check, overlap_at_k
    from recsys_cl.io_atomic import SUCCESS_FILE

    rows = {"rank": [1, 2], "score": [0.5, 0.25], "model_version": ["1", "1"], "index_id": ["x", "x"]}
    old, new = tmp_path / "dt=2023-11-14", tmp_path / "new"
    for d, ids in ((old, {"user_id": [1, 1], "item_id": [10, 11]}),
                   (new, {"user_id": ["u1", "u1"], "item_id": ["SKU-10", "SKU-11"]})):
        d.mkdir()
        pl.DataFrame({**ids, **rows}).write_parquet(d / "part-00000.parquet")
    (old / SUCCESS_FILE).write_text(json.dumps({"model_version": "1"}))
    overlap, users = overlap_at_k(read_partition(new), read_partition(old), 2)
    assert np.isnan(overlap) and users == 0
    manifest = {"date": "2023-11-15", "served_share": 1.0, "catalogue_coverage": 1.0, "model_version": "2",
                "ann_recall": {"recall_at_k": 1.0}, "known_item_share": 1.0, "clicks_on_run_date": 5}
    health, failures = health_check(new, manifest, CandidatesConfig(k=2), old)
    assert failures == [] and health["overlap_users"] == 0 and not health["same_model_as_previous"]


def test_user_batch_matches_sequences_last_windows() -> None:
    rng = np.random.default_rng(0)
    n = 300
    clicks = _clicks(list(zip(rng.integers(0, 20, n).tolist(), rng.integers(0, 30, n).tolist(),
                              rng.integers(0, 1000, n).tolist())))
    items = Vocab(np.arange(25))  # items 25..29 are outside the vocabulary
    users = Vocab(np.arange(0, 20, 2))
    h = UserHistories(clicks, _Spec(items, users))  # type: ignore[arg-type]
    ids = np.array([1, 4, 7, 19])
    b = h.batch(ids, 6)
    seq = Sequences.from_clicks(clicks, items, users)
    np.testing.assert_array_equal(b.windows, seq.last_windows(ids, 6))
    np.testing.assert_array_equal(b.user_index, users.encode(ids))
    for r, u in enumerate(ids):
        want = sorted(items.encode(clicks.filter(pl.col("user_id") == u)["item_id"]).tolist())
        got = sorted(b.seen_items[b.seen_offsets[r]:b.seen_offsets[r + 1]].tolist())
        assert got == [x for x in want if x >= 0]


def test_batch_from_lists_matches_the_click_log_path() -> None:
    """A serving request's lists give the windows and seen sets that the nightly path reads from the log."""
    rng = np.random.default_rng(1)
    n = 300
    clicks = _clicks(list(zip(rng.integers(0, 20, n).tolist(), rng.integers(0, 30, n).tolist(),
                              rng.permutation(n).tolist())))
    items = Vocab(np.arange(25))  # items 25..29 are outside the vocabulary
    ids = np.array([1, 4, 7, 19])
    want = UserHistories(clicks, _Spec(items, Vocab(np.arange(20)))).batch(ids, 6)  # type: ignore[arg-type]
    lists = [clicks.filter(pl.col("user_id") == u).sort("timestamp")["item_id"].to_list() for u in ids]
    assert max(map(len, lists)) > 6  # the seen sets reach past the windows
    got = batch_from_lists(lists, items, 6)
    np.testing.assert_array_equal(got.windows, want.windows)
    np.testing.assert_array_equal(got.seen_offsets, want.seen_offsets)
    np.testing.assert_array_equal(got.seen_items, want.seen_items)
    np.testing.assert_array_equal(got.user_index, [-1] * 4)


def test_batch_from_lists_edge_rows() -> None:
    items = Vocab(np.array(["abc", "b", "c"]))
    got = batch_from_lists(pd.Series([["b", "abcdef", "c"], None, [], ["abc"]]), items, 2)
    # "abcdef" is unknown (a cast to the vocabulary's <U3 would have cut it to "abc"); None is empty
    np.testing.assert_array_equal(got.windows, [[2, -1], [-1, -1], [-1, -1], [0, -1]])
    np.testing.assert_array_equal(got.seen_offsets, [0, 2, 2, 2, 3])
    np.testing.assert_array_equal(got.seen_items, [1, 2, 0])
    objects = Vocab(np.array(["abc", "b", "c"], dtype=object))  # str objects, as a CSV log's vocabulary holds
    np.testing.assert_array_equal(batch_from_lists(pd.Series([["b", "abcdef", "c"]]), objects, 2).windows, [[2, -1]])
    assert len(batch_from_lists([], items, 2)) == 0
    assert batch_from_lists([[]], items, 2).windows.tolist() == [[-1, -1]]
    with pytest.raises(TypeError, match="holds <U3 ids but got int64 values"):
        batch_from_lists([[1, 2]], items, 2)
    with pytest.raises(TypeError, match="each history must be a list of item ids, got int64"):
        batch_from_lists([1, 2], items, 2)


@pytest.mark.parametrize("bitmap_bytes", [None, 5, 16])  # default: one block; 5: one user per block
@pytest.mark.parametrize("max_extra", [0, 3, 1000])
def test_topk_unseen_equals_masked_brute_force(max_extra: int, bitmap_bytes: int | None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import recsys_cl.candidates.scoring as scoring

    if bitmap_bytes is not None:  # the seen bitmap in blocks of users (a large chunk or catalogue)
        monkeypatch.setattr(scoring, "SEEN_BITMAP_BYTES", bitmap_bytes)
    rng = np.random.default_rng(1)
    M, D, U, K = 40, 8, 25, 7
    vecs = rng.standard_normal((M, D)).astype(np.float32)
    ids = np.arange(100, 100 + M)
    index = ExactIndex()
    index.build(vecs, ids)
    q = rng.standard_normal((U, D)).astype(np.float32)
    seen = [rng.choice(M, size=int(rng.integers(0, 36)), replace=False) for _ in range(U)]
    seen[0] = np.arange(M)  # sees everything -> no candidates
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seen])])
    got_idx, got_scores, n = topk_unseen(index, q, offsets, np.concatenate(seen).astype(np.int64),
                                         Vocab(ids), K, max_extra)
    scores = q @ vecs.T
    for u in range(U):
        scores[u, seen[u]] = -np.inf
        want = np.argsort(-scores[u], kind="stable")[: min(K, M - len(seen[u]))]
        assert n[u] == len(want)
        np.testing.assert_array_equal(got_idx[u, : n[u]], want)  # item-vocab indices (vocab row = index row)
        np.testing.assert_allclose(got_scores[u, : n[u]], scores[u, want], rtol=1e-5)
        assert not set(got_idx[u, : n[u]]) & set(seen[u])
        assert (got_idx[u, n[u]:] == -1).all()


def _unseen_reference(scores: np.ndarray, seen: list[np.ndarray], row_item: np.ndarray, k: int
                      ) -> list[np.ndarray]:
    """Each user's top-k unseen vocab indices by a loop: the index rows in (score descending, row)
    order, those outside the vocabulary, seen or with a score that is not finite left out."""
    out = []
    for u in range(len(scores)):
        order = np.lexsort((np.arange(scores.shape[1]), -scores[u]))
        keep = [r for r in order if row_item[r] >= 0 and row_item[r] not in set(seen[u].tolist())
                and np.isfinite(scores[u, r])]
        out.append(row_item[np.array(keep[:k], dtype=np.int64)])
    return out


@pytest.mark.parametrize("seed", range(6))
def test_topk_unseen_masked_equals_the_fetch_path(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exact index masks each user's seen items and takes the top K (no deeper fetch): the same
    item lists, scores and padding as fetching K + |seen| and dropping the seen ones, on small
    integer vectors (exact float32 arithmetic, so many ties across users, ranks and the K-th place),
    with users who have seen nothing, almost everything or everything, users of NaN embeddings,
    a catalogue smaller than K, index rows in another order than the vocabulary, several blocks."""
    import recsys_cl.candidates.scoring as scoring

    rng = np.random.default_rng(seed)
    M, D, U = int(rng.integers(5, 60)), 4, 70
    K = int(rng.choice([1, 3, 10, M - 1, M, M + 5])) if M > 1 else 3
    vecs = rng.integers(-2, 3, (M, D)).astype(np.float32)
    vecs[: M // 4] = vecs[0]  # equal items: exact ties everywhere
    vocab_ids = np.arange(100, 100 + M)
    index_ids = rng.permutation(vocab_ids)  # index row r holds vocab item index_ids[r] - 100
    index = ExactIndex(max_block_bytes=int(rng.choice([4 * M, 40 * M, 64 << 20])))  # 1, 10 or all users a block
    index.build(vecs, index_ids)
    q = rng.integers(-3, 4, (U, D)).astype(np.float32)
    q[5] = np.nan  # a NaN embedding: every score NaN, no candidates either way
    depth = rng.integers(0, M + 1, U)
    depth[:3] = [0, M, max(M - K, 0)]  # nothing seen, everything seen, exactly K left
    seen = [rng.choice(M, size=int(d), replace=False).astype(np.int64) for d in depth]  # vocab indices
    offsets = np.concatenate([[0], np.cumsum(depth)]).astype(np.int64)
    items = Vocab(vocab_ids)
    fetched: list[int] = []  # depths asked of ExactIndex.query_rows
    search = ExactIndex.query_rows
    monkeypatch.setattr(ExactIndex, "query_rows", lambda self, x, n: fetched.append(n) or search(self, x, n))
    for max_extra in (0, 3, 1000):
        got = topk_unseen(index, q, offsets, np.concatenate(seen), items, K, max_extra)
        assert not fetched, "the exact index was asked for a deeper fetch"
        want = scoring._topk_unseen_fetching(index, q, offsets, np.concatenate(seen), items, K, max_extra)
        assert fetched
        fetched.clear()
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    idx, scores, n = got
    ref = _unseen_reference(q @ vecs.T, seen, index_ids - 100, K)  # ties in index row order
    assert n.tolist() == [len(r) for r in ref]
    for u in range(U):
        np.testing.assert_array_equal(idx[u, : n[u]], ref[u])
        assert (idx[u, n[u]:] == -1).all() and (scores[u, n[u]:] == -np.inf).all()
    assert n[1] == 0 and n[5] == 0 and n[0] == min(K, M) and n[2] == min(K, M)


def test_topk_unseen_masked_with_repeated_or_unknown_seen_items() -> None:
    """Seen lists with repeats, or with items the index does not hold: the masked lists are the exact
    ones; the fetch path's agree with them up to its length, and it can only be shorter for a user
    whose seen list, so counted, leaves fewer than K items (it then expects fewer and stops)."""
    import recsys_cl.candidates.scoring as scoring

    rng = np.random.default_rng(7)
    M, D, U, K = 30, 4, 80, 8
    vecs = rng.integers(-2, 3, (M, D)).astype(np.float32)
    index = ExactIndex()
    index.build(vecs, np.arange(M))
    items = Vocab(np.arange(M + 10))  # vocab items M.. are not in the index
    q = rng.integers(-3, 4, (U, D)).astype(np.float32)
    seen = [rng.integers(0, M + 10, int(rng.integers(0, 2 * M))) for _ in range(U)]  # repeats, unknowns
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in seen])]).astype(np.int64)
    flat = np.concatenate(seen).astype(np.int64)
    idx, scores, n = topk_unseen(index, q, offsets, flat, items, K, 0)
    ref = _unseen_reference(q @ vecs.T, seen, np.arange(M), K)
    old_idx, old_scores, old_n = scoring._topk_unseen_fetching(index, q, offsets, flat, items, K, 0)
    shorter = 0
    for u in range(U):
        np.testing.assert_array_equal(idx[u, : n[u]], ref[u])
        np.testing.assert_array_equal(old_idx[u, : old_n[u]], idx[u, : old_n[u]])
        np.testing.assert_array_equal(old_scores[u, : old_n[u]], scores[u, : old_n[u]])
        assert old_n[u] == n[u] or (old_n[u] < n[u] and len(seen[u]) > M - K)
        shorter += old_n[u] < n[u]
    assert shorter  # the case exists in this draw


def test_topk_unseen_fetches_where_masking_would_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    """An index item outside the vocabulary, or an unseen item scoring +inf (an inf in a user
    embedding): the fetch path drops those and may stop short, so the exact index fetches too."""
    import recsys_cl.candidates.scoring as scoring

    rng = np.random.default_rng(4)
    M, D, U, K = 20, 4, 10, 5
    vecs = rng.standard_normal((M, D)).astype(np.float32)
    q = rng.standard_normal((U, D)).astype(np.float32)
    seen = [rng.choice(M, size=int(rng.integers(0, M)), replace=False) for _ in range(U)]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in seen])]).astype(np.int64)
    flat = np.concatenate(seen).astype(np.int64)
    fetched: list[int] = []
    search = ExactIndex.query_rows
    monkeypatch.setattr(ExactIndex, "query_rows", lambda self, x, n: fetched.append(n) or search(self, x, n))
    index = ExactIndex()
    index.build(vecs, np.arange(M))
    for items, queries in ((Vocab(np.arange(1, M)), q),  # index item 0 is not in the vocabulary
                           (Vocab(np.arange(M)), np.where(np.arange(D) == 2, np.inf, q).astype(np.float32))):
        fetched.clear()
        got = topk_unseen(index, queries, offsets, np.minimum(flat, len(items) - 1), items, K, 3)
        assert fetched
        want = scoring._topk_unseen_fetching(index, queries, offsets, np.minimum(flat, len(items) - 1), items, K, 3)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", ["annoy", "faiss"])
def test_topk_unseen_of_approximate_indexes_still_fetches(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Annoy and faiss are asked what they were asked before the exact index masked: K + the chunk's
    largest |seen| (at most max_extra), then K + the largest |seen| of the users left short; their
    lists are the fetch path's, and query_excluding is never called."""
    import recsys_cl.candidates.scoring as scoring
    from recsys_cl.index import AnnoyIndex, FaissIndex, faiss_available

    if backend == "faiss" and not faiss_available():
        pytest.skip("faiss-cpu not installed")
    rng = np.random.default_rng(5)
    M, D, U, K, max_extra = 300, 8, 40, 10, 50
    index = AnnoyIndex(n_trees=4, seed=1) if backend == "annoy" else FaissIndex(nlist=8, nprobe=2)
    index.build(rng.standard_normal((M, D)).astype(np.float32), np.arange(M) + 7)
    q = rng.standard_normal((U, D)).astype(np.float32)
    seen = [rng.choice(M, size=int(rng.integers(0, 150)), replace=False) for _ in range(U)]
    seen[0] = index.query(q[:1], 199)[0][0] - 7  # the deepest user, short after the first query
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in seen])]).astype(np.int64)
    flat = np.concatenate(seen).astype(np.int64)
    items = Vocab(np.arange(M) + 7)
    fetched: list[int] = []
    search = type(index).query_rows
    monkeypatch.setattr(type(index), "query_rows", lambda self, x, n: fetched.append(n) or search(self, x, n))
    monkeypatch.setattr(type(index), "query_excluding", lambda *a: pytest.fail("query_excluding called"))
    got = topk_unseen(index, q, offsets, flat, items, K, max_extra)
    depths = list(fetched)
    assert depths[:1] == [K + min(np.diff(offsets).max(), max_extra)]
    assert len(depths) == 2 and depths[1] == K + len(seen[0])  # user 0 has seen its top 199: re-queried
    fetched.clear()
    want = scoring._topk_unseen_fetching(index, q, offsets, flat, items, K, max_extra)
    assert fetched == depths
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_topk_unseen_of_string_item_ids_equals_their_integer_twins(tmp_path: Path) -> None:
    """An index over string ids returns them as numpy unicode ("" pads), the vocabulary of a saved model
    holds Python strings: the same vocab indices and scores as for the same items under integer ids."""
    rng = np.random.default_rng(3)
    M, D, U, K = 30, 8, 12, 6
    vecs = rng.standard_normal((M, D)).astype(np.float32)
    int_ids = np.arange(100, 100 + M)
    str_ids = np.array([f"SKU-{i:05d}" for i in int_ids], dtype=object)  # zero-padded: same order
    q = rng.standard_normal((U, D)).astype(np.float32)
    seen = [rng.choice(M, size=int(rng.integers(0, M - 3)), replace=False) for _ in range(U)]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seen])])
    got = []
    for ids, vocab in ((int_ids, Vocab(int_ids, name="item_id")),
                       (str_ids, Vocab.load(Vocab(str_ids, name="item_id").save(tmp_path / "items.parquet")))):
        index = ExactIndex()
        index.build(vecs, ids)
        got.append(topk_unseen(index, q, offsets, np.concatenate(seen).astype(np.int64), vocab, K + 30, 2))
    assert got[1][0].dtype == np.int64 and (got[1][0] == -1).any()  # K + 30 > M: padded rows
    for a, b in zip(*got):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("max_bytes", [None, 1, 3, 7, 1000])
@pytest.mark.parametrize("num_items", [1, 8, 13, 64])
def test_seen_mask_equals_a_set_lookup(num_items: int, max_bytes: int | None) -> None:
    """Every (user, fetched item) is seen exactly when it is in the user's seen set: rows in any order
    and subset (the re-query of short users), repeated seen items, users without any, ids outside
    the vocabulary (-1), catalogues that are not a whole number of bytes, bitmaps in blocks."""
    from recsys_cl.candidates.scoring import seen_mask

    rng = np.random.default_rng(num_items)
    U, F = 30, 9
    seen = [rng.integers(0, num_items, int(rng.integers(0, 2 * num_items + 1))) for _ in range(U)]  # repeats
    seen[4] = np.zeros(0, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in seen])]).astype(np.int64)
    items = np.concatenate(seen).astype(np.int64)
    for rows in (np.arange(U), np.array([2, 4, 5, 17, 29]), np.array([29, 0, 4])):
        idx = rng.integers(-1, num_items, (len(rows), F))
        got = seen_mask(rows, idx, offsets, items, num_items, max_bytes=max_bytes)
        want = np.array([[j >= 0 and j in set(seen[u].tolist()) for j in idx[r]] for r, u in enumerate(rows)])
        np.testing.assert_array_equal(got, want.reshape(got.shape))


@pytest.mark.parametrize("item_ids", [np.arange(100, 140),
                                      np.array([f"SKU-{i}" for i in range(100, 140)], dtype=object)])
@pytest.mark.parametrize("user_ids", [np.arange(10, 35), np.array([f"u{i:02d}" for i in range(25)])])
def test_recommend_rows_equal_a_row_by_row_reference(user_ids: np.ndarray, item_ids: np.ndarray) -> None:
    """The Arrow rows of ``Recommender.recommend`` are the first ``n[u]`` entries of each user's
    top-K unseen lists, in user then rank order, with the labels repeated on every row; item ids
    are the model's, int64 or string (an index over strings returns numpy unicode, a loaded
    vocabulary holds Python strings)."""
    import pyarrow as pa

    from recsys_cl.candidates.histories import UserBatch
    from recsys_cl.candidates.scoring import Recommender

    rng = np.random.default_rng(2)
    M, D, U, K = len(item_ids), 8, len(user_ids), 7
    vecs = rng.standard_normal((M, D)).astype(np.float32)
    index = ExactIndex()
    index.build(vecs, item_ids)
    q = rng.standard_normal((U, D)).astype(np.float32)
    seen = [rng.choice(M, size=int(rng.integers(0, 38)), replace=False) for _ in range(U)]
    seen[3] = np.arange(M)  # no candidates at all
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seen])])
    batch = UserBatch(user_ids=user_ids, user_index=np.full(U, -1), windows=np.zeros((U, 0), dtype=np.int64),
                      seen_offsets=offsets, seen_items=np.concatenate(seen).astype(np.int64))

    class Fixed(Recommender):
        def embed(self, batch: UserBatch) -> np.ndarray:
            return q

    spec = dataclasses.make_dataclass("Spec", ["items"])(Vocab(item_ids))
    table = Fixed(None, spec, index, K, 5, "v3", "index-abc").recommend(batch)  # type: ignore[arg-type]
    idx, scores, n = topk_unseen(index, q, offsets, batch.seen_items, spec.items, K, 5)
    want: dict[str, list] = {c: [] for c in ("user_id", "item_id", "rank", "score")}
    for u in range(U):
        for r in range(n[u]):
            want["user_id"].append(user_ids[u])
            want["item_id"].append(spec.items.ids[idx[u, r]])
            want["rank"].append(r + 1)
            want["score"].append(scores[u, r])
    assert n[3] == 0 and table.num_rows == sum(n) > 0
    assert table.column("user_id").to_pylist() == [x.item() for x in want["user_id"]]
    assert table.column("item_id").to_pylist() == [x.item() if hasattr(x, "item") else x for x in want["item_id"]]
    assert table.schema.field("item_id").type == (pa.string() if item_ids.dtype.kind == "O" else pa.int64())
    assert table.column("rank").to_pylist() == want["rank"]
    np.testing.assert_array_equal(table.column("score").to_numpy(), np.array(want["score"], dtype=np.float32))
    assert table.column("model_version").to_pylist() == ["v3"] * table.num_rows
    assert table.column("index_id").to_pylist() == ["index-abc"] * table.num_rows
    assert table.schema.field("rank").type == pa.int32() and table.schema.field("index_id").type == pa.string()


def assert_same_candidates(a: pl.DataFrame, b: pl.DataFrame) -> None:
    """Same users, items, ranks and labels; scores equal up to float32 rounding (BLAS kernels differ
    in the last bit between batch shapes, e.g. one user per chunk vs all users at once)."""
    assert a.drop("score").equals(b.drop("score"))
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), atol=1e-6)


# -- whole runs on the trained fixture model -----------------------------------------------------


def _cfg(out: Path, **kw: object) -> CandidatesConfig:
    return dataclasses.replace(CandidatesConfig(output_dir=str(out), k=5, recall_sample=8), **kw)


def test_chunk_size_does_not_change_the_output(tmp_path: Path, loaded, clicks) -> None:  # type: ignore[no-untyped-def]
    d = parse_run_date(LAST_DATE)
    a = run(_cfg(tmp_path / "a", chunk_size=1), clicks, loaded, d)
    b = run(_cfg(tmp_path / "b", chunk_size=1000), clicks, loaded, d)
    assert len(list(a.partition.glob("part-*.parquet"))) == a.manifest["users_active"] > 1
    fa, fb = read_partition(a.partition), read_partition(b.partition)
    assert_same_candidates(fa, fb)
    assert fa.height == a.manifest["rows"] and fa["rank"].min() == 1 and fa["rank"].max() <= 5
    assert fa.schema == {"user_id": pl.Int64, "item_id": pl.Int64, "rank": pl.Int32, "score": pl.Float32,
                         "model_version": pl.String, "index_id": pl.String}
    # no seen item is recommended
    seen = clicks.select("user_id", "item_id").unique()
    assert fa.join(seen, on=["user_id", "item_id"]).height == 0
    # ranks follow scores
    assert fa.group_by("user_id").agg(ok=pl.col("score").diff().drop_nulls().le(0).all())["ok"].all()


def test_future_clicks_change_nothing(tmp_path: Path, loaded, clicks) -> None:  # type: ignore[no-untyped-def]
    d = date(1997, 9, 22)
    base = run(_cfg(tmp_path / "a"), clicks, loaded, d)
    future = clicks.with_columns(pl.col("timestamp") + 10 * DAY, pl.col("row_order") + clicks.height)
    more = run(_cfg(tmp_path / "b"), pl.concat([clicks, future]), loaded, d)
    assert read_partition(base.partition).equals(read_partition(more.partition))  # same chunks: exact
    assert base.manifest["users_active"] < clicks["user_id"].n_unique()  # some users only click on 09-23


def test_rerun_replaces_the_partition_with_identical_bytes(  # type: ignore[no-untyped-def]
    tmp_path: Path, loaded, clicks
) -> None:
    d = parse_run_date(LAST_DATE)
    first = run(_cfg(tmp_path, chunk_size=3), clicks, loaded, d)
    before = {p.name: p.read_bytes() for p in first.partition.glob("part-*")}
    (first.partition / "stray.txt").write_text("from an older run")
    again = run(_cfg(tmp_path, chunk_size=3), clicks, loaded, d)
    after = {p.name: p.read_bytes() for p in again.partition.glob("part-*")}
    assert before == after and not (again.partition / "stray.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == [f"dt={LAST_DATE}"]  # no temp dirs left


def test_annoy_backend_reports_recall_and_reason(  # type: ignore[no-untyped-def]
    tmp_path: Path, loaded, clicks
) -> None:
    r = run(_cfg(tmp_path, backend="annoy"), clicks, loaded, parse_run_date(LAST_DATE))
    assert r.manifest["backend"] == "annoy" and "annoy" in r.manifest["backend_reason"]
    assert r.manifest["ann_recall"]["sample_users"] > 0
    assert r.manifest["ann_recall"]["recall_at_k"] >= 0.9  # 12 items: Annoy is near exact
    auto = run(_cfg(tmp_path / "auto", backend="auto"), clicks, loaded, parse_run_date(LAST_DATE))
    assert "fastest backend" in auto.manifest["backend_reason"]


def test_a_run_reads_and_checks_the_window_once(  # type: ignore[no-untyped-def]
    tmp_path: Path, loaded, clicks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """job.run reads the window before it builds an index (to fail early) and hands it on, so the
    clicks are filtered and checked once; the output is that of generate_candidates reading them itself."""
    import recsys_cl.candidates.generate as generate
    import recsys_cl.candidates.job as job
    from recsys_cl.candidates import build_index_in_memory, generate_candidates
    from recsys_cl.candidates.histories import check_clicks
    from recsys_cl.candidates.scoring import Recommender

    calls = []
    for module in (generate, job):  # wherever a run might check the clicks
        monkeypatch.setattr(module, "check_clicks", lambda *a: calls.append(1) or check_clicks(*a), raising=False)
    d = parse_run_date(LAST_DATE)
    via_run = run(_cfg(tmp_path / "a", backend="exact"), clicks, loaded, d)
    assert len(calls) == 1
    index, index_id, _ = build_index_in_memory("exact", loaded, np.zeros((0, 0)), 5)
    cfg = _cfg(tmp_path / "b", backend="exact")
    rec = Recommender(loaded.model, loaded.spec, index, cfg.k, cfg.max_extra_fetch, loaded.version_label, index_id)
    direct = generate_candidates(clicks, rec, d, cfg, loaded.history_length)
    assert len(calls) == 2
    assert_same_candidates(read_partition(via_run.partition), read_partition(direct.partition))
    assert direct.manifest["window_clicks"] == via_run.manifest["window_clicks"] > 0


def test_no_clicks_in_window_is_a_clear_error(tmp_path: Path, loaded, clicks) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CandidatesError, match=r"no clicks in the window .* spans 1997-09-22 \.\. 1997-09-23"):
        run(_cfg(tmp_path), clicks, loaded, date(2001, 1, 1))
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_sampled_recall_is_measured_on_the_delivered_lists(loaded, clicks) -> None:  # type: ignore[no-untyped-def]
    """An index exact in its top K but blind below it loses nothing on raw top-K queries, yet users
    with seen items in their top K get short lists: the health figure must see that."""
    from recsys_cl.candidates import Recommender, UserHistories, sampled_recall
    from recsys_cl.train.steps import embed_items

    k = 4

    class TopKOnly(ExactIndex):
        is_exact = False
        supports_exclusion = False  # an approximate index: the job fetches deeper and drops seen items

        def query_rows(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
            rows, scores = super().query_rows(queries, n)
            rows[:, k:], scores[:, k:] = -1, -np.inf
            return rows, scores

    spec = loaded.spec
    shallow = TopKOnly()
    shallow.build(embed_items(loaded.model, spec.num_items).numpy(), spec.items.ids)
    rec = Recommender(loaded.model, spec, shallow, k, 100, "v", "i")
    users = np.unique(clicks["user_id"].to_numpy())
    hist = UserHistories(clicks, spec)
    r = sampled_recall(rec, hist, users, loaded.history_length, len(users), seed=0)
    assert r["sample_users"] == len(users) and r["measured_on"].startswith("delivered")
    assert r["recall_at_k"] < 0.9  # every user has seen items among their raw top 4


def test_users_per_s_leaves_the_engine_start_up_out(  # type: ignore[no-untyped-def]
    tmp_path: Path, loaded, clicks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine runner (Spark's, here a stand-in that writes the same parts) reports its start-up;
    the manifest keeps it in ``timings`` and divides users only by the serving time."""
    import time

    import pyarrow.parquet as pq

    from recsys_cl.candidates import job

    def stand_in(model_dir, index_dir, master, partitions):  # type: ignore[no-untyped-def]
        def runner(*, rec, histories, users, length, cfg, out_dir):  # type: ignore[no-untyped-def]
            time.sleep(0.3)  # a session starting
            pq.write_table(rec.recommend(histories.batch(users, length)), out_dir / "part-00000.parquet")
            return {"timings": {"engine_startup_s": 0.3}, "info": {"master": master, "partitions": 1}}
        return runner

    monkeypatch.setattr(job, "make_spark_runner", stand_in)
    d = parse_run_date(LAST_DATE)
    out = run(_cfg(tmp_path / "s", engine="spark"), clicks, loaded, d)
    local = run(_cfg(tmp_path / "l"), clicks, loaded, d)
    assert_same_candidates(read_partition(out.partition), read_partition(local.partition))
    t, users = out.manifest["timings"], out.manifest["users_active"]
    assert t["engine_startup_s"] == 0.3 and t["generate_s"] > 0.3
    assert out.manifest["users_per_s"] == pytest.approx(users / (t["generate_s"] - 0.3))
    assert "engine_startup_s" not in local.manifest["timings"]
    assert out.manifest["engine_info"] == {"master": "local[2]", "partitions": 1}
    assert local.manifest["engine_info"] == {}
    assert local.manifest["users_per_s"] == pytest.approx(users / local.manifest["timings"]["generate_s"])


def test_partition_stats_counts_rows_on_new_items(tmp_path: Path) -> None:
    pl.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [10, 11, 10, 12]}).write_parquet(tmp_path / "part-0.parquet")
    pl.DataFrame({"user_id": [3, 3], "item_id": [12, 13]}).write_parquet(tmp_path / "part-1.parquet")
    s = partition_stats(tmp_path, catalogue_size=8, new_items=np.array([12, 99]))
    assert s == {"rows": 6, "users_served": 3, "distinct_items": 4, "catalogue_coverage": 0.5,
                 "new_item_share": pytest.approx(2 / 6)}
    assert "new_item_share" not in partition_stats(tmp_path, catalogue_size=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert partition_stats(empty, 8, np.array([12]))["new_item_share"] == 0.0
    # users 1, 2 and 3 got 2 rows each: short of k = 3, not of k = 2
    assert partition_stats(tmp_path, catalogue_size=8, k=3)["short_lists"] == 3
    assert partition_stats(tmp_path, catalogue_size=8, k=2)["short_lists"] == 0
    assert partition_stats(empty, 8, k=2)["short_lists"] == 0


def test_recall_queries_from_given_clicks_match_reading_the_models_log(  # type: ignore[no-untyped-def]
    loaded, clicks
) -> None:
    """sample_user_queries with the job's clicks (nightly passes them, so the log is not read twice)
    gives the queries it computes from the model's own click log, and only the sampled users'
    clicks are turned into sequences: the same as the windows built from every click."""
    import dataclasses

    from recsys_cl.config import DataConfig
    from recsys_cl.features.sequences import Sequences
    from recsys_cl.index.build import sample_user_queries
    from recsys_cl.train.checkpoint import load_model_dir
    from recsys_cl.train.steps import embed_users

    model, spec, cfg = load_model_dir(loaded.model_dir)
    cfg = dataclasses.replace(cfg, data=DataConfig(path=str(Path(__file__).parents[1] / "fixtures" / "ml-100k")))
    read = sample_user_queries(model, spec, cfg, 5, seed=3)
    sampled = sample_user_queries(model, spec, cfg, 5, seed=3, clicks=clicks)
    assert read is not None and sampled is not None and read[0].shape == (5, cfg.model.embedding_dim)
    given, seen, from_users = sampled
    assert from_users.all()
    np.testing.assert_array_equal(read[0], given)
    np.testing.assert_array_equal(read[1], seen)
    chosen = np.sort(np.random.default_rng(3).choice(np.asarray(spec.users.ids), 5, replace=False))
    # seen: each sampled user's distinct clicked items (what the candidate job drops from their list)
    expected = [clicks.filter(pl.col("user_id") == u)["item_id"].n_unique() for u in chosen]
    np.testing.assert_array_equal(seen, expected)
    windows = Sequences.from_clicks(clicks, spec.items, spec.users).last_windows(chosen, cfg.user_tower.history_length)
    np.testing.assert_allclose(given, embed_users(model, windows, spec.users.encode(chosen)).numpy(), atol=1e-6)


def test_spark_arrow_path_matches_recommend(  # type: ignore[no-untyped-def]
    loaded, clicks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Spark engine's Arrow inputs (built on the driver) and its mapInArrow body, without Spark:
    record batches cut at odd places (sliced list columns) give exactly ``recommend``'s rows, in order."""
    import pyarrow as pa

    from recsys_cl.candidates import Recommender, UserHistories
    from recsys_cl.candidates import spark as engine
    from recsys_cl.train.steps import embed_items

    spec = loaded.spec
    index = ExactIndex()
    index.build(embed_items(loaded.model, spec.num_items).numpy(), spec.items.ids)
    rec = Recommender(loaded.model, spec, index, 5, 100, "v", "i")
    monkeypatch.setattr(engine, "_executor_recommender", lambda *a: rec)
    hist = UserHistories(clicks, spec)
    users = np.unique(clicks["user_id"].to_numpy())
    length = loaded.history_length
    table = engine._arrow_inputs(hist, users, length, chunk_size=3)
    assert table.num_rows == len(users) and table.column("user_id").to_pylist() == users.tolist()
    rb = table.combine_chunks().to_batches()[0]
    batches = [rb.slice(0, 2), rb.slice(2, 5), rb.slice(7)]
    seen_by_engine: list = []
    real_recommend = rec.recommend

    def recording(b):  # type: ignore[no-untyped-def]
        seen_by_engine.append(b)
        return real_recommend(b)

    monkeypatch.setattr(rec, "recommend", recording)
    got = pa.Table.from_batches(list(engine._spark_recommend(iter(batches), ())))
    want = real_recommend(whole := hist.batch(users, length))
    for b, (s, e) in zip(seen_by_engine, [(0, 2), (2, 7), (7, len(users))]):  # the inputs, rebuilt
        np.testing.assert_array_equal(b.user_ids, whole.user_ids[s:e])
        np.testing.assert_array_equal(b.windows, whole.windows[s:e])
        np.testing.assert_array_equal(b.seen_offsets, whole.seen_offsets[s:e + 1] - whole.seen_offsets[s])
        np.testing.assert_array_equal(b.seen_items, whole.seen_items[whole.seen_offsets[s]:whole.seen_offsets[e]])
    assert got.drop(["score"]).equals(want.drop(["score"]))
    np.testing.assert_allclose(got.column("score").to_numpy(), want.column("score").to_numpy(), atol=1e-6)


def test_a_saved_index_is_tuned_at_the_depth_the_job_fetches(  # type: ignore[no-untyped-def]
    loaded, clicks, tmp_path: Path
) -> None:
    """index.k + the sampled users' median seen items, at most candidates.max_extra_fetch."""
    from recsys_cl.config import IndexConfig
    from recsys_cl.index.build import sample_user_queries
    from recsys_cl.candidates.model import build_index_for_loaded

    cfg = IndexConfig(backend="exact", k=2, recall_sample_users=1000)
    sampled = sample_user_queries(loaded.model, loaded.spec, loaded.config, 1000, cfg.seed, clicks)
    assert sampled is not None
    median = int(np.median(sampled[1]))
    assert 1 < median and 2 + median < loaded.spec.num_items  # else the test would not tell the cap apart
    full = build_index_for_loaded(loaded, cfg, tmp_path / "a", clicks).manifest
    capped = build_index_for_loaded(loaded, cfg, tmp_path / "b", clicks, max_extra_fetch=1).manifest
    assert (full.recall_k, capped.recall_k) == (2 + median, 3)


def test_a_few_query_users_are_topped_up_but_set_the_depth(  # type: ignore[no-untyped-def]
    loaded, clicks, tmp_path: Path
) -> None:
    """nightly's handful of active users: other training users top the recall sample up to
    index.recall_min_users (the tuned knob does not follow a few queries), while the depth tuned at
    is still index.k + the median seen items of the users asked for, not of the top-up users."""
    from recsys_cl.candidates.model import build_index_for_loaded
    from recsys_cl.config import IndexConfig
    from recsys_cl.index.build import sample_user_queries

    counts = clicks.group_by("user_id").agg(pl.col("item_id").n_unique().alias("n")).sort("n", "user_id")
    heavy = counts["user_id"].to_numpy()[-2:]  # the two who have seen the most
    sampled = sample_user_queries(loaded.model, loaded.spec, loaded.config, 1000, 0, clicks, heavy, min_users=5)
    assert sampled is not None and len(sampled.queries) == 5 and sampled.given.sum() == 2
    twice = sample_user_queries(loaded.model, loaded.spec, loaded.config, 1000, 0, clicks, np.r_[heavy, heavy], 5)
    assert twice is not None and twice.given.sum() == 2  # a user given twice is one query
    # the given users' own queries are those of sampling them alone
    alone = sample_user_queries(loaded.model, loaded.spec, loaded.config, 1000, 0, clicks, heavy)
    assert alone is not None and alone.given.all() and len(alone.queries) == 2
    np.testing.assert_allclose(sampled.queries[sampled.given], alone.queries, atol=1e-6)
    np.testing.assert_array_equal(sampled.seen[sampled.given], alone.seen)
    assert (sampled.seen[~sampled.given] <= alone.seen.min()).all()

    cfg = IndexConfig(backend="exact", k=2, recall_min_users=5)
    built = build_index_for_loaded(loaded, cfg, tmp_path / "a", clicks, query_users=heavy).manifest
    assert built.recall_sample_size == 5 and built.recall_sample_source == "users (2 active, 3 other)"
    assert built.recall_k == 2 + int(np.median(alone.seen))  # their depth, not the top-up users'
    assert (built.recall_at_k, built.recall_at_k_all, built.recall_at_k_active) == (1.0, 1.0, 1.0)  # exact
    no_top_up = build_index_for_loaded(loaded, IndexConfig(backend="exact", k=2, recall_min_users=0),
                                       tmp_path / "b", clicks, query_users=heavy).manifest
    assert (no_top_up.recall_sample_size, no_top_up.recall_sample_source) == (2, "active users")
    assert no_top_up.recall_k == built.recall_k and no_top_up.recall_at_k_active == 1.0
    # active users none of whom the model knows: tuned on training users, not on perturbed item vectors
    strangers = build_index_for_loaded(loaded, cfg, tmp_path / "c", clicks, query_users=np.array([10**9])).manifest
    assert strangers.recall_sample_source == "users"
    assert (strangers.recall_at_k_all, strangers.recall_at_k_active) == (1.0, None)  # no active users measured


def test_a_window_mostly_on_unknown_items_is_refused_before_any_work() -> None:
    """A model trained on another data set with the same id type (the fashion log's ids are MovieLens
    ids too): below candidates.min_known_item_share the run stops when it reads the window, as
    nightly's health check would after the work, saying what to check."""
    from recsys_cl.candidates.generate import read_window

    spec = _Spec(Vocab(np.arange(10, 14)), Vocab(np.arange(1, 4)))
    clicks = _clicks([(1, 10, D0 - DAY), (1, 97, D0 - DAY), (2, 98, D0), (3, 99, D0)])  # 1 of 4 known
    with pytest.raises(CandidatesError, match=r"only 25\.0% of the 4 clicks in the window .* are on items the model "
                                              r"knows, below candidates\.min_known_item_share 0\.5: is the model "
                                              r"trained on this click log"):
        read_window(clicks, spec, date(2023, 11, 15), 2, 0.5)
    assert read_window(clicks, spec, date(2023, 11, 15), 2, 0.25).clicks_read["known_item_share"] == 0.25


def test_trained_after_compares_the_last_training_click_day_with_the_run_date(caplog) -> None:
    from datetime import date

    from recsys_cl.candidates.window import day_start, trained_after

    last = day_start(date(2024, 5, 2)) + 3600  # 2024-05-02 01:00 UTC
    assert trained_after(last, date(2024, 5, 2)) == ("2024-05-02", False)  # the run date's own clicks: fine
    assert trained_after(last, date(2024, 5, 3)) == ("2024-05-02", False)
    assert not caplog.records
    assert trained_after(last, date(2024, 5, 1)) == ("2024-05-02", True)
    assert "trained on clicks up to 2024-05-02, after the run date 2024-05-01" in caplog.text
    assert trained_after(None, date(2024, 5, 1)) == (None, False)  # a model saved before it was recorded


def test_short_lists_reason_names_what_can_be_changed_per_backend() -> None:
    """Users short of K: exact search returns every unseen item, so only the catalogue (or a non-finite
    user embedding) is to blame; an ANN index may have searched too shallowly, and the message says how
    to search deeper. candidates.max_extra_fetch is never the fix (short users are re-queried at K + |seen|)."""
    from recsys_cl.candidates.generate import short_lists_reason
    from recsys_cl.index.annoy_index import AnnoyIndex
    from recsys_cl.index.exact import ExactIndex

    vectors = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    exact, annoy = ExactIndex(), AnnoyIndex(n_trees=2, seed=0)
    for index in (exact, annoy):
        index.build(vectors, np.arange(20, dtype=np.int64))
    said = short_lists_reason(exact, 20)
    assert said.startswith("their history leaves fewer unseen items in the 20-item catalogue")
    assert "max_extra_fetch" not in said and "target_recall" not in said
    said = short_lists_reason(annoy, 20)
    assert "the annoy index found fewer at its search depth ({'n_trees': 2" in said
    assert "index.target_recall=0.99" in said and "candidates.backend=exact" in said
    assert "max_extra_fetch" not in said
