"""Top-K candidates for every user active on a date, written as one atomic Parquet partition.

Examples:
    python -m pipelines.generate_candidates --date 2018-09-24
    python -m pipelines.generate_candidates --date 2018-09-24 --model models:/recsys_cl_two_tower/3 \\
        --index runs/index/recsys_cl_two_tower/v3 --set candidates.k=50
    python -m pipelines.generate_candidates --date 2018-09-24 --engine spark    # pip install -e '.[spark]'

Reads clicks up to the end of --date (UTC) only; a user is active with >= 1 click in the last
candidates.lookback_days days. Output: <candidates.output_dir>/dt=<date>/part-*.parquet + _SUCCESS
(user_id, item_id, rank, score, model_version, index_id; the ids keep the model's types, Int64 or
String). Without --index an exact index is built in memory from the model. An index built from
another model is refused.

--set candidates.fold_in=fit takes new items' (no training clicks) clicks up to --date into their
vectors, fitted under the training loss so they compete with trained items (sum: add their clickers'
vectors; none by default, see docs/content_and_cold_start.md).
A saved --index fixes the item vectors: the fold-in it was built with is served
(build_index --fold-in-until <date>), none if it was built without one.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from pipelines.cli import (
    HelpFormatter,
    Terminated,
    check_output_file,
    configure_logging,
    exit_stopped,
    exits_on_tracking_error,
    print_fold_in,
    print_model_after_run_date,
    print_short_lists,
    recall_text,
    shown_path,
    write_summary,
)
from recsys_cl.candidates import (
    CandidatesError,
    check_saved_index,
    fold_in_for_run,
    load_model,
    model_uri_for_run,
    open_index,
    parse_run_date,
    read_window,
    run,
)
from recsys_cl.config import CandidatesConfig, ConfigError, IndexConfig, RunConfig, load_config
from recsys_cl.data.errors import DataError
from recsys_cl.data.io import load_click_log
from recsys_cl.index.base import IndexLoadError, IndexMismatchError
from recsys_cl.io_atomic import OutputError, partition_name, read_success
from recsys_cl.tracking import AliasNotFoundError, mlflow_run

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "two_tower.yaml"
log = logging.getLogger("pipelines.generate_candidates")
INPUT_ERRORS = (AliasNotFoundError, CandidatesError, ConfigError, DataError, IndexLoadError, IndexMismatchError,
                OutputError)


CANDIDATE_KEYS = {
    "k": "candidates kept per user (seen items dropped)",
    "lookback_days": "active users: a click in the last this many days up to --date",
    "output_dir": "partitions land in <output_dir>/dt=<date>/",
    "index_dir": "a saved index (--index); null = built in memory from the model",
    "alias": "models:/<tracking.registered_model_name>@<alias> is served",
    "index_root": "one index per model version: <index_root>/<name>/v<version>",
    "min_overlap": "health: mean overlap@K with the previous partition (same model version)",
    "min_coverage": "health: share of the catalogue in at least one list",
    "min_served_share": "health: share of active users with at least one candidate",
    "min_ann_recall": "health: sampled recall@K of the index against exact search",
    "min_known_item_share": "health: share of window clicks on known items (generate_candidates: refused up front)",
    "max_new_item_share": "health: share of rows recommending items without training clicks",
}
"""What the ``candidates.*`` keys a ``--help`` lists (:func:`defaults_epilog`) do."""
INDEX_KEYS = {
    "backend": "auto builds exact, annoy and faiss and keeps the fastest that meets target_recall",
    "target_recall": "approximate backends are tuned until recall against exact search reaches this",
    "k": "tuned at recall@(k + the sampled users' median seen items)",
    "recall_sample_users": "users whose embeddings measure recall and queries/s",
    "output_dir": "where the index goes when --out is not given",
}
"""What the ``index.*`` keys ``build_index --help`` lists do."""


def defaults_epilog(*keys: str, section: str = "candidates") -> str:
    """The closing lines of a ``--help``: the defaults of the ``<section>.*`` ``keys`` (``candidates``
    or ``index``), read from the config dataclass (the default --config sets none of them)."""
    cls, about = (CandidatesConfig, CANDIDATE_KEYS) if section == "candidates" else (IndexConfig, INDEX_KEYS)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    shown = {key: f"{section}.{key}={'null' if defaults[key] is None else defaults[key]}" for key in keys}
    width = max(len(v) for v in shown.values())
    lines = [f"  {shown[key]:<{width}}  {about[key]}" for key in keys]
    return "defaults (change them with --set KEY=VALUE):\n" + "\n".join(lines)


def stopped_state(output_dir: str | Path | None, dt: str, run_id: str | None) -> str:
    """What a candidates job stopped by a signal leaves for ``dt``: nothing published, or (stopped
    after its swap, while logging) its partition, which carries this run's id in ``_SUCCESS``."""
    partition = None if output_dir is None else Path(output_dir) / partition_name(dt)
    done = read_success(partition) if partition is not None and run_id is not None else None
    if done is not None and done.get("mlflow_run_id") == run_id:
        return f"{partition} was published before the stop (its MLflow run {run_id} is marked FAILED)"
    return f"nothing published for dt={dt} (an earlier partition there is untouched); rerun the same command"


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--date", required=True, help="run date, YYYY-MM-DD (UTC)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG),
                   help=f"YAML run config (default: {shown_path(DEFAULT_CONFIG)})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set candidates.k=50 (repeatable)")
    p.add_argument("--engine", choices=["local", "spark"],
                   help="where users are scored: local (in this process, candidates.chunk_size users at a time) "
                        "or spark (mapInArrow on a Spark session, pip install -e '.[spark]'); "
                        "default: candidates.engine")
    p.add_argument("--summary-json", metavar="PATH", help="write the _SUCCESS manifest + run id to PATH")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.generate_candidates", description=__doc__,
                                epilog=defaults_epilog("k", "lookback_days", "output_dir", "index_dir", "alias"),
                                formatter_class=HelpFormatter)
    add_common_args(p)
    p.add_argument("--model", help="model URI or directory (default: candidates.model_uri; when null, the "
                                   "registry's models:/<tracking.registered_model_name>@<candidates.alias>, "
                                   "i.e. models:/recsys_cl_two_tower@champion)")
    p.add_argument("--index", help="index directory from pipelines.build_index (default: candidates.index_dir)")
    p.add_argument("--backend", choices=["exact", "annoy", "faiss", "auto"],
                   help="backend of the index built in memory (default: candidates.backend); with --index, "
                        "the saved index must be of this backend when the flag is given, and is served "
                        "whatever its backend when it is not (candidates.backend is not checked)")
    return p.parse_args(argv)


