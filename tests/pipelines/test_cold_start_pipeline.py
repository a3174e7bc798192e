"""split.kind=cold_start with a text item tower, end to end through the train pipeline and MLflow.

A synthetic log with planted clusters whose item text names the cluster ("item 17. Genres:
cluster_3"): cold items (first clicked after the training cutoff) can only be ranked from text.
The encoder is a tiny BERT with a locally trained WordPiece vocabulary (no download).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from pipelines import train_two_tower
from recsys_cl.data.synthetic import generate_click_log
from recsys_cl.features.text import item_texts
from recsys_cl.towers.text_encoder import make_tiny_text_encoder
from recsys_cl.tracking import resolve_model_dir
from recsys_cl.train.checkpoint import load_model_dir
from recsys_cl.train.steps import embed_items


@pytest.fixture(scope="module")
def cold_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cold")
    log = generate_click_log(400, 1500, n_clusters=8, clicks_per_user=25, seed=1)
    log.clicks.select("user_id", "item_id", "timestamp").write_parquet(root / "clicks.parquet")
    assert log.items is not None
    log.items.write_parquet(root / "items.parquet")
    encoder = make_tiny_text_encoder(root / "tiny_bert", item_texts(log.items, ("title", "genres")), vocab_size=120)
    return {"root": root, "encoder": encoder}


def _args(tmp_path: Path, data: dict[str, Path], *extra: str) -> list[str]:
    root = data["root"]
    return [
        "--set", "data.format=parquet", "--set", f"data.path={root / 'clicks.parquet'}",
        "--set", f"data.items_path={root / 'items.parquet'}",
        "--set", "split.kind=cold_start",
        "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "--set", "tracking.experiment=cold",
        "--set", f"train.checkpoint_dir={tmp_path / 'ck'}", "--set", "train.progress=false",
        "--set", "train.epochs=4", "--set", "train.batch_size=256", "--set", "train.lr=0.01",
        "--set", "model.embedding_dim=16", "--set", "user_tower.history_length=10",
        "--set", f"item_tower.cache_dir={tmp_path / 'cache'}",
        "--set", "item_tower.text.columns=[title,genres]",
        *extra,
    ]


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_cold_start_text_tower_beats_random_and_logs_baselines(tmp_path: Path, cold_data: dict[str, Path]) -> None:
    out = tmp_path / "summary.json"
    summary = train_two_tower.main(_args(
        tmp_path, cold_data, "--set", "item_tower.encoders=[id,text]", "--set", "item_tower.id_dropout=0.5",
        "--set", f"item_tower.text.pretrained={cold_data['encoder']}", "--summary-json", str(out),
    ))
    assert json.loads(out.read_text()) == json.loads(json.dumps(summary))
    assert summary["protocol"].startswith("full_ranking|catalogue=cold_items|history_masked|split=cold_start(")
    assert summary["baseline_name"] == "popularity"
    assert set(summary["baseline_metrics"]) >= {"recall@20", "ndcg@20"}
    assert set(summary["random_metrics"]) >= {"recall@20", "ndcg@20"}
    d = summary["delta_vs_baseline"]  # model - Popularity, paired over the same test users
    assert d["metric"] == "recall@20" and d["n_users"] == summary["test_metrics"]["n_users"]
    assert d["delta"] == pytest.approx(summary["test_metrics"]["recall@20"] - summary["baseline_metrics"]["recall@20"])
    assert d["low"] <= d["delta"] <= d["high"]
    assert d["verdict"] == ("better" if d["low"] > 0 else "worse" if d["high"] < 0 else "no clear difference")
    test, rand = summary["test_metrics"], summary["random_metrics"]
    # the cluster named in each cold item's text is the signal: far above chance
    assert test["recall@20"] > 2 * rand["recall@20"], (test, rand)
    # the same model with the cold items' clicks before the test period folded in, side by side
    fold, fd = summary["fold_in_metrics"], summary["fold_in_delta_vs_baseline"]
    assert set(fold) == set(test) and fold != test
    assert "tail_share@20" not in fold  # no long tail: every cold item is without training clicks
    assert fd["delta"] == pytest.approx(fold["recall@20"] - summary["baseline_metrics"]["recall@20"])

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(summary["run_id"])
    assert run.data.tags["protocol"] == summary["protocol"]
    assert run.data.params["item_tower.encoders"] == "[id, text]"
    assert run.data.params["item_tower.text.columns"] == "[title, genres]"  # the encoder it uses, not the image one
    assert not [k for k in run.data.params if k.startswith("item_tower.image.")]
    assert any(k.startswith("baseline/popularity/") for k in run.data.metrics)
    assert run.data.metrics["delta_vs_popularity/recall_at_20_low"] == pytest.approx(d["low"])
    assert run.data.metrics["test_fold_in/recall_at_20"] == pytest.approx(fold["recall@20"])
    assert run.data.metrics["delta_fold_in_vs_popularity/recall_at_20_high"] == pytest.approx(fd["high"])

    model_dir = resolve_model_dir(summary["model_uri"], None)
    model, spec, cfg = load_model_dir(model_dir)
    assert spec.content_meta["text"]["mode"] == "frozen" and spec.content["text"].shape[0] == spec.num_items
    cold = torch.from_numpy(spec.cold_items)
    emb = embed_items(model, spec.num_items)
    assert len(cold) > 0 and bool((emb[cold].norm(dim=1) > 0.99).all())  # cold items are embedded
    assert len(list((tmp_path / "cache").glob("text-*.npy"))) == 1


def test_all_items_catalogue_ranks_new_items_with_trained_ones(tmp_path: Path, cold_data: dict[str, Path]) -> None:
    """eval.catalogue=all_items (temporal split): every item of the item table is ranked, as the served
    index holds them; the run logs the share of new items in the lists and, with fold-in, the same
    model with the new items' clicks before the test period taken in, paired against it."""
    from pipelines import evaluate_baselines

    args = _args(tmp_path, cold_data, "--set", "split.kind=temporal", "--set", "eval.catalogue=all_items",
                 "--set", "item_tower.encoders=[id,text]", "--set", "item_tower.id_dropout=0.5",
                 "--set", f"item_tower.text.pretrained={cold_data['encoder']}")
    summary = train_two_tower.main(args)  # item_tower.fold_in_method auto: fit, as items are ranked together
    assert summary["protocol"].startswith("full_ranking|catalogue=all_items|history_masked|split=temporal(")
    assert "baseline_metrics" not in summary
    test, fold, fd = summary["test_metrics"], summary["fold_in_metrics"], summary["fold_in_delta_vs_none"]
    assert summary["fold_in_method"] == "fit"
    assert 0 <= test["new_item_share@20"] <= 1 and 0 < fold["new_item_share@20"] <= 1
    for part in ("new_targets", "warm_targets"):  # recall on each kind of target, same users either way
        assert test[f"{part}/n_users"] == fold[f"{part}/n_users"] > 0
        assert 0 <= test[f"{part}/recall@20"] <= 1 and 0 <= fold[f"{part}/recall@20"] <= 1
    assert test["new_targets/n_users"] + test["warm_targets/n_users"] >= test["n_users"]
    # the long tail of the folded lists, strata from the training clicks as for test/*: the items folded
    # in have none, so they are tail, and head, tail and their users are the same with or without fold-in
    assert set(fold) == set(test)
    for k in ("head_items/n", "head_items/train_click_share", "head_targets/n_users", "tail_targets/n_users"):
        assert fold[k] == test[k], k
    n_head, n_tail = fold["head_targets/n_users"], fold["tail_targets/n_users"]
    assert 0 < n_head <= fold["n_users"] and 0 < n_tail <= fold["n_users"]
    assert n_head + n_tail >= fold["n_users"]  # every target is head or tail; a user with both counts twice
    assert all(0 <= fold[k] <= 1 for k in ("head_targets/recall@20", "tail_targets/recall@20", "tail_share@20"))
    assert fold["tail_share@20"] >= fold["new_item_share@20"]  # the new items' slots are tail slots
    assert fd["delta"] == pytest.approx(fold["recall@20"] - test["recall@20"])
    assert fd["low"] <= fd["delta"] <= fd["high"] and fd["n_users"] == test["n_users"]

    run = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(summary["run_id"])
    assert run.data.tags["protocol"] == summary["protocol"]
    assert run.data.params["eval.catalogue"] == "all_items"
    assert run.data.metrics["test/new_item_share_at_20"] == pytest.approx(test["new_item_share@20"])
    assert run.data.metrics["test_fold_in/new_targets/recall_at_20"] == pytest.approx(fold["new_targets/recall@20"])
    assert run.data.metrics["test_fold_in/recall_at_20"] == pytest.approx(fold["recall@20"])
    for k in ("head_targets/recall@20", "tail_targets/recall@20", "tail_targets/n_users", "tail_share@20"):
        assert run.data.metrics["test_fold_in/" + k.replace("@", "_at_")] == pytest.approx(fold[k])
    assert run.data.metrics["delta_fold_in_vs_none/recall_at_20_delta"] == pytest.approx(fd["delta"])

    # the click baselines rank the same items under the same protocol, for the same users
    baselines = evaluate_baselines.main([*args, "--set", "baselines.models=[popularity,ease]"])
    assert {b["protocol"] for b in baselines} == {summary["protocol"]}
    assert all(b["test_metrics"]["n_users"] == test["n_users"] for b in baselines)
    # Popularity counts training clicks only, so new items never make its lists nor hit their targets
    popularity = baselines[0]["test_metrics"]
    assert popularity["new_item_share@20"] == 0.0 and popularity["new_targets/recall@20"] == 0.0
    assert popularity["warm_targets/recall@20"] > 0


