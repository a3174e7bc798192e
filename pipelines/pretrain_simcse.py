"""SimCSE pretraining of the text encoder (all-MiniLM-L6-v2 by default) on movie and book titles,
evaluated against the encoder before SimCSE, logged to MLflow.

Examples:
    python -m pipelines.pretrain_simcse --summary-json runs/simcse_summary.json
    python -m pipelines.pretrain_simcse --set eval.split=validation --set train.lr=3e-5
    python -m pipelines.pretrain_simcse --set train.trainable_layers=null   # all layers (the paper's setting)
    python -m pipelines.pretrain_simcse --set data.extra_text=null --set data.max_texts=0 --set train.epochs=2
    python -m pipelines.pretrain_simcse --set model.path=runs/simcse/<run_id>/encoder   # continue from a run
    python -m pipelines.pretrain_simcse --set model.path=runs:/<run_id>/encoder          # the same, from MLflow

Every config key can be overridden with --set section.key=value (YAML syntax for the value, e.g.
--set 'data.text_columns=[title,genres]'; 3e-5 works for float keys). Unknown keys are rejected with
their full name. The main ones (defaults from pipelines/configs/pretrain/simcse.yaml): data.path
(data/ml-latest-small), data.text_columns, data.extra_text (bundled goodbooks-10k; null = none),
data.max_texts (4000; 0 = all), model.path (null = all-MiniLM-L6-v2), model.max_length (32),
train.epochs (1), train.lr (1e-5), train.max_steps (null = all), train.trainable_layers (2; null =
all), train.num_threads (2), train.out_dir (runs/simcse), eval.split (test), eval.eval_size (1000),
tracking.experiment (recsys_cl_simcse), tracking.uri (null: $MLFLOW_TRACKING_URI, else
sqlite:///mlflow.db in the working directory). A quick try: --set data.max_texts=256
--set eval.eval_size=100 --set train.max_steps=4.

Training texts are the movies of data.path (minus the held-out ones) plus data.extra_text (book titles).
The held-out movies are never trained on: choose settings with --set eval.split=validation, report test.

The summary (--summary-json) is {"run_id", "encoder_uri", "metrics": {"alignment", "alignment_ratio",
"uniformity", "genre_recall@10"}, "baseline_metrics": {same keys, for the encoder before SimCSE},
"chance_genre_recall", "genre_recall_delta": {"delta", "low", "high", "n_boot"} (after - before, 95%
paired bootstrap over the held-out movies), "genre_recall_verdict": better | worse | no clear
difference, ...}. The run also logs plots/similarities.png (cosine similarity of held-out movie pairs,
before vs after). The encoder (transformers model + tokenizer + text_encoder.json) is the run's
artifact ``encoder/``: load it with
``recsys_cl.towers.text_encoder.load_text_encoder(mlflow.artifacts.download_artifacts(encoder_uri))``.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from pipelines.cli import (
    check_output_dir,
    check_output_file,
    configure_logging,
    exits_on_tracking_error,
    load_config_or_exit,
    log_encoder,
    parse_args,
    write_summary,
)
from recsys_cl.config import flatten
from recsys_cl.data.errors import DataError
from recsys_cl.eval.bootstrap import interval_metrics
from recsys_cl.pretrain.config import SimCSEConfig
from recsys_cl.pretrain.simcse import load_simcse_data, run_simcse
from recsys_cl.towers.text_encoder import freeze_lower_layers, load_text_encoder, max_positions
from recsys_cl.tracking import is_mlflow_uri, mlflow_run, resolve_model_dir, resolve_tracking_uri

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "pretrain" / "simcse.yaml"
log = logging.getLogger("pipelines.pretrain_simcse")


@exits_on_tracking_error
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv, "python -m pipelines.pretrain_simcse", __doc__, DEFAULT_CONFIG)
    check_output_file(args.summary_json)
    cfg = load_config_or_exit(args, SimCSEConfig)
    try:  # before the run opens: bad data or a bad model folder leaves no FAILED run behind
        data = load_simcse_data(cfg.data, cfg.eval)
    except DataError as e:
        raise SystemExit(f"data error: {e}") from None
    try:  # a full load (1-2 s): files that exist but do not load are refused here, not mid-run
        # an MLflow URI (runs:/<run_id>/encoder, as a run prints it) is fetched from tracking.uri's store
        path = cfg.model.path
        model_dir = resolve_model_dir(path, cfg.tracking) if path is not None and is_mlflow_uri(path) else None
        encoder, _ = load_text_encoder(model_dir or cfg.model.path)
    except FileNotFoundError as e:
        raise SystemExit(f"model error: {e}") from None
    limit = max_positions(encoder)
    if limit is not None and cfg.model.max_length > limit:
        raise SystemExit(f"config error: model.max_length={cfg.model.max_length} but the model at "
                         f"{model_dir or cfg.model.path or 'the packaged MiniLM'} reads at most {limit} tokens "
                         f"(its max_position_embeddings); set model.max_length to at most {limit}")
    if cfg.train.trainable_layers is not None:
        try:
            freeze_lower_layers(encoder, cfg.train.trainable_layers)  # on this throw-away copy
        except ValueError as e:
            raise SystemExit(f"config error: {e}") from None
    check_output_dir(cfg.train.out_dir, "train.out_dir")
    eval_movies = data.test if cfg.eval.split == "test" else data.validation
    run_name = cfg.tracking.run_name or f"simcse-tau{cfg.train.temperature}-lr{cfg.train.lr}-seed{cfg.train.seed}"
    with mlflow_run(cfg.tracking, run_name=run_name, tags={"pipeline": "pretrain_simcse"}) as run:
        run.log_params(flatten(dataclasses.asdict(cfg)))
        out_dir = Path(cfg.train.out_dir) / run.run_id / "encoder"
        result = run_simcse(cfg, data.texts, eval_movies, out_dir, on_epoch_end=run.on_epoch_end, model_dir=model_dir)
        run.log_metrics({
            **result["metrics"],
            **{f"baseline/{k}": v for k, v in result["baseline_metrics"].items()},
            f"chance/genre_recall@{cfg.eval.k}": result["chance_genre_recall"],
            **interval_metrics(f"delta/genre_recall@{cfg.eval.k}", result["genre_recall_delta"]),
            "seconds/train": result["seconds"]["train"],
        })
        sizes = {**data.sizes, **result["sizes"]}
        run.log_params({f"size/{k}": v for k, v in sizes.items()})
        run.set_tags({f"genre_recall_at_{cfg.eval.k}_verdict": result["genre_recall_verdict"]})
        logged = log_encoder(run, result, "SimCSE, held-out movies (texts without genres): cosine similarity of pairs",
                             f"**SimCSE** text encoder, {cfg.train.epochs} epochs; baseline: the encoder before "
                             f"SimCSE; metrics on the {cfg.eval.split} movies")
        summary = {
            **logged,  # run_id, encoder_uri, encoder_dir
            "eval_split": cfg.eval.split,
            "metrics": result["metrics"],
            "baseline_metrics": result["baseline_metrics"],
            "chance_genre_recall": result["chance_genre_recall"],
            "genre_recall_delta": result["genre_recall_delta"],
            "genre_recall_verdict": result["genre_recall_verdict"],
            "train_losses": result["losses"],
            "sizes": sizes,
            "seconds": result["seconds"],
        }
        run.log_dict(summary, "summary.json")
    write_summary(args.summary_json, summary)
    _print_summary(summary, resolve_tracking_uri(cfg.tracking))
    return summary


def _print_summary(summary: dict[str, Any], uri: str) -> None:
    print(f"\n{'metric (' + summary['eval_split'] + ')':>20s}  {'SimCSE':>8s}  {'before':>8s}")
    for k, v in summary["metrics"].items():
        print(f"{k:>20s}  {v:8.4f}  {summary['baseline_metrics'][k]:8.4f}")
    chance = summary["chance_genre_recall"]  # the same for both encoders: a column of its own would mislead
    print(f"{'  chance (random)':>20s}  {chance:8.4f}  {chance:8.4f}  genre_recall@10 of random neighbours")
    d = summary["genre_recall_delta"]
    print(f"genre_recall after - before: {d['delta']:+.4f}, 95% paired bootstrap over held-out movies "
          f"[{d['low']:+.4f}, {d['high']:+.4f}]")
    verdict = summary["genre_recall_verdict"]
    if verdict == "worse":
        print("verdict: SimCSE made genre neighbourhoods WORSE than the encoder before it (the whole interval is "
              "below 0); for the item tower the encoder before SimCSE is the better text encoder on this measure")
    elif verdict == "better":
        print("verdict: SimCSE improved genre neighbourhoods over the encoder before it "
              "(the whole interval is above 0)")
    else:
        print("verdict: no clear difference in genre neighbourhoods (the interval contains 0)")
    print(f"run: {summary['run_id']}   encoder: {summary['encoder_uri']}")
    print(f"open the UI:  mlflow ui --backend-store-uri {uri}")


if __name__ == "__main__":
    configure_logging()
    main(sys.argv[1:])
