"""Run two-tower variants x seeds and the baselines under one split and protocol; write a Markdown
table (mean ± std over seeds for the two-tower rows) and log every run to MLflow.

Examples:
    python -m pipelines.ablation --seeds 0 1 2 --out runs/ablation.md
    python -m pipelines.ablation --only "+ logQ (counting)" --seeds 0 --set train.epochs=5 --no-baselines
    python -m pipelines.ablation --variants pipelines/configs/ablations/negatives.yaml --summary-json runs/neg.json

Variants live in pipelines/configs/ablations/two_tower.yaml (name -> list of --set overrides). All overrides
are validated before any training starts.

A killed ablation continues where it stopped when the same command is run again (same config, --set,
variants, seeds, baselines and data): its finished runs are reused as they are (their MLflow runs carry
the tag ablation_row), the run it was in resumes from its last epoch's checkpoint, and the rest train.
Once an ablation completes, the same command trains everything anew; --no-resume does so at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from pipelines.cli import (
    check_output_file,
    check_training_dirs,
    configure_logging,
    exits_on_tracking_error,
    shown_path,
    write_summary,
    write_text_atomic,
)
from recsys_cl.config import ConfigError, DuplicateKeyError, RunConfig, UniqueKeyLoader, load_config, yaml_error_reason
from recsys_cl.data.errors import DataError
from recsys_cl.eval.protocol import ALL_CATALOGUE
from recsys_cl.eval.report import TABLE_METRICS, markdown_table, mean_std, validation_table
from recsys_cl.experiment import (
    check_run_config,
    lock_checkpoint,
    prepare,
    require_warm_split,
    resumable_run_id,
    run_baseline,
    run_two_tower,
    with_content,
)
from recsys_cl.sweep import ablation_key, refuse_duplicate_seeds, refuse_seed_override
from recsys_cl.tracking import (
    ABLATION_KEY_TAG,
    ablation_row_tag,
    mark_ablation_done,
    mlflow_run,
    unfinished_ablation,
)
from recsys_cl.train.checkpoint import CheckpointError

CONFIGS = Path(__file__).parent / "configs"
log = logging.getLogger("pipelines.ablation")
RUN_KEYS = ("run_id", "best_epoch", "val_metrics", "test_metrics", "baseline_metrics", "random_metrics",
            "fold_in_metrics")
"""What ``--summary-json`` keeps of each two-tower run's summary."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(CONFIGS / "two_tower.yaml"),
                   help=f"base config (default: {shown_path(CONFIGS / 'two_tower.yaml')})")
    p.add_argument("--variants", default=str(CONFIGS / "ablations" / "two_tower.yaml"),
                   help=f"variants YAML (default: {shown_path(CONFIGS / 'ablations' / 'two_tower.yaml')})")
    p.add_argument("--only", action="append", default=[], help="run only this variant (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed values (default: 0 1 2)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--baselines", nargs="*", default=None, metavar="NAME",
                   help="baselines to include (no names, or no flag: the config's baselines.models; none on a "
                        "cold-start split, whose runs carry Popularity and random on their own targets)")
    g.add_argument("--no-baselines", action="store_true", help="two-tower rows only")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key for every run, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--out", default="runs/ablation.md",
                   help="Markdown table path; every row's runs' test metrics go beside it as JSON, to the same name "
                        "with .json (default: %(default)s and runs/ablation.json; both are replaced)")
    p.add_argument("--merge", nargs="+", metavar="SUMMARY",
                   help="train nothing: write the tables of these --summary-json files together (e.g. seeds run "
                        "in separate processes), to --out and --summary-json")
    p.add_argument("--no-resume", action="store_true",
                   help="train every run again, even when an interrupted run of the same ablation finished")
    p.add_argument("--summary-json", metavar="PATH",
                   help="write {protocol, table, runs: [{variant, seed, run_id, best_epoch, val_metrics, "
                        "test_metrics}], baselines} to PATH: every run's validation metrics, on which a "
                        "variant is chosen, beside its test metrics")
    return p.parse_args(argv)


