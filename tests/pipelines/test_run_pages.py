"""What a user sees when comparing runs in the MLflow UI: a two-tower run and a baseline run of the
same config, side by side (params, tags, metric keys, artifacts, descriptions), on the tiny MovieLens
100K fixture in one store built once for the module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pytest

from pipelines import evaluate_baselines, train_two_tower

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``{"two_tower": Run, "popularity": Run, "client": MlflowClient, "recall_plots": [the arguments
    of each plots.recall_vs_k call]}``."""
    from recsys_cl.eval import plots

    calls: list[dict[str, Any]] = []
    real = plots.recall_vs_k

    def recall_vs_k(curves: Any, protocol: str, **kwargs: Any) -> Any:
        calls.append({"curves": curves, "protocol": protocol, **kwargs})
        return real(curves, protocol, **kwargs)

    tmp = tmp_path_factory.mktemp("run_pages")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    args = ["--set", f"data.path={FIXTURES / 'ml-100k'}", "--set", f"tracking.uri={uri}",
            "--set", "tracking.experiment=pages", "--set", f"train.checkpoint_dir={tmp / 'ck'}",
            "--set", "train.epochs=2", "--set", "train.batch_size=8", "--set", "train.progress=false",
            "--set", "model.embedding_dim=8", "--set", "user_tower.history_length=4",
            "--set", "tracking.registered_model_name=null", "--set", "train.num_threads=1",
            "--set", "baselines.models=[popularity]"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setattr(plots, "recall_vs_k", recall_vs_k)
        two = train_two_tower.main(args)
        (pop,) = evaluate_baselines.main(args)
    client = mlflow.MlflowClient(tracking_uri=uri)
    return {"two_tower": client.get_run(two["run_id"]), "popularity": client.get_run(pop["run_id"]),
            "client": client, "recall_plots": calls}


def test_baseline_logs_the_protocol_params_as_the_two_tower_run_does(runs: dict[str, Any]) -> None:
    """Whether two runs' numbers are comparable (data, split, eval) reads off the compare view's
    params, under the same names and values for both kinds of run."""
    two, pop = runs["two_tower"].data.params, runs["popularity"].data.params
    protocol = {k for k in two if k.startswith(("data.", "split.", "eval."))}
    assert {"data.format", "split.val_quantile", "eval.ks", "eval.catalogue"} <= protocol
    assert {k: pop.get(k) for k in protocol} == {k: two[k] for k in protocol}


def test_baseline_metric_keys_line_up_with_the_two_tower_run(runs: dict[str, Any]) -> None:
    """val/* at eval.ks on both (a baseline logged val/recall_at_1 ... _at_200, columns a two-tower
    run leaves empty); test/* and best/val/* under the same keys."""
    two, pop = set(runs["two_tower"].data.metrics), set(runs["popularity"].data.metrics)
    for prefix in ("val/", "best/val/", "test/"):
        assert {k for k in pop if k.startswith(prefix)} == {k for k in two if k.startswith(prefix)}, prefix
    assert "val/recall_at_200" not in pop and "test/recall_at_200" in pop


def test_baseline_run_has_its_config_and_recall_plot(runs: dict[str, Any]) -> None:
    client, run_id = runs["client"], runs["popularity"].info.run_id
    assert {a.path for a in client.list_artifacts(run_id, "config")} == {"config/resolved_config.yaml"}
    assert {a.path for a in client.list_artifacts(run_id, "plots")} == {"plots/recall_vs_k.png"}


def test_runs_say_what_they_ran_on(runs: dict[str, Any]) -> None:
    """Library versions and cores on every run; the threads torch trained with on a two-tower run
    (examples_per_s of two runs compares only with them)."""
    import importlib.metadata

    for run in (runs["two_tower"], runs["popularity"]):
        tags = run.data.tags
        assert tags["torch_version"] == importlib.metadata.version("torch")
        assert tags["mlflow_version"] == mlflow.__version__
        assert tags["python_version"].count(".") == 2 and tags["numpy_version"] != "none"
        assert int(tags["cpu_count"]) >= 1
    assert runs["two_tower"].data.tags["torch_threads"] == "1"  # train.num_threads=1


def test_runs_describe_themselves(runs: dict[str, Any]) -> None:
    """The description at the top of a run's page says what was trained on what, which epoch or
    hyperparameters were tested and the headline test numbers, under which protocol."""
    two, pop = runs["two_tower"], runs["popularity"]
    text = two.data.tags["mlflow.note.content"]
    assert text.startswith("**Two-tower** (softmax loss, temperature 0.1; logQ counting; negatives in_batch; ")
    assert "on `ml-100k` (" in text and f"Protocol: `{two.data.tags['protocol']}`" in text
    best = int(two.data.metrics["best_epoch"])
    assert f"Best epoch {best} of 2 trained (chosen on validation recall@20 = " in text
    assert f"recall@20 {two.data.metrics['test/recall_at_20']:.4f}" in text
    text = pop.data.tags["mlflow.note.content"]
    assert text.startswith("**popularity baseline** on `ml-100k` (")
    assert "no hyperparameters to tune (validation ndcg@10 = " in text
    assert f"recall@20 {pop.data.metrics['test/recall_at_20']:.4f}" in text and "Protocol: `" in text


def test_runs_keep_their_summary(runs: dict[str, Any], tmp_path: Path) -> None:
    """What --summary-json writes is also the run's summary.json (an ablation or a sweep child has no
    --summary-json of its own)."""
    import json

    client = runs["client"]
    for name in ("two_tower", "popularity"):
        run = runs[name]
        path = client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))
        summary = json.loads(Path(path).read_text())
        assert summary["run_id"] == run.info.run_id and summary["protocol"] == run.data.tags["protocol"]
        assert summary["test_metrics"]["recall@20"] == pytest.approx(run.data.metrics["test/recall_at_20"])


def test_recall_plot_reads_against_popularity_and_names_its_run(runs: dict[str, Any]) -> None:
    """The two-tower run's Recall@K plot has Popularity under the same protocol as a dashed
    reference, the very numbers the baseline run logs; every plot names its run."""
    two_plot, pop_plot = runs["recall_plots"]
    two, pop = runs["two_tower"], runs["popularity"]
    (reference,) = two_plot["references"].values()
    assert list(two_plot["references"]) == ["popularity (same protocol)"]
    ks = (1, 2, 5, 10, 20, 50, 100, 200)
    assert reference == {k: pytest.approx(pop.data.metrics[f"test/recall_at_{k}"]) for k in ks}
    assert two_plot["run"] == f"{two.info.run_name} (run {two.info.run_id[:8]})"
    assert pop_plot["run"] == f"baseline-popularity (run {pop.info.run_id[:8]})" and not pop_plot.get("references")


def test_two_tower_run_name_says_loss_logq_negatives_and_seed(runs: dict[str, Any]) -> None:
    """Two runs that differ in their negatives had the same name."""
    run = runs["two_tower"]
    assert run.info.run_name == "two_tower-softmax-logq_counting-in_batch-seed0"
    assert run.data.tags["negatives"] in run.info.run_name
