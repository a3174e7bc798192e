"""`torchrun --nproc_per_node=2 -m pipelines.train_two_tower` end to end (slow: two interpreters
import torch + mlflow). Rank 0 alone logs one MLflow run and writes the summary."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_torchrun_two_processes_log_one_run(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "pipelines.train_two_tower",
        "--set", f"data.path={ROOT / 'tests' / 'fixtures' / 'ml-100k'}",
        "--set", f"tracking.uri=sqlite:///{db}", "--set", f"train.checkpoint_dir={tmp_path / 'ck'}",
        "--set", "train.epochs=2", "--set", "train.batch_size=16", "--set", "train.progress=false",
        "--set", "model.embedding_dim=8", "--set", "user_tower.history_length=4",
        "--set", "negatives.queue.kind=moco", "--set", "negatives.queue.size=64",
        "--set", "tracking.registered_model_name=null", "--summary-json", str(tmp_path / "s.json"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [r.info.run_id for r in runs] == [summary["run_id"]]
    assert runs[0].data.tags["world_size"] == "2" and runs[0].info.status == "FINISHED"
    assert not list((tmp_path / "ck").glob("*.pt"))  # finished: rank 0 removed its checkpoint