def load_run_config(args: argparse.Namespace, **flags: Any) -> RunConfig:
    cfg = load_config(args.config, RunConfig, overrides=args.set)
    changes = {k: v for k, v in flags.items() if v is not None}
    if changes:
        cfg = dataclasses.replace(cfg, candidates=dataclasses.replace(cfg.candidates, **changes))
    return cfg


@exits_on_tracking_error
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    check_output_file(args.summary_json)
    output_dir, run_id = None, None
    try:
        run_date = parse_run_date(args.date)
        cfg = load_run_config(args, engine=args.engine, backend=args.backend,
                              model_uri=args.model, index_dir=args.index)
        c = cfg.candidates
        output_dir = c.output_dir
        if c.index_dir is not None:  # a missing index or another backend fails before anything is read
            check_saved_index(c.index_dir, args.backend or "auto")
        loaded = load_model(model_uri_for_run(c.model_uri, c.alias, cfg.tracking, c.fallback_to_latest),
                            cfg.tracking)
        clicks = load_click_log(cfg.data).clicks
        # no active user, foreign ids, mostly unknown items: fail here, before any work
        read = read_window(clicks, loaded.spec, run_date, c.lookback_days, c.min_known_item_share)
        if c.fold_in != "none" or c.index_dir is not None:  # new items' clicks so far, or the saved index's
            loaded = fold_in_for_run(loaded, clicks, run_date, c.lookback_days, c.fold_in, c.index_dir,
                                     c.fold_in_max_clicks)
        # a wrong, corrupt or foreign saved index fails here too, before a (FAILED) MLflow run is opened
        opened = None if c.index_dir is None else open_index(c.index_dir, loaded, args.backend or "auto")
        with mlflow_run(cfg.tracking.for_serving(), run_name=f"candidates-{run_date}",
                        tags={"job": "candidates", "date": str(run_date), "engine": c.engine,
                              "model_uri": loaded.model_uri,
                              "model_run_id": loaded.provenance.get("model_run_id")}) as tracker:
            run_id = tracker.run_id
            tracker.log_params(candidate_params(c, saved_index=c.index_dir is not None, by_alias=c.model_uri is None))
            result = run(c, clicks, loaded, run_date, index_dir=c.index_dir,
                         extra_manifest={"mlflow_run_id": tracker.run_id}, index_backend=args.backend or "auto",
                         opened=opened, read=read)
            log_result(tracker, result.manifest)
    except INPUT_ERRORS as e:
        raise SystemExit(f"{'config' if isinstance(e, ConfigError) else 'candidates'} error: {e}") from None
    except (Terminated, KeyboardInterrupt) as e:  # the run is FAILED and the temp partition gone by now
        exit_stopped(e, stopped_state(output_dir, args.date, run_id))
    summary = {**result.manifest, "partition": str(result.partition)}
    write_summary(args.summary_json, summary)
    print(f"candidates: {result.partition}  ({summary['rows']} rows for {summary['users_served']} of "
          f"{summary['users_active']} active users, backend {summary['backend']}, {recall_text(summary)}, "
          f"{summary['users_per_s']:,.0f} users/s)")
    print_fold_in(summary.get("fold_in"), summary.get("new_item_share"))
    print_model_after_run_date(summary)
    print_short_lists(summary)
    print(f"run: {summary['mlflow_run_id']}  (experiment {cfg.tracking.for_serving().experiment})")
    return summary


