"""The candidates job serves models trained on string item (and user) ids, as real catalogues' SKUs.

Each test runs the same click log twice: with integer ids, and with the ids mapped 1:1 to
zero-padded strings (``7`` -> ``"SKU-00007"``, user ``3`` -> ``"u0003"``). Zero padding keeps the
strings in the integers' order, so both vocabularies index the items alike, both models get the same
weights, and the two jobs must write the same candidates, ids mapped, with the ids' own type.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines import build_index, generate_candidates, nightly, train_two_tower
from recsys_cl.candidates import clicks_up_to, parse_run_date, read_partition
from recsys_cl.config import DataConfig, RunConfig, load_config
from recsys_cl.data.io import load_click_log

DATA = Path(__file__).parents[1] / "fixtures" / "ml-100k"
FIRST_DATE, LAST_DATE = "1997-09-22", "1997-09-23"
CUTOFF = 874973000  # 1997-09-22 23:43:20 UTC: items 8 and 10 are first clicked after it
KINDS = ("int", "str")


def _sets(values: list[str]) -> list[str]:
    """``--set`` before each override."""
    return [x for v in values for x in ("--set", v)]


def _user(col: str) -> pl.Expr:
    return pl.format("u{}", pl.col(col).cast(pl.String).str.zfill(4))


def _item(col: str) -> pl.Expr:
    return pl.format("SKU-{}", pl.col(col).cast(pl.String).str.zfill(5))


def _to_strings(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with its integer user_id / item_id columns mapped to their string twins."""
    return frame.with_columns(
        *([_user("user_id").alias("user_id")] if "user_id" in frame.columns else []),
        _item("item_id").alias("item_id"),
    )


def _write_log(folder: Path, kind: str) -> list[str]:
    """The fixture's clicks and items as a generic CSV log with ``kind`` ids -> its ``data.*`` overrides."""
    log = load_click_log(DataConfig(path=str(DATA)))
    clicks = log.clicks.select("user_id", "item_id", "timestamp")
    assert log.items is not None
    items = log.items.select("item_id", "title", pl.col("genres").list.join("|"))
    if kind == "str":
        clicks, items = _to_strings(clicks), _to_strings(items)
    folder.mkdir(parents=True, exist_ok=True)
    clicks.write_csv(folder / "clicks.csv")
    items.write_csv(folder / "items.csv")
    return [f"data.path={folder / 'clicks.csv'}", "data.format=csv", f"data.items_path={folder / 'items.csv'}"]


@dataclass(frozen=True)
class Twin:
    """One of the two runs: its folder, ``data.*`` overrides, MLflow store and registered model."""

    root: Path
    data: list[str]
    tracking_uri: str
    model_uri: str

    def args(self, out: Path, *extra: str) -> list[str]:
        sets = [*self.data, f"tracking.uri={self.tracking_uri}", f"candidates.output_dir={out}",
                "candidates.k=5", "candidates.recall_sample=8"]
        return [*_sets(sets), *extra]


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Twin]:
    """Both logs, each trained into its own store, registered with the alias ``champion``."""
    out = {}
    for kind in KINDS:
        root = tmp_path_factory.mktemp(f"twin_{kind}")
        data = _write_log(root / "data", kind)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        old = os.getcwd()
        os.chdir(root)  # mlruns/ artifacts land here
        try:
            sets = [*data, f"tracking.uri={uri}", "tracking.set_alias=champion", f"train.checkpoint_dir={root / 'ck'}",
                    "train.epochs=2", "train.batch_size=8", "train.progress=false", "train.num_threads=1",
                    "model.embedding_dim=8", "user_tower.history_length=4"]
            summary = train_two_tower.main(_sets(sets))
        finally:
            os.chdir(old)
        out[kind] = Twin(root, data, uri, summary["model_uri"])
    return out


@pytest.fixture(autouse=True)
def _no_env_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _assert_twins(parts: dict[str, pl.DataFrame]) -> None:
    """The string run wrote the integer run's rows, ids mapped, with String ids where it had Int64."""
    ints, strs = parts["int"], parts["str"]
    assert ints.schema["item_id"] == pl.Int64 and ints.schema["user_id"] == pl.Int64
    assert strs.schema["item_id"] == pl.String and strs.schema["user_id"] == pl.String
    assert ints.height > 0
    # the runs' labels (index id: a hash over the ids) differ; users, items, ranks and scores may not
    cols = ["user_id", "item_id", "rank", "score"]
    assert strs.select(cols).equals(_to_strings(ints.select(cols)))


def _assert_unseen(part: pl.DataFrame, twin: Twin, date: str, k: int = 5) -> None:
    """No candidate is an item its user clicked up to ``date``; every user got ``k``."""
    cfg = load_config(None, RunConfig, overrides=twin.data)
    seen = clicks_up_to(load_click_log(cfg.data).clicks, parse_run_date(date)).select("user_id", "item_id")
    assert part.join(seen, on=["user_id", "item_id"]).height == 0
    assert set(part.group_by("user_id").len()["len"].to_list()) == {k}


