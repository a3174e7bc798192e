"""Nightly batch candidate generation: active users -> user tower -> index top K+|seen| -> drop seen -> K.

The run date D is a UTC calendar day. Only clicks with ``timestamp < (D + 1 day) 00:00 UTC`` are
read (nothing after the run date); a user is *active* when they clicked at least once in the
``lookback_days`` days ending on D, i.e. in ``[D - lookback_days + 1, D + 1)`` 00:00 UTC. Their
history (the user tower's input window and the seen set that is filtered out) is all of their
clicks up to the end of D.

Users are processed in chunks of ``chunk_size`` (memory is bounded by the chunk, not the user
count); each chunk becomes one Parquet part file of rows
``(user_id, item_id, rank 1..K, score float32, model_version, index_id)`` sorted by (user_id, rank).

Letters: U users in a chunk, L history length, D embedding dim, K candidates, M items.

Example::

    model, spec, model_cfg = load_model_dir(path)
    result = generate_candidates(clicks, model, spec, index, run_date=parse_run_date("2024-05-01"),
                                 cfg=CandidatesConfig(), history_length=model_cfg.user_tower.history_length,
                                 model_version="3", index_id=index.manifest.index_id)
    result.partition  # runs/candidates/dt=2024-05-01
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import torch

from recsys_cl.config import CandidatesConfig
from recsys_cl.features.sequences import Sequences
from recsys_cl.features.spec import FeatureSpec
from recsys_cl.features.vocab import Vocab
from recsys_cl.index.base import SENTINEL_ID, Index
from recsys_cl.io_atomic import PartitionWriter, fsync_path
from recsys_cl.towers.two_tower import TwoTower
from recsys_cl.train.steps import embed_items, embed_users

log = logging.getLogger(__name__)
DAY = 86400
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class CandidatesError(ValueError):
    """Bad input to candidate generation (date, window, data); the message says what and how to fix it."""


# --------------------------------------------------------------------------------------------
# Dates and the active-user window
# --------------------------------------------------------------------------------------------


def parse_run_date(text: str) -> date:
    """``YYYY-MM-DD`` -> date; anything else raises :class:`CandidatesError` naming the format."""
    try:
        if not _DATE_RE.match(text):
            raise ValueError("wrong shape")
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise CandidatesError(
            f"--date {text!r} is not a valid calendar date; expected YYYY-MM-DD (e.g. 2024-05-01)"
        ) from None


def day_start(d: date) -> int:
    """Unix seconds of ``d`` 00:00 UTC."""
    return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp())


@dataclass(frozen=True)
class Window:
    """The active-user window of a run date: ``[start, end)`` in unix seconds (UTC)."""

    run_date: date
    lookback_days: int

    @property
    def start(self) -> int:
        return day_start(self.run_date - timedelta(days=self.lookback_days - 1))

    @property
    def end(self) -> int:
        """End of the run date (exclusive): no click at or after this is ever read."""
        return day_start(self.run_date + timedelta(days=1))

    def __str__(self) -> str:
        first = self.run_date - timedelta(days=self.lookback_days - 1)
        return f"[{first} 00:00, {self.run_date + timedelta(days=1)} 00:00) UTC"


def clicks_up_to(clicks: pl.DataFrame, run_date: date) -> pl.DataFrame:
    """Clicks with timestamp before the end of ``run_date`` (UTC): all history a run may read."""
    return clicks.filter(pl.col("timestamp") < Window(run_date, 1).end)


def active_users(clicks: pl.DataFrame, run_date: date, lookback_days: int) -> np.ndarray:
    """(U,) sorted ids of users with >= 1 click in the window; raises when there are none."""
    w = Window(run_date, lookback_days)
    users = (
        clicks.filter((pl.col("timestamp") >= w.start) & (pl.col("timestamp") < w.end))
        .get_column("user_id")
        .unique()
        .sort()
        .to_numpy()
    )
    if len(users) == 0:
        if clicks.height == 0:
            raise CandidatesError(f"no clicks at all: the click log is empty (window {w})")
        last = datetime.fromtimestamp(int(clicks["timestamp"].max()), tz=timezone.utc).date()  # type: ignore[arg-type]
        first = datetime.fromtimestamp(int(clicks["timestamp"].min()), tz=timezone.utc).date()  # type: ignore[arg-type]
        raise CandidatesError(
            f"no clicks in the window {w} (run date {run_date}, lookback {lookback_days} days); the data "
            f"spans {first} .. {last}: pick --date within it or raise candidates.lookback_days"
        )
    return users


# --------------------------------------------------------------------------------------------
# Per-user inputs: history windows and seen sets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserBatch:
    """Inputs for U users.

    Attributes:
        user_ids: (U,) original ids.
        user_index: (U,) user-vocab index (-1 = unknown to the model).
        windows: (U, L) most recent clicked items first (item-vocab indices), -1 padded.
        seen_offsets: (U + 1,) CSR offsets into ``seen_items``.
        seen_items: (S,) item-vocab indices each user clicked up to the run date.
    """

    user_ids: np.ndarray
    user_index: np.ndarray
    windows: np.ndarray
    seen_offsets: np.ndarray
    seen_items: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)


class UserHistories:
    """Time-ordered clicks (up to the run date) with per-user offsets, for chunked lookups."""

    def __init__(self, clicks: pl.DataFrame, spec: FeatureSpec) -> None:
        self.spec = spec
        self.seq = Sequences.from_clicks(clicks, spec.items, spec.users)
        uid = self.seq.user_ids
        n = len(uid)
        is_first = np.ones(n, dtype=bool)
        if n > 1:
            is_first[1:] = uid[1:] != uid[:-1]
        self.first = np.nonzero(is_first)[0]  # (U_all,)
        self.end = np.append(self.first[1:], n)  # (U_all,) exclusive
        self.users = uid[self.first]  # (U_all,) sorted

    def batch(self, user_ids: np.ndarray, length: int) -> UserBatch:
        """Inputs for ``user_ids`` (each must have clicks here)."""
        user_ids = np.asarray(user_ids)
        pos = np.minimum(np.searchsorted(self.users, user_ids), max(len(self.users) - 1, 0))
        if len(user_ids) and (len(self.users) == 0 or not np.array_equal(self.users[pos], user_ids)):
            raise CandidatesError("some users have no clicks up to the run date")
        first, end = self.first[pos], self.end[pos]  # (U,), (U,)
        # (U, L): positions end-1, end-2, ... down to the user's first click (as Sequences.last_windows)
        p = end[:, None] - np.arange(1, length + 1)[None, :]
        windows = np.where(p >= first[:, None], self.seq.item_index[np.clip(p, 0, None)], -1).astype(np.int64)
        counts = end - first  # (U,) clicks per user
        row = np.repeat(np.arange(len(user_ids)), counts)  # (C,)
        flat = np.repeat(first, counts) + (np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts))
        items = self.seq.item_index[flat]  # (C,) item-vocab index, -1 outside the vocabulary
        keep = items >= 0
        offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
        np.cumsum(np.bincount(row[keep], minlength=len(user_ids)), out=offsets[1:])
        return UserBatch(
            user_ids=user_ids,
            user_index=self.spec.users.encode(user_ids),
            windows=windows,
            seen_offsets=offsets,
            seen_items=items[keep].astype(np.int64),
        )


# --------------------------------------------------------------------------------------------
# Top-K unseen
# --------------------------------------------------------------------------------------------


def topk_unseen(
    index: Index,
    queries: np.ndarray,
    seen_offsets: np.ndarray,
    seen_items: np.ndarray,
    items: Vocab,
    k: int,
    max_extra: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` items per query that the user has not seen.

    Queries ``k + min(|seen|, max_extra)`` per chunk (the chunk's largest |seen|), drops seen and
    padding ids, and re-queries users left short with ``k + |seen|`` (exact for an exact index).

    Args:
        queries: (U, D) float32 user embeddings.
        seen_offsets, seen_items: CSR (U + 1,), (S,) item-vocab indices.
        items: the item vocabulary (index ids <-> vocab indices).

    Returns:
        (ids (U, k) int64, scores (U, k) float32, n (U,) valid per row); padded with
        SENTINEL_ID / -inf beyond n.
    """
    U = len(queries)
    M = index.size
    n_seen = np.diff(seen_offsets)
    out_ids = np.full((U, k), SENTINEL_ID, dtype=np.int64)
    out_scores = np.full((U, k), -np.inf, dtype=np.float32)
    out_n = np.zeros(U, dtype=np.int64)
    if U == 0:
        return out_ids, out_scores, out_n
    seen_keys = np.repeat(np.arange(U, dtype=np.int64), n_seen) * len(items) + seen_items  # (S,)
    seen_keys.sort()

    def fill(rows: np.ndarray, fetch: int) -> None:
        ids, scores = index.query(queries[rows], fetch)  # (R, F)
        idx = items.encode(ids.ravel()).reshape(ids.shape)
        keys = rows[:, None] * len(items) + idx
        pos = np.minimum(np.searchsorted(seen_keys, keys), max(len(seen_keys) - 1, 0))
        is_seen = (seen_keys[pos] == keys) if len(seen_keys) else np.zeros(keys.shape, dtype=bool)
        keep = (ids != SENTINEL_ID) & (idx >= 0) & ~is_seen & np.isfinite(scores)
        rank = np.cumsum(keep, axis=1)  # (R, F) 1-based rank among kept
        keep &= rank <= k
        r, c = np.nonzero(keep)
        out_ids[rows[r], rank[r, c] - 1] = ids[r, c]
        out_scores[rows[r], rank[r, c] - 1] = scores[r, c]
        out_n[rows] = keep.sum(axis=1)

    all_rows = np.arange(U)
    fill(all_rows, min(k + int(min(n_seen.max(), max_extra)), M))
    want = np.minimum(k, np.maximum(M - n_seen, 0))  # what an exact search can deliver
    short = all_rows[out_n < want]
    if len(short):
        fetch = min(k + int(n_seen[short].max()), M)
        fill(short, fetch)
    return out_ids, out_scores, out_n