def test_id_only_cannot_rank_cold_items(tmp_path: Path, cold_data: dict[str, Path]) -> None:
    summary = train_two_tower.main(_args(tmp_path, cold_data, "--set", "item_tower.encoders=[id]",
                                         "--set", "train.epochs=1", "--set", "item_tower.fold_in_step=0"))
    assert "fold_in_metrics" not in summary and "fold_in_delta_vs_baseline" not in summary  # 0 = off
    emb_dir = resolve_model_dir(summary["model_uri"], None)
    model, spec, _ = load_model_dir(emb_dir)
    cold = torch.from_numpy(spec.cold_items)
    assert float(embed_items(model, spec.num_items)[cold].abs().max()) == 0.0  # no content: all ties


def test_cold_start_needs_an_item_table_and_refuses_click_baselines(tmp_path: Path, cold_data: dict[str, Path]) -> None:
    from pipelines import evaluate_baselines

    with pytest.raises(SystemExit, match="needs an item table"):
        train_two_tower.main(_args(tmp_path, cold_data, "--set", "data.items_path=null"))
    with pytest.raises(SystemExit, match="cannot rank cold items"):
        evaluate_baselines.main(_args(tmp_path, cold_data, "--set", "item_tower.encoders=[id]",
                                      "--set", "baselines.models=[ease]"))


