"""generate_candidates / nightly end to end against the registered fixture model, and the Spark engine."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest

from pipelines import generate_candidates, nightly
from recsys_cl.candidates import read_partition
from recsys_cl.index.base import Manifest
from recsys_cl.io_atomic import SLEEP_HOOK_ENV, read_success

FIRST_DATE, LAST_DATE = "1997-09-22", "1997-09-23"


def test_generate_logs_an_mlflow_run(  # type: ignore[no-untyped-def]
    in_root, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = generate_candidates.main(["--date", LAST_DATE, "--model", in_root.model_uri,
                                    *in_root.args(tmp_path / "out")])
    last = capsys.readouterr().out.splitlines()[-1]  # as build_index prints it, with where to look in the UI
    assert last == f"run: {out['mlflow_run_id']}  (experiment candidates_serving)"
    assert out["model_version"] == "1" and out["backend"] == "exact"
    mlflow.set_tracking_uri(in_root.tracking_uri)
    run = mlflow.get_run(out["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["rows"] == out["rows"]
    assert run.data.tags["job"] == "candidates"
    assert run.data.params["candidates.backend"] == "exact" == run.data.tags["backend"]  # built in memory
    # the model given by --model: no alias param saying it served the champion
    assert run.data.params["candidates.model_uri"] == in_root.model_uri
    assert not {"candidates.alias", "candidates.fallback_to_latest"} & set(run.data.params)


def test_a_run_date_before_the_models_last_training_click_is_flagged(  # type: ignore[no-untyped-def]
    in_root, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The model learned from clicks up to 1997-09-23 (the fixture's 80% time cutoff falls on that
    day): candidates for 09-22 know what users did later. Served, but said in the output, the
    manifest and an MLflow tag; on 09-23 itself nothing is flagged."""
    early = generate_candidates.main(["--date", FIRST_DATE, "--model", in_root.model_uri,
                                      *in_root.args(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert early["model_trained_until"] == LAST_DATE and early["model_after_run_date"] is True
    assert (f"warning: the model was trained on clicks up to {LAST_DATE}, after the run date {FIRST_DATE}"
            in printed), printed
    mlflow.set_tracking_uri(in_root.tracking_uri)
    assert mlflow.get_run(early["mlflow_run_id"]).data.tags["model_trained_until"] == LAST_DATE
    on_time = generate_candidates.main(["--date", LAST_DATE, "--model", in_root.model_uri,
                                        *in_root.args(tmp_path / "out")])
    assert on_time["model_trained_until"] == LAST_DATE and on_time["model_after_run_date"] is False
    assert "warning:" not in capsys.readouterr().out


def test_generate_without_model_serves_the_configured_registry_alias(  # type: ignore[no-untyped-def]
    in_root, tmp_path: Path
) -> None:
    """Without --model: models:/<tracking.registered_model_name>@<candidates.alias>, as nightly resolves
    it, with the same message for a missing alias; a missing --index is reported before any model."""
    mlflow.set_tracking_uri(in_root.tracking_uri)
    mlflow.MlflowClient().set_registered_model_alias("recsys_cl_two_tower", "challenger", 1)
    args = ["--date", LAST_DATE, *in_root.args(tmp_path / "out")]
    out = generate_candidates.main([*args, "--set", "candidates.alias=challenger"])
    assert out["model_uri"] == "models:/recsys_cl_two_tower/1" and out["model_version"] == "1"
    with pytest.raises(SystemExit, match=r"candidates error: registered model 'recsys_cl_two_tower' has no alias "
                                         r"'nosuch' \(versions: 1; latest 1; its aliases: challenger -> version 1\)"
                                         r".*set_registered_model_alias\("
                                         r"'recsys_cl_two_tower', 'nosuch', 1\)"):
        generate_candidates.main([*args, "--set", "candidates.alias=nosuch"])
    with pytest.raises(SystemExit, match=r"candidates error: registered model 'other' does not exist"):
        generate_candidates.main([*args, "--set", "tracking.registered_model_name=other"])
    with pytest.raises(SystemExit, match=r"candidates error: index directory .*noindex does not exist"):
        generate_candidates.main([*args, "--set", "candidates.alias=nosuch", "--index", str(tmp_path / "noindex")])
    with pytest.raises(SystemExit, match=r"model_uri and tracking.registered_model_name are both null"):
        generate_candidates.main([*args, "--set", "tracking.registered_model_name=null"])


def test_nightly_alias_index_reuse_and_health(  # type: ignore[no-untyped-def]
    in_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    args = [*in_root.args(tmp_path / "out"), "--set", f"candidates.index_root={tmp_path / 'index'}",
            "--set", "index.recall_sample_users=8",
            # an approximate index with the default candidates.backend (exact): the saved index wins
            "--set", "index.backend=annoy"]
    mlflow.set_tracking_uri(in_root.tracking_uri)
    client = mlflow.MlflowClient()
    client.delete_registered_model_alias("recsys_cl_two_tower", "champion") if \
        client.get_registered_model("recsys_cl_two_tower").aliases else None
    with pytest.raises(SystemExit, match=r"no alias 'champion'.*set_registered_model_alias\('recsys_cl_two_tower', "
                                         r"'champion', 1\)"):
        nightly.main(["--date", FIRST_DATE, *args])
    client.set_registered_model_alias("recsys_cl_two_tower", "champion", 1)

    import recsys_cl.data.io

    reads = []
    real_load = recsys_cl.data.io.load_click_log
    monkeypatch.setattr(recsys_cl.data.io, "load_click_log", lambda *a, **kw: reads.append(1) or real_load(*a, **kw))
    first = nightly.main(["--date", FIRST_DATE, *args])
    assert first["index_rebuilt"] is True and first["health"]["previous_partition"] is None
    # the index is tuned on the users the night serves (they reach deeper into their lists than the
    # median), topped up with other users to index.recall_min_users (200), capped at recall_sample_users
    built = Manifest.read(tmp_path / "index" / "recsys_cl_two_tower" / "v1")
    active = first["users_active"]
    assert 0 < active < 8 and built.recall_sample_size == 8
    assert built.recall_sample_source == f"users ({active} active, {8 - active} other)"
    # the target held on both; both are kept and logged, and recall_at_k stays the lower
    assert built.recall_at_k_all is not None and built.recall_at_k_active is not None
    assert built.recall_at_k == min(built.recall_at_k_all, built.recall_at_k_active)
    # serving runs go to <experiment>_serving, so the training experiment holds training runs only
    [index_run] = client.search_runs([client.get_experiment_by_name("candidates_serving").experiment_id],
                                     "tags.kind = 'index'", order_by=["attributes.start_time DESC"], max_results=1)
    assert index_run.data.tags["index_id"] == built.index_id  # the build just logged (the store is the session's)
    # tagged as a serving job, with the folder nightly wrote (not index.output_dir's default)
    assert index_run.data.tags["job"] == "index"
    real = str(tmp_path / "index" / "recsys_cl_two_tower" / "v1")
    assert index_run.data.tags["index_dir"] == real == index_run.data.params["index.output_dir"]
    assert {key: index_run.data.metrics[key] for key in ("recall_vs_exact", "recall_vs_exact_all",
                                                         "recall_vs_exact_active")} == pytest.approx(
        {"recall_vs_exact": built.recall_at_k, "recall_vs_exact_all": built.recall_at_k_all,
         "recall_vs_exact_active": built.recall_at_k_active})
    assert f"run: {first['mlflow_run_id']}" in capsys.readouterr().out
    served = client.get_run(first["mlflow_run_id"]).data.params  # the alias's model, never candidates.model_uri
    assert served["candidates.alias"] == "champion" and "candidates.model_uri" not in served
    assert reads == []  # the index build's recall queries use the job's clicks: the log is read once
    capsys.readouterr()
    second = nightly.main(["--date", LAST_DATE, *args])
    assert second["index_rebuilt"] is False  # same model version: index reused
    printed = capsys.readouterr().out
    assert re.search(rf"recall@K vs exact [01]\.\d{{3}} \(\d+ users sampled\), "
                     rf"overlap@K [01]\.\d{{3}} with dt={FIRST_DATE} over \d+ users\)", printed), printed
    # a damaged manifest in its own per-version folder: nightly rebuilds it, as the load error advises
    manifest = tmp_path / "index" / "recsys_cl_two_tower" / "v1" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"embedding_dim": 8', '"embedding_dim": "8"'))
    assert '"8"' in manifest.read_text()
    repaired = nightly.main(["--date", LAST_DATE, *args])
    assert repaired["index_rebuilt"] is True and '"embedding_dim": 8' in manifest.read_text()
    shutil.rmtree(tmp_path / "out" / f"dt={LAST_DATE}")
    second = nightly.main(["--date", LAST_DATE, *args])
    h = second["health"]
    assert h["same_model_as_previous"] and 0.0 <= h["overlap_at_k"] <= 1.0 and h["failures"] == []

    # a crossed threshold publishes nothing, keeps yesterday's partition and exits non-zero
    shutil.rmtree(tmp_path / "out" / f"dt={LAST_DATE}")
    with pytest.raises(SystemExit, match=r"health check FAILED .*catalogue coverage .* < candidates\.min_coverage"):
        nightly.main(["--date", LAST_DATE, *args, "--set", "candidates.k=1", "--set", "candidates.min_coverage=1.0"])
    assert not (tmp_path / "out" / f"dt={LAST_DATE}").exists()
    assert read_success(tmp_path / "out" / f"dt={FIRST_DATE}") is not None
    runs = mlflow.search_runs(experiment_names=["candidates_serving"], filter_string="tags.job = 'nightly'")
    training = mlflow.search_runs(experiment_names=["candidates"])
    assert training["tags.mlflow.runName"].str.startswith("two_tower-").tolist() == [True]
    assert set(runs["tags.model_run_id"]) == {training["run_id"][0]}  # each night links to its model's run
    # the saved annoy index served: the unused candidates.backend (exact) is not logged beside the tag
    assert set(runs["tags.backend"].dropna()) == {"annoy"} and "params.candidates.backend" not in runs.columns
    assert set(runs["status"]) == {"FINISHED", "FAILED"} and "health" in runs.columns.str.replace("tags.", "").tolist()


def test_nightly_waits_for_another_job_on_the_same_index(  # type: ignore[no-untyped-def]
    in_root, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Parallel nights of one model version (a backfill) check, (re)build and load its index one at
    a time (with fold-in the index depends on the date, and each would replace it under the other):
    a job waits, saying for what, while another holds the version's lock."""
    import fcntl
    import logging
    import threading

    mlflow.set_tracking_uri(in_root.tracking_uri)
    mlflow.MlflowClient().set_registered_model_alias("recsys_cl_two_tower", "champion", 1)
    root = tmp_path / "index"
    lock = root / "recsys_cl_two_tower" / ".v1.lock"
    lock.parent.mkdir(parents=True)
    held = threading.Event()

    def other_job() -> None:
        with open(lock, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write("pid 1 on elsewhere\n")
            fh.flush()
            held.set()
            time.sleep(2.0)

    t = threading.Thread(target=other_job)
    t.start()
    held.wait(10)
    t0 = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="recsys_cl.io_atomic"):
        out = nightly.main(["--date", LAST_DATE, *in_root.args(tmp_path / "out"),
                            "--set", f"candidates.index_root={root}", "--set", "candidates.fold_in=sum",
                            "--set", "index.backend=exact"])
    t.join()
    assert out["rows"] > 0 and out["index_rebuilt"] is True
    assert time.perf_counter() - t0 >= 1.0  # it waited for the other job
    assert ("waiting for the index of models:/recsys_cl_two_tower/1, held by pid 1 on elsewhere"
            in caplog.text), caplog.text


def test_a_spark_nightly_with_fold_in_keeps_the_index_lock_until_it_ends(  # type: ignore[no-untyped-def]
    in_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Spark job ships the index folder when its Spark job starts, after the index was checked and
    loaded; with fold-in another night would replace that folder meanwhile, so a Spark night keeps
    the version's lock while it serves. A local night has its own copy loaded and lets go (so a
    backfill's local nights overlap). Probed from inside the serving step; the probe serves locally."""
    import dataclasses
    import fcntl

    from recsys_cl.candidates import run as real_run

    mlflow.set_tracking_uri(in_root.tracking_uri)
    mlflow.MlflowClient().set_registered_model_alias("recsys_cl_two_tower", "champion", 1)
    root = tmp_path / "index"
    lock = root / "recsys_cl_two_tower" / ".v1.lock"
    held: list[bool] = []

    def probe(c, *args, **kwargs):  # type: ignore[no-untyped-def]
        with open(lock, "a+") as fh:  # another open file: flock conflicts even within this process
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        return real_run(dataclasses.replace(c, engine="local"), *args, **kwargs)

    monkeypatch.setattr(nightly, "run", probe)
    common = ["--date", LAST_DATE, "--set", f"candidates.index_root={root}", "--set", "index.backend=exact"]
    for i, extra in enumerate((["--engine", "spark", "--set", "candidates.fold_in=sum"],
                               ["--set", "candidates.fold_in=sum"], ["--engine", "spark"])):
        assert nightly.main([*common, *in_root.args(tmp_path / f"out{i}"), *extra])["rows"] > 0
    assert held == [True, False, False]  # spark + fold-in holds; local, or no fold-in, does not


def test_spark_engine_matches_local(in_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("pyspark", reason="pyspark not installed: pip install -e '.[spark]'")
    if shutil.which("java") is None:
        pytest.skip("no java on PATH: Spark needs Java 17")
    local = generate_candidates.main(["--date", LAST_DATE, "--model", in_root.model_uri,
                                      *in_root.args(tmp_path / "local")])
    spark = generate_candidates.main(["--date", LAST_DATE, "--model", in_root.model_uri, "--engine", "spark",
                                      *in_root.args(tmp_path / "spark"), "--set", "candidates.chunk_size=3",
                                      "--set", "candidates.spark_partitions=4"])
    assert spark["engine_info"] == {"master": "local[2]", "partitions": 4, "default_parallelism": 2,
                                    "spark_submit": False}
    mlflow.set_tracking_uri(in_root.tracking_uri)
    assert mlflow.get_run(spark["mlflow_run_id"]).data.tags["spark_master"] == "local[2]"
    a, b = read_partition(local["partition"]), read_partition(spark["partition"])
    assert a.drop("score").equals(b.drop("score"))
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), atol=1e-6)
    assert spark["engine"] == "spark" and spark["rows"] == local["rows"]
    # each part file is sorted by (user_id, rank) as written and holds the next id range
    parts = [pl.read_parquet(f) for f in sorted(Path(spark["partition"]).glob("part-*.parquet"))]
    assert len(parts) > 1
    for p in parts:
        assert p.select("user_id", "rank").equals(p.select("user_id", "rank").sort("user_id", "rank"))
    assert all(x["user_id"].max() < y["user_id"].min() for x, y in zip(parts, parts[1:]))
    t = spark["timings"]  # users/s leaves Spark's start-up out; the start-up is reported beside it
    assert 0 < t["engine_startup_s"] < t["generate_s"]
    assert spark["users_per_s"] == pytest.approx(spark["users_active"] / (t["generate_s"] - t["engine_startup_s"]))


def test_spark_submit_keeps_its_master_and_runs_the_pipeline_script(  # type: ignore[no-untyped-def]
    in_root, tmp_path: Path
) -> None:
    """``spark-submit --master X pipelines/generate_candidates.py ...`` (docs/candidates.md#spark):
    spark-submit's master holds, not candidates.spark_master (local[2] by default; applying it moved
    a --master yarn job onto the driver), the users are split into the session's default
    parallelism, and the rows are the local engine's."""
    pytest.importorskip("pyspark", reason="pyspark not installed: pip install -e '.[spark]'")
    submit = Path(sys.executable).parent / "spark-submit"
    if shutil.which("java") is None or not submit.exists():
        pytest.skip("no java on PATH or no spark-submit beside this python: Spark needs Java 17 and pyspark")
    repo = Path(__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "PYSPARK_PYTHON": sys.executable}
    env.pop("MLFLOW_TRACKING_URI", None)
    summary = tmp_path / "summary.json"
    proc = subprocess.run(
        [str(submit), "--master", "local[1]", "--conf", "spark.ui.enabled=false",
         "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
         str(repo / "pipelines" / "generate_candidates.py"), "--date", LAST_DATE, "--model", in_root.model_uri,
         "--engine", "spark", *in_root.args(tmp_path / "spark"), "--summary-json", str(summary)],
        cwd=in_root.root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    got = json.loads(summary.read_text())
    assert got["engine_info"] == {"master": "local[1]", "partitions": 1, "default_parallelism": 1,
                                  "spark_submit": True}
    local = generate_candidates.main(["--date", LAST_DATE, "--model", in_root.model_uri,
                                      *in_root.args(tmp_path / "local")])
    a, b = read_partition(local["partition"]), read_partition(got["partition"])
    assert a.drop("score").equals(b.drop("score"))


def test_sigterm_to_a_spark_job_stops_it_in_one_line(in_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM to the job's process group (a scheduler stopping it) while Spark runs: Spark is
    stopped from Python (its JVM, in a session of its own, does not get the signal: no JVM or py4j
    stack traces, no MLflow end_run failure), the temp partition is gone, the run is FAILED once, and
    stderr ends with one line saying what the stop left; exit 143 as with the local engine."""
    pytest.importorskip("pyspark", reason="pyspark not installed: pip install -e '.[spark]'")
    if shutil.which("java") is None:
        pytest.skip("no java on PATH: Spark needs Java 17")
    out = tmp_path / "out"
    env = {**os.environ, SLEEP_HOOK_ENV: "5", "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    args = ["--date", LAST_DATE, "--model", in_root.model_uri, "--engine", "spark", *in_root.args(out),
            "--set", "candidates.chunk_size=3"]
    with open(tmp_path / "stderr", "wb") as err:  # a file, not a pipe: Spark's children may hold a pipe open
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.generate_candidates", *args], cwd=in_root.root,
                                env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            deadline = time.time() + 120
            while not list(out.glob(f".dt={LAST_DATE}.tmp.*/_spark")):  # Spark's write job has started
                assert proc.poll() is None, (tmp_path / "stderr").read_text()
                assert time.time() < deadline, "the Spark job never started"
                time.sleep(0.1)
            time.sleep(1)  # executors are scoring (each sleeps 5 s after a batch)
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(60) == 128 + signal.SIGTERM
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    stderr = (tmp_path / "stderr").read_text()
    lines = stderr.replace("\r", "\n").strip().splitlines()  # Spark's progress bar ends in \r
    assert lines[-1] == (f"stopped by SIGTERM: nothing published for dt={LAST_DATE} (an earlier partition there "
                         "is untouched); rerun the same command")
    for noise in ("Traceback", "Exception", "KeyError", "\tat ", "ERROR", "end_run failed"):
        assert noise not in stderr, stderr
    assert list(out.iterdir()) == []  # no partition, no temp directory
    mlflow.set_tracking_uri(in_root.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["candidates_serving"],
                              filter_string=f"tags.process LIKE '%:{proc.pid}:%'")
    assert runs["status"].tolist() == ["FAILED"]


def test_sigterm_to_a_spark_submit_job_publishes_nothing(  # type: ignore[no-untyped-def]
    in_root, tmp_path: Path
) -> None:
    """The same stop under ``spark-submit`` (its JVM is the driver's parent, in the same process
    group, so the signal reaches both): nothing is published, the run is FAILED, the exit code says
    the job did not succeed, and a rerun at once publishes the partition and leaves no temp folder."""
    pytest.importorskip("pyspark", reason="pyspark not installed: pip install -e '.[spark]'")
    submit = Path(sys.executable).parent / "spark-submit"
    if shutil.which("java") is None or not submit.exists():
        pytest.skip("no java on PATH or no spark-submit beside this python: Spark needs Java 17 and pyspark")
    out = tmp_path / "out"
    repo = Path(__file__).parents[2]
    env = {**os.environ, SLEEP_HOOK_ENV: "5", "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1",
           "PYSPARK_PYTHON": sys.executable}
    env.pop("MLFLOW_TRACKING_URI", None)
    args = [str(submit), "--master", "local[1]", "--conf", "spark.ui.enabled=false",
            "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
            str(repo / "pipelines" / "generate_candidates.py"), "--date", LAST_DATE, "--model", in_root.model_uri,
            "--engine", "spark", *in_root.args(out), "--set", "candidates.chunk_size=3",
            "--set", "tracking.serving_experiment=spark_submit_stopped"]  # this job's runs alone
    with open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen(args, cwd=in_root.root, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        try:
            deadline = time.time() + 180
            while not list(out.glob(f".dt={LAST_DATE}.tmp.*/_spark")):
                assert proc.poll() is None, (tmp_path / "stderr").read_text()
                assert time.time() < deadline, "the Spark job never started"
                time.sleep(0.1)
            time.sleep(1)
            os.killpg(proc.pid, signal.SIGTERM)
            code = proc.wait(90)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert code == 128 + signal.SIGTERM  # spark-submit's JVM exits first, with the signal's code
    assert not (out / f"dt={LAST_DATE}").exists()  # nothing published
    # The driver's Python, spark-submit's child, removes its temp partition just after; a task of the
    # dying JVM may still write into it after that (its SparkContext cannot be stopped from Python any
    # more), leaving a folder named after the driver's pid. Once the driver has exited, a rerun
    # removes such a folder of a dead process, as after a SIGKILL.
    deadline = time.time() + 60
    while any(os.path.exists(f"/proc/{p.name.split('.tmp.')[1].split('-')[0]}") for p in out.iterdir()):
        assert time.time() < deadline, "the stopped driver is still running a minute after spark-submit exited"
        time.sleep(0.2)
    mlflow.set_tracking_uri(in_root.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["spark_submit_stopped"])
    assert runs["status"].tolist() == ["FAILED"]  # (its last line went out through the JVM, gone by then)
    rerun = generate_candidates.main(["--date", LAST_DATE, "--model", in_root.model_uri, *in_root.args(out)])
    assert [p.name for p in out.iterdir()] == [f"dt={LAST_DATE}"] and rerun["rows"] > 0


def test_serving_jobs_report_an_unreachable_store_at_once(in_root, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """They resolve the model before opening a run: the store is probed there too, not left to
    MLflow's minutes of retries."""
    import socket
    import time

    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [*in_root.args(tmp_path / "out"), "--set", f"tracking.uri=http://127.0.0.1:{port}"]
    for main, extra in ((nightly.main, []), (generate_candidates.main, ["--model", "models:/recsys_cl_two_tower/1"])):
        t0 = time.perf_counter()
        with pytest.raises(SystemExit, match=rf"tracking error: cannot reach the MLflow tracking server at "
                                             rf"http://127\.0\.0\.1:{port}"):
            main(["--date", LAST_DATE, *args, *extra])
        assert time.perf_counter() - t0 < 30


def test_nightly_refuses_a_bad_index_folder_before_any_work(  # type: ignore[no-untyped-def]
    in_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """candidates.index_root under a file, or a v<version> folder that is not an index: one line naming
    nightly's own setting (nightly has no --out), before the click log is read; nothing is deleted."""
    mlflow.set_tracking_uri(in_root.tracking_uri)
    mlflow.MlflowClient().set_registered_model_alias("recsys_cl_two_tower", "champion", 1)
    monkeypatch.setattr(nightly, "load_click_log", lambda *a, **kw: pytest.fail("read the click log"))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit, match=r"^nightly error: index output .*afile/recsys_cl_two_tower/v1 cannot be "
                                         r"created: .*afile is a file, not a directory; .*set candidates\.index_root"):
        nightly.main(["--date", LAST_DATE, *in_root.args(tmp_path / "out"),
                      "--set", f"candidates.index_root={tmp_path / 'afile'}"])
    v1 = tmp_path / "index" / "recsys_cl_two_tower" / "v1"
    v1.mkdir(parents=True)
    (v1 / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"^nightly error: index output .*v1 exists and is not an index "
                                         r"directory \(no manifest\.json; it holds notes\.txt\).*set "
                                         r"candidates\.index_root") as e:
        nightly.main(["--date", LAST_DATE, *in_root.args(tmp_path / "out"),
                      "--set", f"candidates.index_root={tmp_path / 'index'}"])
    assert "--out" not in str(e.value) and (v1 / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("uri", ["sqlite:///{tmp}/README.md", "foo://bar"])
def test_serving_jobs_report_a_store_that_will_not_open_in_one_line(  # type: ignore[no-untyped-def]
    in_root, tmp_path: Path, uri: str
) -> None:
    """As train_two_tower does: `tracking error: ...`, not a sqlalchemy / MLflow traceback."""
    (tmp_path / "README.md").write_text("# not a database\n")
    args = [*in_root.args(tmp_path / "out"), "--set", f"tracking.uri={uri.format(tmp=tmp_path)}"]
    for main, extra in ((nightly.main, []), (generate_candidates.main, []),
                        (generate_candidates.main, ["--model", "models:/recsys_cl_two_tower/1"])):
        with pytest.raises(SystemExit, match=r"^tracking error: could not read the MLflow store .*check tracking\.uri"):
            main(["--date", LAST_DATE, *args, *extra])
    assert not (tmp_path / "out").exists()
