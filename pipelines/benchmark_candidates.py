"""Benchmark the nightly candidates job on synthetic embeddings, backend by backend.

Examples:
    python -m pipelines.benchmark_candidates                                   # 1M users x 100k items
    python -m pipelines.benchmark_candidates --users 100000 --backends exact faiss --sweep
    python -m pipelines.benchmark_candidates --set tracking.uri=sqlite:///mlflow.db --out runs/bench
    python -m pipelines.benchmark_candidates --set bench.item_noise=0.5 --summary-json runs/bench.json

Settings come from --config (pipelines/configs/benchmark_candidates.yaml: section bench, every key
explained there, and tracking) and --set; the flags below are shortcuts for the bench keys named in
their help and win over --set.

Items and users are seeded, clustered 64-d unit vectors (users near item clusters, each with --seen
items of its cluster already clicked). For every backend, in a fresh process: the index is built and
tuned exactly as the job does without --index (annoy/faiss tuned to recall 0.95; auto builds all and
keeps the fastest that meets it), then all users are streamed in chunks through the job's scoring
path (exact: seen items masked in the score blocks; annoy/faiss: top K + |seen|, drop seen, keep K)
and written as Parquet by the job's atomic writer. Reported per backend: build + tune time, score +
write time, users/s and its ratio to exact search measured in the same run, recall@K of the final
candidate lists against exact's on 2,000 users, and the process's peak RSS. --sweep adds recall@K vs
queries/s over Annoy n_trees x search_k and faiss nlist x nprobe. The Spark engine needs a trained
model (its executors run the user tower), so 'spark' is reported as skipped with the reason.

Output: the Markdown table on stdout, benchmark.md + benchmark.json in --out, and one MLflow run
(params, metrics '<backend>/<name>', the report as artifacts) unless --no-mlflow.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path

from pipelines.cli import (
    base_parser,
    check_output_file,
    configure_logging,
    load_config_or_exit,
    write_summary,
)
from recsys_cl.bench import (
    BACKENDS,
    BenchConfig,
    BenchRunConfig,
    report_metrics,
    run_benchmark,
    worker_main,
)
from recsys_cl.config import load_config

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "benchmark_candidates.yaml"
log = logging.getLogger("pipelines.benchmark_candidates")


SHORTCUTS = {
    "users": "users to score", "items": "catalogue size", "dim": "embedding dimension",
    "k": "candidates per user", "clusters": "item clusters", "seen": "seen items per user, filtered out",
    "chunk_size": "users per chunk", "n_workers": "Annoy query threads, as candidates.n_workers",
    "target_recall": "recall@K annoy/faiss/auto are tuned to",
    "recall_users": "users whose candidates are compared with exact's",
    "sweep_queries": "queries per point of the --sweep table", "seed": "seed of the synthetic data",
    "annoy_trees": "--sweep: Annoy n_trees values", "annoy_search_k": "--sweep: Annoy search_k values",
    "faiss_nlist": "--sweep: faiss nlist values", "faiss_nprobe": "--sweep: faiss nprobe values",
}
"""Flags that set ``bench.<key>`` (``--chunk-size`` for ``chunk_size``); every other key via ``--set``."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = base_parser("python -m pipelines.benchmark_candidates", __doc__, DEFAULT_CONFIG,
                    "write the report (rows, machine, notes) + mlflow_run_id to PATH",
                    set_example="bench.users=100000")
    hints = typing.get_type_hints(BenchConfig)
    defaults = load_config(DEFAULT_CONFIG, BenchRunConfig).bench  # what a plain run uses
    for key, text in SHORTCUTS.items():
        many = typing.get_origin(hints[key]) is tuple
        elem = typing.get_args(hints[key])[0] if many else hints[key]
        value = getattr(defaults, key)
        shown = " ".join(map(str, value)) if many else f"{value:,}" if elem is int else str(value)
        p.add_argument(f"--{key.replace('_', '-')}", type=elem, nargs="+" if many else None,
                       metavar="N" if elem is int else "X",
                       help=f"{text} (bench.{key}; default config: {shown})")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, metavar="NAME",
                   help=f"backends to run, of {', '.join(BACKENDS)}; exact always runs first as the reference "
                        "(bench.backends)")
    p.add_argument("--sweep", action="store_const", const=True,
                   help="add a recall vs queries/s table of the raw indexes over Annoy n_trees x search_k and "
                        "faiss nlist x nprobe, both whatever --backends says (bench.sweep=true)")
    p.add_argument("--no-write", action="store_const", const=True,
                   help="materialise the Arrow rows but skip the Parquet writes (bench.write=false)")
    p.add_argument("--out", default="runs/benchmark_candidates",
                   help="directory for benchmark.md and benchmark.json (default: %(default)s)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI (tracking.uri; default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", metavar="NAME",
                   help="MLflow experiment (tracking.experiment; default: recsys_cl_benchmarks)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    # internal: one backend in this process (the parent starts one per backend)
    p.add_argument("--single-backend", choices=BACKENDS, help=argparse.SUPPRESS)
    p.add_argument("--worker-config", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The flags given, as ``--set`` overrides applied after the user's own (a flag wins)."""
    values: dict[str, object] = {f"bench.{k}": getattr(args, k) for k in (*SHORTCUTS, "backends")}
    values["bench.sweep"] = args.sweep
    values["bench.write"] = None if args.no_write is None else False
    values["tracking.uri"] = args.tracking_uri
    values["tracking.experiment"] = args.experiment
    return [f"{k}={json.dumps(v)}" for k, v in values.items() if v is not None]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.single_backend:
        worker_main(args.single_backend, args.worker_config, args.worker_out)
        return {}
    check_output_file(args.summary_json)
    args.set = [*args.set, *flag_overrides(args)]
    run_cfg = load_config_or_exit(args, BenchRunConfig, set_threads=False)
    cfg = run_cfg.bench
    out = Path(args.out)
    try:  # before the benchmark, not after its hour of work
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"output error: --out {out} cannot be created ({e.strerror or e}); pass a writable folder")
    report = run_benchmark(cfg, out)
    print(report.markdown)
    run_id = None
    if not args.no_mlflow:
        from recsys_cl.tracking import TrackingError, log_benchmark_run

        try:
            run_id = log_benchmark_run(
                run_cfg.tracking,
                params={f"bench.{k}": v for k, v in dataclasses.asdict(cfg).items()},
                metrics=report_metrics(report),
                tags={"job": "benchmark_candidates", "machine.cpus": report.machine["cpus"],
                      "machine.load_avg_start": report.machine["load_avg_start"]},
                artifacts=[out / "benchmark.md", out / "benchmark.json"],
            )
        except TrackingError as e:
            raise SystemExit(f"tracking error: {e} (the report is saved in {out})") from None
        print(f"mlflow run: {run_id}")
    print(f"report: {out / 'benchmark.md'}")
    summary = {**report.to_dict(), "mlflow_run_id": run_id, "out": str(out)}
    write_summary(args.summary_json, summary)
    return summary


if __name__ == "__main__":
    configure_logging()
    main(sys.argv[1:])
