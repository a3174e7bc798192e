"""pipelines.generate_candidates as a process: SIGKILL mid-write keeps the previous partition, a rerun
succeeds with identical content; bad input (date, index, output dir) exits with a clear message.

Uses an untrained model directory (no MLflow registry needed) built from the ml-100k fixture.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import generate_candidates, nightly
from recsys_cl.config import RunConfig, load_config
from recsys_cl.data.io import load_click_log
from recsys_cl.features.spec import build_feature_spec
from recsys_cl.index.base import Manifest
from recsys_cl.index.exact import ExactIndex
from recsys_cl.io_atomic import SLEEP_HOOK_ENV
from recsys_cl.towers.two_tower import build_two_tower
from recsys_cl.train.checkpoint import save_model_dir
from recsys_cl.train.steps import embed_items

DATA = Path(__file__).parents[1] / "fixtures" / "ml-100k"
DATE = "1997-09-23"
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config(None, RunConfig, overrides=[f"data.path={DATA}", "model.embedding_dim=8",
                                                  "user_tower.history_length=4"])
    log = load_click_log(cfg.data)
    spec = build_feature_spec(log.clicks, log.items)
    import torch

    torch.manual_seed(0)
    model = build_two_tower(spec, cfg.model, cfg.user_tower, cfg.item_tower)
    return save_model_dir(tmp_path_factory.mktemp("m") / "model", model, spec, cfg)


def _args(tmp: Path, model_dir: Path, *extra: str) -> list[str]:
    return ["--date", DATE, "--model", str(model_dir),
            "--set", f"data.path={DATA}", "--set", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
            "--set", f"candidates.output_dir={tmp / 'out'}", "--set", "candidates.k=5",
            "--set", "candidates.chunk_size=1", *extra]


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _contents(partition: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(partition.glob("part-*.parquet"))}


def _signal_mid_write(tmp_path: Path, model_dir: Path, sig: int) -> int:
    """Start generate_candidates in a subprocess (slowed between part files), send ``sig`` once it
    has written some but not all parts of the new partition; its exit code (its stderr: tmp_path/stderr)."""
    env = {**os.environ, SLEEP_HOOK_ENV: "0.3", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.generate_candidates", *_args(tmp_path, model_dir)],
                                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            tmps = list((tmp_path / "out").glob(f".dt={DATE}.tmp.*"))
            if tmps and len(list(tmps[0].glob("part-*"))) >= 2:
                break
            assert proc.poll() is None, "the writer finished before the signal"
            time.sleep(0.05)
        else:
            pytest.fail("the writer never started writing")
        proc.send_signal(sig)
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigkill_mid_write_keeps_the_previous_partition(tmp_path: Path, model_dir: Path) -> None:
    summary = generate_candidates.main(_args(tmp_path, model_dir))
    partition = Path(summary["partition"])
    before, success = _contents(partition), (partition / "_SUCCESS").read_text()
    assert len(before) == summary["users_active"] > 2

    _signal_mid_write(tmp_path, model_dir, signal.SIGKILL)
    assert _contents(partition) == before and (partition / "_SUCCESS").read_text() == success
    visible = [p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")]
    assert visible == [f"dt={DATE}"]  # the half-written run is hidden

    again = generate_candidates.main(_args(tmp_path, model_dir))
    assert _contents(Path(again["partition"])) == before
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"dt={DATE}"]  # temp dir cleaned up


def test_sigterm_mid_write_cleans_up_and_marks_the_run_failed(tmp_path: Path, model_dir: Path) -> None:
    """SIGTERM (a scheduler's timeout) gets the cleanup an exception gets: no temp partition left,
    the previous partition untouched, and the MLflow run FAILED instead of RUNNING forever."""
    import mlflow

    summary = generate_candidates.main(_args(tmp_path, model_dir))
    partition = Path(summary["partition"])
    before = _contents(partition)
    assert _signal_mid_write(tmp_path, model_dir, signal.SIGTERM) == 128 + signal.SIGTERM
    assert (tmp_path / "stderr").read_text().splitlines()[-1] == (
        f"stopped by SIGTERM: nothing published for dt={DATE} (an earlier partition there is untouched); "
        "rerun the same command")
    assert _contents(partition) == before
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"dt={DATE}"]  # temp dir removed at once
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    statuses = mlflow.search_runs(search_all_experiments=True)["status"].tolist()
    assert sorted(statuses) == ["FAILED", "FINISHED"]


def test_malformed_date_exits_with_the_format(tmp_path: Path, model_dir: Path) -> None:
    args = _args(tmp_path, model_dir)
    args[1] = "2024-13-01"
    with pytest.raises(SystemExit, match=r"candidates error: --date '2024-13-01' .*expected YYYY-MM-DD"):
        generate_candidates.main(args)


def test_a_config_typo_is_a_config_error_with_the_closest_key(tmp_path: Path, model_dir: Path) -> None:
    """As in every pipeline: 'config error:', the key's full name and the closest known key."""
    with pytest.raises(SystemExit, match=r"^config error: unknown config key 'candidates\.output_dri'; did you mean "
                                         r"'candidates\.output_dir'\? known keys here: "):
        generate_candidates.main([*_args(tmp_path, model_dir), "--set", "candidates.output_dri=x"])
    with pytest.raises(SystemExit, match=r"^config error: unknown config key 'candidates\.zzz'; known keys here: "):
        nightly.main([*_args(tmp_path, model_dir)[:2], "--set", "candidates.zzz=1"])


def test_no_clicks_in_window_exits_clearly(tmp_path: Path, model_dir: Path) -> None:
    args = _args(tmp_path, model_dir)
    args[1] = "2020-01-01"
    with pytest.raises(SystemExit, match=r"no clicks in the window .*1997-09-22 \.\. 1997-09-23"):
        generate_candidates.main(args)
    assert not (tmp_path / "out").exists()


def test_unwritable_output_exits_clearly(tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match=r"cannot write candidates under .*file/out"):
        out = tmp_path / "file" / "out"
        generate_candidates.main(_args(tmp_path, model_dir, "--set", f"candidates.output_dir={out}"))


def _save_index(model_dir: Path, where: Path) -> Path:
    from recsys_cl.index.base import embedding_hash
    from recsys_cl.train.checkpoint import load_model_dir

    model, spec, _ = load_model_dir(model_dir)
    vecs = embed_items(model, spec.num_items).numpy()
    index = ExactIndex()
    index.build(vecs, spec.items.ids)
    m = index.default_manifest(model_uri=str(model_dir.absolute()), embedding_hash=embedding_hash(vecs, spec.items.ids),
                               index_id="test-exact")
    return index.save(where, m)


def test_index_dir_is_used_and_mismatch_refused(tmp_path: Path, model_dir: Path) -> None:
    index_dir = _save_index(model_dir, tmp_path / "index")
    ok = generate_candidates.main(_args(tmp_path, model_dir, "--index", str(index_dir)))
    assert ok["index_id"] == "test-exact" and ok["index_dir"] == str(index_dir)
    m = Manifest.read(index_dir)
    m.replace(embedding_hash="0" * 64).write(index_dir)
    with pytest.raises(SystemExit, match=r"does not match the model: embedding_hash"):
        generate_candidates.main(
            _args(tmp_path, model_dir, "--index", str(index_dir), "--set", "candidates.output_dir=o2")
        )
    assert not (tmp_path / "o2").exists()
    with pytest.raises(SystemExit, match=r"--backend annoy but .* holds an index of backend 'exact'; pass --backend "
                                         r"exact"):  # read from the manifest before the model: a bad --model
        generate_candidates.main(              # is not what is reported
            _args(tmp_path, tmp_path / "nomodel", "--index", str(index_dir), "--backend", "annoy",
                  "--set", "candidates.output_dir=o3")
        )
    # both refusals came before an MLflow run was opened: no FAILED runs to clean up
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FINISHED"
    # in the serving experiment, linked to the model; a model folder has no run: no "None" tag
    assert mlflow.get_experiment(run.info.experiment_id).name.endswith("_serving")
    assert run.data.tags["model_uri"] == str(model_dir.absolute()) and "model_run_id" not in run.data.tags


def test_an_index_without_identity_or_checksums_is_not_trusted(tmp_path: Path, model_dir: Path) -> None:
    """A manifest stripped of every identity key is refused (nothing ties it to the model); one that
    keeps only the embedding hash but lost its file checksums still has its files checked against it."""
    import json

    import numpy as np

    index_dir = _save_index(model_dir, tmp_path / "index")
    raw = json.loads((index_dir / "manifest.json").read_text())
    identity = ("model_run_id", "embedding_hash", "model_version", "model_name", "model_uri", "files_sha256")
    (index_dir / "manifest.json").write_text(json.dumps({k: v for k, v in raw.items() if k not in identity}))
    with pytest.raises(SystemExit, match=r"^candidates error: the index does not match the model: embedding_hash: "
                                         r"the index manifest has none.*Fix: rebuild it with `python -m "
                                         r"pipelines\.build_index --model .*model --out <dir>`$"):
        generate_candidates.main(_args(tmp_path, model_dir, "--index", str(index_dir)))

    (index_dir / "manifest.json").write_text(json.dumps({k: v for k, v in raw.items() if k != "files_sha256"}))
    ids = np.load(index_dir / "item_ids.npy")
    np.save(index_dir / "item_ids.npy", np.roll(ids, 1))  # every item served under its neighbour's id
    with pytest.raises(SystemExit, match=r"^candidates error: .*index: the stored item vectors and ids hash to "
                                         r"[0-9a-f]{12}\.\.\., not to the embedding_hash"):
        generate_candidates.main(_args(tmp_path, model_dir, "--index", str(index_dir)))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["missing", "no_manifest", "corrupt_vectors", "bad_json"])
