"""The one command a scheduler calls each night: champion model -> index (if new) -> candidates -> health.

Examples:
    python -m pipelines.nightly --date 2018-09-24
    python -m pipelines.nightly --date 2018-09-24 --engine spark --set candidates.alias=challenger

1. Resolve ``models:/<tracking.registered_model_name>@<candidates.alias>`` (default ``champion``).
   A missing alias fails with the command that sets it
   (``MlflowClient().set_registered_model_alias(name, "champion", version)``), unless
   ``candidates.fallback_to_latest=true`` (then: a warning and the latest version).
2. Reuse ``<candidates.index_root>/<name>/v<version>`` when it exists and matches the model;
   otherwise build it (``recsys_cl.index.build``, settings under ``index.*``) and log it to MLflow.
   So the index is rebuilt when the model version changes, and, with ``candidates.fold_in`` fit or
   sum (default none), when items without training clicks got new clicks: those clicks are folded into
   their vectors (``recsys_cl.towers.fold_in``), so a new item is served from who clicked it.
3. Generate the date's candidates (same code as pipelines.generate_candidates).
4. Health against the previous published partition: overlap@K per user (checked only when the
   model version is unchanged), catalogue coverage, share of active users served, sampled ANN
   recall, share of the window's clicks on items the model knows, a click on the run date itself
   (else the click log is late), share of rows on items without training clicks (at most
   candidates.max_new_item_share). A crossed threshold (candidates.min_* / max_*) publishes
   nothing, keeps the previous partitions, marks the MLflow run FAILED and exits non-zero
   (--publish-unhealthy publishes anyway, still exiting non-zero).
"""

from __future__ import annotations

import argparse
import contextlib
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
    overlap_text,
    print_fold_in,
    print_model_after_run_date,
    print_short_lists,
    recall_text,
    write_summary,
)
from pipelines.generate_candidates import (
    INPUT_ERRORS,
    add_common_args,
    candidate_params,
    defaults_epilog,
    load_run_config,
    log_result,
    stopped_state,
)
from recsys_cl.candidates import (
    HealthCheckError,
    build_index_for_loaded,
    fold_in_new_clicks,
    health_check,
    load_model,
    open_index,
    parse_run_date,
    previous_partition,
    read_window,
    run,
)
from recsys_cl.config import ConfigError
from recsys_cl.data.io import load_click_log
from recsys_cl.index.base import (
    MANIFEST_FILE,
    IndexLoadError,
    IndexMismatchError,
    without_rebuild_hint,
)
from recsys_cl.io_atomic import held_lock
from recsys_cl.tracking import mlflow_run, resolve_model_alias

log = logging.getLogger("pipelines.nightly")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.nightly", description=__doc__,
                                epilog=defaults_epilog("k", "lookback_days", "output_dir", "index_root", "alias",
                                                       "min_overlap", "min_coverage", "min_served_share",
                                                       "min_ann_recall", "min_known_item_share",
                                                       "max_new_item_share"),
                                formatter_class=HelpFormatter)
    add_common_args(p)
    p.add_argument("--publish-unhealthy", action="store_true",
                   help="publish the partition even when a health threshold is crossed (still exits 1)")
    return p.parse_args(argv)


def ensure_index(
    cfg: Any, model: dict[str, Any], loaded: Any, clicks: Any = None, users: Any = None,
) -> tuple[Path, bool, tuple[Any, str, str]]:
    """The index of this model version, built only when missing or not matching ``loaded``, from
    ``loaded``'s own item vectors (which may hold new items' clicks, its ``fold_in``: the index is
    then rebuilt whenever those clicks changed), and loaded: ``(directory, rebuilt, open_index(...))``.
    Nothing is embedded or folded in again. ``clicks``: the job's clicks, for the build's recall
    queries (None: the model's own click log is read); ``users``: the night's active users, whom
    those queries are drawn from (they are who gets candidates, and have often seen more than the
    median user)."""
    from recsys_cl.index.build import log_index

    directory = index_dir_for(cfg, model)
    try:
        opened = open_index(directory, loaded)  # manifest against the model, then files against the manifest
        log.info("model version %s unchanged: reusing index %s", model["model_version"], directory)
        return directory, False, opened
    except (IndexLoadError, IndexMismatchError) as e:
        why = without_rebuild_hint(str(e)).split(". Fix: ")[0]  # the problem, not the manual fix
        log.info("building the index for %s (%s)", model["uri"], why)
    index_cfg = dataclasses.replace(cfg.index, k=cfg.candidates.k)
    build = build_index_for_loaded(loaded, index_cfg, directory, clicks, cfg.candidates.max_extra_fetch, users)
    log_index(build, cfg.tracking, index_cfg)
    return directory, True, open_index(directory, loaded)


def holds_index_while_serving(c: Any) -> bool:
    """Whether a job keeps its index's lock until it ends, not only while it checks, builds and
    loads the index: a Spark job ships the index folder when its Spark job starts, and with fold-in
    (``candidates.fold_in`` fit or sum) another night's job may replace that folder with its own
    date's index meanwhile. A local job has loaded its own copy by then, so its nights overlap."""
    return bool(c.engine == "spark" and c.fold_in != "none")


def index_dir_for(cfg: Any, model: dict[str, Any]) -> Path:
    """``<candidates.index_root>/<name>/v<version>``: where nightly keeps the index of a model version."""
    return Path(cfg.candidates.index_root) / str(model["model_name"]) / f"v{model['model_version']}"


def index_lock_for(cfg: Any, model: dict[str, Any]) -> Path:
    """``<candidates.index_root>/<name>/.v<version>.lock``, beside the version's index folder."""
    directory = index_dir_for(cfg, model)
    return directory.parent / f".{directory.name}.lock"