# --------------------------------------------------------------------------------------------
# One process's scorer (local chunks, Spark executors)
# --------------------------------------------------------------------------------------------


OUTPUT_SCHEMA_FIELDS = ("user_id", "item_id", "rank", "score", "model_version", "index_id")


@dataclass
class Recommender:
    """Embeds a :class:`UserBatch` and returns its candidate rows as an Arrow table."""

    model: TwoTower
    spec: FeatureSpec
    index: Index
    k: int
    max_extra: int
    model_version: str
    index_id: str

    def embed(self, batch: UserBatch) -> np.ndarray:
        return embed_users(self.model, batch.windows, batch.user_index).numpy().astype(np.float32)

    def recommend(self, batch: UserBatch) -> pa.Table:
        q = self.embed(batch)  # (U, D)
        ids, scores, n = topk_unseen(
            self.index, q, batch.seen_offsets, batch.seen_items, self.spec.items, self.k, self.max_extra
        )
        mask = np.arange(self.k)[None, :] < n[:, None]  # (U, K)
        r, c = np.nonzero(mask)
        rows = len(r)
        return pa.table({
            "user_id": pa.array(batch.user_ids[r]),
            "item_id": pa.array(ids[r, c], pa.int64()),
            "rank": pa.array((c + 1).astype(np.int32)),
            "score": pa.array(scores[r, c].astype(np.float32)),
            "model_version": pa.array([self.model_version] * rows, pa.string()),
            "index_id": pa.array([self.index_id] * rows, pa.string()),
        })


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class CandidatesResult:
    partition: Path
    manifest: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for s in range(0, n, size):
        yield s, min(s + size, n)