def test_missing_or_corrupt_index_exits_clearly(tmp_path: Path, model_dir: Path, damage: str) -> None:
    index_dir = _save_index(model_dir, tmp_path / "index")
    if damage == "missing":
        index_dir = tmp_path / "nope"
    elif damage == "no_manifest":
        (index_dir / "manifest.json").unlink()
    elif damage == "corrupt_vectors":
        (index_dir / "vectors.npy").write_bytes(b"garbage")
    else:
        (index_dir / "manifest.json").write_text("{not json")
    with pytest.raises(SystemExit, match=r"candidates error: .*(does not exist|missing|unreadable|not valid JSON)"):
        generate_candidates.main(_args(tmp_path, model_dir, "--index", str(index_dir)))
    assert not (tmp_path / "out").exists()


def test_clicks_from_another_id_space_exit_before_an_mlflow_run(tmp_path: Path, model_dir: Path) -> None:
    """No window click on an item the model knows (ids of another catalogue): the job says so before it
    opens an MLflow run, so no FAILED run is left behind."""
    import mlflow
    import polars as pl

    clicks = load_click_log(load_config(None, RunConfig, overrides=[f"data.path={DATA}"]).data).clicks
    foreign = tmp_path / "foreign.parquet"
    clicks.select("user_id", pl.col("item_id") + 1_000_000, "timestamp").write_parquet(foreign)
    args = _args(tmp_path, model_dir, "--set", "data.format=parquet", "--set", f"data.path={foreign}")
    with pytest.raises(SystemExit, match=r"candidates error: none of the \d+ clicks in the window .* is on an item "
                                         r"the model knows .*check data.path"):
        generate_candidates.main(args)
    assert not (tmp_path / "out").exists()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_users_short_of_k_candidates_are_counted_and_warned_about(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A k beyond what a user's unseen catalogue holds gives shorter lists: the manifest counts those
    users (short_lists, also an MLflow metric) and the job says so, instead of quietly writing fewer rows."""
    import json

    k_all = json.loads((model_dir / "features" / "spec.json").read_text())["num_items"] + 1
    out = generate_candidates.main([*_args(tmp_path, model_dir), "--set", f"candidates.k={k_all}"])
    assert out["short_lists"] == out["users_served"] > 0
    assert f"users served got fewer than k={k_all} candidates" in capsys.readouterr().out
    enough = generate_candidates.main(_args(tmp_path, model_dir))  # k = 5
    assert enough["short_lists"] == 0
    assert "got fewer than" not in capsys.readouterr().out