def load_variants(path: str) -> dict[str, list[str]]:
    """``{variant name: ["key=value", ...]}`` from a variants YAML.

    Raises:
        ConfigError: the file is missing or not YAML, is not such a mapping, or is empty.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"variants file {path!r} does not exist or is not a file; pass --variants with a YAML file "
                          f"such as {CONFIGS / 'ablations' / 'two_tower.yaml'}")
    try:
        raw = yaml.load(p.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except UnicodeDecodeError as e:
        raise ConfigError(f"variants file {path!r} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except DuplicateKeyError as e:  # the last of two same-named variants would run alone
        raise ConfigError(f"variants file {path!r} gives {e.key} twice, {e.where}; rename or delete one") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"variants file {path!r} is not valid YAML: {yaml_error_reason(e)}") from e
    shape = 'a mapping of variant name -> list of "section.key=value" overrides, e.g. {logq: [loss.logq=counting]}'
    if not raw:
        raise ConfigError(f"variants file {path!r} holds no variants; it must be {shape}")
    if not isinstance(raw, dict):
        raise ConfigError(f"variants file {path!r} must be {shape}; found a {type(raw).__name__}")
    for name, overrides in raw.items():
        if overrides is None:
            raw[name] = overrides = []
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ConfigError(f"variants file {path!r}: variant {name!r} must be a list of \"section.key=value\" "
                              f"strings, found {overrides!r}")
    return {str(k): v for k, v in raw.items()}


@exits_on_tracking_error
def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    check_output_file(args.out, "--out")
    check_rows_file(args.out, args.summary_json)
    check_output_file(args.summary_json)
    if args.merge:
        given = [flag for flag, value in (("--only", args.only), ("--set", args.set), ("--no-resume", args.no_resume),
                                          ("--baselines", args.baselines is not None),
                                          ("--no-baselines", args.no_baselines)) if value]
        if given:
            raise SystemExit(f"argument error: --merge trains nothing, so {', '.join(given)} would be ignored; "
                             "drop them (the merged files hold the runs' results as they were)")
        return merge(args)
    try:  # validate every run's config before training anything
        variants = load_variants(args.variants)
        if args.only:
            missing = [v for v in args.only if v not in variants]
            if missing:
                raise ConfigError(f"unknown variant(s) {missing} in --only; known: {list(variants)}")
            variants = {k: variants[k] for k in args.only}
        refuse_duplicate_seeds(args.seeds)
        refuse_seed_override(args.set, "--set")
        for name, overrides in variants.items():
            refuse_seed_override(overrides, f"variant {name!r} in --variants")
        base = load_config(args.config, RunConfig, overrides=args.set)
        if args.baselines:  # names checked like the config's own baselines.models, before any data is read
            load_config(args.config, RunConfig, overrides=[*args.set, f"baselines.models=[{','.join(args.baselines)}]"])
        configs = {
            (name, seed): load_config(args.config, RunConfig, overrides=[
                *args.set, *overrides, f"train.seed={seed}", "tracking.registered_model_name=null",
                f"tracking.run_name={name} seed={seed}"])
            for name, overrides in variants.items() for seed in args.seeds
        }
        check_training_dirs(configs.values())  # else found after an epoch, or after the encoder ran
        prep = prepare(base, content=False)  # each run's content: check_run_config below
        if args.no_baselines:
            baselines: list[str] = []
        elif args.baselines:
            baselines = args.baselines
        else:  # on a cold-start split Popularity and random come with every run, on its targets
            baselines = [] if prep.cold_start else list(base.baselines.models)
        for name in baselines:
            require_warm_split(name, prep)
        for (name, _), cfg in configs.items():  # history length, num_sampled, content errors first
            check_run_config(cfg, prep, f"in variant {name!r} (its overrides in --variants, or --set)")
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    except DataError as e:
        raise SystemExit(f"data error: {e}") from None
    runs: list[dict[str, Any]] = []
    baseline_runs: dict[str, dict[str, Any]] = {}
    key = ablation_key({cfg.tracking.run_name or "": cfg.to_flat_dict() for cfg in configs.values()}, baselines,
                       prep.resume_fingerprint)
    done = {} if args.no_resume else unfinished_ablation(base.tracking, key)
    if done:
        log.info("continuing an interrupted ablation: %d of its %d runs finished before and are reused "
                 "(--no-resume trains them all again)", len(done), len(configs) + len(baselines))
    for name in baselines:
        s = done.get(f"baseline-{name}")
        if s is None:
            with mlflow_run(base.tracking, run_name=f"baseline-{name}",
                            tags={"ablation": "baseline", ABLATION_KEY_TAG: key}) as run:
                s = run_baseline(name, base, prep, run)
                s = {"run_id": run.run_id, "params": s["params"], "test_metrics": s["test_metrics"]}
                run.set_tags(ablation_row_tag(s))
        baseline_runs[name] = s
    for name in variants:
        for seed in args.seeds:
            cfg = configs[(name, seed)]
            summary = done.get(cfg.tracking.run_name or "")
            if summary is None:
                run_prep = with_content(prep, cfg)  # this variant's content: part of what it resumes on
                with contextlib.ExitStack() as held:
                    try:  # held until the run ends: another process must not resume it meanwhile
                        held.enter_context(lock_checkpoint(cfg, run_prep.resume_fingerprint))
                        run_id = resumable_run_id(cfg, run_prep.resume_fingerprint)  # a killed run resumes
                    except CheckpointError as e:
                        raise SystemExit(f"checkpoint error: {e}") from None
                    with mlflow_run(cfg.tracking, run_name=cfg.tracking.run_name,
                                    tags={"ablation": name, ABLATION_KEY_TAG: key}, run_id=run_id) as run:
                        summary = {k: v for k, v in run_two_tower(cfg, run, run_prep).items() if k in RUN_KEYS}
                        run.set_tags(ablation_row_tag(summary))
            runs.append({"variant": name, "seed": seed, **summary})
    table = write_outputs(args, prep.protocol, baseline_runs, runs, {"reused_runs": len(done)})
    mark_ablation_done(base.tracking, key)  # complete: the same command again trains anew
    return table


def rows_file(out: str | Path) -> Path:
    """The JSON of every row's runs written beside the ``--out`` table: its name with ``.json``."""
    return Path(out).with_suffix(".json")


