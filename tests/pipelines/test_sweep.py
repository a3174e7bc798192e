"""pipelines.sweep: grid parsing, validation before training, and the nested runs + summary
artifacts of a real 2x1 sweep (the session's ``tiny_store``, see tests/conftest.py)."""

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from recsys_cl.config import ConfigError
from recsys_cl.sweep import expand_grid, parse_grid, split_values

# every run a user compares in the UI carries these tags (filter / group-by keys)
COMMON_TAGS = {"dataset", "data_fingerprint", "split", "protocol", "loss_kind", "logq", "negatives", "git_commit",
               "model", "sweep_id"}


def test_grid_parsing_and_expansion() -> None:
    axes = parse_grid(["loss.kind=softmax,debiased", "loss.temperature=0.05,0.1,0.2"])
    assert axes == [("loss.kind", ["softmax", "debiased"]), ("loss.temperature", ["0.05", "0.1", "0.2"])]
    points = expand_grid(axes)
    assert len(points) == 6
    assert points[1].overrides == ("loss.kind=softmax", "loss.temperature=0.1")
    assert points[1].label == "loss.kind=softmax,loss.temperature=0.1"
    assert split_values("[id],[id,categorical]") == ["[id]", "[id,categorical]"]
    assert expand_grid([])[0].overrides == ()


@pytest.mark.parametrize("spec, message", [
    ("loss.kind", "must look like"),
    ("loss.kind=softmax,,debiased", "empty value"),
])
def test_bad_grid_spec(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_grid([spec])


def test_repeated_grid_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(["loss.kind=softmax", "loss.kind=debiased"])


def test_every_config_is_validated_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sweep_args  # type: ignore[no-untyped-def]
) -> None:
    from pipelines import sweep

    monkeypatch.chdir(tmp_path)
    # the second value is bad: nothing may be trained or logged for the first
    with pytest.raises(SystemExit, match=r"config error: .*loss\.kind"):
        sweep.main(["--grid", "loss.kind=softmax,nonsense", *sweep_args(tmp_path)])
    with pytest.raises(SystemExit, match=r"'loss\.kindd'"):
        sweep.main(["--grid", "loss.kindd=softmax", *sweep_args(tmp_path)])
    with pytest.raises(SystemExit, match=r"--group-by 'train\.lr' is not a grid key"):
        sweep.main(["--grid", "loss.kind=softmax", "--group-by", "train.lr", *sweep_args(tmp_path)])
    with pytest.raises(SystemExit, match=r"baselines\.models"):
        sweep.main(["--grid", "loss.kind=softmax", "--baselines", "nope", *sweep_args(tmp_path)])
    with pytest.raises(SystemExit, match=r"config error: --seeds has duplicates \[1, 1\]"):
        sweep.main(["--grid", "loss.kind=softmax", "--seeds", "1", "1", *sweep_args(tmp_path)])
    with pytest.raises(SystemExit, match=r"output error: --summary-json .* is a directory"):
        sweep.main(["--grid", "loss.kind=softmax", "--summary-json", str(tmp_path), *sweep_args(tmp_path)])
    with pytest.raises(SystemExit, match=r"data error: baseline 'popularity' .* cannot rank cold items"):
        sweep.main(["--grid", "loss.temperature=0.1", "--baselines", "popularity",
                    *sweep_args(tmp_path, "--set", "split.kind=cold_start", "--set", "split.val_quantile=0.5",
                                "--set", "split.test_quantile=0.7")])
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_sweep_logs_parent_children_and_summary(tiny_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    summary = tiny_store.summary
    mlflow.set_tracking_uri(tiny_store.tracking_uri)
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(experiment_names=[tiny_store.experiment])
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
    parent_id = summary["parent_run_id"]
    children = runs[runs["run_id"] != parent_id]
    # nested: MLflow's own parent tag (the UI folds them under the parent) and ours for filtering
    assert set(children["tags.mlflow.parentRunId"]) == {parent_id}
    assert set(runs["tags.sweep_id"]) == {parent_id}
    assert sorted(children["tags.mlflow.runName"]) == [
        "baseline-popularity", "two_tower[loss.kind=debiased]-seed0", "two_tower[loss.kind=softmax]-seed0"]
    for tag in COMMON_TAGS:
        assert runs[f"tags.{tag}"].notna().all(), tag
    assert set(runs["tags.loss_kind"]) == {"softmax", "debiased", "softmax,debiased", "none"}

    two = children[children["tags.model"] == "two_tower"]
    assert set(two["params.loss.kind"]) == {"softmax", "debiased"}
    assert two["params.train.epochs"].eq("1").all() and two["params.data.path"].str.endswith("ml-100k").all()
    assert two["metrics.test/recall_at_20"].notna().all()
    child = two["run_id"].iloc[0]
    assert [m.step for m in client.get_metric_history(child, "val/recall_at_20")] == [1]
    assert {"plots", "item_embeddings", "config"} <= {a.path for a in client.list_artifacts(child)}

    parent = client.get_run(parent_id)
    assert parent.data.tags["sweep"] == "parent" and parent.data.params["loss.kind"] == "{softmax,debiased}"
    assert parent.data.tags["best_run_id"] in set(two["run_id"])
    assert "best/test/recall@20".replace("@", "_at_") in parent.data.metrics
    assert {a.path for a in client.list_artifacts(parent_id, "sweep")} == {
        "sweep/summary.csv", "sweep/summary.md", "sweep/grid_test_recall_at_20.png"}
    local = Path(client.download_artifacts(parent_id, "sweep", str(tmp_path)))
    table = pd.read_csv(local / "summary.csv")
    assert len(table) == 3 and (table["model"] == "two_tower").sum() == 2
    assert set(table["run_id"]) == set(children["run_id"])
    assert list(table.columns[:4]) == ["run_name", "run_id", "model", "loss.kind"]
    md = (local / "summary.md").read_text()
    assert md.startswith("Protocol: `full_ranking") and md.count("\n| two_tower[") == 2
    assert (local / "grid_test_recall_at_20.png").stat().st_size > 5000
