"""A check both pretraining pipelines' MLflow runs share (SimCLR's and SimCSE's)."""

from typing import Any

import mlflow


def assert_run_page_and_epoch_keys(client: mlflow.MlflowClient, summary: dict[str, Any], written: dict[str, Any],
                                   title: str, metric: str) -> None:
    """The run's page starts with ``title``, tables ``metric`` against the untrained encoder's and ends
    with the encoder's URI; its per-epoch metrics are the two-tower keys, one step per epoch from 1
    (the chart's x axis, as on two-tower runs)."""
    run = client.get_run(summary["run_id"])
    text = run.data.tags["mlflow.note.content"]
    assert text.startswith(title) and text.endswith(f"Encoder: `{summary['encoder_uri']}`")
    m, b = written["metrics"][metric], written["baseline_metrics"][metric]
    assert f"| {metric} | {m:.4f} | {b:.4f} |" in text
    for key in ("train_loss", "epoch_seconds"):
        assert [h.step for h in client.get_metric_history(summary["run_id"], key)] == [1]
    assert not {"train/loss", "train/seconds"} & set(run.data.metrics)
