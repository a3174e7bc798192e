"""recsys_cl.experiment.prepare: the item table a time-ordered run sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_cl.config import DataConfig, EvalConfig, RunConfig, SplitConfig
from recsys_cl.data.errors import DataError
from recsys_cl.experiment import prepare


def _movielens(tmp_path: Path) -> Path:
    folder = tmp_path / "ml"
    folder.mkdir()
    rows = [f"{u},{i},4.0,{t}" for u in range(1, 6) for i, t in ((1, 1), (2, 2), (3, 3), (4, 10 + u))]
    rows += [f"{u},5,4.0,{20 + u}" for u in range(1, 6)]  # item 5: first clicked late (cold)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n" + "".join(f"{i},M{i} (2000),Drama\n" for i in range(1, 6))
    )
    # item 1 tagged before any click; item 5 tagged only after the training cutoff
    (folder / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,early,0\n2,5,late,30\n3,1,later,30\n")
    return folder


def _tags(cfg: RunConfig) -> dict[int, list[str]]:
    items = prepare(cfg).clicks.items
    assert items is not None
    return dict(zip(items["item_id"].to_list(), items["tags"].to_list()))


def test_time_ordered_runs_read_item_tags_as_of_the_training_cutoff(tmp_path: Path) -> None:
    data = DataConfig(path=str(_movielens(tmp_path)))
    cold = RunConfig(data=data, split=SplitConfig(kind="cold_start", val_quantile=0.5, test_quantile=0.8))
    tags = _tags(cold)
    assert tags[1] == ["early"] and tags[5] == []  # 'later' and 'late' were applied after the cutoff
    temporal = RunConfig(data=data, split=SplitConfig(kind="temporal", val_quantile=0.5, test_quantile=0.8))
    assert _tags(temporal) == tags
    every = _tags(RunConfig(data=data, split=SplitConfig(kind="leave_last_out")))  # no global cutoff
    assert every[1] == ["early", "later"] and every[5] == ["late"]
    assert every[2] == []


def test_a_log_too_small_to_rank_or_evaluate_is_refused(tmp_path: Path) -> None:
    """Three clicks of one user: training would 'succeed' with every metric 0."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1\n1,2,4.0,2\n1,3,4.0,3\n")
    (folder / "movies.csv").write_text("movieId,title,genres\n1,A (2000),Drama\n2,B (2000),Drama\n3,C (2000),Drama\n")
    with pytest.raises(DataError, match=r"only 1 items with training clicks to rank .*needs at least 2"):
        prepare(RunConfig(data=DataConfig(path=str(folder))))


