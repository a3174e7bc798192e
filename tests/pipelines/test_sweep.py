"""pipelines.sweep: grid parsing, validation before training, and the nested runs + summary
artifacts of a real 2x1 sweep (the session's ``tiny_store``, see tests/conftest.py)."""

from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from recsys_cl.config import ConfigError
from recsys_cl.sweep import expand_grid, parse_grid, split_values

# every run a user compares in the UI carries these tags (filter / group-by keys)
COMMON_TAGS = {"dataset", "data_fingerprint", "split", "protocol", "loss_kind", "logq", "negatives", "git_commit",
               "git_dirty", "model", "sweep_id", "data_clicks", "data_users", "data_items", "ranked_items",
               "selected_on"}


def test_grid_parsing_and_expansion() -> None:
    axes = parse_grid(["loss.kind=softmax,debiased", "loss.temperature=0.05,0.1,0.2"])
    assert axes == [("loss.kind", ["softmax", "debiased"]), ("loss.temperature", ["0.05", "0.1", "0.2"])]
    points = expand_grid(axes)
    assert len(points) == 6
    assert points[1].overrides == ("loss.kind=softmax", "loss.temperature=0.1")
    assert points[1].label == "loss.kind=softmax,loss.temperature=0.1"
    assert split_values("[id],[id,categorical]") == ["[id]", "[id,categorical]"]
    assert expand_grid([])[0].overrides == ()
    # equal values spelled differently trained the same run twice; exact repeats were already dropped
    assert parse_grid(["loss.temperature=0.1,0.10,0.2,0.1", "item_tower.encoders=[id],[ id ],[id,text]"]) == [
        ("loss.temperature", ["0.1", "0.2"]), ("item_tower.encoders", ["[id]", "[id,text]"])]


