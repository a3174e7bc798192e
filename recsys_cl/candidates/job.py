"""One call for the pipelines: index (loaded and checked, or built in memory) -> candidates -> partition."""

from __future__ import annotations

import shutil
import time
from datetime import date
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

from recsys_cl.candidates.generate import CandidatesResult, RunWindow, generate_candidates, read_window
from recsys_cl.candidates.histories import UserBatch, UserHistories
from recsys_cl.candidates.model import Loaded, build_index_in_memory, open_index
from recsys_cl.candidates.scoring import Recommender
from recsys_cl.candidates.spark import make_spark_runner
from recsys_cl.config import CandidatesConfig
from recsys_cl.io_atomic import linked_copy, scratch_dir
from recsys_cl.train.steps import embed_users


def run(
    cfg: CandidatesConfig,
    clicks: pl.DataFrame,
    loaded: Loaded,
    run_date: date,
    *,
    index_dir: str | Path | None = None,
    validate: Callable[[Path, dict[str, Any]], None] | None = None,
    extra_manifest: dict[str, Any] | None = None,
    index_backend: str = "auto",
    opened: tuple[Any, str, str] | None = None,
    read: RunWindow | None = None,
) -> CandidatesResult:
    """Index (loaded and checked, or built in memory) -> candidates for ``run_date`` -> published partition.

    ``cfg.backend`` / ``cfg.engine`` choose the backend built in memory and the engine; the manifest
    records the choice and why. A saved ``index_dir`` is used with its own backend, which must be
    ``index_backend`` unless that is ``auto``. ``opened`` is ``open_index(index_dir, ...)``'s result
    when the caller already opened and checked it (to fail before opening an MLflow run); ``read``
    likewise is :func:`~recsys_cl.candidates.generate.read_window` of ``clicks`` on ``run_date``.
    """
    t0 = time.perf_counter()
    if read is None:  # fail early: no active user, foreign ids
        read = read_window(clicks, loaded.spec, run_date, cfg.lookback_days, cfg.min_known_item_share)
    history, users = read.history, read.users
    if index_dir is not None:
        # a saved index is used with its own backend (candidates.backend only picks what to build
        # in memory); the manifest is still checked against the model
        index, index_id, reason = opened or open_index(index_dir, loaded, index_backend)
    else:
        sample = np.random.default_rng(cfg.seed).choice(users, size=min(len(users), 1000), replace=False)
        hist = UserHistories(history.filter(pl.col("user_id").is_in(sample)), loaded.spec)
        batch = hist.batch(np.sort(sample), loaded.history_length)
        queries = embed_users(loaded.model, *_windows_and_index(batch)).numpy()
        seen = np.diff(batch.seen_offsets)
        fetch_extra = int(min(np.median(seen), cfg.max_extra_fetch)) if len(seen) else 0
        index, index_id, reason = build_index_in_memory(
            cfg.backend, loaded, queries, cfg.k, fetch_extra=fetch_extra
        )
    if hasattr(index, "n_jobs"):
        index.n_jobs = cfg.n_workers  # Annoy: threads over queries (it releases the GIL)
    rec = Recommender(loaded.model, loaded.spec, index, cfg.k, cfg.max_extra_fetch, loaded.version_label, index_id)
    extra: dict[str, Any] = {
        "backend_reason": reason,
        "model_uri": loaded.model_uri,
        "model_name": loaded.provenance.get("model_name"),
        "model_run_id": loaded.provenance.get("model_run_id"),
        "embedding_hash": loaded.embedding_hash,
        "fold_in": loaded.fold_in,
        "index_dir": None if index_dir is None else str(index_dir),
        "index_setup_s": time.perf_counter() - t0,
        **(extra_manifest or {}),
    }
    if cfg.engine == "local":
        return generate_candidates(clicks, rec, run_date, cfg, loaded.history_length,
                                   extra_manifest=extra, validate=validate, read=read)
    tmp = scratch_dir("recsys_cl_spark_index_")  # removed below, or by a later run if this one is killed
    try:
        # SparkContext.addFile refuses a second folder of the same name with other contents, and a
        # session outlives the job: a later job in this process (another model, another index) would
        # fail. Each job ships its folders under names of its own (hard links on the same file system,
        # else plain copies: the temp dir may be another device than the model store or index).
        tag = tmp.name.removeprefix("recsys_cl_spark_index_")
        ship_model = linked_copy(loaded.model_dir, tmp / f"model-{tag}")
        ship = (linked_copy(Path(index_dir), tmp / f"index-{tag}") if index_dir is not None
                else index.save(tmp / f"index-{tag}"))
        runner = make_spark_runner(ship_model, ship, cfg.spark_master, cfg.spark_partitions)
        return generate_candidates(clicks, rec, run_date, cfg, loaded.history_length,
                                   extra_manifest=extra, validate=validate, spark_runner=runner, read=read)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _windows_and_index(batch: UserBatch) -> tuple[np.ndarray, np.ndarray]:
    return batch.windows, batch.user_index