def check_index_dir(directory: Path) -> None:
    """Refuse, before any work, a per-version index folder that a build could not write or must not
    replace (:func:`recsys_cl.index.build.check_replaceable`), naming nightly's own setting.

    Raises:
        OutputError: naming what is there and how to fix it.
    """
    from recsys_cl.index.build import check_replaceable

    check_replaceable(directory, fix=(
        f"nightly keeps each model version's index in <candidates.index_root>/<name>/v<version>, so set "
        f"candidates.index_root to another folder, or move what is in {directory} away"
    ), writable=not (directory / MANIFEST_FILE).is_file())  # an index there may be reused read-only


@exits_on_tracking_error
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    check_output_file(args.summary_json)
    health: dict[str, Any] = {}
    output_dir, run_id = None, None
    try:
        run_date = parse_run_date(args.date)
        cfg = load_run_config(args, engine=args.engine)
        c = cfg.candidates
        output_dir = c.output_dir
        name = cfg.tracking.registered_model_name
        if not name:
            raise SystemExit("nightly error: tracking.registered_model_name is null; name the registered model")
        model = resolve_model_alias(name, c.alias, cfg.tracking, c.fallback_to_latest)
        check_index_dir(index_dir_for(cfg, model))  # a bad candidates.index_root fails before any work
        clicks = load_click_log(cfg.data).clicks
        loaded = load_model(str(model["uri"]), cfg.tracking)
        read = read_window(clicks, loaded.spec, run_date, c.lookback_days)  # no active user, foreign ids: fail here
        if c.fold_in != "none":  # new items' clicks so far, into their vectors (and the index's)
            loaded = fold_in_new_clicks(loaded, read.history, str(run_date), read.window.start, c.fold_in,
                                        c.fold_in_max_clicks)
        # One job at a time checks, (re)builds and loads a version's index: with fold-in the index
        # depends on the date, and parallel nights (a backfill) would replace it under each other.
        # Once loaded, a local job serves its own copy (Annoy files stay mapped when replaced); a
        # Spark job ships the folder when its Spark job starts, so with fold-in it keeps the lock
        # until it ends (its nights take turns).
        lock = index_lock_for(cfg, model)
        lock.parent.mkdir(parents=True, exist_ok=True)  # <index_root>/<name>, as the build would make it
        with contextlib.ExitStack() as serving:
            with contextlib.ExitStack() as building:
                building.enter_context(held_lock(lock, f"the index of {model['uri']}"))
                index_dir, rebuilt, opened = ensure_index(cfg, model, loaded, read.history, read.users)
                if holds_index_while_serving(c):
                    serving.enter_context(building.pop_all())  # released when the job ends
            previous = previous_partition(c.output_dir, run_date)

            def validate(tmp: Path, manifest: dict[str, Any]) -> None:
                figures, failures = health_check(tmp, manifest, c, previous)
                health.update(figures, failures=failures)
                manifest["health"] = health
                if failures and not args.publish_unhealthy:
                    raise HealthCheckError(failures, health)

            with mlflow_run(cfg.tracking.for_serving(), run_name=f"nightly-{run_date}",
                            tags={"job": "nightly", "date": str(run_date), "alias": c.alias,
                                  "model_version": model["model_version"], "model_run_id": model["model_run_id"],
                                  "index_rebuilt": rebuilt,
                                  "alias_fell_back": model["fell_back"]}) as tracker:
                run_id = tracker.run_id
                # the per-version index; the model of the alias, never candidates.model_uri
                tracker.log_params(candidate_params(c, saved_index=True, by_alias=True))
                try:
                    result = run(c, clicks, loaded, run_date, index_dir=index_dir, validate=validate,
                                 extra_manifest={"mlflow_run_id": tracker.run_id, "index_rebuilt": rebuilt}, read=read,
                                 opened=opened)
                finally:
                    log_health(tracker, health)
                log_result(tracker, result.manifest)
    except HealthCheckError as e:
        raise SystemExit(
            f"nightly health check FAILED for {args.date}: {e}. Nothing was published; earlier partitions "
            "are untouched. Investigate, or rerun with --publish-unhealthy."
        ) from None
    except INPUT_ERRORS as e:
        raise SystemExit(f"{'config' if isinstance(e, ConfigError) else 'nightly'} error: {e}") from None
    except (Terminated, KeyboardInterrupt) as e:  # the run is FAILED and the temp partition gone by now
        exit_stopped(e, stopped_state(output_dir, args.date, run_id))
    summary = {**result.manifest, "partition": str(result.partition)}
    write_summary(args.summary_json, summary)
    print(f"nightly {run_date}: model {model['uri']} (index {'rebuilt' if rebuilt else 'reused'}: {index_dir})")
    print(f"candidates: {result.partition}  ({summary['rows']} rows, {summary['users_served']}/"
          f"{summary['users_active']} users, {recall_text(summary)}, {overlap_text(health)})")
    print_fold_in(summary.get("fold_in"), summary.get("new_item_share"))
    print_model_after_run_date(summary)
    print_short_lists(summary)
    print(f"run: {summary['mlflow_run_id']}  (experiment {cfg.tracking.for_serving().experiment})")
    if health.get("failures"):
        raise SystemExit("nightly health check FAILED (published anyway): " + "; ".join(health["failures"]))
    return summary


def log_health(tracker: Any, health: dict[str, Any]) -> None:
    if not health:
        return
    numbers = {f"health/{k}": float(v) for k, v in health.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tracker.log_metrics(numbers)
    tracker.set_tags({"health": "FAILED" if health.get("failures") else "ok"})
    tracker.log_dict(health, "health.json")


if __name__ == "__main__":
    configure_logging()
    main(sys.argv[1:])