@pytest.mark.parametrize("spec, message", [
    ("loss.kind", "must look like"),
    ("loss.kind=softmax,,debiased", "empty value"),
    # --seeds overrode it: two children trained with seed 0, tagged train.seed=0 and train.seed=1
    (" train.seed=0,1", r"^--grid ' train\.seed=0,1': train\.seed cannot be a grid axis, --seeds sets every run's "
                        r"seed \(and overrides it\); pass --seeds 0 1 instead$"),
])
def test_bad_grid_spec(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_grid([spec])


def test_sweep_key_changes_with_what_the_runs_depend_on() -> None:
    from recsys_cl.sweep import sweep_key

    flat = {"train.epochs": 5, "train.progress": True, "loss.kind": "softmax"}
    axes = [("loss.temperature", ["0.05", "0.1"])]
    key = sweep_key(flat, axes, [0], ["ease"], "sweep[x]", "fp")
    assert sweep_key({**flat, "train.progress": False}, axes, [0], ["ease"], "sweep[x]", "fp") == key
    for changed in [
        sweep_key({**flat, "train.epochs": 6}, axes, [0], ["ease"], "sweep[x]", "fp"),  # more epochs: new sweep
        sweep_key(flat, [("loss.temperature", ["0.05"])], [0], ["ease"], "sweep[x]", "fp"),
        sweep_key(flat, axes, [0, 1], ["ease"], "sweep[x]", "fp"),
        sweep_key(flat, axes, [0], [], "sweep[x]", "fp"),
        sweep_key(flat, axes, [0], ["ease"], "other", "fp"),
        sweep_key(flat, axes, [0], ["ease"], "sweep[x]", "other data"),
    ]:
        assert changed != key


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
    with pytest.raises(SystemExit, match=r"^config error: --grid 'train\.seed=0,1': train\.seed cannot be a grid "
                                         r"axis.*pass --seeds 0 1 instead$"):
        sweep.main(["--grid", "train.seed=0,1", *sweep_args(tmp_path)])
    with pytest.raises(SystemExit, match=r"^config error: --set sets 'train\.seed=5', but --seeds sets train\.seed "
                                         r"in every run \(and overrides it\); drop it and pass the seeds as --seeds"):
        sweep.main(["--grid", "loss.kind=softmax", "--seeds", "1", *sweep_args(tmp_path, "--set", "train.seed=5")])
    with pytest.raises(SystemExit, match=r"^config error: grid points loss\.temperature=1 and loss\.temperature=1\.0 "
                                         r"give the same config .*; drop one value from --grid$"):
        sweep.main(["--grid", "loss.temperature=1,1.0", *sweep_args(tmp_path)])
    with pytest.raises(SystemExit, match=r"output error: --summary-json .* is a directory"):
        sweep.main(["--grid", "loss.kind=softmax", "--summary-json", str(tmp_path), *sweep_args(tmp_path)])
    with pytest.raises(SystemExit, match=r"data error: baseline 'popularity' .* cannot rank cold items"):
        sweep.main(["--grid", "loss.temperature=0.1", "--baselines", "popularity",
                    *sweep_args(tmp_path, "--set", "split.kind=cold_start", "--set", "split.val_quantile=0.5",
                                "--set", "split.test_quantile=0.7")])
    with pytest.raises(SystemExit, match=r"^config error: user_tower\.history_length=50 is longer than the longest "
                                         r"user history in the click log \(6 clicks\).*set it to at most 6, in grid "
                                         r"point .*history_length=50.* \(change the --grid values"):
        sweep.main(["--grid", "user_tower.history_length=4,50", *sweep_args(tmp_path)])
    (tmp_path / "afile").write_text("x")  # a checkpoint folder that is a file: found after an epoch before
    with pytest.raises(SystemExit, match=r"^output error: train\.checkpoint_dir=.*afile is a file, not a folder"):
        sweep.main(["--grid", "loss.kind=softmax", *sweep_args(tmp_path, "--set",
                                                               f"train.checkpoint_dir={tmp_path / 'afile'}")])
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
    assert set(runs["tags.selected_on"]) == {"val/recall@20 (epoch)", "val/recall@20 (child run)",
                                             "val/ndcg@10 (hyperparameters)"}
    # the fixture's size, the same on the parent, the two-tower children and the baseline
    sizes = runs[["tags.data_clicks", "tags.data_users", "tags.data_items", "tags.ranked_items"]].drop_duplicates()
    assert sizes.values.tolist() == [["48", "8", "12", "12"]]

    two = children[children["tags.model"] == "two_tower"]
    assert set(two["params.loss.kind"]) == {"softmax", "debiased"}
    assert two["params.train.epochs"].eq("1").all() and two["params.data.path"].str.endswith("ml-100k").all()
    assert two["metrics.test/recall_at_20"].notna().all()
    child = two["run_id"].iloc[0]
    assert [m.step for m in client.get_metric_history(child, "val/recall_at_20")] == [1]
    assert {"plots", "item_embeddings", "config"} <= {a.path for a in client.list_artifacts(child)}

    parent = client.get_run(parent_id)
    assert parent.data.tags["sweep"] == "parent" and parent.data.params["loss.kind"] == "{softmax,debiased}"
    assert "candidates.k" not in parent.data.params and "baselines.models" in parent.data.params  # it runs one
    # the baselines it ran (--baselines popularity), not the config's list
    assert parent.data.params["baselines.models"] == "[popularity]" == parent.data.params["sweep.baselines"]
    unread = ("params.candidates.", "params.index.")
    assert not [k for k in two.columns if k.startswith(unread) and two[k].notna().any()]
    config = yaml.safe_load(Path(client.download_artifacts(parent_id, "config/resolved_config.yaml", str(tmp_path)))
                            .read_text())
    assert config["candidates"]["k"] == 100 and config["loss"]["kind"] == "softmax"
    assert parent.data.tags["best_run_id"] in set(two["run_id"])
    assert "best/test/recall@20".replace("@", "_at_") in parent.data.metrics
    # the summary table is the parent's description, on its page in the UI
    description = parent.data.tags["mlflow.note.content"]
    assert f"**{parent.data.tags['best_run_name']}**" in description
    assert "Protocol: `full_ranking" in description and description.count("\n| two_tower[") == 2
    assert {a.path for a in client.list_artifacts(parent_id, "sweep")} == {
        "sweep/summary.csv", "sweep/summary.md", "sweep/grid_test_recall_at_20.png"}
    local = Path(client.download_artifacts(parent_id, "sweep", str(tmp_path)))
    table = pd.read_csv(local / "summary.csv")
    assert len(table) == 3 and (table["model"] == "two_tower").sum() == 2
    assert set(table["run_id"]) == set(children["run_id"])
    assert list(table.columns[:4]) == ["run_name", "run_id", "model", "loss.kind"]
    # integers stay integers beside the baseline's empty cells: "0", not "0.0"
    csv_rows = (local / "summary.csv").read_text().splitlines()
    two_rows = [r.split(",") for r in csv_rows if r.startswith("two_tower[")]
    seed_col, epoch_col = list(table.columns).index("seed"), list(table.columns).index("best_epoch")
    assert {(r[seed_col], r[epoch_col]) for r in two_rows} == {("0", "1")}
    assert [r.split(",")[seed_col] for r in csv_rows if r.startswith("baseline-")] == [""]
    md = (local / "summary.md").read_text()
    assert md.startswith("Protocol: `full_ranking") and md.count("\n| two_tower[") == 2
    assert (local / "grid_test_recall_at_20.png").stat().st_size > 5000


def test_a_killed_sweep_continues_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    sweep_args,  # type: ignore[no-untyped-def]
) -> None:
    """Rerunning the same command reopens the parent, reuses the finished child as it is, marks a
    child left RUNNING by the kill as KILLED and trains only what is missing; --no-resume starts anew."""
    from pipelines import sweep

    monkeypatch.chdir(tmp_path)
    args = ["--grid", "loss.kind=softmax,debiased", "--baselines", "popularity", *sweep_args(tmp_path)]
    real = sweep.run_two_tower
    trained: list[str] = []

    def killed_on_the_second(cfg, reporter, prep):  # type: ignore[no-untyped-def]
        if trained:
            raise KeyboardInterrupt  # the kill arrives while the second child trains
        trained.append(cfg.loss.kind)
        return real(cfg, reporter, prep)

    monkeypatch.setattr(sweep, "run_two_tower", killed_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        sweep.main(args)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    first = mlflow.search_runs(experiment_names=["tiny"])
    parent_id = first.loc[first["tags.sweep"] == "parent", "run_id"].item()
    assert dict(zip(first["tags.mlflow.runName"], first["status"])) == {
        "sweep[loss.kind]": "FAILED", "two_tower[loss.kind=softmax]-seed0": "FINISHED",
        "two_tower[loss.kind=debiased]-seed0": "FAILED"}
    done_id = first.loc[first["tags.mlflow.runName"] == "two_tower[loss.kind=softmax]-seed0", "run_id"].item()
    # a SIGKILL leaves no FAILED status: a child of the parent still RUNNING
    client = mlflow.MlflowClient()
    import os
    import socket

    gone = f"{socket.gethostname()}:{os.getpid()}:0"  # this pid, another start time: that process is gone
    stale = client.create_run(first["experiment_id"].iloc[0], run_name="two_tower[loss.kind=debiased]-seed0",
                              tags={"sweep_id": parent_id, "mlflow.parentRunId": parent_id,
                                    "process": gone}).info.run_id

    def counting(cfg, reporter, prep):  # type: ignore[no-untyped-def]
        trained.append(cfg.loss.kind)
        return real(cfg, reporter, prep)

    monkeypatch.setattr(sweep, "run_two_tower", counting)
    # a parent RUNNING in a live process (this one) is another sweep going on: not taken over
    from recsys_cl.config import TrackingConfig
    from recsys_cl.tracking import process_tag, unfinished_sweep

    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="tiny")
    key = client.get_run(parent_id).data.tags["sweep_key"]
    client.set_tag(parent_id, "process", process_tag())
    client.update_run(parent_id, status="RUNNING")
    assert unfinished_sweep(tracking, key) == (None, {})
    client.set_tag(parent_id, "process", gone)
    assert unfinished_sweep(tracking, key)[0] == parent_id
    client.set_terminated(parent_id, status="FAILED")

    trained.clear()
    summary = sweep.main(args)
    assert trained == ["debiased"]  # the softmax child was not trained again
    assert summary["parent_run_id"] == parent_id and summary["reused_runs"] == 1
    assert done_id in summary["child_run_ids"] and len(summary["rows"]) == 3
    reused = next(r for r in summary["rows"] if r["run_id"] == done_id)
    assert reused["test/recall@20"] == client.get_run(done_id).data.metrics["test/recall_at_20"]
    assert client.get_run(parent_id).info.status == "FINISHED" and client.get_run(stale).info.status == "KILLED"
    table = pd.read_csv(Path(client.download_artifacts(parent_id, "sweep/summary.csv", str(tmp_path))))
    assert set(table["run_id"]) == set(summary["child_run_ids"])
    # the printed UI filter shows the sweep's runs, not the tries the kill left behind
    hint = capsys.readouterr().out.split("filter: ")[-1].split(")\n")[0]
    shown = mlflow.search_runs(experiment_names=["tiny"], filter_string=hint)
    assert set(shown["run_id"]) == {parent_id, *summary["child_run_ids"]}

    # --no-resume gives the interrupted sweep up: the next plain run starts anew after it
    fresh = sweep.main([*args, "--no-resume"])
    assert fresh["parent_run_id"] != parent_id and fresh["reused_runs"] == 0
    assert trained == ["debiased", "softmax", "debiased"]
    again = sweep.main(args)
    assert again["parent_run_id"] not in (parent_id, fresh["parent_run_id"]) and again["reused_runs"] == 0