def test_fold_in_adds_each_cold_items_clickers_and_refuses_warm_items(tmp_path: Path) -> None:
    """two_tower_score_fn(fold=FoldIn(step=s)) scores the ranked cold items with s x the user vectors of
    everyone who clicked them in the history added (checked click by click against a loop); an ID-only
    tower, which leaves cold items all tied at 0 without it, then ranks by those clicks."""
    import numpy as np
    import torch

    from recsys_cl.config import ItemTowerConfig
    from recsys_cl.data.synthetic import generate_click_log
    from recsys_cl.experiment import two_tower_score_fn
    from recsys_cl.features.sequences import Sequences
    from recsys_cl.towers.two_tower import build_two_tower
    from recsys_cl.train.steps import FoldIn, embed_items, embed_users, fold_in_history, fold_in_items

    log = generate_click_log(400, 1500, n_clusters=8, clicks_per_user=25, seed=1)
    log.clicks.select("user_id", "item_id", "timestamp").write_parquet(tmp_path / "clicks.parquet")
    assert log.items is not None
    log.items.write_parquet(tmp_path / "items.parquet")
    cfg = RunConfig(data=DataConfig(format="parquet", path=str(tmp_path / "clicks.parquet"),
                                    items_path=str(tmp_path / "items.parquet")),
                    split=SplitConfig(kind="cold_start"), item_tower=ItemTowerConfig(encoders=("id",)))
    prep = prepare(cfg)
    torch.manual_seed(0)
    model = build_two_tower(prep.spec, cfg.model, cfg.user_tower, cfg.item_tower)
    spec, hist, L = prep.spec, prep.split.test_history(), cfg.user_tower.history_length
    rows = np.arange(prep.test_set.n_users)
    plain = two_tower_score_fn(model, spec, hist, prep.test_set, L, prep.ranked)(rows)
    assert not plain.any()  # ID only: every cold item is a zero vector
    folded = two_tower_score_fn(model, spec, hist, prep.test_set, L, prep.ranked, FoldIn(step=0.5))(rows)

    seq = Sequences.from_clicks(hist, spec.items, spec.users)
    column = {int(item): j for j, item in enumerate(spec.items.ids[prep.ranked])}
    expected_items = torch.zeros(len(prep.ranked), cfg.model.embedding_dim)
    n_clicks = 0
    for user, item in zip(hist["user_id"].to_list(), hist["item_id"].to_list()):
        if int(item) in column:  # a click on a cold item (validation period)
            q = embed_users(model, seq.last_windows(np.array([user]), L), spec.users.encode(np.array([user])))[0]
            expected_items[column[int(item)]] += 0.5 * q
            n_clicks += 1
    assert n_clicks > 10
    users = embed_users(model, seq.last_windows(prep.test_set.user_ids, L), spec.users.encode(prep.test_set.user_ids))
    np.testing.assert_allclose(folded, (users @ expected_items.T).numpy(), atol=1e-5)
    assert (folded != 0).any(axis=0).sum() == len({column[int(i)] for i in hist["item_id"].to_list()
                                                   if int(i) in column})

    every = embed_items(model, spec.num_items)
    with pytest.raises(ValueError, match=r"fold-in is for items without training clicks, but \d+ of the"):
        fold_in_history(model, spec, hist, every[spec.catalogue], spec.catalogue, L, 1.0)

    # fit: only the cold items clicked at or after `since` move, to unit vectors; warm items stay
    since = prep.split.train_end
    fitted, info = fold_in_items(model, spec, hist, every, L, FoldIn(method="fit"), since)
    moved = np.nonzero((fitted != every).any(dim=1).numpy())[0]
    window = hist.filter(hist["timestamp"] >= since)
    clicked_cold = set(spec.items.encode(window["item_id"])) & set(spec.cold_items.tolist())
    assert set(moved.tolist()) == clicked_cold and info["items"] == len(clicked_cold) > 0
    assert info["window_clicks"] == window.height and "fit_clicks" not in info and info["max_clicks"] == 20_000
    torch.testing.assert_close(fitted[moved].norm(dim=1), torch.ones(len(moved)))

    # a window above the cap: every click on a cold item still counts, only the others are sampled
    on_cold = np.isin(spec.items.encode(window["item_id"]), spec.cold_items)
    cap = 2 * int(on_cold.sum()) + 10
    assert window.height > 2 * cap
    capped, info = fold_in_items(model, spec, hist, every, L, FoldIn(method="fit", max_clicks=cap), since)
    assert int(on_cold.sum()) < info.pop("fit_clicks") < window.height // 2  # about the cap (whole users)
    assert info == {"method": "fit", "window_clicks": window.height, "clicks": int(on_cold.sum()),
                    "items": len(clicked_cold), "max_clicks": cap}
    assert set(np.nonzero((capped != every).any(dim=1).numpy())[0].tolist()) == clicked_cold


def test_all_items_catalogue_ranks_every_item_and_counts_new_items_in_the_lists(tmp_path: Path) -> None:
    """eval.catalogue=all_items: column j of the eval sets is item j of the item table, items without
    training clicks included; new_item_share counts their share of the filled top-k slots."""
    import numpy as np

    from recsys_cl.experiment import item_kind_metrics, new_item_metrics, new_item_share

    folder = tmp_path / "ml4"
    folder.mkdir()
    # train: odd users click item 1, even users item 2; validation: everyone item 3; test: everyone item 4
    rows = [f"{u},{1 + u % 2},4.0,{u}" for u in range(1, 7)]
    rows += [f"{u},3,4.0,{10 + u}" for u in range(1, 7)] + [f"{u},4,4.0,{20 + u}" for u in range(1, 7)]
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    movies = "".join(f"{i},M{i} (2000),Drama\n" for i in range(1, 5))
    (folder / "movies.csv").write_text("movieId,title,genres\n" + movies)
    data = DataConfig(path=str(folder))
    split = SplitConfig(kind="temporal", val_quantile=0.36, test_quantile=0.72)  # cutoffs 11, 21
    warm = prepare(RunConfig(data=data, split=split))
    prep = prepare(RunConfig(data=data, split=split, eval=EvalConfig(catalogue="all_items")))
    assert not warm.all_items and prep.all_items and not prep.cold_start
    assert "|catalogue=all_items|" in prep.protocol and "|catalogue=train_items|" in warm.protocol
    np.testing.assert_array_equal(prep.ranked, np.arange(prep.spec.num_items))
    assert prep.test_set.n_items == prep.spec.num_items == 4 and warm.test_set.n_items == 2
    assert sorted(prep.spec.items.ids[prep.spec.cold_items].tolist()) == [3, 4]
    # every test target is item 4: outside the ranked set under train_items, rankable under all_items
    assert prep.test_set.targets.nnz == prep.test_set.n_users == 6 and warm.test_set.targets.nnz == 0

    column = {int(item): j for j, item in enumerate(prep.spec.items.ids)}
    scores = np.zeros(4)
    scores[[column[1], column[2], column[4]]] = [3.0, 2.0, 1.0]  # item 1 > item 2 > item 4 > item 3

    def score(rows: np.ndarray) -> np.ndarray:
        return np.tile(scores, (len(rows), 1))

    # top 1: item 1, or item 2 where item 1 is in the history; both trained
    assert new_item_share(score, prep, k=1) == 0.0
    # top 20: each user has two items left after masking (the other trained item and item 4), one new
    assert new_item_share(score, prep, k=20) == pytest.approx(0.5)
    assert new_item_share(lambda rows: -score(rows), prep, k=1) == 1.0  # item 4 first
    parts = new_item_metrics(score, prep)
    assert parts["new_item_share@20"] == pytest.approx(0.5)
    assert parts["new_targets/n_users"] == 6 and parts["new_targets/recall@20"] == 1.0  # item 4 in every list
    assert parts["warm_targets/n_users"] == 0 and "warm_targets/recall@20" not in parts  # no warm target
    # with the long tail (what test/* and test_fold_in/* both log): items 1 and 2 (3 training clicks each,
    # tied) are the head, new items 3 and 4 (none) the tail, whatever clicks a fold-in gives them
    kinds = item_kind_metrics(score, prep, head_share=0.5)
    assert kinds.items() >= parts.items() and kinds["head_items/n"] == 2
    assert kinds["tail_targets/n_users"] == 6 and kinds["tail_targets/recall@20"] == 1.0
    assert kinds["head_targets/n_users"] == 0 and kinds["tail_share@20"] == pytest.approx(0.5)
    flat = item_kind_metrics(lambda rows: np.zeros((len(rows), 2)), warm, head_share=0.5)  # train_items
    assert "tail_share@20" in flat and "new_item_share@20" not in flat  # no new items ranked


