"""Build the item ANN index of a trained two-tower model and log it to MLflow.

Examples:
    python -m pipelines.build_index --model models:/recsys_cl_two_tower@champion
    python -m pipelines.build_index --model models:/recsys_cl_two_tower/3 --set index.backend=annoy \\
        --set index.n_trees=50 --out runs/index/v3
    python -m pipelines.build_index --model runs:/<run_id>/model --set index.backend=exact
    python -m pipelines.build_index --model models:/recsys_cl_two_tower@champion --fold-in-until 2018-09-24

Runs the item tower over every item of the model's catalogue, builds ``index.backend``
(exact | annoy | faiss | auto), tunes Annoy's search_k / faiss's nprobe until recall@``index.k``
against exact search (at index.k + the sampled users' median number of seen items, the depth the
candidate job fetches) reaches ``index.target_recall`` on a sample of real user embeddings, and writes
the index directory (backend files + manifest.json) atomically. ``auto`` keeps the fastest backend
meeting the target; the manifest says what it chose and why.

The output directory is replaced whole, so it must be absent, empty or an earlier index (an index
manifest.json and its backend's files, nothing else); anything else is refused before any work and
left untouched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from pipelines.cli import (
    base_parser,
    check_output_file,
    configure_logging,
    exits_on_tracking_error,
    load_config_or_exit,
    print_fold_in,
    write_summary,
)
from pipelines.generate_candidates import defaults_epilog
from recsys_cl.candidates import CandidatesError, Window, clicks_up_to, parse_run_date
from recsys_cl.config import RunConfig
from recsys_cl.data.errors import DataError
from recsys_cl.data.io import load_click_log
from recsys_cl.index.build import ModelNotFoundError, build_index_for_model, check_replaceable, log_index
from recsys_cl.io_atomic import OutputError

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "two_tower.yaml"
log = logging.getLogger("pipelines.build_index")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = base_parser("python -m pipelines.build_index", __doc__, DEFAULT_CONFIG,
                    "write the manifest and run id to PATH", "index.backend=annoy")
    p.epilog = defaults_epilog("backend", "target_recall", "k", "recall_sample_users", "output_dir", section="index")
    p.add_argument("--model", required=True,
                   help="model directory, runs:/<id>/model, models:/<name>/<version> or models:/<name>@<alias>")
    p.add_argument("--out", help="index directory: new, empty or an index to replace "
                                 "(default: index.output_dir from the config, runs/index/latest)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    p.add_argument("--fold-in-until", metavar="YYYY-MM-DD",
                   help="take the clicks up to this date (data.* click log) on items without training clicks into "
                        "their vectors, as generate_candidates --date does with candidates.fold_in (default: none)")
    p.add_argument("--fold-in", choices=["fit", "sum"],
                   help="with --fold-in-until: fit the new items' vectors to the active-user window's clicks under "
                        "the training loss (default), or sum their clickers' vectors")
    return p.parse_args(argv)


@exits_on_tracking_error
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    check_output_file(args.summary_json)
    cfg = load_config_or_exit(args, RunConfig, set_threads=False)
    if args.out:  # the logged params say where the index went
        cfg = dataclasses.replace(cfg, index=dataclasses.replace(cfg.index, output_dir=args.out))
    out = Path(cfg.index.output_dir)
    try:
        check_replaceable(out)  # before the click log is read for --fold-in-until
        fold_in = None
        if args.fold_in and not args.fold_in_until:
            raise SystemExit(f"config error: --fold-in {args.fold_in} needs --fold-in-until YYYY-MM-DD (the date "
                             "whose clicks to take in)")
        if args.fold_in_until:  # the same clicks generate_candidates folds in for that date
            until = parse_run_date(args.fold_in_until, "--fold-in-until")
            fold_in = (clicks_up_to(load_click_log(cfg.data).clicks, until), str(until),
                       Window(until, cfg.candidates.lookback_days).start, args.fold_in or "fit")
        build = build_index_for_model(args.model, cfg.index, out, cfg.tracking, fold_in=fold_in,
                                      fold_in_max_clicks=cfg.candidates.fold_in_max_clicks,
                                      max_extra_fetch=cfg.candidates.max_extra_fetch)
    except (ModelNotFoundError, ImportError, OutputError, CandidatesError, DataError) as e:
        raise SystemExit(f"index error: {e}") from None
    run_id = None if args.no_mlflow else log_index(build, cfg.tracking, cfg.index)
    m = build.manifest
    summary = {"index_dir": str(build.directory), "run_id": run_id, "manifest": json.loads(m.to_json())}
    write_summary(args.summary_json, summary)
    print(f"\nindex: {build.directory}   backend: {m.backend} {m.params}")
    print(f"items: {m.item_count}   dim: {m.embedding_dim}   model: {m.model_uri} (version {m.model_version})")
    if m.recall_at_k is not None:
        extra = (m.recall_k or 0) - min(cfg.index.k, m.item_count)
        depth = (f" (index.k {cfg.index.k} + median {extra} seen items: the depth the candidate job fetches "
                 "before dropping them)") if extra > 0 else ""
        print(f"recall@{m.recall_k} vs exact: {m.recall_at_k:.3f} on {m.recall_sample_size} {m.recall_sample_source}"
              f"{depth}   queries/s: {m.queries_per_s:,.0f} (exact {m.exact_queries_per_s:,.0f})")
    print(f"why: {m.chosen_reason}")
    print_fold_in(m.fold_in)
    if run_id:
        print(f"run: {run_id}  (experiment {cfg.tracking.for_serving().experiment})")
    return summary


if __name__ == "__main__":
    configure_logging()
    main(sys.argv[1:])
