"""recsys_cl.tracking: a store that cannot be reached or opened is one clear TrackingError, at once."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from recsys_cl.config import TrackingConfig
from recsys_cl.tracking import TrackingError, check_reachable, mlflow_run


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once the socket is closed


def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def test_unreachable_server_fails_at_once_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_proxy(monkeypatch)
    uri = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.perf_counter()
    with pytest.raises(TrackingError, match=rf"cannot reach the MLflow tracking server at {uri} .*tracking\.uri"):
        check_reachable(uri)
    assert time.perf_counter() - t0 < 5  # MLflow's client alone retries for minutes


def test_a_server_behind_a_proxy_is_left_to_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    check_reachable(f"http://10.255.255.1:{_closed_port()}")  # no direct connection is tried


def test_listening_server_and_local_stores_pass() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        check_reachable(f"http://127.0.0.1:{s.getsockname()[1]}/")
    check_reachable("sqlite:///nowhere/mlflow.db")  # local stores are opened, not probed
    check_reachable("file:///tmp/mlruns")


def test_a_store_that_will_not_open_names_the_store(tmp_path: Path) -> None:
    not_a_db = tmp_path / "ratings.csv"
    not_a_db.write_text("userId,movieId\n1,2\n")
    for uri in (f"sqlite:///{not_a_db}", f"sqlite:///{not_a_db}/mlflow.db"):  # a text file; a file as folder
        with pytest.raises(TrackingError, match=r"could not open an MLflow run in the store sqlite:///.*ratings\.csv"
                                                r".*check tracking\.uri"):
            with mlflow_run(TrackingConfig(uri=uri)):
                pass


def test_sqlite_store_keeps_artifacts_beside_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not in ./mlruns of whatever folder the job happened to start in."""
    import mlflow

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    store = tmp_path / "store" / "mlflow.db"
    store.parent.mkdir()
    with mlflow_run(TrackingConfig(uri=f"sqlite:///{store}", experiment="exp a/b")) as run:
        run.log_text("hello", "notes/hello.txt")
        artifact_uri = mlflow.get_artifact_uri()
    assert artifact_uri.startswith((tmp_path / "store" / "mlruns" / "exp_a_b").as_uri())
    assert (tmp_path / "store" / "mlruns" / "exp_a_b").is_dir() and not (elsewhere / "mlruns").exists()
    with mlflow_run(TrackingConfig(uri=f"sqlite:///{store}", experiment="exp a/b")):  # existing: reused
        assert mlflow.get_artifact_uri().startswith((tmp_path / "store" / "mlruns" / "exp_a_b").as_uri())


def test_downloaded_artifacts_are_removed_when_the_process_exits(tmp_path: Path) -> None:
    """MLflow's default download folder is never removed: each runs:/ encoder left ~90 MB in /tmp."""
    import subprocess
    import sys

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with mlflow_run(TrackingConfig(uri=store, experiment="dl")) as run:
        run.log_text("weights", "encoder/weights.txt")
        run_id = run.run_id
    code = ("from recsys_cl.config import TrackingConfig; from recsys_cl.tracking import resolve_model_dir; "
            f"d = resolve_model_dir('runs:/{run_id}/encoder', TrackingConfig(uri='{store}')); "
            "print(d); assert (d / 'weights.txt').read_text() == 'weights'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    local = Path(out.stdout.strip().splitlines()[-1])
    assert "recsys_cl_artifact_" in str(local) and not local.exists()


def test_a_killed_run_is_marked_failed_even_when_mlflow_end_run_breaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --engine spark a SIGTERM also ends Spark's JVM, and mlflow.end_run's client then fails
    asking the dead Spark session for a registry URI; the run must still end FAILED, and the
    job's own exception (the SystemExit of the signal) must be what propagates."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils

    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def dead_jvm() -> None:
        raise KeyError("c")  # what py4j raised in the reproduction

    with pytest.raises(SystemExit, match="143"):
        with mlflow_run(TrackingConfig(uri=uri, experiment="spark_term")) as run:
            monkeypatch.setattr(registry_utils, "_get_registry_uri_from_spark_session", dead_jvm)
            raise SystemExit(143)
    monkeypatch.undo()
    assert mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).get_run(run.run_id).info.status == "FAILED"
    mlflow.end_run("FAILED")  # the stack entry end_run could not pop