def sampled_recall(
    rec: Recommender, histories: UserHistories, users: np.ndarray, length: int, n: int, seed: int
) -> dict[str, Any]:
    """recall@K of ``rec.index`` against exact search over the model's item embeddings, on ``n`` users."""
    if rec.index.is_exact or n == 0:
        return {"recall_at_k": 1.0, "sample_users": 0, "note": "exact index: recall is 1 by construction"}
    from recsys_cl.index.exact import ExactIndex
    from recsys_cl.index.tuning import recall_at_k

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(users, size=min(n, len(users)), replace=False))
    q = rec.embed(histories.batch(pick, length))
    exact = ExactIndex()
    exact.build(embed_items(rec.model, rec.spec.num_items).numpy(), rec.spec.items.ids)
    k = min(rec.k, exact.size)
    approx_ids, _ = rec.index.query(q, k)
    exact_ids, _ = exact.query(q, k)
    return {"recall_at_k": recall_at_k(approx_ids, exact_ids), "sample_users": int(len(pick)), "k": k}


def partition_stats(part_dir: Path, catalogue_size: int) -> dict[str, Any]:
    """Row count, users served and catalogue coverage of the part files in ``part_dir``."""
    files = sorted(part_dir.glob("*.parquet"))
    if not files:
        return {"rows": 0, "users_served": 0, "distinct_items": 0, "catalogue_coverage": 0.0}
    lf = pl.scan_parquet([str(f) for f in files])
    s = lf.select(
        pl.len().alias("rows"),
        pl.col("user_id").n_unique().alias("users_served"),
        pl.col("item_id").n_unique().alias("distinct_items"),
    ).collect().row(0, named=True)
    s = {k: int(v) for k, v in s.items()}
    s["catalogue_coverage"] = s["distinct_items"] / max(catalogue_size, 1)
    return s