def check_rows_file(out: str, summary_json: str | None) -> None:
    """Exit with ``output error: ...`` before any work when the rows file beside ``--out`` cannot be written
    (a folder of that name) or is ``--out`` or ``--summary-json`` itself (one would overwrite the other)."""
    rows = rows_file(out)
    if rows.resolve() == Path(out).resolve():
        raise SystemExit(f"output error: --out {out} ends in .json, the name of the rows file written beside the "
                         "table; pass a Markdown path such as runs/ablation.md")
    if rows.is_dir():
        raise SystemExit(f"output error: --out {out} writes its rows beside it to {rows}, which is a directory; "
                         "pass another --out or move that folder away")
    if summary_json is not None and Path(summary_json).resolve() in (rows.resolve(), Path(out).resolve()):
        what = "the rows file written beside" if Path(summary_json).resolve() == rows.resolve() else "the same file as"
        raise SystemExit(f"output error: --summary-json {summary_json} is {what} --out {out}, so one would "
                         "overwrite the other; pass another --summary-json path")


def write_outputs(args: argparse.Namespace, protocol: str, baseline_runs: dict[str, dict[str, Any]],
                  runs: list[dict[str, Any]], extra: dict[str, Any]) -> str:
    """Render the tables (test, then validation), write ``--out`` (+ :func:`rows_file`, every row's runs)
    and ``--summary-json``, each atomically (temp file + rename), print the tables; returns them."""
    # all items ranked: how much of the top 20 new items take is part of the answer
    keys = (*TABLE_METRICS, "new_item_share@20", "new_targets/recall@20", "warm_targets/recall@20") \
        if ALL_CATALOGUE in protocol.split("|") else TABLE_METRICS
    rows, raw = [], {}
    for name, s in baseline_runs.items():
        raw[f"{name} {s['params']}"] = [s["test_metrics"]]
        rows.append((f"{name} {s['params'] or ''}".strip(), mean_std([s["test_metrics"]], keys), 1))
    reference: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == name]
        raw[name] = [r["test_metrics"] for r in mine]
        rows.append((f"two-tower: {name}", mean_std(raw[name], keys), len(mine)))
        folded = [r["fold_in_metrics"] for r in mine if "fold_in_metrics" in r]
        if folded:  # the same runs, new items' clicks before the test period folded in
            raw[f"{name}, first clicks folded in"] = folded
            rows.append((f"two-tower: {name}, first clicks folded in", mean_std(folded, keys), len(folded)))
        for r in mine:
            if "baseline_metrics" in r:  # cold start: identical for every run (same targets)
                reference = {"Popularity (clicks before the test period)": r["baseline_metrics"],
                             "random ranking (exact expectation)": r["random_metrics"]}
    for label, values in reference.items():
        raw[label] = [values]
        rows.append((label, mean_std([values], keys), 1))
    table = f"Protocol: `{protocol}`\n\n" + markdown_table(rows, keys)
    if runs:
        table += "\n\nValidation, on which a variant is chosen (never on test):\n\n" + validation_table(runs)
    out = Path(args.out)
    write_text_atomic(out, table + "\n")
    write_text_atomic(rows_file(out), json.dumps(raw, indent=2))
    write_summary(args.summary_json, {"protocol": protocol, "table": str(out), "runs": runs,
                                      "baselines": baseline_runs, **extra})
    print(table)
    return table


