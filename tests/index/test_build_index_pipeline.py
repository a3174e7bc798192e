"""``python -m pipelines.build_index`` end to end on a tiny model trained once per session."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pipelines import build_index
from recsys_cl.config import TrackingConfig
from recsys_cl.index import IndexMismatchError, check_compatible, embedding_hash, load_index
from recsys_cl.index.build import embed_catalogue, write_index_atomically
from recsys_cl.tracking import resolve_model_dir
from recsys_cl.train.checkpoint import load_model_dir


@pytest.fixture
def env(trained_model: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.chdir(trained_model["root"])  # the model's relative paths and mlruns/ live here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return {**trained_model, "out": tmp_path / "index"}


def _args(env: dict, model: str, *extra: str) -> list[str]:
    return ["--model", model, "--out", str(env["out"]),
            "--set", f"tracking.uri={env['tracking_uri']}", "--set", "tracking.experiment=index_smoke",
            "--set", "index.recall_sample_users=200", "--set", "index.k=20", *extra]


@pytest.mark.parametrize("backend", ["annoy", "auto"])
def test_build_index_from_registry_alias(env: dict, backend: str, capsys: pytest.CaptureFixture) -> None:
    client = mlflow.MlflowClient(env["tracking_uri"])
    client.set_registered_model_alias("recsys_cl_two_tower", "champion", "1")
    summary = build_index.main(_args(env, "models:/recsys_cl_two_tower@champion", "--set", f"index.backend={backend}"))

    index = load_index(env["out"])
    m = index.manifest
    assert m is not None and summary["index_dir"] == str(env["out"].absolute())
    assert m.model_name == "recsys_cl_two_tower" and m.model_version == "1"
    assert m.model_run_id == env["summary"]["run_id"]
    # the fixture has 8 users and 12 items: the sample is every user, K is capped at the catalogue size
    assert m.recall_sample_source == "users" and m.recall_sample_size == 8 and m.recall_k == 12
    assert m.recall_at_k is not None and m.recall_at_k >= 0.95 and m.queries_per_s > 0
    assert m.chosen_reason and m.chosen_reason.startswith(m.backend)
    if backend == "annoy":
        assert m.backend == "annoy" and m.params["search_k"] > 0

    # every item of the catalogue (clicked or only in the item table) is indexed, under its original id
    tracking = TrackingConfig(uri=env["tracking_uri"])
    model, spec, cfg = load_model_dir(resolve_model_dir("models:/recsys_cl_two_tower/1", tracking))
    emb = embed_catalogue(model, spec)
    assert m.item_count == spec.num_items and m.embedding_dim == cfg.model.embedding_dim
    assert m.embedding_hash == embedding_hash(emb.vectors, emb.ids)
    ids, _ = index.query(emb.vectors[:3], 1)
    np.testing.assert_array_equal(ids[:, 0], spec.items.ids[:3])  # an item is its own nearest (unit vectors)
    check_compatible(m, model_version="1", model_run_id=env["summary"]["run_id"], embedding_dim=8,
                     embedding_hash=m.embedding_hash)
    with pytest.raises(IndexMismatchError, match="model_version"):
        check_compatible(m, model_version="2")

    # the MLflow run is linked to the model run and holds the index files
    run = client.get_run(summary["run_id"])
    assert run.data.tags["model_run_id"] == env["summary"]["run_id"] and run.data.tags["kind"] == "index"
    assert run.data.metrics["recall_vs_exact"] == pytest.approx(m.recall_at_k) and run.data.params["recall_k"] == "12"
    # all users, none of them told apart as active: one recall, logged under both keys it has
    assert m.recall_at_k_all == m.recall_at_k and m.recall_at_k_active is None
    assert run.data.metrics["recall_vs_exact_all"] == pytest.approx(m.recall_at_k_all)
    assert "recall_vs_exact_active" not in run.data.metrics
    assert run.data.params["index.output_dir"] == str(env["out"])  # --out, not the config's default
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "index")}
    assert "index/manifest.json" in arts
    out = capsys.readouterr().out
    assert f"index: {env['out'].absolute()}" in out and "recall@12" in out


def test_rebuild_replaces_atomically_and_local_path(env: dict) -> None:
    model_dir = resolve_model_dir(env["summary"]["model_uri"], TrackingConfig(uri=env["tracking_uri"]))
    build_index.main(_args(env, str(model_dir), "--set", "index.backend=exact", "--no-mlflow"))
    first = load_index(env["out"]).manifest
    assert first is not None and first.backend == "exact" and first.model_version is None

    build_index.main(_args(env, str(model_dir), "--set", "index.backend=annoy", "--no-mlflow"))
    second = load_index(env["out"]).manifest
    assert second is not None and second.backend == "annoy"
    assert second.embedding_hash == first.embedding_hash
    leftovers = [p.name for p in env["out"].parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_failed_write_leaves_the_previous_index(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = resolve_model_dir(env["summary"]["model_uri"], TrackingConfig(uri=env["tracking_uri"]))
    build_index.main(_args(env, str(model_dir), "--set", "index.backend=exact", "--no-mlflow"))
    before = (env["out"] / "manifest.json").read_text()
    index = load_index(env["out"])

    def boom(directory: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(index, "_save_files", boom)
    with pytest.raises(OSError, match="disk full"):
        write_index_atomically(index, index.manifest, env["out"])  # type: ignore[arg-type]
    assert (env["out"] / "manifest.json").read_text() == before
    assert load_index(env["out"]).size == index.size
    assert [p for p in env["out"].parent.iterdir() if p.name.startswith(".")] == []


def test_unknown_model_is_a_clear_error(env: dict) -> None:
    with pytest.raises(SystemExit, match=r"index error: cannot load model 'models:/nope/1': .*check the run id / model "
                                         r"name in the URI, or point tracking\.uri"):
        build_index.main(_args(env, "models:/nope/1"))
    # a version that is not there lists the ones that are (once: no second generic hint)
    with pytest.raises(SystemExit, match=r"index error: cannot load model 'models:/recsys_cl_two_tower/7': .*has no "
                                         r"version 7 in .* \(versions: 1\); pass one of them, e\.g\. "
                                         r"models:/recsys_cl_two_tower/1$"):
        build_index.main(_args(env, "models:/recsys_cl_two_tower/7"))
    # an alias written after a slash is read by MLflow as a stage ('Invalid Model Version stage');
    # the message says it is not a version number and gives the alias form
    with pytest.raises(SystemExit, match=r"index error: .*'champion' is not a version of registered model "
                                         r"'recsys_cl_two_tower' \(versions: 1\); for the alias write "
                                         r"models:/recsys_cl_two_tower@champion, for a version pass one of them, "
                                         r"e\.g\. models:/recsys_cl_two_tower/1$"):
        build_index.main(_args(env, "models:/recsys_cl_two_tower/champion"))
    # a missing alias says which versions exist and how to point the alias (train_two_tower
    # registers a version but moves no alias unless tracking.set_alias is given)
    with pytest.raises(SystemExit, match=r"index error: .*has no alias 'nosuch' \(versions: 1; latest 1; "
                                         r"its aliases: champion -> version 1\)\. "
                                         r"Train with --set tracking.set_alias=nosuch .*set_registered_model_alias\("):
        build_index.main(_args(env, "models:/recsys_cl_two_tower@nosuch"))
    # a typo of an alias that exists (the store's model is the champion): the message names the
    # aliases and the likely one, so the command that would create the typo is not the only way out
    with pytest.raises(SystemExit, match=r"has no alias 'champoin' \(versions: 1; latest 1; its aliases: "
                                         r"champion -> version 1 \(did you mean 'champion': "
                                         r"models:/recsys_cl_two_tower@champion\?\)\)\. Train with"):
        build_index.main(_args(env, "models:/recsys_cl_two_tower@champoin"))
    with pytest.raises(SystemExit, match="config error: unknown config key 'index.backnd'"):
        build_index.main(_args(env, "x", "--set", "index.backnd=exact"))
    assert not env["out"].exists()


def test_summary_json(env: dict, tmp_path: Path) -> None:
    model_dir = resolve_model_dir(env["summary"]["model_uri"], TrackingConfig(uri=env["tracking_uri"]))
    build_index.main(_args(env, str(model_dir), "--set", "index.backend=exact", "--no-mlflow",
                           "--summary-json", str(tmp_path / "s.json")))
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["manifest"]["backend"] == "exact" and s["manifest"]["recall_at_k"] == 1.0


def test_an_out_folder_that_is_not_an_index_is_never_deleted(env: dict) -> None:
    """The build replaces its target whole: pointed at the wrong folder it must refuse, not rmtree."""
    model_dir = resolve_model_dir(env["summary"]["model_uri"], TrackingConfig(uri=env["tracking_uri"]))
    victim = env["out"]
    (victim / "sub").mkdir(parents=True)
    (victim / "important.txt").write_text("precious")
    with pytest.raises(SystemExit, match=r"index error: index output .*index exists and is not an index directory "
                                         r"\(no manifest\.json; it holds important\.txt, sub\).*--out"):
        build_index.main(_args(env, str(model_dir), "--set", "index.backend=exact", "--no-mlflow"))
    assert (victim / "important.txt").read_text() == "precious" and (victim / "sub").is_dir()
    index = load_index(_build_elsewhere(env, model_dir))
    with pytest.raises(OSError, match="is not an index directory"):  # the writer checks too
        write_index_atomically(index, index.manifest, victim)  # type: ignore[arg-type]
    assert (victim / "important.txt").read_text() == "precious"

    (victim / "important.txt").unlink()
    (victim / "sub").rmdir()  # an empty folder is fine to fill
    build_index.main(_args(env, str(model_dir), "--set", "index.backend=exact", "--no-mlflow"))
    assert load_index(victim).manifest is not None


def _build_elsewhere(env: dict, model_dir: Path) -> Path:
    out = env["out"].parent / "elsewhere"
    args = _args(env, str(model_dir), "--set", "index.backend=exact", "--no-mlflow")
    args[args.index("--out") + 1] = str(out)
    build_index.main(args)
    return out


def test_bad_out_folders_fail_before_any_work_in_one_line(
    env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A web app with its own manifest.json is not replaced; an --out under a file or where nothing
    can be written is refused before the model is even loaded, as one `index error:` line."""
    import recsys_cl.train.checkpoint

    model_dir = resolve_model_dir(env["summary"]["model_uri"], TrackingConfig(uri=env["tracking_uri"]))
    monkeypatch.setattr(recsys_cl.train.checkpoint, "load_model_dir", lambda d: pytest.fail("loaded the model"))
    webapp = tmp_path / "webapp"
    (webapp / "src").mkdir(parents=True)
    (webapp / "manifest.json").write_text('{"name": "my-pwa"}')
    (webapp / "src" / "app.js").write_text("x")
    (tmp_path / "afile").write_text("x")
    for out, problem in ((webapp, r"not an index directory \(its manifest\.json is not an index manifest"),
                         (tmp_path / "afile" / "sub", r"cannot be created: .*afile is a file, not a directory")):
        args = _args(env, str(model_dir), "--no-mlflow")
        args[args.index("--out") + 1] = str(out)
        with pytest.raises(SystemExit, match=rf"^index error: index output .*{problem}.*; pass --out"):
            build_index.main(args)
    assert (webapp / "src" / "app.js").read_text() == "x" and (tmp_path / "afile").read_text() == "x"


def test_a_folder_that_is_not_a_model_is_one_line(env: dict, tmp_path: Path) -> None:
    (tmp_path / "nonempty").mkdir()
    (tmp_path / "nonempty" / "x.txt").write_text("x")
    with pytest.raises(SystemExit, match=r"^index error: cannot load model '.*nonempty': .*nonempty is not a "
                                         r"recsys_cl model directory: missing \['model\.pt'.*Pass an existing model"):
        build_index.main(_args(env, str(tmp_path / "nonempty"), "--no-mlflow"))
    assert not env["out"].exists()
