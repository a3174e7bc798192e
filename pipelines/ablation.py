"""Run two-tower variants x seeds and the baselines under one split and protocol; write a Markdown
table (mean ± std over seeds for the two-tower rows) and log every run to MLflow, nested under one
parent run (ablation[<variants file name>], e.g. ablation[two_tower]) that holds the table, the
summary, the command and base config as params and each variant's mean over seeds as metrics
(mean/<variant>/test/recall_at_20, ...).

Examples:
    python -m pipelines.ablation --seeds 0 1 2 --out runs/ablation.md
    python -m pipelines.ablation --only "+ logQ (counting)" --seeds 0 --set train.epochs=5 --no-baselines
    python -m pipelines.ablation --variants pipelines/configs/ablations/negatives.yaml --summary-json runs/neg.json

Variants live in pipelines/configs/ablations/two_tower.yaml (name -> list of --set overrides). All overrides
are validated before any training starts.

A killed ablation continues where it stopped when the same command is run again (same config, --set,
variants, seeds, baselines and data): its parent run is reopened, its finished runs are reused as they
are (their MLflow runs carry the tag ablation_row), the run it was in resumes from its last epoch's
checkpoint, and the rest train. Once an ablation completes (its parent run FINISHED), the same command
trains everything anew under a new parent; --no-resume does so at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from pipelines.cli import (
    HelpFormatter,
    check_output_file,
    check_training_dirs,
    configure_logging,
    exits_on_tracking_error,
    shown_path,
    warn_unused_settings,
    write_summary,
    write_text_atomic,
)
from recsys_cl.config import (
    ConfigError,
    DuplicateKeyError,
    RunConfig,
    UniqueKeyLoader,
    dump_config,
    load_config,
    yaml_error_reason,
)
from recsys_cl.data.errors import DataError
from recsys_cl.eval.protocol import ALL_CATALOGUE
from recsys_cl.eval.report import TABLE_METRICS, markdown_table, mean_std, validation_table
from recsys_cl.experiment import (
    Prepared,
    check_run_config,
    lock_checkpoint,
    parent_tags,
    prepare,
    require_warm_split,
    resumable_run_id,
    run_baseline,
    run_params,
    run_two_tower,
    with_content,
)
from recsys_cl.sweep import ablation_key, refuse_duplicate_seeds, refuse_seed_override
from recsys_cl.tracking import (
    ABLATION_KEY_TAG,
    ABLATION_PARENT_TAG,
    ablation_row_tag,
    metric_name_part,
    mlflow_child_run,
    mlflow_run,
    unfinished_ablation,
)
from recsys_cl.train.checkpoint import CheckpointError
from recsys_cl.train.loop import SELECT_METRIC

CONFIGS = Path(__file__).parent / "configs"
log = logging.getLogger("pipelines.ablation")
RUN_KEYS = ("run_id", "best_epoch", "val_metrics", "test_metrics", "baseline_metrics", "random_metrics",
            "fold_in_metrics")
"""What ``--summary-json`` keeps of each two-tower run's summary."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.ablation", description=__doc__,
                                formatter_class=HelpFormatter)
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
                        "test_metrics}], baselines, reused_runs, parent_run_id} to PATH: every run's validation "
                        "metrics, on which a variant is chosen, beside its test metrics (also the parent run's "
                        "ablation/summary.json)")
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
        warn_unused_settings((f"variant {name!r}", cfg) for (name, _), cfg in configs.items())
        prep = prepare(base, content=False)  # each run's content: check_run_config below
        if args.no_baselines:
            baselines: list[str] = []
        elif args.baselines:
            baselines = args.baselines
        else:  # on a cold-start split Popularity and random come with every run, on its targets
            baselines = [] if prep.cold_start else list(base.baselines.models)
        for name in baselines:
            require_warm_split(name, prep)
        fingerprints = {  # history length, num_sampled, content errors first
            (name, seed): check_run_config(cfg, prep, f"in variant {name!r} (its overrides in --variants, or --set)")
            .resume_fingerprint for (name, seed), cfg in configs.items()}
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    except DataError as e:
        raise SystemExit(f"data error: {e}") from None
    key = ablation_key({cfg.tracking.run_name or "": cfg.to_flat_dict() for cfg in configs.values()}, baselines,
                       prep.resume_fingerprint)
    parent_id, done = (None, {}) if args.no_resume else unfinished_ablation(base.tracking, key)
    if parent_id:
        log.info("continuing interrupted ablation %s: %d of its %d runs finished before and are reused "
                 "(--no-resume starts anew)", parent_id, len(done), len(configs) + len(baselines))
    command = shlex.join(["python", "-m", "pipelines.ablation", *(sys.argv[1:] if argv is None else argv)])
    with contextlib.ExitStack() as held:
        try:  # every run left to train, held until the ablation ends: a second launch stops before any run opens
            for pair, cfg in configs.items():
                if cfg.tracking.run_name not in done:
                    held.enter_context(lock_checkpoint(cfg, fingerprints[pair]))
        except CheckpointError as e:
            raise SystemExit(f"checkpoint error: {e}") from None
        with mlflow_run(base.tracking, run_name=f"ablation[{Path(args.variants).stem}]", run_id=parent_id,
                        tags={**parent_tags(base, prep, configs.values()), "ablation": "parent",
                              ABLATION_KEY_TAG: key}) as parent:
            parent.set_tags({ABLATION_PARENT_TAG: parent.run_id})
            parent.log_params({**run_params(base, configs.values(), baselines=baselines),
                               "ablation.command": command,
                               "ablation.variants_file": args.variants, "ablation.variants": list(variants),
                               "ablation.seeds": args.seeds, "ablation.baselines": baselines})
            parent.log_text(yaml.safe_dump(variants, sort_keys=False, allow_unicode=True), "ablation/variants.yaml")
            parent.log_text(dump_config(base), "config/resolved_config.yaml")  # every key, the params' unused ones too
            baseline_runs, runs = run_children(parent.run_id, base, prep, configs, baselines, done)
            table, summary = write_outputs(args, prep.protocol, baseline_runs, runs,
                                           {"reused_runs": len(done), "parent_run_id": parent.run_id})
            parent.log_text(table + "\n", "ablation/table.md")
            parent.log_dict(summary, "ablation/summary.json")
            parent.log_metrics(variant_means(runs))
            parent.set_description(
                f"**Ablation** of {len(variants)} two-tower variants ({shown_path(Path(args.variants))}) x seeds "
                f"{', '.join(map(str, args.seeds))}" + (f", baselines {', '.join(baselines)}" if baselines else "")
                + (f"; {len(done)} runs reused from an interrupted attempt" if done else "")
                + ". Metrics `mean/<variant>/...`: each "
                "variant's mean over its seeds (its name with the characters MLflow refuses in a metric name "
                f"as `_`). Table: ablation/table.md (artifacts).\n\n{table}\n")
    hint = f"tags.{ABLATION_PARENT_TAG} = '{parent.run_id}'"
    hint += " and attributes.status = 'FINISHED'" if parent_id else ""  # resumed: hide the killed tries
    print(f"\nparent run: {parent.run_id}  ({len(runs) + len(baseline_runs)} child runs; filter: {hint})")
    return table