def generate_candidates(
    clicks: pl.DataFrame,
    rec: Recommender,
    run_date: date,
    cfg: CandidatesConfig,
    history_length: int,
    *,
    extra_manifest: dict[str, Any] | None = None,
    validate: Callable[[Path, dict[str, Any]], None] | None = None,
    spark_runner: Callable[..., None] | None = None,
) -> CandidatesResult:
    """Compute and atomically publish ``<cfg.output_dir>/dt=<run_date>``.

    ``validate(temp_dir, manifest)`` runs before publishing (the nightly health checks); if it
    raises, nothing is published. ``spark_runner`` (from :mod:`recsys_cl.candidates_spark`)
    replaces the local chunk loop.
    """
    t = {"start": time.perf_counter()}
    history = clicks_up_to(clicks, run_date)  # nothing after the run date from here on
    users = active_users(history, run_date, cfg.lookback_days)
    histories = UserHistories(history.filter(pl.col("user_id").is_in(users)), rec.spec)
    t["load"] = time.perf_counter()
    dt = run_date.isoformat()
    with PartitionWriter(cfg.output_dir, dt) as writer:
        if spark_runner is not None:
            spark_runner(rec=rec, histories=histories, users=users, length=history_length,
                         cfg=cfg, out_dir=writer.temp_dir)
        else:
            torch.set_num_threads(cfg.n_workers)
            for s, e in chunks(len(users), cfg.chunk_size):
                writer.write_part(rec.recommend(histories.batch(users[s:e], history_length)))
        t["generate"] = time.perf_counter()
        stats = partition_stats(writer.temp_dir, rec.spec.num_items)
        recall = sampled_recall(rec, histories, users, history_length, cfg.recall_sample, cfg.seed)
        t["check"] = time.perf_counter()
        timings = {
            "load_s": t["load"] - t["start"],
            "generate_s": t["generate"] - t["load"],
            "checks_s": t["check"] - t["generate"],
        }
        window = Window(run_date, cfg.lookback_days)
        manifest: dict[str, Any] = {
            "date": dt,
            "window": str(window),
            "window_start_ts": window.start,
            "window_end_ts": window.end,
            "k": cfg.k,
            "users_active": int(len(users)),
            **stats,
            "served_share": stats["users_served"] / max(len(users), 1),
            "catalogue_size": rec.spec.num_items,
            "ann_recall": recall,
            "model_version": rec.model_version,
            "index_id": rec.index_id,
            "backend": rec.index.name,
            "index_params": rec.index.params(),
            "engine": "spark" if spark_runner is not None else "local",
            "chunk_size": cfg.chunk_size,
            "n_workers": cfg.n_workers,
            "timings": timings,
            "users_per_s": len(users) / max(timings["generate_s"], 1e-9),
            **(extra_manifest or {}),
        }
        partition = writer.commit(
            manifest, validate=None if validate is None else (lambda tmp: validate(tmp, manifest))
        )
    log.info("candidates for %s: %d users, %d rows -> %s", dt, len(users), stats["rows"], partition)
    return CandidatesResult(partition, manifest, timings)


