"""Evaluate Popularity / ItemKNN / EASE (and ALS / BPR from the `implicit` package, the `baselines`
extra: pip install -e '.[baselines]') under exactly the split and protocol of the two-tower run, each
logged as its own MLflow run in the same experiment.

Examples:
    python -m pipelines.evaluate_baselines
    python -m pipelines.evaluate_baselines --set 'baselines.models=[popularity,ease,als]' \\
        --summary-json runs/baselines.json

Hyperparameters (EASE lambda, ItemKNN k) are chosen on validation NDCG@10, never on test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.cli import base_parser, check_output_file, configure_logging, exits_on_tracking_error, write_summary
from recsys_cl.config import ConfigError, RunConfig, load_config
from recsys_cl.data.errors import DataError
from recsys_cl.experiment import prepare, require_warm_split, run_baseline
from recsys_cl.tracking import mlflow_run, resolve_tracking_uri

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "two_tower.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = base_parser("python -m pipelines.evaluate_baselines", __doc__, DEFAULT_CONFIG,
                    "write a list of per-baseline summaries", "'baselines.models=[ease]'")
    return p.parse_args(argv)


@exits_on_tracking_error
def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    check_output_file(args.summary_json)
    try:
        cfg = load_config(args.config, RunConfig, overrides=args.set)
        if not cfg.baselines.models:
            raise ConfigError("baselines.models is empty: nothing to evaluate; name some, e.g. "
                              "--set 'baselines.models=[popularity,ease]'")
        prep = prepare(cfg, content=False)  # baselines read clicks only: no item_tower content to build or check
        for name in cfg.baselines.models:
            require_warm_split(name, prep)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    except DataError as e:
        raise SystemExit(f"data error: {e}") from None
    summaries = []
    for name in cfg.baselines.models:
        with mlflow_run(cfg.tracking, run_name=f"baseline-{name}") as run:
            summaries.append(run_baseline(name, cfg, prep, run))
        m = summaries[-1]["test_metrics"]
        print(f"{name:>10s} {summaries[-1]['params']}: recall@20 {m['recall@20']:.4f} "
              f"ndcg@20 {m['ndcg@20']:.4f}")
    write_summary(args.summary_json, summaries)
    print(f"protocol: {prep.protocol}\nopen the UI:  mlflow ui --backend-store-uri "
          f"{resolve_tracking_uri(cfg.tracking)}")
    return summaries


if __name__ == "__main__":
    configure_logging()
    main(sys.argv[1:])