def test_a_child_another_process_is_training_stops_the_sweep_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sweep_args, hold_checkpoint,  # type: ignore[no-untyped-def]
) -> None:
    """A sweep launched twice (a new parent each: the first's is alive) trained the same children with
    the same checkpoint file at once; the first to finish deleted it under the other."""
    from pipelines import sweep
    from recsys_cl import experiment

    monkeypatch.chdir(tmp_path)
    shared = tmp_path / "ck" / "child.pt"
    monkeypatch.setattr(experiment, "checkpoint_path", lambda cfg, fingerprint: shared)  # every child's
    first = hold_checkpoint(shared)  # the first sweep, training that child
    with pytest.raises(SystemExit, match=r"^checkpoint error: another process is training this config on this "
                                         rf"data with the checkpoint {shared} \(pid {first.pid} on "):
        sweep.main(["--grid", "loss.kind=softmax,debiased", *sweep_args(tmp_path)])
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tiny"])
    assert dict(zip(runs["tags.mlflow.runName"], runs["status"])) == {
        "sweep[loss.kind]": "FAILED", "two_tower[loss.kind=softmax]-seed0": "FAILED"}  # stopped at the first child
    assert not shared.exists()


def test_a_grid_over_encoders_needs_only_its_own_encoders_to_suit_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sweep_args  # type: ignore[no-untyped-def]
) -> None:
    """No item table (no genres) and the default encoders [id, categorical]: a grid that sets the
    encoders runs; a grid value with categorical is refused before training."""
    from pipelines import sweep
    from recsys_cl.config import DataConfig
    from recsys_cl.data.io import load_click_log

    monkeypatch.chdir(tmp_path)
    clicks = tmp_path / "clicks.parquet"
    fixture = Path(__file__).parents[1] / "fixtures" / "ml-100k"
    load_click_log(DataConfig(path=str(fixture))).clicks.select("user_id", "item_id", "timestamp").write_parquet(clicks)
    args = sweep_args(tmp_path, "--set", "data.format=parquet", "--set", f"data.path={clicks}")
    with pytest.raises(SystemExit, match=r"data error: item_tower\.encoders includes 'categorical'"):
        sweep.main(["--grid", "item_tower.encoders=[id],[id,categorical]", *args])
    assert not (tmp_path / "mlflow.db").exists()
    summary = sweep.main(["--grid", "item_tower.encoders=[id]", *args])
    assert len(summary["child_run_ids"]) == 1