def merge(args: argparse.Namespace) -> str:
    """``--merge``: the tables of several ablations' ``--summary-json`` files (e.g. seeds split over
    processes) as if one ablation had run them all. Nothing is trained or logged."""
    summaries = []
    for path in args.merge:
        try:
            summary = json.loads(Path(path).read_text(encoding="utf-8"))
            summaries.append((path, summary["protocol"], summary["runs"], summary.get("baselines", {})))
        except (OSError, ValueError, KeyError, TypeError) as e:
            why = e.strerror if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
            raise SystemExit(f"merge error: {path} is not an ablation --summary-json file ({why}); pass the "
                             "files written by python -m pipelines.ablation ... --summary-json PATH") from None
    protocols = {protocol for _, protocol, _, _ in summaries}
    if len(protocols) > 1:
        raise SystemExit(f"merge error: the summaries were measured under different protocols {sorted(protocols)}; "
                         "merge only runs of the same split and protocol")
    runs: list[dict[str, Any]] = []
    baselines: dict[str, dict[str, Any]] = {}
    seen: dict[tuple[str, int], str] = {}
    for path, _, file_runs, file_baselines in summaries:
        for r in file_runs:
            pair = (r["variant"], r["seed"])
            if pair in seen:
                raise SystemExit(f"merge error: variant {pair[0]!r} seed {pair[1]} is in both {seen[pair]} and "
                                 f"{path}; a seed would count twice")
            seen[pair] = path
            runs.append(r)
        for name, b in file_baselines.items():
            baselines.setdefault(name, b)  # deterministic baselines: the first file's run
    order = list(dict.fromkeys(r["variant"] for r in runs))
    runs.sort(key=lambda r: (order.index(r["variant"]), r["seed"]))
    return write_outputs(args, protocols.pop(), baselines, runs, {"merged": list(args.merge)})


if __name__ == "__main__":
    configure_logging()
    main(sys.argv[1:])
