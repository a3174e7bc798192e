"""A tiny two-tower model trained once per session on the ml-100k fixture, registered in a tmp MLflow store."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parents[1] / "fixtures"
DATA = FIXTURES / "ml-100k"
# The fixture's clicks span 1997-09-22 22:06 .. 1997-09-23 02:31 UTC.
FIRST_DATE, LAST_DATE = "1997-09-22", "1997-09-23"


@dataclass(frozen=True)
class Trained:
    root: Path
    tracking_uri: str
    model_uri: str  # models:/recsys_cl_two_tower/1

    def args(self, out: Path, *extra: str) -> list[str]:
        """Common pipeline arguments: the fixture data, the tmp store, ``out`` as output dir."""
        return [
            "--set", f"data.path={DATA}",
            "--set", f"tracking.uri={self.tracking_uri}",
            "--set", "tracking.experiment=candidates",
            "--set", f"candidates.output_dir={out}",
            "--set", "candidates.k=5",
            "--set", "candidates.recall_sample=8",
            *extra,
        ]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from pipelines import train_two_tower

    root = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = os.getcwd()
    os.chdir(root)  # mlruns/ artifacts land here
    try:
        summary = train_two_tower.main([
            "--set", f"data.path={DATA}",
            "--set", f"tracking.uri={uri}",
            "--set", "tracking.experiment=candidates",
            "--set", f"train.checkpoint_dir={root / 'ck'}",
            "--set", "train.epochs=2", "--set", "train.batch_size=8", "--set", "train.progress=false",
            "--set", "model.embedding_dim=8", "--set", "user_tower.history_length=4",
        ])
    finally:
        os.chdir(old)
    return Trained(root, uri, summary["model_uri"])


@pytest.fixture
def in_root(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> Trained:
    """Run from the trained root (relative mlruns/ artifact paths resolve) without $MLFLOW_TRACKING_URI."""
    monkeypatch.chdir(trained.root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return trained


@pytest.fixture(scope="session")
def loaded(trained: Trained):  # type: ignore[no-untyped-def]
    from recsys_cl.candidates import load_model
    from recsys_cl.config import TrackingConfig

    old = os.getcwd()
    os.chdir(trained.root)
    try:
        return load_model(trained.model_uri, TrackingConfig(uri=trained.tracking_uri))
    finally:
        os.chdir(old)


@pytest.fixture(scope="session")
def clicks():  # type: ignore[no-untyped-def]
    from recsys_cl.config import DataConfig
    from recsys_cl.data.io import load_click_log

    return load_click_log(DataConfig(path=str(DATA))).clicks
