import dataclasses
import json
from pathlib import Path

import mlflow
import pytest
from run_checks import assert_run_page_and_epoch_keys
from text_fixture import synthetic_movies, write_fake_books, write_fake_movielens

from pipelines import pretrain_simcse
from recsys_cl.config import TrackingConfig, load_config
from recsys_cl.features.text import item_texts
from recsys_cl.pretrain.config import SimCSEConfig
from recsys_cl.towers.text_encoder import (
    encode_texts,
    load_text_encoder,
    make_tiny_text_encoder,
)
from recsys_cl.tracking import resolve_model_dir, search_runs_frame

TINY = ["--set", "train.epochs=1", "--set", "train.batch_size=16", "--set", "train.num_threads=1",
        "--set", "train.progress=false", "--set", "eval.eval_size=30", "--set", "eval.k=5",
        "--set", "data.max_texts=0"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("simcse_inputs")
    movies = write_fake_movielens(root / "ml", n=120)
    books = write_fake_books(root / "books.csv", n=40)
    encoder = make_tiny_text_encoder(root / "tiny", item_texts(synthetic_movies(120)))
    return {"movies": movies, "books": books, "encoder": encoder}


def tiny_args(tmp_path: Path, inputs: dict[str, Path]) -> list[str]:
    return ["--set", f"data.path={inputs['movies']}", "--set", f"data.extra_text={inputs['books']}",
            "--set", f"model.path={inputs['encoder']}",
            "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "--set", "tracking.experiment=tiny_simcse",
            "--set", f"train.out_dir={tmp_path / 'out'}", *TINY]


def test_shipped_config_loads() -> None:
    cfg = load_config(pretrain_simcse.DEFAULT_CONFIG, SimCSEConfig)
    assert cfg.train.temperature == 0.05 and cfg.model.path is None and cfg.eval.split == "test"
    # the YAML spells out the code defaults, except for pinning 2 threads
    assert dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_threads=0)) == SimCSEConfig()


def test_end_to_end_on_fixture(tmp_path: Path, inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the experiment's default artifact folder (./mlruns) lands in tmp
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "summary.json"
    summary = pretrain_simcse.main([*tiny_args(tmp_path, inputs), "--summary-json", str(out)])
    written = json.loads(out.read_text())
    assert {"run_id", "encoder_uri", "metrics", "baseline_metrics", "chance_genre_recall"} <= set(written)
    keys = {"alignment", "alignment_ratio", "uniformity", "genre_recall@5"}
    assert set(written["metrics"]) == set(written["baseline_metrics"]) == keys
    assert written["encoder_uri"] == f"runs:/{summary['run_id']}/encoder"
    assert written["sizes"]["movie_texts"] == 60 and written["sizes"]["extra_texts"] == 40
    assert written["sizes"]["train_texts"] == 100 and written["sizes"]["steps"] == 6

    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="tiny_simcse")
    runs = search_runs_frame(tracking)
    row = runs[runs.run_id == summary["run_id"]].iloc[0]
    assert row["metrics.genre_recall_at_5"] == pytest.approx(written["metrics"]["genre_recall@5"])
    assert row["metrics.baseline/uniformity"] == pytest.approx(written["baseline_metrics"]["uniformity"])
    assert row["metrics.train_loss"] == pytest.approx(written["train_losses"][-1])
    delta = written["genre_recall_delta"]  # after - before, 95% paired bootstrap interval
    gain = written["metrics"]["genre_recall@5"] - written["baseline_metrics"]["genre_recall@5"]
    assert delta["delta"] == pytest.approx(gain)
    assert row["metrics.delta/genre_recall_at_5_low"] == pytest.approx(delta["low"])
    verdict = written["genre_recall_verdict"]
    assert verdict == ("better" if delta["low"] > 0 else "worse" if delta["high"] < 0 else "no clear difference")
    assert row["tags.genre_recall_at_5_verdict"] == verdict
    assert row["params.train.temperature"] == "0.05" and row["params.size/extra_texts"] == "40"
    client = mlflow.MlflowClient(tracking.uri)
    logged = client.list_artifacts(summary["run_id"], "plots")
    assert [f.path for f in logged] == ["plots/similarities.png"]
    assert_run_page_and_epoch_keys(client, summary, written, "**SimCSE** text encoder", "genre_recall@5")
    enc_dir = resolve_model_dir(summary["encoder_uri"], tracking)  # downloads the artifact
    enc, tok = load_text_encoder(enc_dir)
    assert encode_texts(enc, tok, ["space robot", "love"]).shape == (2, 32)

    # the printed runs:/ URI continues SimCSE from that run (fetched from tracking.uri's store)
    again = pretrain_simcse.main([*tiny_args(tmp_path, inputs), "--set", f"model.path={summary['encoder_uri']}"])
    assert again["baseline_metrics"] == pytest.approx(written["metrics"], abs=1e-4)  # starts where the run ended
    with pytest.raises(SystemExit, match=r"model error: runs:/nosuchrun/encoder could not be fetched from the "
                                         r"MLflow store"):
        pretrain_simcse.main([*tiny_args(tmp_path, inputs), "--set", "model.path=runs:/nosuchrun/encoder"])