def test_missing_text_column_and_model_dir_are_clear_errors(tmp_path: Path, cold_data: dict[str, Path]) -> None:
    base = ("--set", "item_tower.encoders=[id,text]", "--set", f"item_tower.text.pretrained={cold_data['encoder']}")
    with pytest.raises(SystemExit, match="description"):
        train_two_tower.main(_args(tmp_path, cold_data, *base, "--set", "item_tower.text.columns=[title,description]"))
    with pytest.raises(SystemExit, match=r"item_tower.text.pretrained='.*nowhere' cannot be loaded"):
        train_two_tower.main(_args(tmp_path, cold_data, "--set", "item_tower.encoders=[id,text]",
                                   "--set", f"item_tower.text.pretrained={tmp_path / 'nowhere'}"))


def test_encoder_uri_is_fetched_from_the_runs_tracking_store(tmp_path: Path, cold_data: dict[str, Path]) -> None:
    """runs:/<id>/encoder is looked up in the configured tracking.uri, not in whatever store MLflow
    currently points at; a run that is not there is a clear error naming the store."""
    store = f"sqlite:///{tmp_path / 'pretraining.db'}"
    client = mlflow.MlflowClient(store)
    run_id = client.create_run(client.create_experiment("simcse")).info.run_id
    client.log_artifacts(run_id, str(cold_data["encoder"]), "encoder")
    client.set_terminated(run_id)
    encoder_uri = f"runs:/{run_id}/encoder"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'some_other.db'}")  # a stale global store
    try:
        summary = train_two_tower.main(_args(
            tmp_path, cold_data, "--set", f"tracking.uri={store}", "--set", "item_tower.encoders=[id,text]",
            "--set", f"item_tower.text.pretrained={encoder_uri}", "--set", "train.epochs=1",
        ))
        assert summary["test_metrics"]["recall@20"] >= 0
        run = mlflow.MlflowClient(store).get_run(summary["run_id"])
        assert run.data.params["item_tower.text.pretrained"] == encoder_uri

        missing = f"runs:/{'0' * 32}/encoder"
        expected = (r"could not be fetched from the MLflow store sqlite:///.*pretraining\.db "
                    r"\(Run with id=0+ not found\).*tracking\.uri")
        with pytest.raises(SystemExit, match=expected):
            train_two_tower.main(_args(
                tmp_path, cold_data, "--set", f"tracking.uri={store}",
                "--set", "item_tower.encoders=[id,text]",
                "--set", f"item_tower.text.pretrained={missing}",
            ))
    finally:
        mlflow.set_tracking_uri(None)