# --------------------------------------------------------------------------------------------
# Model + index: load, check the pair, or build an index in memory
# --------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A model, its provenance and item embeddings, as :func:`load_model` returns them."""

    model: TwoTower
    spec: FeatureSpec
    history_length: int
    model_dir: Path
    model_uri: str
    provenance: dict[str, Any]
    item_vectors: np.ndarray  # (M, D) float32
    embedding_hash: str

    @property
    def version_label(self) -> str:
        """The ``model_version`` column: registry version, else ``run:<id>``, else ``sha:<model.pt>``."""
        if self.provenance.get("model_version"):
            return str(self.provenance["model_version"])
        if self.provenance.get("model_run_id"):
            return f"run:{self.provenance['model_run_id']}"
        import hashlib

        return "sha:" + hashlib.sha256((self.model_dir / "model.pt").read_bytes()).hexdigest()[:12]


def load_model(model_uri: str, tracking: Any) -> Loaded:
    """Resolve ``model_uri`` (path, runs:/, models:/name/version, models:/name@alias) and load it."""
    from recsys_cl.index.base import embedding_hash
    from recsys_cl.tracking import model_provenance, resolve_model_dir
    from recsys_cl.train.checkpoint import load_model_dir

    try:
        model_dir = resolve_model_dir(model_uri, tracking)
        model, spec, model_cfg = load_model_dir(model_dir)
        prov = model_provenance(model_uri, tracking)
    except (FileNotFoundError, OSError) as e:
        raise CandidatesError(f"cannot load model {model_uri!r}: {e}") from e
    except Exception as e:  # mlflow's RESOURCE_DOES_NOT_EXIST and friends
        raise CandidatesError(
            f"cannot load model {model_uri!r}: {e}; pass --model with a model directory, runs:/<id>/model, "
            "models:/<name>/<version> or models:/<name>@<alias>"
        ) from e
    vectors = embed_items(model, spec.num_items).numpy().astype(np.float32)
    if Path(model_uri).exists():  # a local path: compared with the index manifest's absolute path
        model_uri = str(Path(model_uri).absolute())
    return Loaded(model, spec, model_cfg.user_tower.history_length, Path(model_dir), model_uri, prov,
                  vectors, embedding_hash(vectors, spec.items.ids))


def open_index(index_dir: str | Path, loaded: Loaded, backend: str = "auto") -> tuple[Index, str, str]:
    """Load a saved index and refuse it unless its manifest matches the model. -> (index, index_id, reason)."""
    from recsys_cl.index.base import check_compatible, load_index

    index = load_index(index_dir)  # IndexLoadError: missing / corrupt
    m = index.manifest
    assert m is not None
    if backend not in ("auto", m.backend):
        raise CandidatesError(
            f"--backend {backend} but {index_dir} holds a '{m.backend}' index; pass --backend {m.backend} "
            "(or auto), or build the other backend with pipelines.build_index"
        )
    check_compatible(  # IndexMismatchError naming the field
        m,
        model_uri=loaded.model_uri,
        model_version=loaded.provenance.get("model_version"),
        model_run_id=loaded.provenance.get("model_run_id"),
        embedding_dim=int(loaded.item_vectors.shape[1]),
        embedding_hash=loaded.embedding_hash,
    )
    index_id = m.index_id or f"{m.backend}-{(m.embedding_hash or loaded.embedding_hash)[:12]}"
    return index, index_id, f"loaded {m.backend} index from {index_dir} (manifest checked against the model)"


def build_index_in_memory(
    backend: str, loaded: Loaded, sample_queries: np.ndarray, k: int, target_recall: float = 0.95
) -> tuple[Index, str, str]:
    """An index built from the model's item embeddings, no files. ``auto`` measures and picks.

    -> (index, index_id, reason). Annoy/faiss are tuned to ``target_recall`` on ``sample_queries``.
    """
    from recsys_cl.index.base import backend_class
    from recsys_cl.index.exact import ExactIndex
    from recsys_cl.index.tuning import choose_backend, tune_search_k

    exact = ExactIndex()
    exact.build(loaded.item_vectors, loaded.spec.items.ids)
    hash12 = loaded.embedding_hash[:12]
    if backend == "exact":
        return exact, f"exact-{hash12}", "exact index built in memory (no --index given)"
    kk = min(k, exact.size)
    names = ["annoy", "faiss"] if backend == "auto" else [backend]
    built: list[Index] = [exact] if backend == "auto" else []
    for name in names:
        try:
            idx = backend_class(name)()
            idx.build(loaded.item_vectors, loaded.spec.items.ids)
        except ImportError as e:
            if backend == "auto":
                log.info("auto: skipping %s (%s)", name, e)
                continue
            raise CandidatesError(f"backend {name} is not installed ({e}); pip install -e '.[ann]'") from e
        tune_search_k(idx, exact, sample_queries, kk, target_recall)
        built.append(idx)
    if backend != "auto":
        idx = built[0]
        return idx, f"{idx.name}-{hash12}", f"{idx.name} index built in memory, tuned to recall {target_recall}"
    choice = choose_backend(built, sample_queries, kk, target_recall, exact=exact)
    return choice.index, f"{choice.index.name}-{hash12}", choice.reason


