"""A tiny two-tower trained once per session on the ml-100k fixture, for the build_index tests."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train a tiny two-tower on the ml-100k fixture once; returns paths, URIs and the tracking URI."""
    from pipelines import train_two_tower

    root = tmp_path_factory.mktemp("model")
    db = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # mlruns/ artifacts land under root
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        summary = train_two_tower.main([
            "--set", f"data.path={FIXTURES / 'ml-100k'}",
            "--set", f"tracking.uri={db}",
            "--set", "tracking.experiment=index_smoke",
            "--set", f"train.checkpoint_dir={root / 'ck'}",
            "--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "train.progress=false",
            "--set", "model.embedding_dim=8", "--set", "user_tower.history_length=4",
        ])
    return {"root": root, "tracking_uri": db, "summary": summary}