def test_generate_candidates_from_a_saved_index_writes_the_string_ids(
    twins: dict[str, Twin], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train -> build_index (annoy) -> generate_candidates --index, on both logs."""
    parts, summaries = {}, {}
    for kind, twin in twins.items():
        monkeypatch.chdir(twin.root)
        index = tmp_path / kind / "index"
        build_index.main(["--model", twin.model_uri, "--out", str(index), "--set", "index.backend=annoy",
                          "--set", "index.recall_sample_users=8", *twin.args(tmp_path / kind / "out")])
        summaries[kind] = generate_candidates.main(["--date", LAST_DATE, "--model", twin.model_uri,
                                                    "--index", str(index), *twin.args(tmp_path / kind / "out")])
        assert summaries[kind]["backend"] == "annoy"
        parts[kind] = read_partition(summaries[kind]["partition"])
    _assert_twins(parts)
    _assert_unseen(parts["str"], twins["str"], LAST_DATE)
    assert np.load(tmp_path / "str" / "index" / "item_ids.npy").dtype.kind == "U"  # the index keeps the strings
    for key in ("rows", "users_served", "distinct_items", "catalogue_coverage", "new_item_share", "short_lists"):
        assert summaries["str"][key] == summaries["int"][key], key


def test_spark_engine_writes_the_string_ids(twins: dict[str, Twin], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process, after other tests' Spark jobs shipped other model and index directories."""
    pytest.importorskip("pyspark", reason="pyspark not installed: pip install -e '.[spark]'")
    if shutil.which("java") is None:
        pytest.skip("no java on PATH: Spark needs Java 17")
    twin = twins["str"]
    monkeypatch.chdir(twin.root)
    spark = generate_candidates.main(["--date", LAST_DATE, "--model", twin.model_uri, "--engine", "spark",
                                      *twin.args(tmp_path / "spark", "--set", "candidates.spark_partitions=2")])
    local = generate_candidates.main(["--date", LAST_DATE, "--model", twin.model_uri, *twin.args(tmp_path / "local")])
    a, b = read_partition(local["partition"]), read_partition(spark["partition"])
    assert b.schema["item_id"] == pl.String and a.drop("score").equals(b.drop("score"))
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), atol=1e-6)


def test_nightly_serves_string_item_ids_and_checks_their_overlap(
    twins: dict[str, Twin], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nights of each log: the saved annoy index is built, then reused; the health check's
    overlap with the previous night joins on the string ids."""
    parts, health = {}, {}
    for kind, twin in twins.items():
        monkeypatch.chdir(twin.root)
        args = twin.args(tmp_path / kind / "out", "--set", f"candidates.index_root={tmp_path / kind / 'index'}",
                         "--set", "index.recall_sample_users=8", "--set", "index.backend=annoy")
        first = nightly.main(["--date", FIRST_DATE, *args])
        second = nightly.main(["--date", LAST_DATE, *args])
        assert first["index_rebuilt"] is True and second["index_rebuilt"] is False
        assert second["health"]["failures"] == [] and second["health"]["same_model_as_previous"]
        parts[kind], health[kind] = read_partition(second["partition"]), second["health"]
    _assert_twins(parts)
    _assert_unseen(parts["str"], twins["str"], LAST_DATE)
    assert health["str"]["overlap_users"] == health["int"]["overlap_users"] > 0
    assert health["str"]["overlap_at_k"] == health["int"]["overlap_at_k"]


def _untrained_model_dir(root: Path, data: list[str]) -> Path:
    """A seeded, untrained model whose spec is the clicks before CUTOFF (as tests/pipelines/test_fold_in_serving.py)."""
    import torch

    from recsys_cl.features.spec import build_feature_spec
    from recsys_cl.towers.two_tower import build_two_tower
    from recsys_cl.train.checkpoint import save_model_dir

    cfg = load_config(None, RunConfig, overrides=[*data, "model.embedding_dim=8", "user_tower.history_length=4"])
    log = load_click_log(cfg.data)
    spec = build_feature_spec(log.clicks.filter(pl.col("timestamp") < CUTOFF), log.items)
    torch.manual_seed(0)
    model = build_two_tower(spec, cfg.model, cfg.user_tower, cfg.item_tower)
    return save_model_dir(root / "model", model, spec, cfg)


@pytest.mark.parametrize("method", ["sum", "fit"])
def test_fold_in_serves_new_string_items(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """Items without training clicks (8 and 10) folded in from their clicks: the same rows, new items
    among them, and ``new_item_share`` counted on the string ids."""
    monkeypatch.chdir(tmp_path)
    parts, shares = {}, {}
    for kind in KINDS:
        data = _write_log(tmp_path / kind / "data", kind)
        model = _untrained_model_dir(tmp_path / kind, data)
        sets = [*data, f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"candidates.output_dir={tmp_path / kind}",
                "candidates.k=5", f"candidates.fold_in={method}"]
        out = generate_candidates.main(["--date", LAST_DATE, "--model", str(model), *_sets(sets)])
        assert out["fold_in"]["items"] == 2
        parts[kind], shares[kind] = read_partition(out["partition"]), out["new_item_share"]
    _assert_twins(parts)
    new = parts["str"]["item_id"].is_in(["SKU-00008", "SKU-00010"])
    assert shares["str"] == shares["int"] == pytest.approx(new.mean()) and new.any()