# --------------------------------------------------------------------------------------------
# Spark engine (pyspark is an optional extra; imported only here)
# --------------------------------------------------------------------------------------------

_EXECUTOR_CACHE: dict[tuple[str, ...], Recommender] = {}
"""One Recommender per executor Python process (model + index loaded once, reused across tasks)."""


def spark_session(master: str = "local[2]", app_name: str = "recsys_cl-candidates") -> Any:
    """The one place a SparkSession is created (Arrow on; for ``local[*]``: driver on 127.0.0.1, UI off)."""
    import os
    import sys

    try:
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise CandidatesError("--engine spark needs pyspark: pip install -e '.[spark]' (and Java 17)") from e
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.python.worker.reuse", "true")
    )
    if master.startswith("local"):  # tests and single machines: loopback only, no UI
        builder = (builder.config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.driver.host", "127.0.0.1")
                   .config("spark.ui.enabled", "false")
                   .config("spark.sql.shuffle.partitions", "4"))
    return builder.getOrCreate()


def _executor_recommender(model_file: str, index_file: str, k: int, max_extra: int,
                          model_version: str, index_id: str) -> Recommender:
    from pyspark import SparkFiles

    from recsys_cl.index.base import load_index
    from recsys_cl.train.checkpoint import load_model_dir

    key = (model_file, index_file, str(k), str(max_extra), model_version, index_id)
    if key not in _EXECUTOR_CACHE:
        torch.set_num_threads(1)  # one task per core
        model, spec, _ = load_model_dir(SparkFiles.get(model_file))
        index = load_index(SparkFiles.get(index_file))
        _EXECUTOR_CACHE[key] = Recommender(model, spec, index, k, max_extra, model_version, index_id)
    return _EXECUTOR_CACHE[key]


def _spark_recommend(frames: Iterator[Any], args: tuple[Any, ...]) -> Iterator[Any]:
    """mapInPandas body: rows (user_id, user_index, window, seen) -> candidate rows."""
    rec = _executor_recommender(*args)
    for pdf in frames:
        if len(pdf) == 0:
            continue
        seen = list(pdf["seen"])
        offsets = np.zeros(len(pdf) + 1, dtype=np.int64)
        np.cumsum([len(s) for s in seen], out=offsets[1:])
        batch = UserBatch(
            user_ids=pdf["user_id"].to_numpy(),
            user_index=pdf["user_index"].to_numpy(np.int64),
            windows=np.stack([np.asarray(w, dtype=np.int64) for w in pdf["window"]]),
            seen_offsets=offsets,
            seen_items=np.concatenate([np.asarray(s, dtype=np.int64) for s in seen]) if offsets[-1] else
            np.zeros(0, dtype=np.int64),
        )
        yield rec.recommend(batch).to_pandas()