def test_runs_whose_process_is_gone_are_marked_killed(tmp_path: Path) -> None:
    """A SIGKILLed job cannot end its run; the next run started in the experiment on the same host
    marks it KILLED. Live processes, reused pids and other hosts are told apart by the process tag."""
    import os
    import signal
    import subprocess

    import mlflow

    from recsys_cl.tracking import PROCESS_TAG, _start_ticks

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = TrackingConfig(uri=uri, experiment="dead_runs")
    with mlflow_run(cfg, run_name="first") as first:
        assert mlflow.get_run(first.run_id).data.tags[PROCESS_TAG] == (
            f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}")
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp_id = mlflow.get_experiment_by_name("dead_runs").experiment_id
    host = socket.gethostname()
    killed = subprocess.Popen(["sleep", "30"])
    alive = subprocess.Popen(["sleep", "30"])
    try:
        killed_tag = f"{host}:{killed.pid}:{_start_ticks(killed.pid)}"
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        tags = {
            "sigkilled": killed_tag,
            "still_running": f"{host}:{alive.pid}:{_start_ticks(alive.pid)}",
            "pid_reused": f"{host}:{os.getpid()}:0",  # this pid, but a process that started at another time
            "other_host": f"not-{host}:{killed.pid}:1",
        }
        ids = {name: client.create_run(exp_id, run_name=name, tags={PROCESS_TAG: tag}).info.run_id
               for name, tag in tags.items()}
        with mlflow_run(cfg, run_name="next"):
            pass  # opening it is what checks
        status = {name: client.get_run(i).info.status for name, i in ids.items()}
        assert status == {"sigkilled": "KILLED", "still_running": "RUNNING", "pid_reused": "KILLED",
                          "other_host": "RUNNING"}
        assert killed_tag in client.get_run(ids["sigkilled"]).data.tags["killed_because"]
        with mlflow_run(cfg, run_id=ids["sigkilled"]):  # resumed (a checkpoint, a sweep): no longer killed
            pass
        resumed = client.get_run(ids["sigkilled"])
        assert resumed.info.status == "FINISHED" and "killed_because" not in resumed.data.tags
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.parametrize("uri, path", [
    ("sqlite:///mlflow.db", "mlflow.db"), ("sqlite:////abs/m.db", "/abs/m.db"), ("sqlite:///m.db?timeout=5", "m.db"),
    ("sqlite:///:memory:", None), ("http://localhost:5000", None), ("file:///tmp/mlruns", None),
])
def test_sqlite_path_of_a_tracking_uri(uri: str, path: str | None) -> None:
    from recsys_cl.tracking import sqlite_path

    assert sqlite_path(uri) == (None if path is None else Path(path))


def test_reading_a_model_from_a_store_that_does_not_exist_says_so_and_creates_nothing(tmp_path: Path) -> None:
    """nightly / generate_candidates against a missing SQLite file: one clear error, no empty database
    left behind (MLflow would create one and then report that the model has no versions)."""
    from recsys_cl.tracking import model_provenance, resolve_model_alias, resolve_model_dir

    db = tmp_path / "nope" / "mlflow.db"
    cfg = TrackingConfig(uri=f"sqlite:///{db}")
    for read in (lambda: resolve_model_alias("recsys_cl_two_tower", "champion", cfg),
                 lambda: model_provenance("models:/recsys_cl_two_tower/1", cfg),
                 lambda: resolve_model_dir("runs:/abc/model", cfg)):
        with pytest.raises(TrackingError, match=rf"no MLflow store at sqlite:///{db} \(no file {db}\).*"
                                                r"python -m pipelines.train_two_tower"):
            read()
    assert not db.exists() and not db.parent.exists()


@pytest.mark.parametrize("uri", ["sqlite:///{tmp}/README.md", "foo://bar"])
def test_reading_a_model_from_a_store_that_will_not_open_names_the_store(tmp_path: Path, uri: str) -> None:
    """A text file as the SQLite store, or a scheme MLflow has no store for: one TrackingError (the
    pipelines print it as `tracking error: ...`), not a sqlalchemy / MLflow traceback."""
    from recsys_cl.tracking import model_provenance, resolve_model_alias, resolve_model_dir

    (tmp_path / "README.md").write_text("# not a database\n")
    uri = uri.format(tmp=tmp_path)
    cfg = TrackingConfig(uri=uri)
    for read in (lambda: resolve_model_alias("recsys_cl_two_tower", "champion", cfg),
                 lambda: model_provenance("models:/recsys_cl_two_tower/1", cfg),
                 lambda: resolve_model_dir("runs:/abc/model", cfg)):
        with pytest.raises(TrackingError, match=rf"^could not read the MLflow store {re.escape(uri)}: \w+: .*check "
                                                r"tracking\.uri"):
            read()
    assert (tmp_path / "README.md").read_text() == "# not a database\n"


def test_ablation_row_tag_leaves_out_the_run_id_and_a_row_too_long_for_a_tag(caplog: pytest.LogCaptureFixture) -> None:
    import json

    from recsys_cl.tracking import ABLATION_ROW_TAG, ablation_row_tag

    tag = ablation_row_tag({"run_id": "abc", "test_metrics": {"recall@20": 0.2}})
    assert json.loads(tag[ABLATION_ROW_TAG]) == {"test_metrics": {"recall@20": 0.2}}
    assert ablation_row_tag({"test_metrics": {f"m{i}": 0.1 for i in range(1000)}}) == {}  # ~10k characters
    assert "will train it again" in caplog.text


