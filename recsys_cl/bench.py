"""Benchmark of the candidates job on synthetic embeddings: every backend, the same scoring path.

What one backend run measures (``run_worker``, always in a fresh process so its peak RSS is its own):

1. the item catalogue: ``items`` clustered unit vectors (:func:`make_items`, seeded);
2. the index, built and tuned exactly as the job does without ``--index``
   (:func:`recsys_cl.candidates.build_index_in_memory`: Annoy/faiss tuned to ``target_recall`` on
   ``tune_users`` synthetic users, ``auto`` builds all and keeps the fastest meeting it);
3. the job's scoring loop: users in chunks of ``chunk_size`` (generated per chunk, never all at once)
   -> :class:`recsys_cl.candidates.Recommender.recommend` (``topk_unseen``: exact search leaves the
   user's seen items out of its top K; Annoy/faiss fetch top K + |seen|, drop the seen items, keep K,
   re-query the short ones) -> Arrow rows -> Parquet part files through the
   job's :class:`recsys_cl.io_atomic.PartitionWriter` (fsynced, committed, then deleted).
   The user tower is the only part replaced: user embeddings come from :func:`make_users`.

The parent (:func:`run_benchmark`) runs one process per backend, reads each one's peak RSS from
``os.wait4``, and scores recall@K of every backend's candidate lists against the exact backend's
on the first ``recall_users`` users (the same filtering path, so exact's recall is 1 by
construction). Throughput ratios are to exact search measured in the same run. ``sweep`` adds a
recall@K vs queries/s table of the raw indexes over Annoy n_trees x search_k and faiss nlist x nprobe.

Synthetic data: ``clusters`` random unit centres; an item is its centre plus Gaussian noise of norm
~``item_noise``, L2-normalised; a user picks a non-empty cluster, is its centre plus noise of norm
~``user_noise``, and has ``seen`` items drawn from that cluster (the items filtered out).

Example::

    cfg = BenchConfig(users=100_000, items=100_000, backends=("exact", "faiss"))
    report = run_benchmark(cfg, out_dir=Path("runs/bench"))
    print(report.markdown)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from recsys_cl.config import MAX_SEED, TrackingConfig

log = logging.getLogger(__name__)

BACKENDS = ("exact", "annoy", "faiss", "auto", "spark")
WORKER_MODULE = "pipelines.benchmark_candidates"
"""Each backend runs as ``python -m pipelines.benchmark_candidates --single-backend NAME ...``."""
ITEM_ID_KINDS = ("int", "string")
USER_BLOCK = 10_000
"""Users are generated in fixed blocks (own seed each), so any user range is reproducible on its own."""
SPARK_SKIP_REASON = (
    "skipped: the Spark engine (recsys_cl.candidates.make_spark_runner) ships a trained model directory "
    "to the executors and embeds users with its user tower there (Recommender.embed), so it cannot take "
    "synthetic embeddings without a trained model; measure it on real data with "
    "`python -m pipelines.generate_candidates --engine spark`"
)


@dataclass(frozen=True)
class BenchConfig:
    users: int = 1_000_000
    items: int = 100_000
    dim: int = 64
    k: int = 100
    clusters: int = 1000
    seen: int = 10
    """Seen items per user, drawn from the user's cluster (filtered out of its candidates)."""
    item_ids: str = "int"
    """``int``: ids ``1000 + 7 * row``; ``string``: SKU-like ids ``sku-000000001007`` (the same numbers,
    zero-padded), held as a trained model holds string ids (Python strings), so the run measures the
    cost of string ids in the job (id decoding, the String column)."""
    item_noise: float = 0.7
    user_noise: float = 1.0
    backends: tuple[str, ...] = ("exact", "annoy", "faiss", "auto", "spark")
    chunk_size: int = 20_000
    n_workers: int = 2
    """Annoy query threads (as ``candidates.n_workers``); exact/faiss use BLAS/OpenMP threads."""
    max_extra_fetch: int = 1000
    target_recall: float = 0.95
    tune_users: int = 1000
    """Users the index is tuned on (the job samples 1,000 active users)."""
    recall_users: int = 2000
    write: bool = True
    """Write the Parquet parts (the job's writer); False materialises the Arrow rows only."""
    seed: int = 0
    sweep: bool = False
    sweep_queries: int = 2000
    annoy_trees: tuple[int, ...] = (10, 25, 50)
    annoy_search_k: tuple[int, ...] = (1000, 2500, 5000, 10000, 20000, 40000)
    faiss_nlist: tuple[int, ...] = (256, 1024)
    faiss_nprobe: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)

    def __post_init__(self) -> None:
        for name in ("users", "items", "dim", "k", "clusters", "chunk_size", "n_workers", "tune_users",
                     "recall_users", "sweep_queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seen < 0:
            raise ValueError(f"seen must be >= 0, got {self.seen}")
        if self.k + self.seen > self.items:
            raise ValueError(f"k + seen ({self.k} + {self.seen}) must not exceed items ({self.items}): "
                             "every user needs k unseen items")
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {self.target_recall}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {self.seed}")
        if self.item_ids not in ITEM_ID_KINDS:
            raise ValueError(f"item_ids must be one of {list(ITEM_ID_KINDS)}, got {self.item_ids!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BenchConfig:
        raw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()}
        return cls(**raw)


@dataclass(frozen=True)
class BenchTrackingConfig(TrackingConfig):
    """``tracking`` for benchmarks: their own experiment, and nothing is registered."""

    experiment: str = "recsys_cl_benchmarks"
    registered_model_name: str | None = None


@dataclass(frozen=True)
class BenchRunConfig:
    """What ``pipelines.benchmark_candidates`` loads from ``--config`` + ``--set``
    (``pipelines/configs/benchmark_candidates.yaml``)."""

    bench: BenchConfig = field(default_factory=BenchConfig)
    tracking: BenchTrackingConfig = field(default_factory=BenchTrackingConfig)

# --------------------------------------------------------------------------------------------
# Synthetic embeddings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Items:
    vectors: np.ndarray  # (M, D) float32, unit norm, rows grouped by cluster
    ids: np.ndarray  # (M,) int64, or str objects for ``item_ids: string``; sorted (row order = vocab order)
    centres: np.ndarray  # (C, D) float32
    offsets: np.ndarray  # (C + 1,) rows of cluster c: offsets[c]:offsets[c + 1]

    @property
    def nonempty(self) -> np.ndarray:
        return np.flatnonzero(np.diff(self.offsets) > 0)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_items(cfg: BenchConfig) -> Items:
    """``cfg.items`` clustered unit vectors; ids ``1000 + 7 * row`` (sparse, sorted), or for
    ``item_ids: string`` those numbers as ``sku-`` + 12 digits (sorted too: zero-padded)."""
    rng = np.random.default_rng([cfg.seed, 0])
    centres = _unit(rng.standard_normal((cfg.clusters, cfg.dim)))
    cluster = np.sort(rng.integers(0, cfg.clusters, cfg.items))  # (M,) grouped by cluster
    noise = rng.standard_normal((cfg.items, cfg.dim)).astype(np.float32) * (cfg.item_noise / np.sqrt(cfg.dim))
    vectors = _unit(centres[cluster] + noise)
    offsets = np.zeros(cfg.clusters + 1, dtype=np.int64)
    np.cumsum(np.bincount(cluster, minlength=cfg.clusters), out=offsets[1:])
    ids = 1000 + 7 * np.arange(cfg.items, dtype=np.int64)
    if cfg.item_ids == "string":  # object strings, as a trained model's vocabulary holds them
        ids = np.array([f"sku-{i:012d}" for i in ids.tolist()], dtype=object)
    return Items(vectors, ids, centres, offsets)


def make_users(cfg: BenchConfig, items: Items, start: int, stop: int, stream: int = 1) -> tuple[
    np.ndarray, np.ndarray, np.ndarray
]:
    """Users ``start .. stop-1`` of a stream -> (vectors (U, D) float32, seen_offsets (U + 1,),
    seen_items (U * seen,) item-vocab indices). Stream 1: the benchmarked users; others: samples."""
    parts_v, parts_s = [], []
    nonempty = items.nonempty
    sizes = np.diff(items.offsets)
    for block in range(start // USER_BLOCK, (stop - 1) // USER_BLOCK + 1 if stop > start else 0):
        b0, n = block * USER_BLOCK, USER_BLOCK
        rng = np.random.default_rng([cfg.seed, stream, block])
        cluster = nonempty[rng.integers(0, len(nonempty), n)]  # (n,)
        noise = rng.standard_normal((n, cfg.dim)).astype(np.float32) * (cfg.user_noise / np.sqrt(cfg.dim))
        vectors = _unit(items.centres[cluster] + noise)
        seen = items.offsets[cluster][:, None] + (
            rng.random((n, cfg.seen)) * sizes[cluster][:, None]
        ).astype(np.int64)  # (n, seen)
        lo, hi = max(start, b0) - b0, min(stop, b0 + n) - b0
        parts_v.append(vectors[lo:hi])
        parts_s.append(seen[lo:hi])
    vectors = np.concatenate(parts_v) if parts_v else np.zeros((0, cfg.dim), np.float32)
    seen = np.concatenate(parts_s) if parts_s else np.zeros((0, cfg.seen), np.int64)
    offsets = np.arange(len(vectors) + 1, dtype=np.int64) * cfg.seen
    return vectors, offsets, seen.ravel()


# --------------------------------------------------------------------------------------------
# One backend, in its own process
# --------------------------------------------------------------------------------------------


def _recommender_class() -> type:
    from recsys_cl.candidates import Recommender

    @dataclass
    class SyntheticRecommender(Recommender):
        """The job's Recommender with the user tower replaced by precomputed embeddings."""

        queries: np.ndarray | None = None

        def embed(self, batch: Any) -> np.ndarray:
            assert self.queries is not None and len(self.queries) == len(batch)
            return self.queries

    return SyntheticRecommender


def run_worker(cfg: BenchConfig, backend: str, out_json: Path) -> dict[str, Any]:
    """Build ``backend`` and score every user the way the candidates job does; write the result JSON
    (and the recall sample's candidate ids as ``<out_json>.ids.npy``)."""
    import resource

    from recsys_cl.candidates import UserBatch, build_index_in_memory
    from recsys_cl.features.vocab import Vocab
    from recsys_cl.index.base import SENTINEL_ID, embedding_hash
    from recsys_cl.io_atomic import PartitionWriter

    t_start = time.perf_counter()
    items = make_items(cfg)
    vocab = Vocab(items.ids, name="item_id")
    loaded: Any = SimpleNamespace(  # what build_index_in_memory reads of a loaded model
        item_vectors=items.vectors, spec=SimpleNamespace(items=vocab),
        embedding_hash=embedding_hash(items.vectors, items.ids),
    )
    tune_q = make_users(cfg, items, 0, cfg.tune_users, stream=2)[0]
    t_data = time.perf_counter()
    index, index_id, reason = build_index_in_memory(
        backend, loaded, tune_q, cfg.k, cfg.target_recall, fetch_extra=cfg.seen
    )
    if hasattr(index, "n_jobs"):
        index.n_jobs = cfg.n_workers  # as the job: Annoy queries on candidates.n_workers threads
    t_built = time.perf_counter()
    log.info("%s: index %s built in %.1fs (%s)", backend, index.name, t_built - t_data, reason)

    rec = _recommender_class()(None, loaded.spec, index, cfg.k, cfg.max_extra_fetch, "synthetic", index_id)
    n_sample = min(cfg.recall_users, cfg.users)
    sample = np.full((n_sample, cfg.k), SENTINEL_ID, dtype=np.int64)  # item-vocab indices, whatever the id type
    gen_s = score_s = write_s = 0.0
    rows = 0
    root = Path(tempfile.mkdtemp(prefix=f"recsys_cl_bench_{backend}_"))
    try:
        with PartitionWriter(root, f"bench-{backend}") as writer:
            for s in range(0, cfg.users, cfg.chunk_size):
                e = min(s + cfg.chunk_size, cfg.users)
                t0 = time.perf_counter()
                q, offsets, seen = make_users(cfg, items, s, e)
                batch = UserBatch(user_ids=np.arange(s, e, dtype=np.int64),
                                  user_index=np.full(e - s, -1, dtype=np.int64),
                                  windows=np.zeros((e - s, 0), dtype=np.int64),
                                  seen_offsets=offsets, seen_items=seen)
                rec.queries = q
                t1 = time.perf_counter()
                table = rec.recommend(batch)
                t2 = time.perf_counter()
                if cfg.write:
                    writer.write_part(table)
                t3 = time.perf_counter()
                gen_s, score_s, write_s = gen_s + t1 - t0, score_s + t2 - t1, write_s + t3 - t2
                rows += table.num_rows
                if s < n_sample:
                    u = table.column("user_id").to_numpy()
                    m = u < n_sample
                    got = vocab.encode(table.column("item_id").to_numpy(zero_copy_only=False)[m])
                    sample[u[m], table.column("rank").to_numpy()[m] - 1] = got
                if (s // cfg.chunk_size) % 10 == 9:
                    log.info("%s: %d/%d users, %.0f users/s", backend, e, cfg.users, e / (score_s + write_s))
            writer.commit({"backend": backend, "rows": rows})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    t_end = time.perf_counter()
    np.save(str(out_json) + ".ids.npy", sample)
    job_s = score_s + write_s
    result = {
        "backend": backend,
        "index": index.name,
        "index_params": index.params(),
        "index_id": index_id,
        "reason": reason,
        "users": cfg.users,
        "rows": rows,
        "data_s": t_data - t_start,
        "build_s": t_built - t_data,
        "user_gen_s": gen_s,
        "score_s": score_s,
        "write_s": write_s,
        "job_s": job_s,
        "total_s": (t_built - t_data) + job_s,
        "wall_s": t_end - t_start,
        "users_per_s": cfg.users / max(job_s, 1e-9),
        "self_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    out_json.write_text(json.dumps(result, indent=2, default=str))
    return result


def worker_main(backend: str, config_path: str, out_json: str) -> None:
    """Entry of the ``--single-backend`` process; failures are written to ``out_json`` too."""
    cfg = BenchConfig.from_json(Path(config_path).read_text())
    try:
        run_worker(cfg, backend, Path(out_json))
    except BaseException as e:
        Path(out_json).write_text(json.dumps({"backend": backend, "error": f"{type(e).__name__}: {e}"}))
        raise


# --------------------------------------------------------------------------------------------
# The parent: one process per backend, recall against exact, the sweep, the report
# --------------------------------------------------------------------------------------------


@dataclass
class Report:
    config: BenchConfig
    machine: dict[str, Any]
    rows: list[dict[str, Any]]
    sweep: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def markdown(self) -> str:
        return render_markdown(self)

    def to_dict(self) -> dict[str, Any]:
        return {"config": dataclasses.asdict(self.config), "machine": self.machine, "rows": self.rows,
                "sweep": self.sweep, "notes": self.notes}


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
            "load_avg_start": [round(x, 2) for x in os.getloadavg()]}


def run_backend_process(cfg: BenchConfig, backend: str, work: Path) -> dict[str, Any]:
    """Run one backend in a fresh interpreter; its peak RSS comes from ``os.wait4`` on that process."""
    config_path, out_json = work / "config.json", work / f"{backend}.json"
    config_path.write_text(cfg.to_json())
    cmd = [sys.executable, "-m", WORKER_MODULE, "--single-backend", backend,
           "--worker-config", str(config_path), "--worker-out", str(out_json)]
    log.info("running %s", " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    result: dict[str, Any] = json.loads(out_json.read_text()) if out_json.is_file() else {"backend": backend}
    if proc.returncode != 0 and "error" not in result:
        result["error"] = f"worker exited with {proc.returncode}"
    result.update(peak_rss_bytes=usage.ru_maxrss * 1024, process_wall_s=wall, exit_code=proc.returncode)
    ids_file = Path(str(out_json) + ".ids.npy")
    if ids_file.is_file():
        result["_sample_ids"] = np.load(ids_file)
    return result


def run_benchmark(cfg: BenchConfig, out_dir: Path | None = None) -> Report:
    """Every backend of ``cfg.backends`` in its own process (exact first: the reference), then the
    optional sweep; writes ``benchmark.md`` and ``benchmark.json`` into ``out_dir`` when given."""
    from recsys_cl.index.tuning import recall_at_k

    unknown = sorted(set(cfg.backends) - set(BACKENDS))
    if unknown:
        raise ValueError(f"unknown backends {unknown}; expected some of {list(BACKENDS)}")
    machine = machine_info()
    notes: list[str] = []
    backends = list(dict.fromkeys(cfg.backends))
    if "exact" not in backends:
        notes.append("exact added: it is the reference for recall and throughput ratios")
    backends = ["exact", *[b for b in backends if b != "exact"]]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="recsys_cl_bench_") as tmp:
        for name in backends:
            if name == "spark":
                results.append({"backend": "spark", "skipped": SPARK_SKIP_REASON})
                continue
            results.append(run_backend_process(cfg, name, Path(tmp)))
    exact = results[0]
    ref = exact.get("_sample_ids")
    for r in results:
        ids = r.pop("_sample_ids", None)
        if ids is not None and ref is not None:
            r["recall_at_k"] = 1.0 if r is exact else recall_at_k(ids, ref)
            r["recall_users"] = len(ref)
        if "users_per_s" in r and "users_per_s" in exact:
            r["x_exact"] = r["users_per_s"] / exact["users_per_s"]
    sweep = run_sweep(cfg) if cfg.sweep else []
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    report = Report(cfg, machine, results, sweep, notes)
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def write_report(report: Report, out_dir: Path) -> None:
    """``benchmark.md`` and ``benchmark.json`` into ``out_dir`` (created), each replaced atomically
    (:func:`recsys_cl.io_atomic.write_file_atomically`): a run killed mid-write leaves the previous
    file or the new one, never a truncated one (a kill between the two files leaves the new JSON
    beside the previous Markdown)."""
    from recsys_cl.io_atomic import write_file_atomically

    markdown, data = report.markdown, json.dumps(report.to_dict(), indent=2, default=str)
    write_file_atomically(out_dir / "benchmark.json", lambda tmp: tmp.write_text(data))
    write_file_atomically(out_dir / "benchmark.md", lambda tmp: tmp.write_text(markdown))


def run_sweep(cfg: BenchConfig) -> list[dict[str, Any]]:
    """recall@K (raw index, no seen filtering) vs queries/s on ``sweep_queries`` users, every knob."""
    from recsys_cl.index.annoy_index import AnnoyIndex
    from recsys_cl.index.exact import ExactIndex
    from recsys_cl.index.faiss_index import FaissIndex, faiss_available
    from recsys_cl.index.tuning import measure, recall_at_k

    items = make_items(cfg)
    q = make_users(cfg, items, 0, cfg.sweep_queries, stream=3)[0]
    k = min(cfg.k, cfg.items)
    exact = ExactIndex()
    t0 = time.perf_counter()
    exact.build(items.vectors, items.ids)
    build_s = time.perf_counter() - t0
    exact_ids = exact.query(q, k)[0]
    exact_qps = measure(exact, q, k, min_seconds=1.0)
    rows: list[dict[str, Any]] = [{"backend": "exact", "params": "", "build_s": build_s, "recall_at_k": 1.0,
                                   "queries_per_s": exact_qps}]

    def add(index: Any, params: str, build: float) -> None:
        ids = index.query(q, k)[0]
        qps = measure(index, q, k, min_seconds=0.5)
        rows.append({"backend": index.name, "params": params, "build_s": build,
                     "recall_at_k": recall_at_k(ids, exact_ids), "queries_per_s": qps})
        log.info("sweep %s %s: recall %.3f, %.0f q/s", index.name, params, rows[-1]["recall_at_k"], qps)

    for n_trees in cfg.annoy_trees:
        annoy = AnnoyIndex(n_trees=n_trees, n_jobs=cfg.n_workers, seed=cfg.seed)
        t0 = time.perf_counter()
        annoy.build(items.vectors, items.ids)
        build_s = time.perf_counter() - t0
        for search_k in cfg.annoy_search_k:
            annoy.set_knob(search_k)
            add(annoy, f"n_trees={n_trees} search_k={search_k}", build_s)
    if faiss_available():
        from recsys_cl.index.faiss_index import effective_nlist

        nlists = dict.fromkeys(effective_nlist(n, len(items.ids)) for n in cfg.faiss_nlist)
        if len(nlists) < len(cfg.faiss_nlist):  # a small catalogue lowers several to the same
            log.info("faiss nlist %s is %s at %d items: each measured once", list(cfg.faiss_nlist), list(nlists),
                     len(items.ids))
        for nlist in nlists:
            fi = FaissIndex(nlist=nlist, seed=cfg.seed)
            t0 = time.perf_counter()
            fi.build(items.vectors, items.ids)
            build_s = time.perf_counter() - t0
            for nprobe in sorted({min(p, fi.nlist) for p in cfg.faiss_nprobe}):
                fi.set_knob(nprobe)
                add(fi, f"nlist={fi.nlist} nprobe={nprobe}", build_s)
    for r in rows:
        r["x_exact"] = r["queries_per_s"] / exact_qps
    return rows


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _params(r: dict[str, Any]) -> str:
    p = r.get("index_params") or {}
    keep = [f"{k}={v}" for k, v in p.items() if k in ("n_trees", "search_k", "nlist", "nprobe")]
    name = r.get("index", "")
    return f"{name} {' '.join(keep)}".strip() if name != r["backend"] or keep else name


def render_markdown(report: Report) -> str:
    c, m = report.config, report.machine
    out = [
        f"## Candidates benchmark: {c.users:,} users x {c.items:,} items, dim {c.dim}, top-{c.k}",
        "",
        (f"Synthetic clustered unit vectors ({c.clusters:,} clusters), {c.item_ids} item ids, "
         f"{c.seen} seen items per user removed "
         f"through the job's top-K-unseen path, chunks of {c.chunk_size:,} users, "
         f"{'Parquet written via PartitionWriter' if c.write else 'rows materialised, not written'}, "
         f"n_workers {c.n_workers}, seed {c.seed}. Machine: {m['cpus']} CPUs ({m['cpu']}), "
         f"OMP_NUM_THREADS={m['omp_num_threads']}, load average {m['load_avg_start']} at start, "
         f"{m.get('load_avg_end')} at end."),
        "",
        ("| backend | index | build + tune (s) | score + write (s) | total (s) | users/s | vs exact "
         f"| recall@{c.k} | peak RSS (GB) |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.rows:
        if "skipped" in r:
            out.append(f"| {r['backend']} | skipped (below) | | | | | | | |")
        elif "error" in r:
            out.append(f"| {r['backend']} | failed: {r['error']} | | | | | | | |")
        else:
            out.append(
                f"| {r['backend']} | {_params(r)} | {r['build_s']:.1f} | {r['job_s']:.1f} | {r['total_s']:.1f} "
                f"| {r['users_per_s']:,.0f} | {r.get('x_exact', float('nan')):.2f}x "
                f"| {r.get('recall_at_k', float('nan')):.3f} | {r['peak_rss_bytes'] / 1e9:.2f} |"
            )
    n_rec = next((r["recall_users"] for r in report.rows if "recall_users" in r), 0)
    out += [
        "",
        (f"recall@{c.k}: each backend's final top-{c.k} unseen candidates of the first {n_rec:,} users against "
         "the exact backend's in this run. Build + tune: index build plus tuning to recall "
         f"{c.target_recall} on {c.tune_users:,} users (auto: all backends, then the choice). Score + write: "
         "top-K-unseen search, Arrow rows and Parquet parts (user-embedding generation excluded); users/s is "
         "users / that time. Peak RSS: the backend's own process (os.wait4)."),
    ]
    for r in report.rows:
        if r["backend"] == "auto" and "reason" in r:
            out += ["", f"auto chose {r['reason']}"]
        if "skipped" in r:
            out += ["", f"{r['backend']}: {r['skipped']}"]
    out += [f"\nNote: {n}" for n in report.notes]
    if report.sweep:
        out += [
            "",
            (f"### recall@{c.k} vs queries/s ({c.sweep_queries:,} queries, raw index, no seen filtering; "
             f"Annoy on {c.n_workers} threads, exact/faiss on BLAS/OpenMP threads)"),
            "",
            f"| backend | params | build (s) | recall@{c.k} | queries/s | vs exact |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for s in report.sweep:
            out.append(f"| {s['backend']} | {s['params']} | {s['build_s']:.1f} | {s['recall_at_k']:.3f} "
                       f"| {s['queries_per_s']:,.0f} | {s['x_exact']:.2f}x |")
    return "\n".join(out) + "\n"


def report_metrics(report: Report) -> dict[str, float]:
    """Flat metrics for MLflow: ``<backend>/<name>``."""
    out: dict[str, float] = {}
    for r in report.rows:
        if "skipped" in r or "error" in r:
            continue
        b = r["backend"]
        for key in ("build_s", "job_s", "total_s", "users_per_s", "x_exact", "recall_at_k"):
            if key in r:
                out[f"{b}/{key}"] = float(r[key])
        out[f"{b}/peak_rss_gb"] = r["peak_rss_bytes"] / 1e9
    return out