def make_spark_runner(model_dir: Path, index_dir: Path, master: str, n_partitions: int = 4) -> Callable[..., None]:
    """A ``spark_runner`` for :func:`generate_candidates`: users partitioned by id range, the model and
    index directories shipped with ``SparkContext.addFile`` and loaded once per executor process,
    ``mapInPandas``; executors write Parquet, sorted by (user_id, rank), into the temp partition."""

    def run(*, rec: Recommender, histories: UserHistories, users: np.ndarray, length: int,
            cfg: CandidatesConfig, out_dir: Path) -> None:
        import shutil

        import pandas as pd

        spark = spark_session(master)
        sc = spark.sparkContext
        sc.addFile(str(model_dir), recursive=True)
        sc.addFile(str(index_dir), recursive=True)
        id_type = "string" if users.dtype.kind in "UO" else "long"
        in_schema = f"user_id {id_type}, user_index long, window array<long>, seen array<long>"
        out_schema = f"user_id {id_type}, item_id long, rank int, score float, model_version string, index_id string"
        args = (model_dir.name, index_dir.name, cfg.k, cfg.max_extra_fetch, rec.model_version, rec.index_id)
        frames = []
        for s, e in chunks(len(users), cfg.chunk_size):  # driver-side inputs, chunk by chunk
            b = histories.batch(users[s:e], length)
            frames.append(pd.DataFrame({
                "user_id": b.user_ids, "user_index": b.user_index, "window": list(b.windows),
                "seen": [b.seen_items[b.seen_offsets[i]:b.seen_offsets[i + 1]] for i in range(len(b))],
            }))
        df = spark.createDataFrame(pd.concat(frames, ignore_index=True), schema=in_schema)
        out = (
            df.repartitionByRange(n_partitions, "user_id")
            .mapInPandas(lambda it: _spark_recommend(it, args), schema=out_schema)
            .repartitionByRange(n_partitions, "user_id")
            .sortWithinPartitions("user_id", "rank")
        )
        spark_dir = out_dir / "_spark"
        out.write.mode("overwrite").option("compression", "zstd").parquet(str(spark_dir))
        for i, f in enumerate(sorted(spark_dir.glob("part-*.parquet"))):
            dest = out_dir / f"part-{i:05d}.parquet"
            f.rename(dest)
            fsync_path(dest)
        shutil.rmtree(spark_dir)

    return run


# --------------------------------------------------------------------------------------------
# One call for the pipelines
# --------------------------------------------------------------------------------------------


def run(
    cfg: CandidatesConfig,
    clicks: pl.DataFrame,
    loaded: Loaded,
    run_date: date,
    *,
    index_dir: str | Path | None = None,
    validate: Callable[[Path, dict[str, Any]], None] | None = None,
    extra_manifest: dict[str, Any] | None = None,
) -> CandidatesResult:
    """Index (loaded and checked, or built in memory) -> candidates for ``run_date`` -> published partition.

    ``cfg.backend`` / ``cfg.engine`` choose the backend and engine; the manifest records the choice
    and why.
    """
    import tempfile

    t0 = time.perf_counter()
    history = clicks_up_to(clicks, run_date)
    users = active_users(history, run_date, cfg.lookback_days)  # fail early on an empty window
    if index_dir is not None:
        index, index_id, reason = open_index(index_dir, loaded, cfg.backend)
    else:
        sample = np.random.default_rng(cfg.seed).choice(users, size=min(len(users), 1000), replace=False)
        hist = UserHistories(history.filter(pl.col("user_id").is_in(sample)), loaded.spec)
        queries = embed_users(
            loaded.model, *_windows_and_index(hist.batch(np.sort(sample), loaded.history_length))
        ).numpy()
        index, index_id, reason = build_index_in_memory(cfg.backend, loaded, queries, cfg.k)
    if hasattr(index, "n_jobs"):
        index.n_jobs = cfg.n_workers  # Annoy: threads over queries (it releases the GIL)
    rec = Recommender(loaded.model, loaded.spec, index, cfg.k, cfg.max_extra_fetch, loaded.version_label, index_id)
    extra = {
        "backend_reason": reason,
        "model_uri": loaded.model_uri,
        "model_name": loaded.provenance.get("model_name"),
        "model_run_id": loaded.provenance.get("model_run_id"),
        "embedding_hash": loaded.embedding_hash,
        "index_dir": None if index_dir is None else str(index_dir),
        "index_setup_s": time.perf_counter() - t0,
        **(extra_manifest or {}),
    }
    if cfg.engine == "local":
        return generate_candidates(clicks, rec, run_date, cfg, loaded.history_length,
                                   extra_manifest=extra, validate=validate)
    with tempfile.TemporaryDirectory(prefix="recsys_cl_spark_index_") as tmp:
        ship = Path(index_dir) if index_dir is not None else index.save(Path(tmp) / "index")
        runner = make_spark_runner(loaded.model_dir, ship, cfg.spark_master)
        return generate_candidates(clicks, rec, run_date, cfg, loaded.history_length,
                                   extra_manifest=extra, validate=validate, spark_runner=runner)


