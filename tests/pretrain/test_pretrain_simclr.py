import json
from pathlib import Path

import mlflow
import pytest
import torch
from fmnist_fixture import synthetic_images, write_fake_fashion_mnist
from run_checks import assert_run_page_and_epoch_keys

from pipelines import pretrain_simclr
from recsys_cl.config import TrackingConfig, load_config
from recsys_cl.data.fashion_mnist import FILES, write_idx_images
from recsys_cl.pretrain.config import SimCLRConfig
from recsys_cl.pretrain.simclr import load_encoder
from recsys_cl.tracking import resolve_model_dir, search_runs_frame

TINY = [
    "--set", "data.train_size=0", "--set", "train.epochs=1", "--set", "train.batch_size=16",
    "--set", "train.num_threads=1", "--set", "model.widths=[4,8]", "--set", "model.projection_hidden=16",
    "--set", "model.projection_dim=8", "--set", "eval.probe_train_size=32", "--set", "eval.test_size=32",
]


def tiny_args(tmp_path: Path, data: Path) -> list[str]:
    return ["--set", f"data.path={data}", "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "--set", "tracking.experiment=tiny_simclr", "--set", f"train.out_dir={tmp_path / 'out'}", *TINY]


def test_shipped_config_loads() -> None:
    cfg = load_config(pretrain_simclr.DEFAULT_CONFIG, SimCLRConfig)
    assert cfg.train.temperature == 0.5 and cfg.model.in_channels == 1


def test_end_to_end_on_fixture(tmp_path: Path, fake_fmnist: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the experiment's default artifact folder (./mlruns) lands in tmp
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "summary.json"
    summary = pretrain_simclr.main([*tiny_args(tmp_path, fake_fmnist), "--summary-json", str(out)])
    written = json.loads(out.read_text())
    assert {"run_id", "encoder_uri", "metrics", "baseline_metrics"} <= set(written)
    assert set(written["metrics"]) == set(written["baseline_metrics"]) == {"linear_probe_acc", "knn_recall@10"}
    assert written["encoder_uri"] == f"runs:/{summary['run_id']}/encoder"
    for v in [*written["metrics"].values(), *written["baseline_metrics"].values()]:
        assert 0.0 <= v <= 1.0

    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="tiny_simclr")
    runs = search_runs_frame(tracking)
    row = runs[runs.run_id == summary["run_id"]].iloc[0]
    assert row["metrics.linear_probe_acc"] == pytest.approx(written["metrics"]["linear_probe_acc"])
    assert "metrics.baseline/knn_recall_at_10" in runs.columns
    for name, d in written["deltas"].items():  # after - random init, paired over the same test images
        assert d["delta"] == pytest.approx(written["metrics"][name] - written["baseline_metrics"][name])
        assert d["low"] <= d["delta"] <= d["high"]
        assert d["verdict"] == ("better" if d["low"] > 0 else "worse" if d["high"] < 0 else "no clear difference")
    assert row["metrics.delta/knn_recall_at_10_low"] == pytest.approx(written["deltas"]["knn_recall@10"]["low"])
    assert row["tags.linear_probe_acc_verdict"] == written["deltas"]["linear_probe_acc"]["verdict"]
    assert row["params.train.temperature"] == "0.5"
    client = mlflow.MlflowClient(tracking.uri)
    logged = client.list_artifacts(summary["run_id"], "plots")
    assert [f.path for f in logged] == ["plots/similarities.png"]
    assert_run_page_and_epoch_keys(client, summary, written, "**SimCLR** image encoder", "linear_probe_acc")
    enc_dir = resolve_model_dir(summary["encoder_uri"], tracking)  # downloads the artifact
    enc = load_encoder(enc_dir)
    assert enc(torch.rand(2, 1, 28, 28)).shape == (2, 8)
    assert not any("head" in k or "net." in k for k in torch.load(enc_dir / "encoder.pt", weights_only=True))


def test_bad_image_shape_is_a_clear_error(tmp_path: Path) -> None:
    data = write_fake_fashion_mnist(tmp_path / "fm")
    write_idx_images(data / FILES["train"][0], synthetic_images(64, size=32)[0])
    with pytest.raises(SystemExit, match="data error: .*images are 32x32, expected 28x28"):
        pretrain_simclr.main(tiny_args(tmp_path, data))
    assert not (tmp_path / "mlflow.db").exists()  # fails before a run is opened


def test_unknown_key_is_rejected(tmp_path: Path, fake_fmnist: Path) -> None:
    with pytest.raises(SystemExit, match="unknown config key 'train.tau'"):
        pretrain_simclr.main([*tiny_args(tmp_path, fake_fmnist), "--set", "train.tau=0.1"])


@pytest.mark.parametrize("override, match", [
    ("train.lr=.nan", r"config error: train\.lr must be a finite number > 0, got nan"),
    ("train.weight_decay=-1", r"config error: train\.weight_decay must be a finite number >= 0"),
    ("augment.brightness=-0.5", r"config error: augment\.brightness is a jitter strength and must be >= 0"),
    ("augment.hue=0.6", r"config error: augment\.hue must be in \[0, 0\.5\]"),
    ("model.in_channels=3", r"config error: model\.in_channels=3 but the images have 1 channel\(s\)"),
    ("eval.k=5000", r"config error: eval\.k=5000 must be below the number of test images"),
    ("train.seed=-1", r"config error: train\.seed must be an integer in \[0, 2147483647\], got -1"),
    # these two opened the run, evaluated the random init and then failed with a traceback (a FAILED run)
    ("data.train_size=1", r"config error: data\.train_size must be 0 \(all\) or >= 2 .*got 1"),
    ("eval.probe_train_size=2", r"config error: the 2 linear-probe images .* are all of class \d; the probe needs 2 "
                                r"classes: raise eval\.probe_train_size"),
])
def test_values_the_data_or_torch_would_reject_are_config_errors(
    tmp_path: Path, fake_fmnist: Path, override: str, match: str
) -> None:
    with pytest.raises(SystemExit, match=match):
        pretrain_simclr.main([*tiny_args(tmp_path, fake_fmnist), "--set", override])
    assert not (tmp_path / "mlflow.db").exists()  # before a run opens


def test_sizes_beyond_the_data_are_lowered_with_a_warning() -> None:
    from recsys_cl.pretrain.simclr import check_sizes

    cfg = load_config(None, SimCLRConfig, ["data.train_size=100000", "eval.test_size=20000", "eval.k=10"])
    warnings = check_sizes(cfg, n_train=500, n_test=300, channels=1)
    assert "data.train_size=100000 is more than the data has: 500 used" in warnings
    assert "eval.test_size=20000 is more than the data has: 300 used" in warnings


def test_pretraining_is_seeded() -> None:
    from fmnist_fixture import synthetic_images as imgs

    from recsys_cl.features.image import SimCLRTransform
    from recsys_cl.pretrain.simclr import build_encoder, pretrain
    from recsys_cl.towers.image_encoder import ProjectionHead

    cfg = load_config(None, SimCLRConfig, ["train.epochs=2", "train.batch_size=8", "model.widths=[4,8]"])
    x = imgs(16)[0][:, None]

    def run() -> list[float]:
        torch.manual_seed(cfg.train.seed)
        enc = build_encoder(cfg.model)
        head = ProjectionHead(enc.embedding_dim, 16, 8)
        return pretrain(enc, head, x, SimCLRTransform(cfg.augment, 1, (28, 28)), cfg)

    first = run()
    assert len(first) == 2 and all(v > 0 for v in first)
    assert first == run()
