"""Run a grid of two-tower configs (x seeds) as nested MLflow runs under one parent run; the parent
gets the summary table (CSV + Markdown) and a plot of the grid.

Examples:
    python -m pipelines.sweep --grid loss.kind=softmax,debiased --grid loss.temperature=0.05,0.1
    python -m pipelines.sweep --config pipelines/configs/two_tower.yaml --seeds 0 1 2 \\
        --grid loss.logq=none,counting --set train.epochs=5 --baselines popularity ease
    python -m pipelines.sweep --grid 'item_tower.encoders=[id],[id,categorical]'

Each --grid is one axis, KEY=V1,V2,... (YAML values; commas inside [...] stay in the value); the runs
are the cartesian product of the axes times --seeds. Every config is validated before anything is
trained. Children carry the full params, per-epoch metrics, test metrics and artifacts of a normal
training run plus the tags sweep_id (the parent's run id) and sweep_point; filter them in the UI with
tags.sweep_id = '<parent run id>'. --baselines adds baseline runs (same split and protocol) under the
same parent. The best child is picked on validation recall@20, never on test.

A killed sweep continues where it stopped when the same command is run again (same config, --set,
--grid, --seeds, --baselines, --name and data): the unfinished parent run is reopened, finished
children are reused as they are, and the others train again from scratch (train.resume=false, so
every child's per-epoch metrics are complete; a child left RUNNING by the kill is marked KILLED).
--no-resume starts a new sweep instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from pipelines.cli import (
    HelpFormatter,
    check_output_file,
    check_training_dirs,
    configure_logging,
    exits_on_tracking_error,
    shown_path,
    warn_unused_settings,
    write_summary,
)
from recsys_cl.config import ConfigError, RunConfig, dump_config, load_config
from recsys_cl.data.errors import DataError
from recsys_cl.eval import plots
from recsys_cl.experiment import (
    SELECTED_ON_CHILD,
    SELECTED_ON_TAG,
    check_run_config,
    parent_tags,
    prepare,
    require_warm_split,
    run_baseline,
    run_params,
    run_two_tower,
)
from recsys_cl.sweep import (
    expand_grid,
    grid_plot,
    markdown,
    parse_grid,
    refuse_duplicate_seeds,
    refuse_seed_override,
    summary_frame,
    sweep_key,
)
from recsys_cl.tracking import (
    SWEEP_KEY_TAG,
    SWEEP_ROW_TAG,
    mlflow_child_run,
    mlflow_run,
    resolve_tracking_uri,
    unfinished_sweep,
)
from recsys_cl.train.checkpoint import CheckpointInUseError

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "two_tower.yaml"
log = logging.getLogger("pipelines.sweep")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.sweep", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG),
                   help=f"base YAML config (default: {shown_path(DEFAULT_CONFIG)})")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="one grid axis, e.g. --grid loss.temperature=0.05,0.1 (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="train.seed values run at every grid point (default: the config's seed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every run, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--baselines", nargs="*", default=None, metavar="NAME",
                   help="also run these baselines under the parent (no names: the config's baselines.models)")
    p.add_argument("--group-by", metavar="KEY", help="grid key on the plot's x axis (default: the first --grid)")
    p.add_argument("--name", help="parent run name (default: sweep[<grid keys>])")
    p.add_argument("--summary-json", metavar="PATH", help="write {parent_run_id, child_run_ids, rows} to PATH")
    p.add_argument("--no-resume", action="store_true",
                   help="start a new sweep even if an interrupted one with the same arguments can be continued")
    return p.parse_args(argv)


@exits_on_tracking_error
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    check_output_file(args.summary_json)
    try:  # everything is validated before a run opens or a model trains
        axes = parse_grid(args.grid)
        keys = [k for k, _ in axes]
        if args.group_by and args.group_by not in keys:
            raise ConfigError(f"--group-by {args.group_by!r} is not a grid key; grid keys: {keys}")
        if args.seeds is not None:  # without --seeds, --set train.seed is the one seed
            refuse_seed_override(args.set, "--set")
        base = load_config(args.config, RunConfig, overrides=args.set)
        seeds = args.seeds if args.seeds is not None else [base.train.seed]
        refuse_duplicate_seeds(seeds)
        points = expand_grid(axes)
        configs = [
            (point, seed, load_config(args.config, RunConfig, overrides=[
                *args.set, *point.overrides, f"train.seed={seed}",
                "tracking.registered_model_name=null", "tracking.set_alias=null", "train.resume=false",
                f"tracking.run_name=two_tower[{point.label}]-seed{seed}",
            ]))
            for point in points for seed in seeds
        ]
        trained: dict[tuple[tuple[str, str], ...], str] = {}
        for point, _, cfg in configs:  # values equal once read (1 and 1.0 for a float) would train twice
            ident = tuple(sorted((k, repr(v)) for k, v in cfg.to_flat_dict().items() if k != "tracking.run_name"))
            if ident in trained and trained[ident] != point.label:
                raise ConfigError(f"grid points {trained[ident]} and {point.label} give the same config (their values "
                                  "are equal once read), so the same model would train twice; drop one value from "
                                  "--grid")
            trained.setdefault(ident, point.label)
        baselines: list[str] = []
        if args.baselines is not None:
            names = args.baselines or list(base.baselines.models)
            models = f"baselines.models=[{','.join(names)}]"
            checked = load_config(args.config, RunConfig, overrides=[*args.set, models])
            baselines = list(checked.baselines.models)
        check_training_dirs(cfg for _, _, cfg in configs)  # else found after an epoch, or after the encoder ran
        warn_unused_settings((f"grid point {point.label}", cfg) for point, _, cfg in configs)
        prep = prepare(base, content=False)  # each run's content: check_run_config below
        for b in baselines:
            require_warm_split(b, prep)
        for point, _, cfg in configs:  # history length, num_sampled, content and genre errors before any training
            check_run_config(cfg, prep, f"in grid point {point.label} (change the --grid values or --set)")
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    except DataError as e:
        raise SystemExit(f"data error: {e}") from None
    log.info("sweep: %d grid points x %d seeds = %d runs (+ %d baselines)",
             len(points), len(seeds), len(configs), len(baselines))

    sweep_tags = {**parent_tags(base, prep, (c for _, _, c in configs)), "sweep": "parent",
                  "sweep_grid": json.dumps(dict(axes)), SELECTED_ON_TAG: SELECTED_ON_CHILD}
    rows: list[dict[str, Any]] = []
    name = args.name or f"sweep[{','.join(keys) or 'base'}]"
    key = sweep_key(base.to_flat_dict(), axes, seeds, baselines, name, prep.resume_fingerprint)
    resume_id, done = (None, {}) if args.no_resume else unfinished_sweep(base.tracking, key)
    if resume_id:
        log.info("continuing interrupted sweep %s: %d of %d runs finished before (--no-resume starts anew)",
                 resume_id, len(done), len(configs) + len(baselines))
    sweep_tags[SWEEP_KEY_TAG] = key
    with mlflow_run(base.tracking, run_name=name, tags=sweep_tags, run_id=resume_id) as parent:
        parent.set_tags({"sweep_id": parent.run_id})
        params = {**run_params(base, [cfg for _, _, cfg in configs], baselines=baselines),
                  **{k: "{" + ",".join(v) + "}" for k, v in axes},
                  "sweep.seeds": seeds, "sweep.runs": len(configs), "sweep.baselines": baselines}
        parent.log_params(params)
        parent.log_text(dump_config(base), "config/resolved_config.yaml")  # every key, the params' unused ones too

        def child_run(run_name: str, tags: dict[str, str], tracking: Any,
                      train: Callable[[Any], dict[str, Any]]) -> None:
            """Reuse the finished child of an interrupted sweep, or run it; its row goes on the run."""
            if run_name in done:
                log.info("%s: finished before the interruption, reused", run_name)
                rows.append(json.loads(done[run_name]))
                return
            try:
                with mlflow_child_run(tracking, parent.run_id, run_name, tags) as child:
                    row = train(child)
                    child.set_tags({SWEEP_ROW_TAG: json.dumps(row)})
            except CheckpointInUseError as e:  # the same child trained by another process (a double launch)
                raise SystemExit(f"checkpoint error: {e}") from None
            rows.append(row)

        for point, seed, cfg in configs:
            def train_child(child: Any, cfg: RunConfig = cfg, point: Any = point, seed: int = seed) -> dict[str, Any]:
                s = run_two_tower(cfg, child, prep)
                return {"run_name": cfg.tracking.run_name, "run_id": s["run_id"], "model": "two_tower",
                        **dict(point.values), "seed": seed, "best_epoch": s["best_epoch"],
                        "val/recall@20": s["val_metrics"].get("recall@20"),
                        **{f"test/{k}": v for k, v in s["test_metrics"].items()}}

            child_run(str(cfg.tracking.run_name), {"sweep": "child", "sweep_point": point.label}, cfg.tracking,
                      train_child)
        for b in baselines:
            def baseline_child(child: Any, b: str = b) -> dict[str, Any]:
                s = run_baseline(b, base, prep, child)
                return {"run_name": f"baseline-{b} {s['params'] or ''}".strip(), "run_id": s["run_id"],
                        "model": b, **{k: "" for k in keys},
                        **{f"test/{k}": v for k, v in s["test_metrics"].items()}}

            child_run(f"baseline-{b}", {"sweep": "baseline", "sweep_point": f"baseline={b}"}, base.tracking,
                      baseline_child)
        frame = summary_frame(rows, keys)
        table = markdown(frame, prep.protocol)
        parent.log_text(frame.to_csv(index=False), "sweep/summary.csv")
        parent.log_text(table + "\n", "sweep/summary.md")
        fig = grid_plot(frame, keys, group_by=args.group_by)
        parent.log_figure(fig, "sweep/grid_test_recall_at_20.png")
        plots.close(fig)
        two = frame[frame["model"] == "two_tower"]
        best = two.loc[two["val/recall@20"].idxmax()] if two["val/recall@20"].notna().any() else None
        if best is not None:  # chosen on validation; its test numbers are reported, not used to choose
            parent.set_tags({"best_run_id": best["run_id"], "best_run_name": best["run_name"]})
            parent.log_metrics({"best/val/recall@20": best["val/recall@20"],
                                **{f"best/{m}": best[m] for m in frame.columns if m.startswith("test/")}})
        # the table on the parent's page in the UI, not only in its artifacts
        chosen = (f"Best child, chosen on validation recall@20: **{best['run_name']}**" if best is not None
                  else "No two-tower child has a validation recall@20.")
        parent.set_description(f"{chosen} Table: sweep/summary.md (artifacts).\n\n{table}\n")
    summary = {"parent_run_id": parent.run_id, "child_run_ids": list(frame["run_id"]), "reused_runs": len(done),
               "protocol": prep.protocol, "rows": json.loads(frame.to_json(orient="records"))}
    write_summary(args.summary_json, summary)
    print(table)
    hint = f"tags.sweep_id = '{parent.run_id}'" + (" and attributes.status = 'FINISHED'" if resume_id else "")
    print(f"\nparent run: {parent.run_id}  ({len(rows)} child runs; filter: {hint})")  # resumed: hide killed tries
    print(f"open the UI:  mlflow ui --backend-store-uri {resolve_tracking_uri(base.tracking)}")
    return summary


if __name__ == "__main__":
    configure_logging()
    main(sys.argv[1:])
