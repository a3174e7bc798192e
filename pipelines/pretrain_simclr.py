"""SimCLR pretraining of the image encoder on Fashion-MNIST, evaluated against its random init, logged to MLflow.

Examples:
    python -m pipelines.pretrain_simclr --summary-json runs/simclr_summary.json
    python -m pipelines.pretrain_simclr --set train.epochs=2 --set data.train_size=5000
    python -m pipelines.pretrain_simclr --set data.path=<folder of IDX .gz files> --set tracking.uri=sqlite:///a.db

Data: the Fashion-MNIST IDX files in data.path (default data/fashion-mnist, bundled with recsys_cl,
relative to the current directory). The default config (pipelines/configs/pretrain/simclr.yaml:
10,000 images, 4 epochs) takes about 2 minutes with --set train.num_threads=1 on 2 cores.

Every config key can be overridden with --set section.key=value (YAML syntax for the value, e.g.
--set 'model.widths=[32,64,128]'). Unknown keys are rejected with their full name. The main ones
(defaults from that file): data.path, data.train_size (10000; 0 = all 60,000), train.epochs (4),
train.batch_size (256), train.num_threads (2; 0 = torch's default), train.out_dir (runs/simclr),
eval.probe_train_size (5000), eval.test_size (2000), tracking.experiment (recsys_cl_simclr),
tracking.uri (null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory).
A quick try: --set train.epochs=1 --set data.train_size=1000 --set eval.probe_train_size=500
--set eval.test_size=500.

The summary (--summary-json) is {"run_id", "encoder_uri", "metrics": {"linear_probe_acc",
"knn_recall@10"}, "baseline_metrics": {same keys, for the randomly initialised encoder}, "deltas":
{same keys: SimCLR - random init with a 95% paired bootstrap over the test images and a verdict,
better | worse | no clear difference}, ...}. The run also logs plots/similarities.png (cosine
similarity of same-class vs different-class test image pairs, random init vs SimCLR). The encoder
(state dict + config, no projection head) is the run's artifact ``encoder/``: load it with
``recsys_cl.pretrain.simclr.load_encoder(mlflow.artifacts.download_artifacts(encoder_uri))``.
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
from recsys_cl.config import ConfigError, flatten
from recsys_cl.data.errors import DataError
from recsys_cl.data.fashion_mnist import load_fashion_mnist
from recsys_cl.eval.bootstrap import interval_metrics
from recsys_cl.pretrain.config import SimCLRConfig
from recsys_cl.pretrain.simclr import check_sizes, run_simclr
from recsys_cl.tracking import mlflow_run, resolve_tracking_uri

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "pretrain" / "simclr.yaml"
log = logging.getLogger("pipelines.pretrain_simclr")


@exits_on_tracking_error
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv, "python -m pipelines.pretrain_simclr", __doc__, DEFAULT_CONFIG)
    check_output_file(args.summary_json)
    cfg = load_config_or_exit(args, SimCLRConfig)
    h, w = cfg.data.image_size  # validated as [H, W] by the config
    size = (h, w)
    try:  # before the run opens: bad data leaves no FAILED run behind
        train_x, train_y = load_fashion_mnist(cfg.data.path, "train", size)
        test_x, test_y = load_fashion_mnist(cfg.data.path, "test", size)
    except DataError as e:
        raise SystemExit(f"data error: {e}") from None
    try:
        for warning in check_sizes(cfg, len(train_x), len(test_x), int(train_x.shape[1]), train_y):
            log.warning(warning)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    check_output_dir(cfg.train.out_dir, "train.out_dir")
    run_name = cfg.tracking.run_name or f"simclr-tau{cfg.train.temperature}-seed{cfg.train.seed}"
    with mlflow_run(cfg.tracking, run_name=run_name, tags={"pipeline": "pretrain_simclr"}) as run:
        run.log_params(flatten(dataclasses.asdict(cfg)))
        out_dir = Path(cfg.train.out_dir) / run.run_id / "encoder"
        result = run_simclr(cfg, train_x, train_y, test_x, test_y, out_dir, on_epoch_end=run.on_epoch_end)
        run.log_metrics({**result["metrics"], **{f"baseline/{k}": v for k, v in result["baseline_metrics"].items()}})
        for name, d in result["deltas"].items():
            run.log_metrics(interval_metrics(f"delta/{name}", d))
        run.set_tags({f"{name.replace('@', '_at_')}_verdict": d["verdict"] for name, d in result["deltas"].items()})
        run.log_params({f"size/{k}": v for k, v in result["sizes"].items()})
        logged = log_encoder(run, result, "SimCLR, test images: cosine similarity of random pairs",
                             f"**SimCLR** image encoder, {cfg.train.epochs} epochs on `{cfg.data.path}`; baseline: "
                             "the same encoder at its random init")
        summary = {
            **logged,  # run_id, encoder_uri, encoder_dir
            "metrics": result["metrics"],
            "baseline_metrics": result["baseline_metrics"],
            "deltas": result["deltas"],
            "train_losses": result["losses"],
            "sizes": result["sizes"],
        }
        run.log_dict(summary, "summary.json")
    write_summary(args.summary_json, summary)
    _print_summary(summary, resolve_tracking_uri(cfg.tracking))
    return summary


def _print_summary(summary: dict[str, Any], uri: str) -> None:
    print(f"\n{'metric':>18s}  {'SimCLR':>8s}  {'random init':>11s}")
    for k, v in summary["metrics"].items():
        print(f"{k:>18s}  {v:8.4f}  {summary['baseline_metrics'][k]:11.4f}")
    for k, d in summary["deltas"].items():
        print(f"{k} SimCLR - random init: {d['delta']:+.4f}, 95% paired bootstrap over test images "
              f"[{d['low']:+.4f}, {d['high']:+.4f}]: {d['verdict']}")
    print(f"run: {summary['run_id']}   encoder: {summary['encoder_uri']}")
    print(f"open the UI:  mlflow ui --backend-store-uri {uri}")


if __name__ == "__main__":
    configure_logging()
    main(sys.argv[1:])