def _windows_and_index(batch: UserBatch) -> tuple[np.ndarray, np.ndarray]:
    return batch.windows, batch.user_index


def read_partition(partition: str | Path) -> pl.DataFrame:
    """All rows of a published partition, sorted by (user_id, rank)."""
    files = sorted(Path(partition).glob("*.parquet"))
    if not files:
        raise CandidatesError(f"{partition} holds no part files")
    return pl.read_parquet([str(f) for f in files]).sort("user_id", "rank")


# --------------------------------------------------------------------------------------------
# Health against the previous night
# --------------------------------------------------------------------------------------------


class HealthCheckError(RuntimeError):
    """Candidates crossed a configured health threshold; nothing was published."""

    def __init__(self, failures: list[str], health: dict[str, Any]) -> None:
        super().__init__("; ".join(failures))
        self.failures = failures
        self.health = health


def previous_partition(output_dir: str | Path, run_date: date) -> Path | None:
    """The latest published partition (with ``_SUCCESS``) strictly before ``run_date``."""
    from recsys_cl.io_atomic import read_success

    root = Path(output_dir)
    if not root.is_dir():
        return None
    found = sorted(
        p for p in root.glob("dt=*")
        if p.name[3:] < run_date.isoformat() and read_success(p) is not None
    )
    return found[-1] if found else None


def overlap_at_k(new: pl.DataFrame, old: pl.DataFrame, k: int) -> tuple[float, int]:
    """Mean over users present in both of |new_u ∩ old_u| / min(k, |new_u|, |old_u|) -> (overlap, users)."""
    a = new.select("user_id", "item_id")
    b = old.select("user_id", "item_id")
    n_new = a.group_by("user_id").len("n_new")
    n_old = b.group_by("user_id").len("n_old")
    common = a.join(b, on=["user_id", "item_id"]).group_by("user_id").len("both")
    users = n_new.join(n_old, on="user_id").join(common, on="user_id", how="left").fill_null(0)
    if users.height == 0:
        return float("nan"), 0
    denom = pl.min_horizontal(pl.lit(k), pl.col("n_new"), pl.col("n_old"))
    return float(users.select((pl.col("both") / denom).mean()).item()), users.height


def health_check(
    temp_dir: Path, manifest: dict[str, Any], cfg: CandidatesConfig, previous: Path | None
) -> tuple[dict[str, Any], list[str]]:
    """Health figures of a not-yet-published partition and the thresholds it crosses."""
    from recsys_cl.io_atomic import read_success

    health: dict[str, Any] = {
        "served_share": manifest["served_share"],
        "catalogue_coverage": manifest["catalogue_coverage"],
        "ann_recall": manifest["ann_recall"]["recall_at_k"],
        "previous_partition": None if previous is None else str(previous),
    }
    failures = []
    if health["served_share"] < cfg.min_served_share:
        failures.append(f"served share {health['served_share']:.3f} < candidates.min_served_share "
                        f"{cfg.min_served_share}")
    if health["catalogue_coverage"] < cfg.min_coverage:
        failures.append(f"catalogue coverage {health['catalogue_coverage']:.4f} < candidates.min_coverage "
                        f"{cfg.min_coverage}")
    if health["ann_recall"] < cfg.min_ann_recall:
        failures.append(f"sampled ANN recall@K {health['ann_recall']:.3f} < candidates.min_ann_recall "
                        f"{cfg.min_ann_recall}")
    if previous is not None:
        prev_manifest = read_success(previous) or {}
        same_model = prev_manifest.get("model_version") == manifest["model_version"]
        overlap, n = overlap_at_k(read_partition(temp_dir), read_partition(previous), cfg.k)
        health.update(overlap_at_k=overlap, overlap_users=n, same_model_as_previous=same_model,
                      previous_model_version=prev_manifest.get("model_version"))
        if same_model and n and overlap < cfg.min_overlap:
            failures.append(f"overlap@K with {previous.name} is {overlap:.3f} < candidates.min_overlap "
                            f"{cfg.min_overlap} with the same model version {manifest['model_version']}")
    return health, failures