def test_git_dirty_tells_edited_code_from_its_commit(tmp_path: Path) -> None:
    """A run of edited code would otherwise carry the commit it was edited from and look reproducible."""
    import subprocess

    from recsys_cl.tracking import git_commit, git_dirty

    assert git_dirty(tmp_path) == "unknown" and git_commit(tmp_path) == "unknown"  # not a checkout
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                       capture_output=True)

    git("init", "-q")
    (repo / "model.py").write_text("tau = 0.1\n")
    git("add", "model.py")
    git("commit", "-q", "-m", "first")
    assert git_dirty(repo) == "false" and len(git_commit(repo)) == 40
    (repo / "notes.txt").write_text("untracked files are not the code that ran\n")
    assert git_dirty(repo) == "false"
    (repo / "model.py").write_text("tau = 0.05\n")
    assert git_dirty(repo) == "true"


def test_every_run_says_whether_its_code_was_edited(tmp_path: Path) -> None:
    import mlflow

    from recsys_cl.tracking import git_commit, git_dirty, mlflow_child_run

    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="dirty")
    with mlflow_run(cfg, run_name="parent") as parent:
        with mlflow_child_run(cfg, parent.run_id, "child") as child:
            pass
    client = mlflow.MlflowClient(cfg.uri)
    for run_id in (parent.run_id, child.run_id):
        tags = client.get_run(run_id).data.tags
        assert tags["git_dirty"] == git_dirty() and tags["git_commit"] == git_commit()
        assert tags["git_dirty"] in ("true", "false", "unknown")


def test_a_resumed_child_run_moves_under_the_parent_that_resumes_it(tmp_path: Path) -> None:
    """A killed ablation run resumes from its checkpoint into its own MLflow run; resumed by another
    parent (``--no-resume``), it is that parent's child now (nested and tagged), and no longer killed."""
    import mlflow

    from recsys_cl.tracking import KILLED_TAG, mlflow_child_run

    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="nested")
    with mlflow_run(cfg, run_name="first") as first:
        with pytest.raises(KeyboardInterrupt):
            with mlflow_child_run(cfg, first.run_id, "child", parent_tag="ablation_id") as child:
                raise KeyboardInterrupt
    client = mlflow.MlflowClient(cfg.uri)
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == first.run_id
    client.set_tag(child.run_id, KILLED_TAG, "its process was gone")
    with mlflow_run(cfg, run_name="second") as second:
        with mlflow_child_run(cfg, second.run_id, "ignored", run_id=child.run_id, parent_tag="ablation_id") as resumed:
            pass
    run = client.get_run(child.run_id)
    assert resumed.run_id == child.run_id and run.info.status == "FINISHED" and run.info.run_name == "child"
    assert run.data.tags["mlflow.parentRunId"] == run.data.tags["ablation_id"] == second.run_id
    assert KILLED_TAG not in run.data.tags and "sweep_id" not in run.data.tags


def test_metric_name_part_writes_any_name_as_mlflow_accepts_it(tmp_path: Path) -> None:
    import mlflow

    from recsys_cl.tracking import metric_name_part

    assert metric_name_part("+ logQ (counting)") == "logQ_counting"
    assert metric_name_part("default, ID only (no genres)") == "default_ID_only_no_genres"
    assert metric_name_part("a/b") == "a_b" and metric_name_part("(+)") == "_"
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="names")
    with mlflow_run(cfg) as run:
        run.log_metrics({"mean/" + metric_name_part("+ logQ + mask user's items (default)") + "/test/mrr": 0.1})
    assert list(mlflow.MlflowClient(cfg.uri).get_run(run.run_id).data.metrics) == [
        "mean/logQ_mask_user_s_items_default/test/mrr"]


def test_a_description_too_long_for_mlflow_is_cut_at_a_line_and_says_so(tmp_path: Path) -> None:
    import mlflow
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    from recsys_cl.tracking import DESCRIPTION_CUT, fit_description

    assert fit_description("| a | b |\n|---|---|") == "| a | b |\n|---|---|"
    rows = "\n".join(f"| two_tower[{i}] | 0.1234 |" for i in range(600))
    cut = fit_description(rows)
    assert len(cut) <= MAX_TAG_VAL_LENGTH and cut.endswith(DESCRIPTION_CUT)
    assert cut.removesuffix(DESCRIPTION_CUT).split("\n")[-1].endswith("| 0.1234 |")  # whole rows only
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="described")
    with mlflow_run(cfg, run_name="long") as run:
        run.set_description(rows)  # MLflow refuses a longer tag: the job would fail at its end
    assert mlflow.MlflowClient(cfg.uri).get_run(run.run_id).data.tags["mlflow.note.content"] == cut


