"""Serving new items from their first clicks (``candidates.fold_in=true``, off by default):
generate_candidates folds the clicks up to the run date on items without training clicks into their
vectors; with a saved index, the index decides (build_index --fold-in-until); nightly rebuilds its
index when they change.

The model is trained-free (seeded init) with a spec from the fixture's clicks before 1997-09-22 23:43
UTC, so items 8 and 10 (first clicked on 1997-09-23) have no training clicks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines import build_index, generate_candidates, nightly
from recsys_cl.candidates import clicks_up_to, fold_in_new_clicks, load_model, parse_run_date
from recsys_cl.config import IndexConfig, RunConfig, TrackingConfig, load_config
from recsys_cl.data.io import load_click_log
from recsys_cl.features.spec import build_feature_spec
from recsys_cl.index.base import load_index
from recsys_cl.index.build import build_index_for_model
from recsys_cl.towers.two_tower import build_two_tower
from recsys_cl.train.checkpoint import save_model_dir

DATA = Path(__file__).parents[1] / "fixtures" / "ml-100k"
CUTOFF = 874973000  # 1997-09-22 23:43:20 UTC
DAY_BEFORE, DATE = "1997-09-22", "1997-09-23"
COLD = {8, 10}


def _model_dir(root: Path, *extra: str) -> Path:
    cfg = load_config(None, RunConfig, overrides=[f"data.path={DATA}", "model.embedding_dim=8",
                                                  "user_tower.history_length=4", *extra])
    log = load_click_log(cfg.data)
    spec = build_feature_spec(log.clicks.filter(pl.col("timestamp") < CUTOFF), log.items)
    assert set(spec.items.ids[spec.cold_items]) >= COLD
    import torch

    torch.manual_seed(0)
    model = build_two_tower(spec, cfg.model, cfg.user_tower, cfg.item_tower)
    return save_model_dir(root / "model", model, spec, cfg)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _model_dir(tmp_path_factory.mktemp("m"))


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _common(tmp: Path, out: str = "out") -> list[str]:
    return ["--set", f"data.path={DATA}", "--set", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
            "--set", f"candidates.output_dir={tmp / out}", "--set", "candidates.k=5",
            "--set", "index.backend=exact", "--set", "index.recall_sample_users=4"]


def _clicks_until(date: str) -> pl.DataFrame:
    return clicks_up_to(load_click_log(load_config(None, RunConfig, overrides=[f"data.path={DATA}"]).data).clicks,
                        parse_run_date(date))


def test_index_built_with_the_dates_clicks_holds_the_jobs_vectors(tmp_path: Path, model_dir: Path) -> None:
    loaded = load_model(str(model_dir), TrackingConfig(uri=f"sqlite:///{tmp_path / 'db'}"))
    assert loaded.fold.method == "fit"  # the model's item_tower.fold_in_method auto, trained on leave_last_out
    folded = fold_in_new_clicks(loaded, _clicks_until(DATE), DATE, method="sum")
    assert folded.fold_in == {"clicks_until": DATE, "method": "sum", "step": 1.0, "clicks": 4, "items": 2}
    ids = loaded.spec.items.ids
    moved = ~np.all(folded.item_vectors == loaded.item_vectors, axis=1)
    assert set(ids[moved]) == COLD  # only the two cold items that were clicked move
    assert folded.embedding_hash != loaded.embedding_hash

    build = build_index_for_model(str(model_dir), IndexConfig(backend="exact", recall_sample_users=4),
                                  tmp_path / "index", fold_in=(_clicks_until(DATE), DATE, None, "sum"))
    assert build.manifest.fold_in == folded.fold_in
    assert build.manifest.embedding_hash == folded.embedding_hash  # bit-identical vectors

    before = fold_in_new_clicks(loaded, _clicks_until(DAY_BEFORE), DAY_BEFORE, method="sum")  # no cold clicks yet
    assert before.fold_in["clicks"] == 0 and before.embedding_hash == loaded.embedding_hash


def _build(tmp: Path, model_dir: Path, name: str, *extra: str) -> Path:
    build_index.main(["--model", str(model_dir), "--out", str(tmp / name), "--no-mlflow", *extra, *_common(tmp)])
    return tmp / name


def test_generate_serves_a_saved_index_with_its_own_fold_in(tmp_path: Path, model_dir: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    plain = _build(tmp_path, model_dir, "plain")
    dated = _build(tmp_path, model_dir, "dated", "--fold-in-until", DATE, "--fold-in", "sum")
    assert load_index(dated).manifest.fold_in["clicks"] == 4  # type: ignore[union-attr]
    early = _build(tmp_path, model_dir, "early", "--fold-in-until", DAY_BEFORE, "--fold-in", "sum")

    def serve(index: Path, date: str = DATE, *extra: str) -> dict:
        out = f"out-{index.name}-{date}-{len(extra)}"
        return generate_candidates.main(["--date", date, "--model", str(model_dir), "--index", str(index),
                                         *_common(tmp_path, out), *extra])

    capsys.readouterr()
    summary = serve(dated)
    assert summary["fold_in"]["clicks"] == 4
    # the share of written rows that recommend items without training clicks, checked on the files
    rows = pl.read_parquet(Path(summary["partition"]) / "*.parquet")
    new_ids = load_model(str(model_dir), None).spec
    new_ids = new_ids.items.ids[new_ids.cold_items].tolist()
    share = rows["item_id"].is_in(new_ids).mean()
    assert 0 < share < 1 and summary["new_item_share"] == pytest.approx(share)
    assert ("new items: 4 clicks up to 1997-09-23 taken into the vectors of 2 items without training clicks "
            f"(summed, item_tower.fold_in_step 1); they are {share:.1%} of the rows written") \
        in capsys.readouterr().out
    plain_summary = serve(plain)
    assert plain_summary["fold_in"] == {}  # built without new items' clicks: served as built
    out = capsys.readouterr().out
    if plain_summary["new_item_share"]:  # the content vectors of new items can make the lists too
        assert f"ranked on content alone): {plain_summary['new_item_share']:.1%} of the rows written" in out
    else:
        assert "new items" not in out
    assert serve(early)["fold_in"] == {"clicks_until": DAY_BEFORE, "method": "sum", "step": 1.0, "clicks": 0,
                                       "items": 0}
    with pytest.raises(SystemExit, match=r"the index .*dated folds in new items' clicks up to 1997-09-23, after the "
                                         r"run date 1997-09-22: .*build_index --fold-in-until 1997-09-22"):
        serve(dated, DAY_BEFORE)  # a backfill must not read the future through the item vectors
    assert serve(dated, DATE, "--set", "candidates.fold_in=none")["fold_in"]["clicks"] == 4  # the index decides

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, order_by=["attributes.start_time ASC"])
    assert list(runs["status"]) == ["FINISHED"] * 4  # the refusal opened no run
    assert list(runs["metrics.fold_in/clicks"].fillna(-1)) == [4, -1, 0, 4]
    assert runs["metrics.new_item_share"].iloc[0] == pytest.approx(summary["new_item_share"])


def test_without_a_saved_index_fold_in_is_opt_in(tmp_path: Path, model_dir: Path) -> None:
    args = ["--date", DATE, "--model", str(model_dir)]
    assert generate_candidates.main([*args, *_common(tmp_path, "a")])["fold_in"] == {}  # default: off
    on = generate_candidates.main([*args, *_common(tmp_path, "b"), "--set", "candidates.fold_in=sum"])
    assert on["fold_in"] == {"clicks_until": DATE, "method": "sum", "step": 1.0, "clicks": 4, "items": 2}


def test_mismatch_from_other_clicks_names_both_and_the_build_for_the_date() -> None:
    from recsys_cl.index.base import IndexMismatchError, Manifest, check_compatible

    m = Manifest(backend="exact", item_count=3, embedding_dim=2, embedding_hash="a" * 64,
                 fold_in={"clicks_until": DAY_BEFORE, "step": 1.0, "clicks": 1, "items": 1})
    job = {"clicks_until": DATE, "method": "sum", "step": 1.0, "clicks": 4, "items": 2}
    with pytest.raises(IndexMismatchError, match=(
        r"folded in: index 1 clicks up to 1997-09-22, this job 4 clicks up to 1997-09-23\)\. Fix: rebuild it with "
        r"`python -m pipelines.build_index --model m --fold-in-until 1997-09-23 --fold-in sum --out <dir>`$"
    )):
        check_compatible(m, model_uri="m", embedding_hash="b" * 64, fold_in=job)
    check_compatible(m, model_uri="m", embedding_hash="a" * 64, fold_in=job)  # same vectors: accepted
    with pytest.raises(IndexMismatchError, match=r"embedding_hash: index aaaa[^(]*$"):  # same clicks: no fold-in note
        check_compatible(m, model_uri="m", embedding_hash="b" * 64, fold_in=m.fold_in)


def test_fold_in_until_must_be_a_date(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(SystemExit, match=r"index error: --fold-in-until '23-09-1997' is not a valid calendar date; "
                                         r"expected YYYY-MM-DD"):
        build_index.main(["--model", str(model_dir), "--out", str(tmp_path / "i"), "--no-mlflow",
                          "--fold-in-until", "23-09-1997", *_common(tmp_path)])
    with pytest.raises(SystemExit, match=r"--fold-in sum needs --fold-in-until YYYY-MM-DD"):
        build_index.main(["--model", str(model_dir), "--out", str(tmp_path / "i"), "--no-mlflow",
                          "--fold-in", "sum", *_common(tmp_path)])
    assert not (tmp_path / "i").exists()


def test_nightly_rebuilds_the_index_when_new_items_get_clicks(tmp_path: Path, model_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """ensure_index builds from the job's own (folded) vectors: the index equals what build_index_for_model
    builds from the model with the same clicks, nothing is folded in a second time, and the index it
    returns loaded is the one in the folder."""
    import recsys_cl.index.build as build_module

    cfg = load_config(None, RunConfig, overrides=_common(tmp_path)[1::2]
                      + [f"candidates.index_root={tmp_path / 'index'}"])
    model = {"model_name": "m", "model_version": "1", "model_run_id": None, "uri": str(model_dir)}
    loaded = load_model(str(model_dir), cfg.tracking)
    folds = []
    real_fold = build_module.fold_in_catalogue

    def ensure(date: str, method: str = "sum") -> bool:
        fold_in = (_clicks_until(date), date, None if method == "sum" else 874972800 - 29 * 86400, method)
        job = fold_in_new_clicks(loaded, *fold_in)
        monkeypatch.setattr(build_module, "fold_in_catalogue", lambda *a: folds.append(1) or real_fold(*a))
        try:
            directory, rebuilt, (index, index_id, _) = nightly.ensure_index(cfg, model, job, fold_in[0])
            assert index_id == load_index(directory).manifest.index_id  # type: ignore[union-attr]
            return rebuilt
        finally:
            monkeypatch.setattr(build_module, "fold_in_catalogue", real_fold)

    assert ensure(DAY_BEFORE) is True  # first build
    assert ensure(DAY_BEFORE) is False  # same vectors: reused
    assert ensure(DATE) is True  # items 8 and 10 got their first clicks: rebuilt with them
    assert load_index(tmp_path / "index" / "m" / "v1").manifest.fold_in["clicks"] == 4  # type: ignore[union-attr]
    assert ensure(DATE) is False
    assert ensure(DATE, "fit") is True and folds == []  # the job's fit, not a second one
    nightly_manifest = load_index(tmp_path / "index" / "m" / "v1").manifest
    fold_in = (_clicks_until(DATE), DATE, 874972800 - 29 * 86400, "fit")
    index_cfg = dataclasses.replace(cfg.index, k=cfg.candidates.k)
    alone = build_index_for_model(str(model_dir), index_cfg, tmp_path / "alone", fold_in=fold_in).manifest
    assert nightly_manifest is not None and alone.fold_in == nightly_manifest.fold_in
    for key in ("embedding_hash", "normalized", "model_uri", "item_count", "embedding_dim", "index_id"):
        assert getattr(alone, key) == getattr(nightly_manifest, key), key


def test_fit_method_serves_the_same_vectors_from_a_dated_index(tmp_path: Path) -> None:
    """candidates.fold_in=fit: the clicked new items get unit vectors fitted to the run's window;
    build_index --fold-in-until (fit by default) records the window, and generate_candidates --index
    serves the same vectors."""
    model_dir = _model_dir(tmp_path)
    args = ["--date", DATE, "--model", str(model_dir)]
    served = generate_candidates.main([*args, *_common(tmp_path, "a"), "--set", "candidates.fold_in=fit"])
    info = served["fold_in"]
    assert info["method"] == "fit" and info["items"] == 2 and info["clicks"] == 4
    assert info["clicks_since"] == 874972800 - 29 * 86400  # 1997-09-23 00:00 UTC minus lookback_days - 1
    assert info["window_clicks"] == _clicks_until(DATE).filter(pl.col("timestamp") >= info["clicks_since"]).height

    loaded = load_model(str(model_dir), TrackingConfig(uri=f"sqlite:///{tmp_path / 'db'}"))
    fitted = fold_in_new_clicks(loaded, _clicks_until(DATE), DATE, info["clicks_since"], "fit")
    moved = ~np.all(fitted.item_vectors == loaded.item_vectors, axis=1)
    assert set(loaded.spec.items.ids[moved]) == COLD
    np.testing.assert_allclose(np.linalg.norm(fitted.item_vectors[moved], axis=1), 1.0, rtol=1e-5)

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.search_runs(search_all_experiments=True).iloc[0]
    assert (run["metrics.fold_in/clicks"], run["metrics.fold_in/window_clicks"]) == (4, info["window_clicks"])
    assert "metrics.fold_in/fit_clicks" not in run  # the window was read whole

    index = _build(tmp_path, model_dir, "dated", "--fold-in-until", DATE)
    assert load_index(index).manifest.fold_in == info  # type: ignore[union-attr]
    again = generate_candidates.main([*args, "--index", str(index), *_common(tmp_path, "b")])
    assert again["fold_in"] == info and again["embedding_hash"] == served["embedding_hash"]


def test_fit_sample_size_is_a_setting_and_a_saved_index_keeps_its_own(tmp_path: Path) -> None:
    """candidates.fold_in_max_clicks below the window: fit reads a sample of that size (every click on a
    new item kept); an index built with it records the cap, and generate_candidates --index redoes the
    same fold-in under the default cap, so it serves the index's vectors."""
    model_dir = _model_dir(tmp_path)
    args = ["--date", DATE, "--model", str(model_dir)]
    whole = generate_candidates.main([*args, *_common(tmp_path, "a"), "--set", "candidates.fold_in=fit"])["fold_in"]
    cap = whole["window_clicks"] // 3
    assert cap > 2 * whole["clicks"] and whole["max_clicks"] == 20_000 and "fit_clicks" not in whole
    small = ["--set", "candidates.fold_in=fit", "--set", f"candidates.fold_in_max_clicks={cap}"]
    served = generate_candidates.main([*args, *_common(tmp_path, "b"), *small])
    info = served["fold_in"]
    assert info["max_clicks"] == cap and info["clicks"] == whole["clicks"] < info["fit_clicks"] < whole["window_clicks"]

    index = _build(tmp_path, model_dir, "dated", "--fold-in-until", DATE,
                   "--set", f"candidates.fold_in_max_clicks={cap}")
    assert load_index(index).manifest.fold_in == info  # type: ignore[union-attr]
    again = generate_candidates.main([*args, "--index", str(index), *_common(tmp_path, "c")])
    assert again["fold_in"] == info and again["embedding_hash"] == served["embedding_hash"]
    with pytest.raises(SystemExit, match=r"candidates.fold_in_max_clicks must be >= 2"):
        generate_candidates.main([*args, *_common(tmp_path, "d"), "--set", "candidates.fold_in_max_clicks=1"])