def candidate_params(c: Any, saved_index: bool, by_alias: bool) -> dict[str, Any]:
    """``candidates.*`` as MLflow params, less those the job did not use, which would say it served
    what it did not. A saved index is served with its own backend (the tag ``backend``), so
    ``candidates.backend``, which only picks the in-memory build, is left out then. A model found by
    its alias (``by_alias``: nightly, or no ``candidates.model_uri``) leaves out ``model_uri``; a
    model given by URI leaves out ``alias`` and ``fallback_to_latest`` (a ``--model`` run logged
    ``candidates.alias=champion`` beside the version it was given)."""
    unused = {"backend"} if saved_index else set()
    unused |= {"model_uri"} if by_alias else {"alias", "fallback_to_latest"}
    return {f"candidates.{k}": v for k, v in dataclasses.asdict(c).items() if k not in unused}


def log_result(tracker: Any, manifest: dict) -> None:
    tracker.set_tags({"backend": manifest["backend"], "model_version": manifest["model_version"],
                      "index_id": manifest["index_id"],
                      "model_trained_until": manifest.get("model_trained_until"),
                      "spark_master": (manifest.get("engine_info") or {}).get("master")})
    tracker.log_metrics({
        "rows": manifest["rows"], "users_active": manifest["users_active"],
        "users_served": manifest["users_served"], "served_share": manifest["served_share"],
        "catalogue_coverage": manifest["catalogue_coverage"], "users_per_s": manifest["users_per_s"],
        "new_item_share": manifest["new_item_share"], "short_lists": manifest["short_lists"],
        "ann_recall_at_k": manifest["ann_recall"]["recall_at_k"],
        **{f"time/{k}": v for k, v in manifest["timings"].items()},
        **{f"fold_in/{k}": v for k, v in (manifest.get("fold_in") or {}).items()
           if k in ("clicks", "items", "window_clicks", "fit_clicks")},
    })
    tracker.log_dict(manifest, "candidates_manifest.json")


if __name__ == "__main__":
    configure_logging()
    main(sys.argv[1:])