def test_two_jobs_opening_a_new_sqlite_store_at_once_both_run(tmp_path: Path) -> None:
    """Two processes open runs in the same not-yet-created SQLite store at the same moment (a first
    backfill with parallel tasks): one creates and migrates it, under a lock beside the file, and the
    other then opens it. Without the lock both migrated it and one failed ("duplicate column name:
    step"). Subprocesses, so that MLflow's real migrations run (not this suite's template copy)."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'new.db'}"
    start = time.time() + 4  # both past their imports, then released together
    code = ("import time, sys; from recsys_cl.config import TrackingConfig; from recsys_cl.tracking import "
            f"mlflow_run; time.sleep(max(0, {start} - time.time())); "
            f"cm = mlflow_run(TrackingConfig(uri={uri!r}, experiment='e'));\n"
            "with cm as run: run.log_metrics({'x': 1.0})")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-600:] for e in errors]
    import mlflow

    mlflow.set_tracking_uri(uri)
    assert len(mlflow.search_runs(experiment_names=["e"])) == 2


def test_a_resumed_run_does_not_log_an_epoch_twice(tmp_path: Path) -> None:
    """A job killed after logging epoch 2 but before its epoch-2 checkpoint resumes from epoch 1 and
    trains epoch 2 again: the run keeps one point per epoch (the first), not two at step 2."""
    import mlflow

    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="resume")
    with mlflow_run(cfg) as first:
        first.on_epoch_end(1, {"train_loss": 0.9, "val/recall@20": 0.1})
        first.on_epoch_end(2, {"train_loss": 0.8, "val/recall@20": 0.2})
    with mlflow_run(cfg, run_id=first.run_id) as resumed:
        resumed.on_epoch_end(2, {"train_loss": 0.7, "val/recall@20": 0.2, "epoch_seconds": 3.0})
        resumed.on_epoch_end(3, {"train_loss": 0.6, "val/recall@20": 0.3, "epoch_seconds": 3.0})
    client = mlflow.MlflowClient(tracking_uri=cfg.uri)
    loss = sorted((m.step, m.value) for m in client.get_metric_history(first.run_id, "train_loss"))
    assert loss == [(1, 0.9), (2, 0.8), (3, 0.6)]
    assert [m.step for m in client.get_metric_history(first.run_id, "val/recall_at_20")] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(first.run_id, "epoch_seconds")] == [2, 3]  # new key
    with mlflow_run(cfg) as fresh:  # a new run asks nothing of the store's older runs
        fresh.on_epoch_end(1, {"train_loss": 0.5})
    assert [m.step for m in client.get_metric_history(fresh.run_id, "train_loss")] == [1]


def test_log_dict_writes_what_json_cannot_hold_as_text(tmp_path: Path) -> None:
    """A run's summary.json is logged at its very end: a numpy integer or a path in it must not fail the run."""
    import json

    import mlflow
    import numpy as np

    with mlflow_run(TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")) as run:
        run.log_dict({"n": np.int64(3), "where": tmp_path, "x": 0.5}, "summary.json")
        path = mlflow.artifacts.download_artifacts(run_id=run.run_id, artifact_path="summary.json",
                                                   dst_path=str(tmp_path / "dl"))
    assert json.loads(Path(path).read_text()) == {"n": 3, "where": str(tmp_path), "x": 0.5}


def test_params_are_written_in_the_yaml_syntax_of_set(tmp_path: Path) -> None:
    """One spelling for None, booleans and lists, the one ``--set`` and the config files use: ``str``
    wrote ``True`` and ``['id', 'categorical']`` beside ``null``."""
    import mlflow
    import numpy as np
    import yaml

    params = {"a.none": None, "a.flag": False, "a.list": ["id", "categorical"], "a.ks": (10, 20), "a.empty": [],
              "a.float": 0.1, "a.str": "sqlite:////tmp/x.db", "a.grid": "{softmax,debiased}",
              "a.odd": [np.int64(3)]}
    with mlflow_run(TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")) as run:
        run.log_params(params)
        logged = mlflow.get_run(run.run_id).data.params
    assert {k: logged[k] for k in params if k != "a.odd"} == {
        "a.none": "null", "a.flag": "false", "a.list": "[id, categorical]", "a.ks": "[10, 20]", "a.empty": "[]",
        "a.float": "0.1", "a.str": "sqlite:////tmp/x.db", "a.grid": "{softmax,debiased}"}
    assert logged["a.odd"] == str([np.int64(3)])  # YAML cannot write it: as Python does, not a failed run
    for key in ("a.none", "a.flag", "a.list", "a.ks", "a.float"):  # what --set reads back
        assert yaml.safe_load(logged[key]) == (list(params[key]) if key == "a.ks" else params[key])