def test_cold_start_ablation_table_has_the_reference_rows(tmp_path: Path, cold_data: dict[str, Path]) -> None:
    from pipelines import ablation

    variants = tmp_path / "variants.yaml"
    variants.write_text(
        '"ID only": ["item_tower.encoders=[id]"]\n'
        f'"ID + text": ["item_tower.encoders=[id,text]", "item_tower.text.pretrained={cold_data["encoder"]}"]\n'
    )
    args = [a for a in _args(tmp_path, cold_data, "--set", "train.epochs=1") if a != "--set"]
    table = ablation.main(["--variants", str(variants), "--seeds", "0", "--out", str(tmp_path / "t.md"),
                           *[x for a in args for x in ("--set", a)]])
    test_table, validation = table.split("\n\nValidation, on which a variant is chosen (never on test):\n\n")
    lines = test_table.splitlines()
    assert "catalogue=cold_items" in lines[0]
    assert [line.split("|")[1].strip() for line in validation.splitlines()[2:]] == ["ID only", "ID + text"]
    names = [line.split("|")[1].strip() for line in lines[4:]]
    assert names == ["two-tower: ID only", "two-tower: ID only, first clicks folded in", "two-tower: ID + text",
                     "two-tower: ID + text, first clicks folded in", "Popularity (clicks before the test period)",
                     "random ranking (exact expectation)"]
    assert "n/a" in lines[-1]  # random: no MRR / coverage
    bad = tmp_path / "bad.yaml"
    bad.write_text('"text": ["item_tower.encoders=[id,text]", "item_tower.text.columns=[title,plot]"]\n')
    with pytest.raises(SystemExit, match="plot"):  # before any training
        ablation.main(["--variants", str(bad), "--seeds", "0", *[x for a in args for x in ("--set", a)]])