def test_run_params_leave_out_the_content_encoder_sections_no_run_reads() -> None:
    """A run without a text (image) encoder logs no item_tower.text.* (image.*) params; a parent run
    over several keeps a section any of them reads."""
    import dataclasses

    from recsys_cl.config import ItemTowerConfig
    from recsys_cl.experiment import run_params

    ids = RunConfig()
    text = dataclasses.replace(ids, item_tower=ItemTowerConfig(encoders=("id", "text")))
    serving = ("baselines", "candidates", "index")  # read by other pipelines, never by training
    assert ids.unused_sections() == ("item_tower.text", "item_tower.image", *serving)
    assert text.unused_sections() == ("item_tower.image", *serving)
    every = ids.to_flat_dict()
    assert run_params(ids) == {k: v for k, v in every.items() if not k.startswith(
        ("item_tower.text.", "item_tower.image.", "baselines.", "candidates.", "index."))}
    assert not any(k.startswith(("candidates.", "index.", "baselines.")) for k in run_params(text))
    assert "item_tower.text.columns" in run_params(text) and "item_tower.image.shape" not in run_params(text)
    both = run_params(ids, [ids, text])  # the base config's values, the sections its runs read
    assert both["item_tower.text.columns"] == every["item_tower.text.columns"] and "item_tower.image.shape" not in both
    ran = run_params(ids, [ids], baselines=["popularity"])  # a parent that ran --baselines popularity
    assert ran["baselines.models"] == ["popularity"] and ran["baselines.itemknn_k"] == every["baselines.itemknn_k"]
    assert "candidates.k" not in ran and not any(k.startswith("baselines.") for k in run_params(ids, baselines=[]))


def test_run_description_and_params_say_a_partial_logq_weight() -> None:
    """A run with loss.logq_weight w != 1 says ``logQ counting_x0.5`` (the default says ``logQ counting``,
    as before), in its description and its ``logq`` tag (so its default name, and a parent's tag),
    and logs loss.logq_weight as a param; with logQ off the weight is not in either."""
    from recsys_cl.config import load_config
    from recsys_cl.experiment import logq_tag, parent_tags, run_params, two_tower_description

    class _Prep:  # what two_tower_description reads of a Prepared
        def tags(self, cfg: RunConfig) -> dict[str, str]:
            return {"dataset": "toy", "data_clicks": "9", "data_users": "3", "data_items": "6"}

    def text(*overrides: str) -> str:
        return two_tower_description(load_config(None, RunConfig, list(overrides)), _Prep())  # type: ignore[arg-type]

    assert "; logQ counting; " in text()
    assert "; logQ counting_x0.5; " in text("loss.logq_weight=0.5")
    assert "; logQ streaming_x0; " in text("loss.logq=streaming", "loss.logq_weight=0")
    assert "; logQ none; " in text("loss.logq=none", "loss.logq_weight=0.5")
    assert "; logQ none; " in text("loss.kind=triplet")  # no correction on triplet's raw cosines
    configs = [load_config(None, RunConfig, [f"loss.logq_weight={w}"]) for w in (0.25, 1, 0.25)]
    assert [logq_tag(c) for c in configs] == ["counting_x0.25", "counting", "counting_x0.25"]
    assert parent_tags(configs[1], _Prep(), configs)["logq"] == "counting_x0.25,counting"  # type: ignore[arg-type]
    assert run_params(load_config(None, RunConfig, ["loss.logq_weight=0.25"]))["loss.logq_weight"] == 0.25
    assert run_params(RunConfig())["loss.logq_weight"] == 1.0
