"""Benchmark the nightly candidates job on synthetic embeddings, backend by backend.

Examples:
    python -m pipelines.benchmark_candidates                                   # 1M users x 100k items
    python -m pipelines.benchmark_candidates --users 100000 --backends exact faiss --sweep
    python -m pipelines.benchmark_candidates --tracking-uri sqlite:///mlflow.db --out runs/bench

Items and users are seeded, clustered 64-d unit vectors (users near item clusters, each with
--seen items of its cluster already clicked). For every backend, in a fresh process: the index is
built and tuned exactly as the job does without --index (annoy/faiss tuned to recall 0.95; auto
builds all and keeps the fastest that meets it), then all users are streamed in chunks through the
job's scoring path (top K + |seen|, drop seen, keep K) and written as Parquet by the job's atomic
writer. Reported per backend: build + tune time, score + write time, users/s and its ratio to exact
search measured in the same run, recall@K of the final candidate lists against exact's on 2,000
users, and the process's peak RSS. --sweep adds recall@K vs queries/s over Annoy n_trees x search_k
and faiss nlist x nprobe. The Spark engine needs a trained model (its executors run the user
tower), so 'spark' is reported as skipped with the reason.

Output: the Markdown table on stdout, benchmark.md + benchmark.json in --out, and one MLflow run
(params, metrics '<backend>/<name>', the report as artifacts) unless --no-mlflow.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from pipelines.cli import configure_logging
from recsys_cl.bench import (
    BACKENDS,
    BenchConfig,
    report_metrics,
    run_benchmark,
    worker_main,
)

log = logging.getLogger("pipelines.benchmark_candidates")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = BenchConfig()
    p = argparse.ArgumentParser(prog="python -m pipelines.benchmark_candidates", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=d.users, help="users to score (default: %(default)s)")
    p.add_argument("--items", type=int, default=d.items, help="catalogue size (default: %(default)s)")
    p.add_argument("--dim", type=int, default=d.dim, help="embedding dimension (default: %(default)s)")
    p.add_argument("--k", type=int, default=d.k, help="candidates per user (default: %(default)s)")
    p.add_argument("--clusters", type=int, default=d.clusters, help="item clusters (default: %(default)s)")
    p.add_argument("--seen", type=int, default=d.seen, help="seen items per user, filtered out (default: %(default)s)")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(d.backends),
                   help="backends to run; exact always runs first as the reference (default: all)")
    p.add_argument("--chunk-size", type=int, default=d.chunk_size, help="users per chunk (default: %(default)s)")
    p.add_argument("--n-workers", type=int, default=d.n_workers,
                   help="Annoy query threads, as candidates.n_workers (default: %(default)s)")
    p.add_argument("--target-recall", type=float, default=d.target_recall,
                   help="recall@K annoy/faiss/auto are tuned to (default: %(default)s)")
    p.add_argument("--recall-users", type=int, default=d.recall_users,
                   help="users whose candidates are compared with exact's (default: %(default)s)")
    p.add_argument("--no-write", action="store_true", help="materialise the Arrow rows but skip the Parquet writes")
    p.add_argument("--sweep", action="store_true", help="add the recall vs queries/s table over each backend's knobs")
    p.add_argument("--sweep-queries", type=int, default=d.sweep_queries, help="(default: %(default)s)")
    p.add_argument("--annoy-trees", type=int, nargs="+", default=list(d.annoy_trees), help="sweep: n_trees values")
    p.add_argument("--annoy-search-k", type=int, nargs="+", default=list(d.annoy_search_k),
                   help="sweep: search_k values")
    p.add_argument("--faiss-nlist", type=int, nargs="+", default=list(d.faiss_nlist), help="sweep: nlist values")
    p.add_argument("--faiss-nprobe", type=int, nargs="+", default=list(d.faiss_nprobe), help="sweep: nprobe values")
    p.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    p.add_argument("--out", default="runs/benchmark_candidates",
                   help="directory for benchmark.md and benchmark.json (default: %(default)s)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", default="recsys_cl_benchmarks", help="MLflow experiment (default: %(default)s)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    # internal: one backend in this process (the parent starts one per backend)
    p.add_argument("--single-backend", choices=BACKENDS, help=argparse.SUPPRESS)
    p.add_argument("--worker-config", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        users=args.users, items=args.items, dim=args.dim, k=args.k, clusters=args.clusters, seen=args.seen,
        backends=tuple(args.backends), chunk_size=args.chunk_size, n_workers=args.n_workers,
        target_recall=args.target_recall, recall_users=args.recall_users, write=not args.no_write,
        seed=args.seed, sweep=args.sweep, sweep_queries=args.sweep_queries,
        annoy_trees=tuple(args.annoy_trees), annoy_search_k=tuple(args.annoy_search_k),
        faiss_nlist=tuple(args.faiss_nlist), faiss_nprobe=tuple(args.faiss_nprobe),
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.single_backend:
        worker_main(args.single_backend, args.worker_config, args.worker_out)
        return {}
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        raise SystemExit(f"argument error: --{str(e).replace('_', '-')}") from None
    out = Path(args.out)
    try:  # before the benchmark, not after its hour of work
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"output error: --out {out} cannot be created ({e.strerror or e}); pass a writable folder")
    report = run_benchmark(cfg, out)
    print(report.markdown)
    run_id = None
    if not args.no_mlflow:
        from recsys_cl.config import TrackingConfig
        from recsys_cl.tracking import TrackingError, log_benchmark_run

        try:
            run_id = log_benchmark_run(
                TrackingConfig(uri=args.tracking_uri, experiment=args.experiment, registered_model_name=None),
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
    return {**report.to_dict(), "mlflow_run_id": run_id, "out": str(out)}


if __name__ == "__main__":
    configure_logging()
    main(sys.argv[1:])