def run_children(
    parent_id: str, base: RunConfig, prep: Prepared, configs: dict[tuple[str, int], RunConfig], baselines: list[str],
    done: dict[str, dict[str, Any]],
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Run (or reuse, from ``done``) the baselines and every variant x seed as child runs of
    ``parent_id``; returns ``({baseline: row}, [two-tower row])``. A two-tower run killed before resumes
    from its checkpoint into its own MLflow run, moved under ``parent_id`` when it was another's."""
    baseline_runs: dict[str, dict[str, Any]] = {}
    for name in baselines:
        s = done.get(f"baseline-{name}")
        if s is None:
            with mlflow_child_run(base.tracking, parent_id, f"baseline-{name}", {"ablation": "baseline"},
                                  parent_tag=ABLATION_PARENT_TAG) as run:
                s = run_baseline(name, base, prep, run)
                s = {"run_id": run.run_id, "params": s["params"], "test_metrics": s["test_metrics"]}
                run.set_tags(ablation_row_tag(s))
        baseline_runs[name] = s
    runs: list[dict[str, Any]] = []
    for (name, seed), cfg in configs.items():
        summary = done.get(cfg.tracking.run_name or "")
        if summary is None:
            run_prep = with_content(prep, cfg)  # this variant's content: part of what it resumes on
            try:
                run_id = resumable_run_id(cfg, run_prep.resume_fingerprint)  # a killed run resumes
            except CheckpointError as e:
                raise SystemExit(f"checkpoint error: {e}") from None
            with mlflow_child_run(cfg.tracking, parent_id, cfg.tracking.run_name, {"ablation": name}, run_id=run_id,
                                  parent_tag=ABLATION_PARENT_TAG) as run:
                summary = {k: v for k, v in run_two_tower(cfg, run, run_prep).items() if k in RUN_KEYS}
                run.set_tags(ablation_row_tag(summary))
        runs.append({"variant": name, "seed": seed, **summary})
    return baseline_runs, runs


HEADLINE_METRICS = ("recall@20", "ndcg@10", "mrr", "tail_targets/recall@20")
"""The test metrics of each variant that its parent run logs as a mean over seeds (the long tail's
where its runs have it: not on a cold-start split)."""
STRATA_METRICS = ("recall@20", "head_targets/recall@20", "tail_targets/recall@20", "tail_share@20")
"""The long-tail table's columns (:mod:`recsys_cl.eval.long_tail`), under the main table."""


def variant_means(runs: list[dict[str, Any]]) -> dict[str, float]:
    """``{"mean/<variant>/test/<metric>": mean over seeds}`` for :data:`HEADLINE_METRICS`, and
    ``mean/<variant>/val/recall@20`` (what a variant is chosen on): the table's headline numbers as
    metrics of the parent run, so the compare view lines ablations up. ``<variant>`` is the variant's
    name as :func:`recsys_cl.tracking.metric_name_part` writes it (``+ logQ (counting)`` ->
    ``logQ_counting``), with ``_2``, ``_3`` ... after a name another variant already gave."""
    out: dict[str, float] = {}
    parts: set[str] = set()
    for name in dict.fromkeys(r["variant"] for r in runs):
        part = base_part = metric_name_part(name)
        n = 1
        while part in parts:
            n += 1
            part = f"{base_part}_{n}"
        parts.add(part)
        mine = [r for r in runs if r["variant"] == name]
        test = mean_std([r["test_metrics"] for r in mine], HEADLINE_METRICS)
        val = mean_std([r.get("val_metrics", {}) for r in mine], [SELECT_METRIC])
        out.update({f"mean/{part}/test/{k}": mean for k, (mean, _) in test.items() if not math.isnan(mean)})
        out[f"mean/{part}/val/{SELECT_METRIC}"] = val[SELECT_METRIC][0]
    return out


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
                  runs: list[dict[str, Any]], extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Render the tables (test, long tail, then validation), write ``--out`` (+ :func:`rows_file`, every row's runs)
    and ``--summary-json``, each atomically (temp file + rename), print the tables; returns them and the
    summary (what ``--summary-json`` holds)."""
    # all items ranked: how much of the top 20 new items take is part of the answer
    keys = (*TABLE_METRICS, "new_item_share@20", "new_targets/recall@20", "warm_targets/recall@20") \
        if ALL_CATALOGUE in protocol.split("|") else TABLE_METRICS
    rows: list[tuple[str, list[dict[str, float]]]] = []
    raw = {}
    for name, s in baseline_runs.items():
        raw[f"{name} {s['params']}"] = [s["test_metrics"]]
        rows.append((f"{name} {s['params'] or ''}".strip(), [s["test_metrics"]]))
    reference: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == name]
        raw[name] = [r["test_metrics"] for r in mine]
        rows.append((f"two-tower: {name}", raw[name]))
        folded = [r["fold_in_metrics"] for r in mine if "fold_in_metrics" in r]
        if folded:  # the same runs, new items' clicks before the test period folded in
            raw[f"{name}, first clicks folded in"] = folded
            rows.append((f"two-tower: {name}, first clicks folded in", folded))
        for r in mine:
            if "baseline_metrics" in r:  # cold start: identical for every run (same targets)
                reference = {"Popularity (clicks before the test period)": r["baseline_metrics"],
                             "random ranking (exact expectation)": r["random_metrics"]}
    for label, values in reference.items():
        raw[label] = [values]
        rows.append((label, [values]))
    table = f"Protocol: `{protocol}`\n\n" + markdown_table([(n, mean_std(m, keys), len(m)) for n, m in rows], keys)
    strata = [(n, mean_std(m, STRATA_METRICS), len(m)) for n, m in rows if "tail_share@20" in m[0]]
    if strata:  # a table of its own: four more columns would make the main one too wide to read
        table += ("\n\nLong tail: Recall@20 on the test targets among the head items (the most clicked, holding "
                  "`eval.head_share` of the training clicks) and among the "
                  "tail items (the rest), and the tail's share of the top-20 slots:\n\n"
                  + markdown_table(strata, STRATA_METRICS))
    if runs:
        table += "\n\nValidation, on which a variant is chosen (never on test):\n\n" + validation_table(runs)
    out = Path(args.out)
    write_text_atomic(out, table + "\n")
    write_text_atomic(rows_file(out), json.dumps(raw, indent=2))
    summary = {"protocol": protocol, "table": str(out), "runs": runs, "baselines": baseline_runs, **extra}
    write_summary(args.summary_json, summary)
    print(table)
    return table, summary


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
    return write_outputs(args, protocols.pop(), baselines, runs, {"merged": list(args.merge)})[0]


if __name__ == "__main__":
    configure_logging()
    main(sys.argv[1:])
