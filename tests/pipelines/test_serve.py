"""pipelines.serve: the registered model behind a real ``mlflow models serve`` REST endpoint (uvicorn)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipelines import train_two_tower

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(port: int, body: dict) -> tuple[int, dict]:  # type: ignore[type-arg]
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_mlflow_models_serve_answers_with_unseen_items(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train_two_tower.main([
        "--set", f"data.path={FIXTURES / 'ml-100k'}", "--set", f"tracking.uri={db}",
        "--set", f"train.checkpoint_dir={tmp_path / 'ck'}", "--set", "train.epochs=1",
        "--set", "train.batch_size=8", "--set", "train.progress=false", "--set", "model.embedding_dim=8",
        "--set", "user_tower.history_length=2", "--set", "tracking.set_alias=champion",
    ])
    port = _free_port()
    # the README's command (mlflow models serve once the champion is found), as make serve runs it;
    # PATH without the venv: the pipeline puts its bin/ (uvicorn) first itself
    env = {**os.environ, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[2])}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "pipelines.serve", "--set", f"tracking.uri={db}", "--port", str(port),
         "--summary-json", str(tmp_path / "serving.json")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"pipelines.serve exited {server.returncode}: {server.stderr.read()[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail("pipelines.serve did not answer /ping within 120 s")
                time.sleep(0.5)
        served = json.loads((tmp_path / "serving.json").read_text())
        assert served == {"model_uri": "models:/recsys_cl_two_tower@champion", "model_version": "1",
                          "model_run_id": served["model_run_id"], "tracking_uri": db,
                          "url": f"http://127.0.0.1:{port}/invocations"}
        history = [1, 2, 3, 4, 5]  # longer than history_length: all five are still left out
        status, body = _post(port, {"dataframe_records": [{"history": history}, {"history": []}]})
        assert status == 200, body
        first, empty = body["predictions"]
        catalogue = len({line.split()[1] for line in (FIXTURES / "ml-100k" / "u.data").read_text().splitlines()})
        assert len(first["item_ids"]) == min(10, catalogue - len(history))
        assert not set(history) & set(first["item_ids"])
        assert first["scores"] == sorted(first["scores"], reverse=True)
        assert len(empty["item_ids"]) == min(10, catalogue)
        assert (first["history_known"], empty["history_known"]) == (5, 0)
        # ids of another id space are ignored, and the answer says how many were known
        status, body = _post(port, {"dataframe_records": [{"history": [99999999, 1]}]})
        assert status == 200 and body["predictions"][0]["history_known"] == 1
        # the signature is enforced at the endpoint: a wrong column or id type is a 4xx naming it
        status, body = _post(port, {"dataframe_records": [{"items": [1]}]})
        assert status == 400 and "history" in body["message"]
        status, body = _post(port, {"dataframe_records": [{"history": ["a"]}]})
        assert status == 400 and "Array(long)" in body["message"]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    assert server.stdout is not None
    assert server.stdout.readline().startswith("serving models:/recsys_cl_two_tower@champion (version 1, run ")


def test_serve_refuses_what_it_cannot_serve_before_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No store, no such alias, a recsys_cl model folder: one line each, nothing started or created."""
    from pipelines import serve

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    started = []
    monkeypatch.setattr(serve, "run_server", lambda *a: started.append(a) or 0)
    with pytest.raises(SystemExit, match=r"^tracking error: there is no MLflow store at sqlite:///mlflow\.db"):
        serve.main([])
    assert not (tmp_path / "mlflow.db").exists()  # nothing created where there was nothing
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train_two_tower.main([
        "--set", f"data.path={FIXTURES / 'ml-100k'}", "--set", f"tracking.uri={db}",
        "--set", f"train.checkpoint_dir={tmp_path / 'ck'}", "--set", "train.epochs=1",
        "--set", "train.batch_size=8", "--set", "train.progress=false", "--set", "model.embedding_dim=8",
        "--set", "user_tower.history_length=2",
    ])
    with pytest.raises(SystemExit, match=r"^serve error: registered model 'recsys_cl_two_tower' has no alias "
                                         r"'champion' \(versions: 1; latest 1\)"):
        serve.main(["--set", f"tracking.uri={db}"])
    from recsys_cl.config import TrackingConfig
    from recsys_cl.tracking import resolve_model_dir

    model_dir = resolve_model_dir("models:/recsys_cl_two_tower/1", TrackingConfig(uri=db))  # model.pt, no MLmodel
    with pytest.raises(SystemExit, match=r"^serve error: .* holds no MLmodel file: .*--model runs:/<run_id>/model"):
        serve.main(["--set", f"tracking.uri={db}", "--model", str(model_dir)])
    assert started == []
