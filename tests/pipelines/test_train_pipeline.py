"""The train and baselines pipelines end to end on tiny MovieLens 100K / 1M fixtures, with a real
MLflow SQLite store in tmp_path: params, per-epoch metrics, artifacts, the registered model."""

import json
import os
import re
import shutil
from typing import Any
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipelines import evaluate_baselines, train_two_tower
from recsys_cl.config import TrackingConfig
from recsys_cl.tracking import resolve_model_dir
from recsys_cl.train.checkpoint import load_model_dir
from recsys_cl.train.steps import embed_items

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _args(tmp_path: Path, data: str, *extra: str) -> list[str]:
    return [
        "--set", f"data.path={FIXTURES / data}",
        "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "--set", "tracking.experiment=smoke",
        "--set", f"train.checkpoint_dir={tmp_path / 'ck'}",
        "--set", "train.epochs=2", "--set", "train.batch_size=8", "--set", "train.progress=false",
        "--set", "model.embedding_dim=8", "--set", "user_tower.history_length=4",
        *extra,
    ]


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # mlruns/ artifacts land in tmp_path
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.mark.parametrize("data", ["ml-100k", "ml-1m"])
def test_train_pipeline_logs_everything(tmp_path: Path, data: str) -> None:
    out = tmp_path / "summary.json"
    summary = train_two_tower.main(
        _args(tmp_path, data, "--summary-json", str(out), "--set", "tracking.set_alias=champion")
    )
    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert set(on_disk) >= {"run_id", "model_uri", "protocol", "test_metrics"}
    assert {"recall@20", "ndcg@20", "recall@10", "recall@50", "ndcg@10", "hit_rate@10", "mrr",
            "coverage@20"} <= set(on_disk["test_metrics"])
    assert on_disk["protocol"].startswith("full_ranking|catalogue=train_items|history_masked")
    assert on_disk["model_uri"] == "models:/recsys_cl_two_tower/1"

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("recsys_cl_two_tower", "champion").version) == "1"
    run = client.get_run(on_disk["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["loss.temperature"] == "0.1"
    assert run.data.params["data.path"].endswith(data)
    # no params of the content encoders the run does not use ([id, categorical]); the config keeps them
    assert run.data.params["item_tower.encoders"] == "[id, categorical]"
    unread = ("item_tower.text.", "item_tower.image.", "baselines.", "candidates.", "index.")
    assert not [k for k in run.data.params if k.startswith(unread)]
    resolved = client.download_artifacts(run.info.run_id, "config/resolved_config.yaml", str(tmp_path / "cfg"))
    assert {"text", "image"} <= set(yaml.safe_load(Path(resolved).read_text())["item_tower"])
    assert run.data.tags["protocol"] == on_disk["protocol"]
    assert len(run.data.tags["data_fingerprint"]) == 16 and "git_commit" in run.data.tags
    steps = client.get_metric_history(run.info.run_id, "val/recall_at_20")
    assert [m.step for m in steps] == [1, 2]
    for size in ("n_users", "n_skipped_users"):  # the validation set's size: once, not a flat curve
        points = client.get_metric_history(run.info.run_id, f"val/{size}")
        assert [(m.step, m.value) for m in points] == [(0, on_disk["val_metrics"][size])]
    assert run.data.metrics["test/recall_at_20"] == pytest.approx(on_disk["test_metrics"]["recall@20"])
    _assert_logs_popularity_strata(run, on_disk["test_metrics"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plots", "item_embeddings", "vocab", "config"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/learning_curves.png", "plots/recall_vs_k.png", "plots/popularity.png"} <= plots

    # the registered model loads back into both towers and reproduces the logged embeddings
    model_dir = resolve_model_dir(on_disk["model_uri"], TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    model, spec, cfg = load_model_dir(model_dir)
    emb_dir = client.download_artifacts(run.info.run_id, "item_embeddings", str(tmp_path / "dl"))
    table = pd.read_parquet(Path(emb_dir) / "item_embeddings.parquet")
    np.testing.assert_allclose(np.stack(table["embedding"]), embed_items(model, spec.num_items).numpy(),
                               atol=1e-6)
    assert cfg.train.epochs == 2
    u = model.user_tower(torch.tensor([[0, 1, -1, -1]]))
    assert u.shape == (1, 8)

    pyfunc = mlflow.pyfunc.load_model(on_disk["model_uri"])
    first_items = list(spec.items.ids[:3])
    pred = pyfunc.predict(pd.DataFrame({"history": [first_items]}))
    recommended = list(pred["item_ids"][0])
    assert len(recommended) == min(10, spec.num_items - 3)
    assert not set(first_items) & set(recommended)  # the history is never recommended
    # past history_length (4) too: the tower reads the last 4, but none of the 7 comes back
    long = list(spec.items.ids[:7])
    first_scores = list(pred["scores"][0])
    pred = pyfunc.predict(pd.DataFrame({"history": [long, first_items]}))
    assert [len(r) for r in pred["item_ids"]] == [min(10, spec.num_items - 7), min(10, spec.num_items - 3)]
    assert not set(long) & set(pred["item_ids"][0])
    assert list(pred["item_ids"][1]) == recommended and list(pred["scores"][1]) == pytest.approx(first_scores)
    # the signature says (and MLflow checks) what predict takes
    assert pyfunc.metadata.get_input_schema().input_names() == ["history"]
    with pytest.raises(mlflow.exceptions.MlflowException, match="history"):
        pyfunc.predict(pd.DataFrame({"items": [first_items]}))


def test_bad_config_key_exits_with_the_key(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"unknown config key 'loss\.temprature'; did you mean 'loss\.temperature'\? "):
        train_two_tower.main(_args(tmp_path, "ml-100k", "--set", "loss.temprature=0.1"))


def test_missing_data_path_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"data error: .*does not exist"):
        train_two_tower.main(_args(tmp_path, "no-such-folder"))
    assert not (tmp_path / "ck").exists()  # no empty checkpoint folder left behind


def test_help_explains(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train_two_tower.main(["--help"])
    text = capsys.readouterr().out
    assert "--set" in text and "--summary-json" in text and "MovieLens" in text
    assert "eval.catalogue=all_items" in text and "split.kind=cold_start" in text


def _assert_logs_popularity_strata(run: Any, test_metrics: dict[str, float]) -> None:
    """Head/tail recall and the tail's share of the lists, in the summary and as test/* metrics under the
    names a two-tower run and a baseline both use, with the head definition as a tag."""
    keys = ("head_targets/recall@20", "tail_targets/recall@20", "tail_targets/n_users", "tail_share@20",
            "head_items/n")
    assert set(keys) <= set(test_metrics)
    assert 0 <= test_metrics["tail_share@20"] <= 1 and test_metrics["tail_targets/n_users"] > 0
    for k in keys:
        assert run.data.metrics["test/" + k.replace("@", "_at_")] == pytest.approx(test_metrics[k])
    assert run.data.tags["popularity_strata"].startswith("head=top_train_clicks_holding_0.5_of_train_clicks")
    assert run.data.params["eval.head_share"] == "0.5"


def test_baselines_pipeline_same_experiment(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    summaries = evaluate_baselines.main(_args(tmp_path, "ml-100k", "--summary-json", str(out)))
    assert [s["model"] for s in summaries] == ["popularity", "itemknn", "ease"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("smoke")
    runs = mlflow.search_runs([exp.experiment_id])
    assert len(runs) == 3 and set(runs["tags.model"]) == {"popularity", "itemknn", "ease"}
    assert "lam" in summaries[2]["params"]
    for s in summaries:
        _assert_logs_popularity_strata(mlflow.MlflowClient().get_run(s["run_id"]), s["test_metrics"])


def test_baselines_ignore_the_two_tower_content_config(tmp_path: Path) -> None:
    """Baselines read clicks only: an item_tower the data cannot feed (the default config's
    categorical encoder on a click log without an item table, so without genres) does not stop them."""
    import polars as pl

    log = tmp_path / "clicks.parquet"
    pl.read_csv(FIXTURES / "ml-100k" / "u.data", separator="\t", has_header=False,
                new_columns=["user_id", "item_id", "rating", "timestamp"]).write_parquet(log)
    args = [*_args(tmp_path, "ml-100k", "--set", "baselines.models=[popularity]"),
            "--set", f"data.path={log}", "--set", "data.format=parquet"]
    assert [s["model"] for s in evaluate_baselines.main(args)] == ["popularity"]
    with pytest.raises(SystemExit, match="includes 'categorical' but the item table has no genres"):
        train_two_tower.main(args)  # the two-tower model does read it


def test_ablation_writes_a_table_of_all_rows(tmp_path: Path) -> None:
    from pipelines import ablation

    variants = tmp_path / "v.yaml"
    variants.write_text("plain: [loss.logq=none]\ndebiased: [loss.kind=debiased]\n")
    out = tmp_path / "ab.md"
    summary_json = tmp_path / "s" / "ab.json"
    table = ablation.main(["--variants", str(variants), "--seeds", "0", "1", "--baselines", "popularity",
                           "--out", str(out), "--summary-json", str(summary_json), *_args(tmp_path, "ml-100k")])
    assert out.read_text().strip() == table.strip()
    assert "| two-tower: plain | 2 |" in table and "| two-tower: debiased | 2 |" in table
    assert "| popularity | 1 |" in table and "±" in table
    assert table.startswith("Protocol: `full_ranking")
    main, strata = table.split("\n\nLong tail: ")[0], table.split("\n\nLong tail: ")[1].split("\n\nValidation")[0]
    assert "tail_share@20" not in main  # the main table keeps its columns; the strata have a table of their own
    assert "| model | seeds | recall@20 | head_targets/recall@20 | tail_targets/recall@20 | tail_share@20 |" in strata
    assert all(f"| {row} |" in strata for row in ("popularity | 1", "two-tower: plain | 2", "two-tower: debiased | 2"))
    summary = json.loads(summary_json.read_text())
    assert summary["protocol"].startswith("full_ranking") and summary["table"] == str(out)
    assert [(r["variant"], r["seed"]) for r in summary["runs"]] == [("plain", 0), ("plain", 1), ("debiased", 0),
                                                                    ("debiased", 1)]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for r in summary["runs"]:  # each run's own numbers: validation (what selects) beside test
        logged = mlflow.get_run(r["run_id"]).data.metrics
        assert r["test_metrics"]["recall@20"] == pytest.approx(logged["test/recall_at_20"])
        assert 0 < r["val_metrics"]["recall@20"] <= 1 and r["best_epoch"] >= 1
    assert set(summary["baselines"]) == {"popularity"}
    assert summary["baselines"]["popularity"]["test_metrics"]["recall@20"] > 0


def test_ablation_runs_are_nested_under_one_parent_run_with_the_table(tmp_path: Path) -> None:
    """Each variant x seed and each baseline is a child of one parent run, which holds the command and
    base config as params, the table and summary as artifacts and each variant's mean as metrics (the
    runs were top-level runs with nothing joining them)."""
    from pipelines import ablation

    variants = tmp_path / "v.yaml"
    variants.write_text("plain: [loss.logq=none]\n'+ logQ (counting)': [loss.logq=counting]\n")
    out, summary_json = tmp_path / "ab.md", tmp_path / "summary.json"
    argv = ["--variants", str(variants), "--seeds", "0", "--baselines", "popularity", "--out", str(out),
            "--summary-json", str(summary_json), *_args(tmp_path, "ml-100k")]
    table = ablation.main(argv)
    summary = json.loads(summary_json.read_text())
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client, runs = mlflow.MlflowClient(), mlflow.search_runs(experiment_names=["smoke"])
    (parent_id,) = runs[runs["tags.ablation"] == "parent"]["run_id"]
    assert summary["parent_run_id"] == parent_id
    parent = client.get_run(parent_id)
    assert parent.info.run_name == "ablation[v]" and parent.info.status == "FINISHED"
    assert parent.data.tags["ablation_id"] == parent_id and parent.data.tags["model"] == "two_tower"
    assert parent.data.tags["logq"] == "none,counting" and parent.data.tags["dataset"] == "ml-100k"
    children = runs[runs["run_id"] != parent_id]
    names = ["+ logQ (counting) seed=0", "baseline-popularity", "plain seed=0"]
    assert sorted(children["tags.mlflow.runName"]) == names
    assert set(children["tags.mlflow.parentRunId"]) == set(children["tags.ablation_id"]) == {parent_id}
    assert {r["run_id"] for r in summary["runs"]} | {summary["baselines"]["popularity"]["run_id"]} == set(
        children["run_id"])

    params = parent.data.params
    assert params["ablation.command"].startswith("python -m pipelines.ablation --variants ")
    assert "train.epochs=2" in params["ablation.command"] and params["ablation.seeds"] == "[0]"
    assert params["ablation.baselines"] == "[popularity]" and params["train.epochs"] == "2"
    assert "plain" in params["ablation.variants"] and "+ logQ (counting)" in params["ablation.variants"]
    assert not any(k.startswith(("item_tower.text.", "candidates.", "index.")) for k in params)  # no run reads them
    assert params["baselines.models"] == "[popularity]"  # the baselines it ran (the section), not the config's list

    def artifact(path: str) -> str:
        return Path(client.download_artifacts(parent_id, path, str(tmp_path / "dl"))).read_text()

    assert artifact("ablation/table.md") == out.read_text() == table + "\n"
    assert json.loads(artifact("ablation/summary.json")) == summary
    assert yaml.safe_load(artifact("ablation/variants.yaml")) == yaml.safe_load(variants.read_text())
    assert yaml.safe_load(artifact("config/resolved_config.yaml"))["candidates"]["k"] == 100  # every key
    assert table in parent.data.tags["mlflow.note.content"]  # the table heads the parent's page too

    metrics = parent.data.metrics  # one seed each: the mean is that run's number
    for name, r in (("plain", summary["runs"][0]), ("logQ_counting", summary["runs"][1])):
        assert metrics[f"mean/{name}/test/recall_at_20"] == pytest.approx(r["test_metrics"]["recall@20"])
        assert metrics[f"mean/{name}/test/mrr"] == pytest.approx(r["test_metrics"]["mrr"])
        tail = r["test_metrics"]["tail_targets/recall@20"]
        assert metrics[f"mean/{name}/test/tail_targets/recall_at_20"] == pytest.approx(tail)
        assert metrics[f"mean/{name}/val/recall_at_20"] == pytest.approx(r["val_metrics"]["recall@20"])


def test_variant_means_are_the_tables_means_under_names_mlflow_accepts() -> None:
    from pipelines.ablation import variant_means

    runs = [{"variant": v, "seed": s, "test_metrics": {"recall@20": r, "ndcg@10": 0.1, "mrr": 0.2},
             "val_metrics": {"recall@20": r / 2}}
            for v, s, r in (("a/b", 0, 0.2), ("a/b", 1, 0.4), ("a b", 0, 0.5))]
    means = variant_means(runs)
    assert means["mean/a_b/test/recall@20"] == pytest.approx(0.3)
    assert means["mean/a_b/val/recall@20"] == pytest.approx(0.15)
    assert means["mean/a_b_2/test/recall@20"] == 0.5  # 'a b' writes as 'a_b' too: numbered, not merged
    assert "mean/a_b/test/tail_targets/recall@20" not in means  # runs without it (cold start): no NaN metric
    runs[0]["test_metrics"]["tail_targets/recall@20"] = runs[1]["test_metrics"]["tail_targets/recall@20"] = 0.1
    assert variant_means(runs)["mean/a_b/test/tail_targets/recall@20"] == pytest.approx(0.1)


def test_ablation_bare_baselines_flag_is_the_configs_list_and_no_baselines_is_none(tmp_path: Path) -> None:
    """As in pipelines.sweep: ``--baselines`` without names means the config's baselines.models."""
    from pipelines import ablation

    variants = tmp_path / "v.yaml"
    variants.write_text("plain: [loss.logq=none]\n")
    base = ["--variants", str(variants), "--seeds", "0", "--out", str(tmp_path / "ab.md"),
            *_args(tmp_path, "ml-100k", "--set", "baselines.models=[popularity]")]
    assert "| popularity | 1 |" in ablation.main([*base, "--baselines"])
    table = ablation.main([*base, "--no-baselines"])
    assert "| two-tower: plain | 1 |" in table and "popularity" not in table
    with pytest.raises(SystemExit):  # one or the other
        ablation.main([*base, "--baselines", "--no-baselines"])


def test_ablation_rejects_a_bad_variant_before_training(tmp_path: Path) -> None:
    from pipelines import ablation

    variants = tmp_path / "v.yaml"
    variants.write_text("typo: [loss.kindd=debiased]\n")
    with pytest.raises(SystemExit, match=r"'loss\.kindd'"):
        ablation.main(["--variants", str(variants), "--seeds", "0", *_args(tmp_path, "ml-100k")])


def _killed_in_epoch_2(main, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Run ``main(args)`` with a kill simulated during epoch 2 (after epoch 1 was checkpointed)."""
    from recsys_cl import tracking

    original = tracking.Tracker.on_epoch_end

    def crash_at_epoch_2(self, epoch, metrics):  # type: ignore[no-untyped-def]
        if epoch == 2:
            raise KeyboardInterrupt("simulated kill during epoch 2")
        original(self, epoch, metrics)

    monkeypatch.setattr(tracking.Tracker, "on_epoch_end", crash_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    monkeypatch.setattr(tracking.Tracker, "on_epoch_end", original)


@pytest.mark.parametrize("text, match", [
    (None, r"variants file .* does not exist or is not a file"),
    ("", r"holds no variants; it must be a mapping of variant name"),
    ("just a string\n", r"must be a mapping of variant name .*; found a str"),
    ("- a\n- b\n", r"must be a mapping of variant name .*; found a list"),
    ("foo: [loss.temperature=0.1\n", r"is not valid YAML"),
    ("foo: [42]\n", r"variant 'foo' must be a list of \"section\.key=value\" strings, found \[42\]"),
    ("foo: loss.temperature=0.2\n", r"variant 'foo' must be a list .*found 'loss\.temperature=0\.2'"),
    ("foo: [loss.temperature=0.1]\nbar: []\nfoo: [loss.temperature=0.2]\n",
     r"gives foo twice, on lines 1 and 3; rename or delete one"),
])
def test_ablation_variants_file_is_checked_before_anything_runs(tmp_path: Path, text: str | None, match: str) -> None:
    from pipelines import ablation

    variants = tmp_path / "v.yaml"
    if text is not None:
        variants.write_text(text)
    with pytest.raises(SystemExit, match=r"^config error: (variants file .* )?" + match):
        ablation.main(["--variants", str(variants), "--seeds", "0", *_args(tmp_path, "ml-100k")])
    assert not (tmp_path / "mlflow.db").exists()


def test_ablation_checks_names_seeds_and_output_before_anything_runs(tmp_path: Path) -> None:
    from pipelines import ablation

    variants = tmp_path / "v.yaml"
    variants.write_text("plain: [loss.logq=none]\n")
    base = ["--variants", str(variants), *_args(tmp_path, "ml-100k")]
    with pytest.raises(SystemExit, match=r"config error: baselines\.models\[1\] must be one of"):
        ablation.main([*base, "--seeds", "0", "--baselines", "popularity", "nosuch"])
    with pytest.raises(SystemExit, match=r"config error: baselines\.models\[1\] must be one of"):  # before the data
        ablation.main([*base, "--seeds", "0", "--baselines", "popularity", "nosuch", "--set", "data.path=/nonexistent"])
    with pytest.raises(SystemExit, match=r"config error: --seeds has duplicates \[0, 0\]"):
        ablation.main([*base, "--seeds", "0", "0"])
    with pytest.raises(SystemExit, match=r"config error: unknown variant\(s\) \['nope'\] in --only"):
        ablation.main([*base, "--seeds", "0", "--only", "nope"])
    seeded = tmp_path / "seeded.yaml"  # --seeds overrode it: tagged seed 0, trained with seed 0, the 5 unseen
    seeded.write_text("plain: [loss.logq=none]\nseed5: [loss.logq=none, train.seed=5]\n")
    with pytest.raises(SystemExit, match=r"^config error: variant 'seed5' in --variants sets 'train\.seed=5', but "
                                         r"--seeds sets train\.seed in every run \(and overrides it\); drop it"):
        ablation.main([*base, "--seeds", "0", "--variants", str(seeded)])
    with pytest.raises(SystemExit, match=r"^config error: --set sets 'train\.seed=5', but --seeds sets train\.seed"):
        ablation.main([*base, "--seeds", "0", "--set", "train.seed=5"])
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit, match=r"output error: --out .*afile/ab\.md cannot be written: "
                                         r".*afile on its path is a file"):
        ablation.main([*base, "--seeds", "0", "--out", str(tmp_path / "afile" / "ab.md")])
    with pytest.raises(SystemExit, match=r"output error: --out .* is a directory"):
        ablation.main([*base, "--seeds", "0", "--out", str(tmp_path)])
    assert not (tmp_path / "mlflow.db").exists()


def test_ablation_checks_the_rows_json_beside_out_before_anything_runs(tmp_path: Path) -> None:
    """--out X.md also writes X.json: a folder there ended a finished ablation in IsADirectoryError."""
    from pipelines import ablation

    variants = tmp_path / "v.yaml"
    variants.write_text("plain: [loss.logq=none]\n")
    base = ["--variants", str(variants), "--seeds", "0", *_args(tmp_path, "ml-100k")]
    (tmp_path / "ab.json").mkdir()
    with pytest.raises(SystemExit, match=rf"^output error: --out {tmp_path}/ab\.md writes its rows beside it to "
                                         rf"{tmp_path}/ab\.json, which is a directory; pass another --out"):
        ablation.main([*base, "--out", str(tmp_path / "ab.md")])
    with pytest.raises(SystemExit, match=r"^output error: --out .*/rows\.json ends in \.json, the name of the rows "
                                         r"file written beside the table; pass a Markdown path"):
        ablation.main([*base, "--out", str(tmp_path / "rows.json")])
    with pytest.raises(SystemExit, match=r"^output error: --summary-json .*/t\.json is the rows file written beside "
                                         r"--out .*/t\.md, so one would overwrite the other"):
        ablation.main([*base, "--out", str(tmp_path / "t.md"), "--summary-json", str(tmp_path / "t.json")])
    with pytest.raises(SystemExit, match=r"^output error: --summary-json .*/t\.md is the same file as --out"):
        ablation.main([*base, "--out", str(tmp_path / "t.md"), "--summary-json", str(tmp_path / "t.md")])
    assert not (tmp_path / "mlflow.db").exists()


def test_ablation_outputs_are_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The table, its rows JSON and the summary: a temp file renamed over each, never one half-written."""
    import argparse
    import os

    from pipelines import ablation

    out, summary = tmp_path / "ab.md", tmp_path / "s.json"
    args = argparse.Namespace(out=str(out), summary_json=str(summary))
    baseline = {"popularity": {"params": "", "test_metrics": {"recall@20": 0.5}}}
    ablation.write_outputs(args, "full_ranking", baseline, [], {})
    before = {p.name: (p.stat().st_ino, p.read_text()) for p in tmp_path.iterdir()}
    assert set(before) == {"ab.md", "ab.json", "s.json"}
    assert json.loads(before["ab.json"][1]) == {"popularity ": [{"recall@20": 0.5}]}

    def killed(src: object, dst: object) -> None:
        raise KeyboardInterrupt  # stopped between writing a temp file and renaming it

    with monkeypatch.context() as m:
        m.setattr(os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            ablation.write_outputs(args, "other", baseline, [], {})
    assert {p.name: (p.stat().st_ino, p.read_text()) for p in tmp_path.iterdir()} == before  # untouched, no temp
    ablation.write_outputs(args, "other", baseline, [], {})
    after = {p.name: p.stat().st_ino for p in tmp_path.iterdir()}
    assert set(after) == set(before) and all(after[n] != before[n][0] for n in after)  # new files renamed in
    assert out.read_text().startswith("Protocol: `other`")


def test_ablation_long_tail_table_has_the_folded_rows(tmp_path: Path) -> None:
    """eval.catalogue=all_items with fold-in: a run's folded lists have the long-tail metrics too
    (test_fold_in/*), so its "first clicks folded in" row stands in the long-tail table as in the main one."""
    import argparse

    from pipelines import ablation

    strata = {"recall@20": 0.2, "head_targets/recall@20": 0.3, "tail_targets/recall@20": 0.1, "tail_share@20": 0.4}
    runs = [{"variant": "ID + text", "seed": 0, "best_epoch": 1, "val_metrics": {"recall@20": 0.2},
             "test_metrics": strata, "fold_in_metrics": {**strata, "tail_targets/recall@20": 0.15}}]
    args = argparse.Namespace(out=str(tmp_path / "ab.md"), summary_json=None)
    table, _ = ablation.write_outputs(args, "full_ranking|catalogue=all_items", {}, runs, {})
    long_tail = table.split("\n\nLong tail: ")[1].split("\n\nValidation")[0]
    assert "| two-tower: ID + text | 1 | 0.2000 | 0.3000 | 0.1000 | 0.4000 |" in long_tail
    assert "| two-tower: ID + text, first clicks folded in | 1 | 0.2000 | 0.3000 | 0.1500 | 0.4000 |" in long_tail


def test_killed_ablation_resumes_into_the_same_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines import ablation

    variants = tmp_path / "v.yaml"
    variants.write_text("plain: [loss.logq=none]\n")
    args = ["--variants", str(variants), "--seeds", "0", "--no-baselines", "--out", str(tmp_path / "ab.md"),
            *_args(tmp_path, "ml-100k", "--set", "train.epochs=3", "--set", "train.patience=10")]
    _killed_in_epoch_2(ablation.main, args, monkeypatch)
    ablation.main(args)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["smoke"]).set_index("tags.ablation")
    assert sorted(runs.index) == ["parent", "plain"] and set(runs["status"]) == {"FINISHED"}  # resumed, no new runs
    assert runs.loc["plain", "tags.mlflow.parentRunId"] == runs.loc["parent", "run_id"]
    steps = mlflow.MlflowClient().get_metric_history(runs.loc["plain", "run_id"], "val/recall_at_20")
    assert sorted(m.step for m in steps) == [1, 2, 3]
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(runs.loc["plain", "run_id"], "val/n_users")] == [0]


@pytest.mark.parametrize("pipeline", ["train_two_tower", "ablation"])
def test_a_second_launch_while_the_first_trains_is_refused_and_leaves_its_run_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pipeline: str, hold_checkpoint,  # type: ignore[no-untyped-def]
) -> None:
    """The same command launched twice (a double launch, a scheduler's retry while the first still
    runs): the second resumed from the first's latest checkpoint into the first's MLflow run, so both
    logged the same epochs into it and each registered a model. It must stop before it opens a run."""
    import importlib

    main = importlib.import_module(f"pipelines.{pipeline}").main
    args = _args(tmp_path, "ml-100k", "--set", "train.epochs=3", "--set", "train.patience=10")
    if pipeline == "ablation":
        variants = tmp_path / "v.yaml"
        variants.write_text("plain: [loss.logq=none]\n")
        args = ["--variants", str(variants), "--seeds", "0", "--no-baselines", "--out", str(tmp_path / "ab.md"), *args]
    _killed_in_epoch_2(main, args, monkeypatch)  # the first run's state after its first epoch: a checkpoint, a run
    (ckpt,) = (tmp_path / "ck").glob("*.pt")
    checkpointed = ckpt.read_bytes()
    first = hold_checkpoint(ckpt)  # ... and its process, still training
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    ended: list[Any] = []

    def runs() -> pd.DataFrame:  # the training runs; an ablation has one parent run besides
        found = mlflow.search_runs(experiment_names=["smoke"])
        if pipeline == "ablation":
            (parent_end,) = found[found["tags.ablation"] == "parent"]["end_time"]
            ended.append(parent_end)
            found = found[found["tags.ablation"] != "parent"]
        return found

    before = runs()
    with pytest.raises(SystemExit, match=rf"^checkpoint error: another process is training this config on this data "
                                         rf"with the checkpoint {re.escape(str(ckpt))} \(pid {first.pid} on "):
        main(args)
    assert ckpt.read_bytes() == checkpointed
    (run_id,) = runs()["run_id"]  # no second run opened
    assert list(before["run_id"]) == [run_id] and ended[1:] == ended[:1]  # nor the ablation's parent reopened
    steps = mlflow.MlflowClient().get_metric_history(run_id, "val/recall_at_20")
    assert [m.step for m in steps] == [1], "nothing logged into the first run"

    first.kill()  # killed: the kernel releases its lock, so the same command continues it at once
    first.wait()
    main(args)
    assert list(runs()["run_id"]) == [run_id] and runs()["status"].iloc[0] == "FINISHED"
    assert sorted(m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val/recall_at_20")) == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [], "neither checkpoint nor lock file is left"


def test_a_killed_runs_staged_model_is_removed_by_the_next_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model and artifacts are staged in a temp folder for MLflow; a run SIGKILLed while MLflow
    copied them (seen by hand: a tempfile.TemporaryDirectory, whose cleanup never ran) left that copy
    in /tmp for good, one per killed run. Now the folder carries the pid, and the next run removes it."""
    import subprocess
    import sys
    import tempfile

    from recsys_cl import tracking
    from recsys_cl.experiment import RUN_SCRATCH_PREFIX

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / "tmp" / f"{RUN_SCRATCH_PREFIX}{int(gone.stdout)}_abc"  # what the SIGKILLed run left
    (left / "model").mkdir(parents=True)
    (left / "model" / "model.pt").write_bytes(b"weights")
    staged: list[Path] = []
    real = tracking.Tracker.log_model

    def log_model(self, model_dir, name):  # type: ignore[no-untyped-def]
        staged.append(Path(model_dir))
        assert not left.exists(), "the killed run's copy is removed before this run stages its own"
        return real(self, model_dir, name)

    monkeypatch.setattr(tracking.Tracker, "log_model", log_model)
    train_two_tower.main(_args(tmp_path, "ml-100k", "--set", "train.epochs=1"))
    (model_dir,) = staged
    assert model_dir.parent.parent == tmp_path / "tmp"
    assert model_dir.parent.name.startswith(f"{RUN_SCRATCH_PREFIX}{os.getpid()}_")  # a later run can tell it is gone
    assert not model_dir.exists()
    assert [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith(RUN_SCRATCH_PREFIX)] == []


def test_item_table_without_genres_is_a_data_error_before_a_run(tmp_path: Path) -> None:
    data = tmp_path / "ml"
    shutil.copytree(FIXTURES / "ml-100k", data)
    (data / "u.item").unlink()  # no item table: no genres for the categorical encoder
    with pytest.raises(SystemExit, match=r"^data error: item_tower\.encoders includes 'categorical' but the item "
                                         r"table has no genres"):
        train_two_tower.main([*_args(tmp_path, "ml-100k"), "--set", f"data.path={data}"])
    assert not (tmp_path / "mlflow.db").exists()


def test_unwritable_summary_is_refused_before_training(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    for pipeline in (train_two_tower, evaluate_baselines):
        with pytest.raises(SystemExit, match=r"output error: --summary-json .*afile/s\.json cannot be written: "
                                             r".*afile on its path is a file, not a folder"):
            pipeline.main(_args(tmp_path, "ml-100k", "--summary-json", str(tmp_path / "afile" / "s.json")))
    with pytest.raises(SystemExit, match=r"config error: baselines\.models is empty: nothing to evaluate"):
        evaluate_baselines.main(_args(tmp_path, "ml-100k", "--set", "baselines.models=[]"))
    assert not (tmp_path / "mlflow.db").exists()


def test_a_checkpoint_dir_that_cannot_be_written_is_refused_before_training(tmp_path: Path) -> None:
    """It was found after the first epoch (FileExistsError in atomic_torch_save), the MLflow run FAILED."""
    from pipelines import ablation

    afile = tmp_path / "afile"
    afile.write_text("x")
    for folder, problem in ((afile, "is a file, not a folder"),
                            (afile / "ck", f"cannot be created: {afile} on its path is a file, not a folder")):
        with pytest.raises(SystemExit, match=rf"^output error: train\.checkpoint_dir={folder} {problem}; "
                                             r"set it to a writable folder$"):
            train_two_tower.main(_args(tmp_path, "ml-100k", "--set", f"train.checkpoint_dir={folder}"))
    variants = tmp_path / "v.yaml"
    variants.write_text("a: []\n")
    with pytest.raises(SystemExit, match=r"^output error: train\.checkpoint_dir=.*afile is a file"):
        ablation.main(["--variants", str(variants), "--seeds", "0", "--no-baselines",
                       *_args(tmp_path, "ml-100k", "--set", f"train.checkpoint_dir={afile}")])
    assert not (tmp_path / "mlflow.db").exists()


def test_a_content_cache_dir_that_cannot_be_written_is_refused_before_encoding(tmp_path: Path) -> None:
    """item_tower.cache_dir through a file was found only after the frozen encoder had run: a
    NotADirectoryError traceback."""
    from pipelines import ablation
    from recsys_cl.towers.text_encoder import make_tiny_text_encoder

    encoder = make_tiny_text_encoder(tmp_path / "enc", ["Toy Story (1995)", "Heat (1995)"] * 3, vocab_size=60)
    (tmp_path / "afile").write_text("x")
    args = [*_args(tmp_path, "ml-100k"), "--set", "item_tower.encoders=[id,text]",
            "--set", "item_tower.text.columns=[title]", "--set", f"item_tower.text.pretrained={encoder}",
            "--set", f"item_tower.cache_dir={tmp_path / 'afile' / 'cache'}"]
    match = r"output error: item_tower\.cache_dir=.*afile/cache cannot be created: .*afile on its path is a file"
    with pytest.raises(SystemExit, match=match):
        train_two_tower.main(args)
    variants = tmp_path / "v.yaml"
    variants.write_text('"ID + text": []\n')
    with pytest.raises(SystemExit, match=match):
        ablation.main(["--variants", str(variants), "--seeds", "0", *args])
    assert not (tmp_path / "mlflow.db").exists()


def test_a_history_length_beyond_the_longest_history_is_refused_before_a_run(tmp_path: Path) -> None:
    """user_tower.history_length=100000000 allocated 24 GB and was killed without a word; an L past the
    longest history (6 clicks in the fixture) only adds padding, and is refused with that number."""
    from pipelines import ablation

    fix = r"set it to at most 6, e\.g\. --set user_tower\.history_length=6$"
    with pytest.raises(SystemExit, match=r"^config error: user_tower\.history_length=7 is longer than the longest "
                                         r"user history in the click log \(6 clicks\).*" + fix):
        train_two_tower.main(_args(tmp_path, "ml-100k", "--set", "user_tower.history_length=7"))
    variants = tmp_path / "v.yaml"
    variants.write_text("short: []\nlong: [user_tower.history_length=50]\n")
    in_variant = r"set it to at most 6, in variant 'long' \(its overrides in --variants, or --set\)$"
    with pytest.raises(SystemExit, match=r"^config error: user_tower\.history_length=50 is longer .*" + in_variant):
        ablation.main(["--variants", str(variants), "--seeds", "0", "--no-baselines", *_args(tmp_path, "ml-100k")])
    assert not (tmp_path / "mlflow.db").exists()


def test_more_sampled_negatives_than_items_is_refused_before_a_run(tmp_path: Path) -> None:
    """negatives.num_sampled=100000000 ran out of memory in the first batch's (B, B + N) masks, after
    the MLflow run had opened; the sampler draws with replacement from the 12 items with training
    clicks of the fixture, so more draws only repeat items, and are refused with that number."""
    from pipelines import ablation

    uniform = ("--set", "negatives.sampled=uniform")
    fix = r"set it to at most 12, e\.g\. --set negatives\.num_sampled=12$"
    with pytest.raises(SystemExit, match=r"^config error: negatives\.num_sampled=13 is more than the 12 items with "
                                         r"training clicks that negatives\.sampled=uniform draws from .*" + fix):
        train_two_tower.main(_args(tmp_path, "ml-100k", *uniform, "--set", "negatives.num_sampled=13"))
    variants = tmp_path / "v.yaml"
    variants.write_text("few: [negatives.num_sampled=4]\nmany: [negatives.num_sampled=1024]\n")
    in_variant = r"set it to at most 12, in variant 'many' \(its overrides in --variants, or --set\)$"
    with pytest.raises(SystemExit, match=r"^config error: negatives\.num_sampled=1024 is more .*" + in_variant):
        ablation.main(["--variants", str(variants), "--seeds", "0", "--no-baselines",
                       *_args(tmp_path, "ml-100k", *uniform)])
    assert not (tmp_path / "mlflow.db").exists()


def test_num_sampled_is_not_checked_against_the_data_when_nothing_is_sampled() -> None:
    """The default num_sampled (1024) is unused with negatives.sampled=none, on any catalogue."""
    from recsys_cl.config import RunConfig, load_config
    from recsys_cl.experiment import check_num_sampled, prepare

    cfg = load_config(None, RunConfig, overrides=[f"data.path={FIXTURES / 'ml-100k'}"])
    check_num_sampled(cfg, prepare(cfg, content=False))  # 1024 > 12 items, not sampled: no error


def test_changed_data_after_a_kill_starts_a_new_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resuming is keyed by config *and* data: a checkpoint of other clicks must not continue into
    this run (one MLflow run would mix metrics of two data sets)."""
    data = tmp_path / "ml"
    shutil.copytree(FIXTURES / "ml-100k", data)
    args = [*_args(tmp_path, "ml-100k", "--set", "train.epochs=3", "--set", "train.patience=10"),
            "--set", f"data.path={data}"]
    _killed_in_epoch_2(train_two_tower.main, args, monkeypatch)
    lines = (data / "u.data").read_text().splitlines()
    (data / "u.data").write_text("\n".join(lines[:-6]) + "\n")  # the click log changed meanwhile
    summary = train_two_tower.main(args)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["smoke"])
    assert len(runs) == 2, "a new run, not the killed one resumed"
    steps = mlflow.MlflowClient().get_metric_history(summary["run_id"], "val/recall_at_20")
    assert sorted(m.step for m in steps) == [1, 2, 3]  # trained from epoch 1 on the new data


@pytest.mark.parametrize("change", [None, "item titles", "encoder weights"])
def test_changed_item_text_or_encoder_after_a_kill_starts_a_new_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str | None
) -> None:
    """Resuming was keyed by the config and the click log only: after new item titles, or a retrained
    text encoder written to the same folder, the rerun computed the new frozen features (a new cache
    key) but continued the checkpoint trained on the old ones, in the same MLflow run. Unchanged, a
    run with text content still resumes."""
    from recsys_cl.towers.text_encoder import make_tiny_text_encoder

    data = tmp_path / "ml"
    shutil.copytree(FIXTURES / "ml-100k", data)
    titles = [line.split("|")[1] for line in (data / "u.item").read_text(encoding="latin-1").splitlines()]
    encoder = make_tiny_text_encoder(tmp_path / "enc", titles * 3, vocab_size=80)
    args = [*_args(tmp_path, "ml-100k", "--set", "train.epochs=3", "--set", "train.patience=10"),
            "--set", f"data.path={data}", "--set", "item_tower.encoders=[id,text]",
            "--set", "item_tower.text.columns=[title]", "--set", f"item_tower.text.pretrained={encoder}",
            "--set", f"item_tower.cache_dir={tmp_path / 'cache'}"]
    _killed_in_epoch_2(train_two_tower.main, args, monkeypatch)
    if change == "item titles":
        text = (data / "u.item").read_text(encoding="latin-1")
        (data / "u.item").write_text(text.replace("Toy Story", "Toy Story 2"), encoding="latin-1")
    elif change == "encoder weights":
        make_tiny_text_encoder(encoder, titles * 3, vocab_size=80, seed=1)  # retrained, same folder
    summary = train_two_tower.main(args)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["smoke"])
    if change is None:
        assert len(runs) == 1 and runs["run_id"][0] == summary["run_id"], "resumed, not a new run"
    else:
        assert len(runs) == 2, "a new run, not the killed one resumed on the old features"
    steps = mlflow.MlflowClient().get_metric_history(summary["run_id"], "val/recall_at_20")
    assert sorted(m.step for m in steps) == [1, 2, 3]
    assert len(list((tmp_path / "cache").glob("text-*.npy"))) == (1 if change is None else 2)


def test_unreachable_tracking_server_is_one_line_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SystemExit, match=rf"^tracking error: cannot reach the MLflow tracking server at "
                                         rf"http://127\.0\.0\.1:{port}"):
        train_two_tower.main([*_args(tmp_path, "ml-100k"), "--set", f"tracking.uri=http://127.0.0.1:{port}"])
    assert not (tmp_path / "ck").exists()  # the checkpoint's lock was taken and given back: no empty folder left


def test_killed_training_resumes_into_the_same_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = _args(tmp_path, "ml-100k", "--set", "train.epochs=3", "--set", "train.patience=10")
    _killed_in_epoch_2(train_two_tower.main, args, monkeypatch)
    assert list((tmp_path / "ck").glob("*.pt")), "epoch 1 was checkpointed"
    summary = train_two_tower.main(args)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["smoke"])
    assert len(runs) == 1 and runs["run_id"][0] == summary["run_id"]  # resumed, not a new run
    assert runs["status"][0] == "FINISHED"
    steps = mlflow.MlflowClient().get_metric_history(summary["run_id"], "val/recall_at_20")
    assert sorted(m.step for m in steps) == [1, 2, 3]
    assert not list((tmp_path / "ck").glob("*.pt")), "a finished run leaves no checkpoint"


def test_an_unreadable_checkpoint_is_one_line_with_the_fixes_and_opens_no_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A truncated checkpoint blocked every rerun with a torch.load traceback; train.resume=false, which
    the message names, trains from the first epoch."""
    args = _args(tmp_path, "ml-100k", "--set", "train.epochs=3", "--set", "train.patience=10")
    _killed_in_epoch_2(train_two_tower.main, args, monkeypatch)
    (ckpt,) = (tmp_path / "ck").glob("*.pt")
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(SystemExit, match=rf"^checkpoint error: the checkpoint {ckpt} of an interrupted run with "
                                         r"this config cannot be read \(.+\); delete it to train from the first "
                                         r"epoch, or rerun with --set train\.resume=false"):
        train_two_tower.main(args)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(mlflow.search_runs(experiment_names=["smoke"])) == 1, "no run opened for the refused rerun"

    summary = train_two_tower.main([*args, "--set", "train.resume=false"])
    steps = mlflow.MlflowClient().get_metric_history(summary["run_id"], "val/recall_at_20")
    assert sorted(m.step for m in steps) == [1, 2, 3]  # a new run, trained from the first epoch
    assert not ckpt.exists()


def test_an_unreadable_checkpoint_stops_an_ablation_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipelines import ablation

    variants = tmp_path / "v.yaml"
    variants.write_text("plain: [loss.logq=none]\n")
    args = ["--variants", str(variants), "--seeds", "0", "--no-baselines", "--out", str(tmp_path / "ab.md"),
            *_args(tmp_path, "ml-100k", "--set", "train.epochs=3", "--set", "train.patience=10")]
    _killed_in_epoch_2(ablation.main, args, monkeypatch)
    (ckpt,) = (tmp_path / "ck").glob("*.pt")
    ckpt.write_bytes(b"")
    with pytest.raises(SystemExit, match=rf"^checkpoint error: the checkpoint {ckpt} .* cannot be read \(EOFError"):
        ablation.main(args)


def test_ablation_base_encoders_need_not_suit_the_data(tmp_path: Path) -> None:
    """A click log without an item table (no genres) with the default encoders [id, categorical]:
    each variant's encoders are checked, not the base config's (the fashion cold-start command)."""
    from pipelines import ablation
    from recsys_cl.config import DataConfig
    from recsys_cl.data.io import load_click_log

    clicks = tmp_path / "clicks.parquet"
    load_click_log(DataConfig(path=str(FIXTURES / "ml-100k"))).clicks.select(
        "user_id", "item_id", "timestamp").write_parquet(clicks)
    variants = tmp_path / "v.yaml"
    variants.write_text('"ID only": ["item_tower.encoders=[id]"]\n')
    args = [*_args(tmp_path, "ml-100k"), "--set", "data.format=parquet", "--set", f"data.path={clicks}"]
    table = ablation.main(["--variants", str(variants), "--seeds", "0", *args])
    assert "| two-tower: ID only | 1 |" in table
    variants.write_text('"ID only": ["item_tower.encoders=[id]"]\n"genres": ["item_tower.encoders=[id,categorical]"]\n')
    with pytest.raises(SystemExit, match=r"data error: item_tower\.encoders includes 'categorical' but the item "
                                         r"table has no genres"):
        ablation.main(["--variants", str(variants), "--seeds", "0", *args])


def test_a_killed_ablation_reruns_only_what_did_not_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same command after a crash reuses the finished runs (numbers included) and trains the rest;
    after a complete ablation, or with --no-resume, everything trains again."""
    from pipelines import ablation

    variants = tmp_path / "v.yaml"
    variants.write_text("plain: [loss.logq=none]\ndebiased: [loss.kind=debiased]\n")
    base = ["--variants", str(variants), "--seeds", "0", "1", "--baselines", "popularity",
            "--out", str(tmp_path / "ab.md"), *_args(tmp_path, "ml-100k")]
    real, trained = ablation.run_two_tower, []

    def crashing(cfg, run, prep):  # type: ignore[no-untyped-def]
        if len(trained) == 3:
            raise KeyboardInterrupt("killed")  # the 4th run of 4: debiased seed=1
        trained.append(cfg.tracking.run_name)
        return real(cfg, run, prep)

    monkeypatch.setattr(ablation, "run_two_tower", crashing)
    with pytest.raises(KeyboardInterrupt):
        ablation.main(base)
    assert trained == ["plain seed=0", "plain seed=1", "debiased seed=0"]

    def counting(cfg, run, prep):  # type: ignore[no-untyped-def]
        trained.append(cfg.tracking.run_name)
        return real(cfg, run, prep)

    monkeypatch.setattr(ablation, "run_two_tower", counting)
    trained.clear()
    summary_json = tmp_path / "summary.json"  # not ab.json: the rows file beside --out ab.md
    table = ablation.main([*base, "--summary-json", str(summary_json)])
    assert trained == ["debiased seed=1"]  # popularity and three two-tower runs were reused
    summary = json.loads(summary_json.read_text())
    assert summary["reused_runs"] == 4 and "| two-tower: debiased | 2 |" in table
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for r in summary["runs"]:  # reused rows are the numbers their runs logged
        assert r["test_metrics"]["recall@20"] == pytest.approx(
            mlflow.get_run(r["run_id"]).data.metrics["test/recall_at_20"])
    runs = mlflow.search_runs(experiment_names=["smoke"])
    (parent_id,) = runs[runs["tags.ablation"] == "parent"]["run_id"]  # the crashed one's parent, continued
    assert summary["parent_run_id"] == parent_id and mlflow.get_run(parent_id).info.status == "FINISHED"
    mine = runs[(runs["tags.mlflow.parentRunId"] == parent_id) & (runs["status"] == "FINISHED")]
    assert sorted(mine["run_id"]) == sorted([r["run_id"] for r in summary["runs"]]
                                            + [summary["baselines"]["popularity"]["run_id"]])

    trained.clear()  # that ablation completed: the same command is a new one
    again = tmp_path / "again.json"
    ablation.main([*base, "--summary-json", str(again)])
    assert trained == ["plain seed=0", "plain seed=1", "debiased seed=0", "debiased seed=1"]
    assert json.loads(again.read_text())["parent_run_id"] != parent_id

    monkeypatch.setattr(ablation, "run_two_tower", crashing)
    trained.clear()
    with pytest.raises(KeyboardInterrupt):
        ablation.main(base)
    monkeypatch.setattr(ablation, "run_two_tower", counting)
    trained.clear()
    ablation.main([*base, "--no-resume"])  # an interrupted one, but all of it trains again
    assert trained == ["plain seed=0", "plain seed=1", "debiased seed=0", "debiased seed=1"]
    trained.clear()  # complete again: the interrupted attempt's finished runs are not picked up either
    ablation.main(base)
    assert trained == ["plain seed=0", "plain seed=1", "debiased seed=0", "debiased seed=1"]


def test_ablation_merge_gives_the_table_of_one_ablation_over_all_seeds(tmp_path: Path) -> None:
    """Seeds run in separate processes, then --merge: the same table (and validation table) as one
    process running every seed, without training anything."""
    from pipelines import ablation

    variants = tmp_path / "v.yaml"
    variants.write_text("plain: [loss.logq=none]\ndebiased: [loss.kind=debiased]\n")
    common = ["--variants", str(variants), "--no-baselines", *_args(tmp_path, "ml-100k")]
    whole = ablation.main([*common, "--seeds", "0", "1", "--no-resume", "--out", str(tmp_path / "all.md")])
    for seed in ("0", "1"):  # --out t0.md, not s0.md: s0.json would be the table's rows file
        ablation.main([*common, "--seeds", seed, "--no-resume", "--out", str(tmp_path / f"t{seed}.md"),
                       "--summary-json", str(tmp_path / f"s{seed}.json")])
    merged = ablation.main(["--merge", str(tmp_path / "s1.json"), str(tmp_path / "s0.json"),
                            "--out", str(tmp_path / "merged.md"), "--summary-json", str(tmp_path / "m.json")])
    assert merged == whole  # runs in variant order, seeds sorted, whichever file came first
    assert "| plain | 2 |" in merged and (tmp_path / "merged.md").read_text().strip() == merged
    s0, s1, x = str(tmp_path / "s0.json"), str(tmp_path / "s1.json"), str(tmp_path / "x.md")
    assert json.loads((tmp_path / "m.json").read_text())["merged"] == [s1, s0]
    with pytest.raises(SystemExit, match=r"merge error: variant 'plain' seed 0 is in both .*s0.json and .*s0.json"):
        ablation.main(["--merge", s0, s0, "--out", x])
    (tmp_path / "bad.json").write_text('{"runs": []}')
    with pytest.raises(SystemExit, match=r"merge error: .*bad.json is not an ablation --summary-json file \(KeyError"):
        ablation.main(["--merge", str(tmp_path / "bad.json"), "--out", x])
    other = json.loads((tmp_path / "s1.json").read_text())
    (tmp_path / "other.json").write_text(json.dumps({**other, "protocol": "full_ranking|catalogue=all_items"}))
    with pytest.raises(SystemExit, match=r"--merge trains nothing, so --only, --set would be ignored"):
        ablation.main(["--merge", s0, "--only", "plain", "--set", "train.epochs=9", "--out", x])
    with pytest.raises(SystemExit, match="different protocols"):
        ablation.main(["--merge", s0, str(tmp_path / "other.json"), "--out", x])


def test_printed_summary_shows_counts_as_integers(capsys: pytest.CaptureFixture[str]) -> None:
    """The printout: metrics to 4 decimals, n_users / n_skipped_users as counts, in both layouts."""
    summary = {"protocol": "p", "best_epoch": 3, "run_id": "r", "model_uri": "m",
               "test_metrics": {"recall@20": 0.20821, "n_users": 610.0, "n_skipped_users": 0.0, "head_items/n": 673.0,
                                "tail_targets/n_users": 275.0, "tail_share@20": 0.29691}}
    train_two_tower._print_summary(summary, "sqlite:///mlflow.db")
    out = capsys.readouterr().out
    assert "recall@20  0.2082" in out and "n_users  610\n" in out and "n_skipped_users  0\n" in out
    assert "head_items/n  673\n" in out and "tail_targets/n_users  275\n" in out and "tail_share@20  0.2969" in out
    train_two_tower._print_summary({**summary, "baseline_name": "popularity", "baseline_metrics":
                                    {"recall@20": 0.1, "n_users": 17.0}}, "sqlite:///mlflow.db")
    out = capsys.readouterr().out
    assert "0.2082    0.1000" in out and "610        17" in out


def test_the_logged_model_serves_string_item_ids(tmp_path: Path) -> None:
    """String ids (a generic CSV log) in and out of the pyfunc: its signature follows the ids' type."""
    import mlflow
    import pandas as pd
    import polars as pl

    from recsys_cl.config import DataConfig
    from recsys_cl.data.io import load_click_log

    clicks = load_click_log(DataConfig(path=str(FIXTURES / "ml-100k"))).clicks
    path = tmp_path / "clicks.csv"
    clicks.select(pl.format("u{}", "user_id").alias("user_id"), pl.format("item-{}", "item_id").alias("item_id"),
                  "timestamp").write_csv(path)
    summary = train_two_tower.main(_args(tmp_path, "ml-100k", "--set", f"data.path={path}",
                                         "--set", "data.format=csv", "--set", "train.epochs=1",
                                         "--set", "item_tower.encoders=[id]"))
    pyfunc = mlflow.pyfunc.load_model(summary["model_uri"])
    history = clicks["item_id"].unique().sort().head(3).to_list()
    pred = pyfunc.predict(pd.DataFrame({"history": [[f"item-{i}" for i in history]]}))
    recommended = list(pred["item_ids"][0])
    assert len(recommended) == min(10, clicks["item_id"].n_unique() - 3)
    assert all(isinstance(r, str) and r.startswith("item-") for r in recommended)
    assert not {f"item-{i}" for i in history} & set(recommended)


def test_runs_table_shows_the_validation_of_the_tested_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """val/* is a per-epoch curve, so MLflow's runs table and compare view show its last epoch; the
    epoch whose weights were tested is in best/val/*, under the same keys as a baseline's chosen model."""
    from recsys_cl import experiment

    real, calls = experiment.evaluate, []

    def evaluate(*args: object, **kwargs: object) -> dict[str, float]:
        out = real(*args, **kwargs)  # type: ignore[arg-type]
        if len(calls) < 3:  # the 3 validations: epoch 1 is the best, the last is not
            out = {**out, "recall@20": [0.3, 0.1, 0.2][len(calls)]}
        calls.append(1)
        return out

    monkeypatch.setattr(experiment, "evaluate", evaluate)
    summary = train_two_tower.main(_args(tmp_path, "ml-100k", "--set", "train.epochs=3"))
    monkeypatch.setattr(experiment, "evaluate", real)
    baseline = evaluate_baselines.main(_args(tmp_path, "ml-100k", "--set", "baselines.models=[popularity]"))[0]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    two = client.get_run(summary["run_id"]).data.metrics
    assert summary["best_epoch"] == 1 and two["val/recall_at_20"] == pytest.approx(0.2)  # the last epoch
    assert two["best/val/recall_at_20"] == pytest.approx(0.3) == summary["val_metrics"]["recall@20"]
    history = client.get_metric_history(summary["run_id"], "val/ndcg_at_20")
    assert two["best/val/ndcg_at_20"] == pytest.approx(history[0].value)
    pop = client.get_run(baseline["run_id"]).data.metrics
    assert pop["best/val/recall_at_20"] == pop["val/recall_at_20"]
    best_keys = {k for k in two if k.startswith("best/")}
    assert "best/val/mrr" in best_keys and best_keys == {k for k in pop if k.startswith("best/")}


def test_a_baseline_run_is_tagged_before_it_tunes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tuning EASE takes minutes: while it runs, and if it fails, the run already carries the tags and
    data params that the UI filters and compares on (as a two-tower run does before training)."""
    import recsys_cl.baselines

    def fail(*args: object, **kwargs: object) -> None:
        raise MemoryError("EASE's gram matrix")

    monkeypatch.setattr(recsys_cl.baselines, "tune_and_evaluate", fail)
    with pytest.raises(MemoryError):
        evaluate_baselines.main(_args(tmp_path, "ml-100k", "--set", "baselines.models=[ease]"))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert run.info.status == "FAILED"
    tags = run.data.tags
    assert tags["model"] == "ease" and tags["loss_kind"] == "none"
    assert tags["protocol"].startswith("full_ranking|") and len(tags["data_fingerprint"]) == 16
    assert run.data.params["split.kind"] == "leave_last_out" and run.data.params["data.path"].endswith("ml-100k")


def test_a_stopped_training_says_how_to_continue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    """SIGTERM / Ctrl-C mid-training: one line that says the run is FAILED and that a rerun continues it."""
    import signal

    import mlflow

    from pipelines.cli import Terminated

    def stopped(*args: object, **kwargs: object) -> None:
        raise Terminated(signal.SIGTERM)

    monkeypatch.setattr(train_two_tower, "run_two_tower", stopped)
    with pytest.raises(SystemExit) as exited:
        train_two_tower.main(_args(tmp_path, "ml-100k"))
    assert exited.value.code == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "stopped by SIGTERM: the MLflow run is marked FAILED; rerun the same command to continue it from its "
        f"last finished epoch (checkpoints in {tmp_path / 'ck'})")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert mlflow.search_runs(experiment_names=["smoke"])["status"].tolist() == ["FAILED"]


def test_ablation_and_sweep_flag_settings_that_do_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A variant or grid point whose override does nothing (a logQ weight with logQ off) is flagged
    once, with the runs it holds for, before any data is read (here the data path is missing, so
    nothing trains), as train_two_tower flags it."""
    from pipelines import ablation, sweep

    variants = tmp_path / "v.yaml"
    variants.write_text("half: [loss.logq=none, loss.logq_weight=0.5]\nfull: [loss.logq=counting]\n")
    args = [*_args(tmp_path, "ml-100k"), "--set", f"data.path={tmp_path / 'absent'}"]
    warning = "loss.logq_weight is set (0.5) but loss.logq=none, so it is not used"
    with caplog.at_level("WARNING"), pytest.raises(SystemExit, match="data error"):
        ablation.main(["--variants", str(variants), "--seeds", "0", "1", *args])
    flagged = [r.getMessage() for r in caplog.records if warning in r.getMessage()]
    assert len(flagged) == 1 and flagged[0].endswith("(in variant 'half')")  # once over both seeds; not 'full'
    caplog.clear()
    with caplog.at_level("WARNING"), pytest.raises(SystemExit, match="data error"):
        sweep.main(["--grid", "loss.logq=none,counting", "--set", "loss.logq_weight=0.5", *args])
    flagged = [r.getMessage() for r in caplog.records if warning in r.getMessage()]
    assert len(flagged) == 1 and flagged[0].endswith("(in grid point loss.logq=none)"), flagged