def test_image_tower_ranks_cold_items_on_a_fashion_style_log(tmp_path: Path) -> None:
    """Items are tiny images whose class is a bright row; a (random-init, frozen) CNN separates
    them, so the image tower ranks never-clicked items of the user's preferred classes."""
    from recsys_cl.data.fashion_clicks import FashionClicksConfig, fashion_clicks_meta, generate_fashion_clicks
    from recsys_cl.data.fashion_clicks import write_fashion_clicks
    from recsys_cl.pretrain.config import EncoderConfig, ImageDataConfig, SimCLRConfig
    from recsys_cl.pretrain.simclr import build_encoder, save_encoder

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 100)
    images = (rng.random((len(labels), 1, 8, 8)) * 40).astype(np.uint8)
    images[np.arange(len(labels)), 0, labels, :] = 255  # class c: row c lit
    cfg = FashionClicksConfig(num_items=800, num_users=300, clicks_per_user=20, seed=0)
    clicks, items = generate_fashion_clicks(images, labels, cfg)
    data = tmp_path / "fc"
    write_fashion_clicks(data, clicks, items, fashion_clicks_meta(clicks, items, cfg, (1, 8, 8)))
    torch.manual_seed(0)
    sim = SimCLRConfig(data=ImageDataConfig(image_size=(8, 8)), model=EncoderConfig(widths=(8, 16)))
    encoder = save_encoder(build_encoder(sim.model), sim, tmp_path / "encoder")
    args = [
        "--set", "data.format=parquet", "--set", f"data.path={data / 'clicks.parquet'}",
        "--set", f"data.items_path={data / 'items.parquet'}", "--set", "split.kind=cold_start",
        "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "--set", f"train.checkpoint_dir={tmp_path / 'ck'}",
        "--set", "train.progress=false", "--set", "train.epochs=5", "--set", "train.batch_size=256",
        "--set", "train.lr=0.01", "--set", "model.embedding_dim=16", "--set", "user_tower.history_length=10",
        "--set", "item_tower.encoders=[id,image]", "--set", "item_tower.id_dropout=0.5",
        "--set", f"item_tower.image.pretrained={encoder}", "--set", "item_tower.image.shape=[1,8,8]",
        "--set", "item_tower.cache_dir=null",
    ]
    summary = train_two_tower.main(args)
    test, rand = summary["test_metrics"], summary["random_metrics"]
    assert test["recall@20"] > 2 * rand["recall@20"], (test, rand)
    with pytest.raises(SystemExit, match=r"its image has 64 values, expected C\*H\*W = 784"):
        train_two_tower.main(args + ["--set", "item_tower.image.shape=[1,28,28]"])
    # the same pixel count in another shape would scramble every picture
    with pytest.raises(SystemExit, match=r"was pretrained on 8x8 images but item_tower\.image\.shape is \[1, 4, 16\]"):
        train_two_tower.main(args + ["--set", "item_tower.image.shape=[1,4,16]"])


def test_fine_tuned_text_encoder_trains_inside_the_tower(tmp_path: Path, cold_data: dict[str, Path]) -> None:
    from recsys_cl.towers.text_encoder import load_text_encoder

    summary = train_two_tower.main(_args(
        tmp_path, cold_data, "--set", "item_tower.encoders=[id,text]", "--set", "item_tower.text.trainable=true",
        "--set", f"item_tower.text.pretrained={cold_data['encoder']}", "--set", "train.epochs=1",
        "--set", "train.batch_size=512",
    ))
    model, spec, _ = load_model_dir(resolve_model_dir(summary["model_uri"], None))
    assert spec.content_meta["text"]["mode"] == "trainable" and "text" not in spec.content
    tuned = model.item_tower.encoders["text"].encoder.state_dict()
    start = load_text_encoder(cold_data["encoder"])[0].state_dict()
    assert tuned.keys() == start.keys()
    changed = [k for k in start if not torch.equal(start[k], tuned[k])]
    assert len(changed) > len(start) // 2  # the transformer itself was fine-tuned
