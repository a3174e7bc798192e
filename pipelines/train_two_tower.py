"""Train user/item towers contrastively on a click log, evaluate under a named protocol, log to MLflow.

Examples:
    python -m pipelines.train_two_tower                      # bundled MovieLens latest-small
    python -m pipelines.train_two_tower --config pipelines/configs/two_tower.yaml \\
        --set train.epochs=3 --set loss.kind=debiased --summary-json runs/summary.json
    python -m pipelines.train_two_tower --set data.path=/data/ml-1m     # MovieLens 1M folder
    python -m pipelines.train_two_tower --set tracking.set_alias=champion
        (registers the model as always and points the registry alias champion at the new version:
        what build_index --model models:/recsys_cl_two_tower@champion and the nightly job serve)

Content and cold start (items never clicked in training are ranked from their text):
    python -m pipelines.train_two_tower --set split.kind=cold_start --set 'item_tower.encoders=[id,text]' \\
        --set item_tower.text.pretrained=runs:/<simcse_run_id>/encoder
    (test metrics on the cold items next to Popularity and random on the same targets, and model -
    Popularity Recall@20 with a 95% paired bootstrap interval over the test users; the run's
    tracking.uri is where runs:/ URIs are looked up)
    Images: 'item_tower.encoders=[id,image]' with item_tower.image.pretrained=runs:/<simclr_run_id>/encoder
    on an item table with an image column; python -m pipelines.make_fashion_clicks writes one (a
    semi-synthetic log over Fashion-MNIST) and prints the full command.

New items ranked together with trained ones, as the served index ranks them:
    python -m pipelines.train_two_tower --set split.kind=temporal --set eval.catalogue=all_items \\
        --set item_tower.fold_in_method=fit
    (test metrics over every item of the item table, the share of new items in the top 20, and the
    same model with the new items' clicks before the test period fitted in, paired against it)

Several processes (DistributedDataParallel; in-batch negatives are the global batch, whose size is
train.batch_size whatever the number of processes; rank 0 logs and checkpoints):
    torchrun --standalone --nproc_per_node=2 -m pipelines.train_two_tower --set train.num_threads=1

Every config key can be overridden with --set section.key=value (YAML syntax for the value, e.g.
--set 'item_tower.encoders=[id]'). Unknown keys are rejected with their full name. A run killed
mid-training resumes from its last epoch, into the same MLflow run, when rerun with the same config
on the same data (train.resume=true); a changed config, click log, item table or content encoder
(even retrained into the same folder) starts a new run. While a run trains it holds its checkpoint
(a lock file beside it): the same command started again meanwhile stops at once, naming the running
process.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from pipelines.cli import (
    Terminated,
    base_parser,
    check_output_file,
    check_training_dirs,
    configure_logging,
    exit_stopped,
    exits_on_tracking_error,
    load_config_or_exit,
    write_summary,
)
from recsys_cl.config import ConfigError, RunConfig
from recsys_cl.data.errors import DataError
from recsys_cl.experiment import (
    NullReporter,
    check_run_config,
    lock_checkpoint,
    logq_tag,
    negatives_tag,
    prepare,
    resumable_run_id,
    run_two_tower,
)
from recsys_cl.tracking import mlflow_run, resolve_tracking_uri
from recsys_cl.train.checkpoint import CheckpointError
from recsys_cl.utils import dist

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "two_tower.yaml"
log = logging.getLogger("pipelines.train_two_tower")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = base_parser("python -m pipelines.train_two_tower", __doc__, DEFAULT_CONFIG,
                    "write {run_id, model_uri, protocol, test_metrics, ...} to PATH", "loss.temperature=0.05")
    return p.parse_args(argv)


@exits_on_tracking_error
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    check_output_file(args.summary_json)
    cfg = load_config_or_exit(args, RunConfig, set_threads=False)  # train.num_threads: set by fit
    check_training_dirs([cfg])  # checkpoint_dir, cache_dir: else found after the first epoch / the encoder
    for warning in cfg.unused_settings():
        log.warning(warning)
    # the model-kind tags (loss_kind, logq, negatives) and the seed: runs with other negatives had one name
    run_name = cfg.tracking.run_name or (f"two_tower-{cfg.loss.kind}-logq_{logq_tag(cfg)}-{negatives_tag(cfg)}"
                                         f"-seed{cfg.train.seed}")
    distributed = dist.init_from_env()  # torchrun sets RANK / WORLD_SIZE; otherwise one process
    is_main = dist.is_main()
    if not is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        try:  # before the run opens: bad data leaves no FAILED run behind
            prep = check_run_config(cfg, prepare(cfg, content=False))  # before any (users, L) or (B, B + N) array
        except DataError as e:
            raise SystemExit(f"data error: {e}") from None
        except ConfigError as e:
            raise SystemExit(f"config error: {e}") from None
        if is_main:
            with contextlib.ExitStack() as held:
                try:  # held until the run ends: a second launch of this config must not resume it meanwhile
                    held.enter_context(lock_checkpoint(cfg, prep.resume_fingerprint))
                    run_id = resumable_run_id(cfg, prep.resume_fingerprint)
                except CheckpointError as e:
                    raise SystemExit(f"checkpoint error: {e}") from None
                try:
                    with mlflow_run(cfg.tracking, run_name=run_name, run_id=run_id) as run:
                        summary = run_two_tower(cfg, run, prep)
                except Terminated as e:  # SIGTERM or Ctrl-C (exits_on_tracking_error); the run is FAILED by now
                    exit_stopped(e, "the MLflow run is marked FAILED; rerun the same command to continue it from its "
                                    f"last finished epoch (checkpoints in {cfg.train.checkpoint_dir})")
        else:  # only rank 0 talks to MLflow and writes files
            summary = run_two_tower(cfg, NullReporter(), prep)
    finally:
        if distributed:
            dist.destroy()
    if not is_main:
        return summary
    write_summary(args.summary_json, summary)
    _print_summary(summary, resolve_tracking_uri(cfg.tracking))
    return summary


def _number(key: str, value: float) -> str:
    """Counts (``n_users``, ``head_targets/n_users``, ``head_items/n``) as integers, metrics to 4 decimals."""
    count = key.rsplit("/", 1)[-1]
    return f"{value:.0f}" if (count == "n" or count.startswith("n_")) and value == value else f"{value:.4f}"


def _print_summary(summary: dict, uri: str) -> None:
    print(f"\nprotocol: {summary['protocol']}")
    print(f"best epoch (validation recall@20): {summary['best_epoch']}")
    columns = {"model": summary["test_metrics"]}
    notes = []
    if "fold_in_metrics" in summary:
        columns["folded"] = summary["fold_in_metrics"]
        notes.append(f"folded = the same model with the {summary['fold_in_method']} fold-in of the clicks before "
                     "the test period on items without training clicks")
    if "baseline_metrics" in summary:  # cold start: Popularity and random on the same cold targets
        columns.update({"popular": summary["baseline_metrics"], "random": summary.get("random_metrics") or {}})
        notes.append(f"{summary['baseline_name']} and random on the same targets")
    w = max(14, *(len(k) for k in summary["test_metrics"]))
    if len(columns) == 1:
        print("test metrics:")
        for k, v in summary["test_metrics"].items():
            print(f"  {k:>{w}s}  {_number(k, v)}")
    else:
        what = "cold items" if "baseline_metrics" in summary else "all items ranked"
        print(f"test metrics, {what} ({'; '.join(notes)}):")
        print(f"  {'':>{w}s}" + "".join(f"  {name:>8s}" for name in columns))
        for k in summary["test_metrics"]:
            print(f"  {k:>{w}s}" + "".join(f"  {_number(k, c.get(k, float('nan'))):>8s}" for c in columns.values()))
    versus = summary.get("baseline_name", "no fold-in")
    for label, key in (("model", "delta_vs_baseline"), ("folded", "fold_in_delta_vs_baseline"),
                       ("folded", "fold_in_delta_vs_none")):
        if key in summary:
            d = summary[key]
            print(f"{label} - {versus} {d['metric']}: {d['delta']:+.4f}, 95% paired bootstrap "
                  f"over the {d['n_users']} test users [{d['low']:+.4f}, {d['high']:+.4f}]: {d['verdict']}")
    print(f"run: {summary['run_id']}   model: {summary['model_uri']}")
    print(f"open the UI:  mlflow ui --backend-store-uri {uri}")


if __name__ == "__main__":
    configure_logging()
    main(sys.argv[1:])