def test_missing_text_column_fails_before_the_run(tmp_path: Path, inputs: dict[str, Path]) -> None:
    with pytest.raises(SystemExit, match=r"data error: .*no column\(s\) \['plot'\].*choose data.text_columns"):
        pretrain_simcse.main([*tiny_args(tmp_path, inputs), "--set", "data.text_columns=[title,plot]"])
    assert not (tmp_path / "mlflow.db").exists()  # fails before a run is opened


def test_bad_model_path_fails_before_the_run(tmp_path: Path, inputs: dict[str, Path]) -> None:
    with pytest.raises(SystemExit, match=r"model error: .*lacks config.json.*found \['movies.csv', 'ratings.csv'"):
        pretrain_simcse.main([*tiny_args(tmp_path, inputs), "--set", f"model.path={inputs['movies']}"])
    assert not (tmp_path / "mlflow.db").exists()


def test_config_errors(tmp_path: Path, inputs: dict[str, Path]) -> None:
    with pytest.raises(SystemExit, match="unknown config key 'train.tau'"):
        pretrain_simcse.main([*tiny_args(tmp_path, inputs), "--set", "train.tau=0.1"])
    with pytest.raises(SystemExit, match=r"model.dropout must be in \(0, 1\), got 0.0"):
        pretrain_simcse.main([*tiny_args(tmp_path, inputs), "--set", "model.dropout=0"])
    with pytest.raises(SystemExit, match=r"train.trainable_layers must be >= 1 or null \(all\), got 0"):
        pretrain_simcse.main([*tiny_args(tmp_path, inputs), "--set", "train.trainable_layers=0"])
    with pytest.raises(SystemExit, match=r"train\.lr must be a finite number > 0, got nan"):
        pretrain_simcse.main([*tiny_args(tmp_path, inputs), "--set", "train.lr=.nan"])
    for key in ("train.seed", "eval.seed"):  # numpy / torch would fail after the run opened
        with pytest.raises(SystemExit, match=rf"{key.replace('.', '[.]')} must be an integer in \[0, 2147483647\]"):
            pretrain_simcse.main([*tiny_args(tmp_path, inputs), "--set", f"{key}=-1"])
    # checked against the model before the run opens, not when training starts
    with pytest.raises(SystemExit, match=r"config error: train\.trainable_layers=50 but the model has 2 layers"):
        pretrain_simcse.main([*tiny_args(tmp_path, inputs), "--set", "train.trainable_layers=50"])
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit, match=r"output error: train\.out_dir=.*afile/out cannot be created"):
        pretrain_simcse.main([*tiny_args(tmp_path, inputs), "--set", f"train.out_dir={tmp_path / 'afile' / 'out'}"])
    assert not (tmp_path / "mlflow.db").exists()


def test_too_few_texts_or_tokens_beyond_the_model_fail_before_the_run(tmp_path: Path, inputs: dict[str, Path]) -> None:
    """data.max_texts=1 used to open the run, evaluate the baseline and then fail with a ValueError
    traceback, leaving a FAILED run; a model.max_length beyond the model's position table (the tiny
    BERT has 128) crashed inside the embedding layer with long texts."""
    with pytest.raises(SystemExit, match=r"config error: data\.max_texts must be 0 \(all\) or >= 2 .*got 1"):
        pretrain_simcse.main([*tiny_args(tmp_path, inputs), "--set", "data.max_texts=1"])
    with pytest.raises(SystemExit, match=r"config error: model\.max_length=200 but the model at .*tiny reads at most "
                                         r"128 tokens .*set model\.max_length to at most 128"):
        pretrain_simcse.main([*tiny_args(tmp_path, inputs), "--set", "model.max_length=200"])
    assert not (tmp_path / "mlflow.db").exists()


def test_fewer_than_two_training_texts_is_a_data_error(tmp_path: Path) -> None:
    """Movies whose text columns are all empty, and no extra texts: nothing to train on."""
    from recsys_cl.data.errors import DataError
    from recsys_cl.pretrain.config import TextDataConfig, TextEvalConfig
    from recsys_cl.pretrain.simcse import load_simcse_data

    folder = write_fake_movielens(tmp_path / "ml", n=40)
    (folder / "tags.csv").write_text("userId,movieId,tag,timestamp\n")  # no movie has tags
    data = TextDataConfig(path=str(folder), text_columns=("tags",), extra_text=None)
    with pytest.raises(DataError, match=r"only 0 non-empty training texts .*data\.text_columns \['tags'\].*SimCSE "
                                        r"needs at least 2"):
        load_simcse_data(data, TextEvalConfig(eval_size=10, k=5))
