"""The local candidates run: chunks of active users -> part files in a temp partition -> checks -> swap.

Users are processed in chunks of ``chunk_size`` (memory is bounded by the chunk, not the user
count); each chunk becomes one Parquet part file of rows
``(user_id, item_id, rank 1..K, score float32, model_version, index_id)`` sorted by (user_id, rank).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import polars as pl
import torch

from recsys_cl.candidates.histories import UserHistories, check_clicks
from recsys_cl.candidates.scoring import Recommender, topk_unseen
from recsys_cl.candidates.window import (
    CandidatesError,
    Window,
    active_users,
    clicks_up_to,
    trained_after,
)
from recsys_cl.config import CandidatesConfig
from recsys_cl.index.base import Index
from recsys_cl.io_atomic import PartitionWriter
from recsys_cl.train.steps import embed_items

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunWindow:
    """The clicks a run reads, checked once: what :func:`read_window` returns."""

    window: Window
    history: pl.DataFrame
    """Every click up to the end of the run date (nothing later is ever read)."""
    users: np.ndarray
    """(U,) sorted ids of the users active in the window."""
    clicks_read: dict[str, float]
    """:func:`recsys_cl.candidates.histories.check_clicks` of the window."""
    model_trained_until: str | None = None
    """Date of the model's last training click (None: not recorded with the model)."""
    model_after_run_date: bool = False
    """The model was trained on clicks after the run date (warned about once, here)."""


def read_window(
    clicks: pl.DataFrame, spec: Any, run_date: date, lookback_days: int, min_known_item_share: float = 0.0,
) -> RunWindow:
    """Clicks up to ``run_date``, its active users and what the model can read of them.

    Raises:
        CandidatesError: no active user in the window, ids of another type, no window click on a
            known item (see :func:`~recsys_cl.candidates.window.active_users` and ``check_clicks``),
            or fewer than ``min_known_item_share`` of them (``candidates.min_known_item_share``;
            nightly's health check has the same floor): most likely a model trained on other data.
    """
    history = clicks_up_to(clicks, run_date)  # nothing after the run date from here on
    users = active_users(history, run_date, lookback_days)
    window = Window(run_date, lookback_days)
    read = check_clicks(history, spec, window)
    if read["known_item_share"] < min_known_item_share:
        raise CandidatesError(
            f"only {read['known_item_share']:.1%} of the {read['window_clicks']:.0f} clicks in the window {window} "
            f"are on items the model knows, below candidates.min_known_item_share {min_known_item_share}: is the "
            "model trained on this click log (check --model / the alias and data.path)? Lower "
            "candidates.min_known_item_share to serve it anyway"
        )
    return RunWindow(window, history, users, read, *trained_after(spec.train_clicks_until, run_date))


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
    """recall@K of the *delivered* lists (top K after dropping each user's seen items) from
    ``rec.index`` against the same lists from exact search over the model's item embeddings, on
    ``n`` sampled users. Measured on what users receive, not on the raw index top K: seen items
    push the delivered list deeper into the index, where an ANN index is least accurate."""
    if rec.index.is_exact or n == 0:
        return {"recall_at_k": 1.0, "sample_users": 0, "note": "exact index: recall is 1 by construction"}
    from recsys_cl.index.exact import ExactIndex
    from recsys_cl.index.tuning import recall_at_k

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(users, size=min(n, len(users)), replace=False))
    batch = histories.batch(pick, length)
    q = rec.embed(batch)
    exact = ExactIndex()
    exact.build(embed_items(rec.model, rec.spec.num_items).numpy(), rec.spec.items.ids)
    k = min(rec.k, exact.size)
    lists = [
        topk_unseen(index, q, batch.seen_offsets, batch.seen_items, rec.spec.items, k, rec.max_extra)[0]
        for index in (rec.index, exact)
    ]
    return {"recall_at_k": recall_at_k(lists[0], lists[1]), "sample_users": int(len(pick)), "k": k,
            "measured_on": "delivered lists (seen items dropped)"}


def short_lists_reason(index: Index, num_items: int) -> str:
    """Why users got fewer than K candidates, and what to do, for ``index``'s backend. Users left short
    by a fetch are re-queried at K + |seen|, so ``candidates.max_extra_fetch`` is never the cause."""
    catalogue = f"their history leaves fewer unseen items in the {num_items}-item catalogue"
    if index.is_exact:  # exact search returns every unseen item up to K
        return catalogue + " (or their user embedding is not finite)"
    return (f"{catalogue}, or the {index.name} index found fewer at its search depth ({index.params()}); "
            "pass --index with one built deeper (python -m pipelines.build_index --set index.target_recall=0.99), "
            "or use candidates.backend=exact")


def partition_stats(
    part_dir: Path, catalogue_size: int, new_items: np.ndarray | None = None, k: int | None = None,
) -> dict[str, Any]:
    """Row count, users served and catalogue coverage of the part files in ``part_dir``; with
    ``new_items`` (ids of the items without training clicks) also ``new_item_share``: the share of
    rows that recommend one of them, what ``eval.catalogue=all_items`` measures offline; with ``k``
    also ``short_lists``: users served fewer than ``k`` candidates (their history leaves fewer unseen
    items, or the index found fewer)."""
    files = sorted(part_dir.glob("*.parquet"))
    s: dict[str, Any] = {"rows": 0, "users_served": 0, "distinct_items": 0, "new_item_rows": 0, "short_lists": 0}
    if files:
        lf = pl.scan_parquet([str(f) for f in files])
        new = pl.Series([] if new_items is None else np.asarray(new_items)).cast(lf.collect_schema()["item_id"])
        s = lf.select(
            pl.len().alias("rows"),
            pl.col("user_id").n_unique().alias("users_served"),
            pl.col("item_id").n_unique().alias("distinct_items"),
            pl.col("item_id").is_in(new.implode()).sum().alias("new_item_rows"),
        ).collect().row(0, named=True)
        s = {name: int(v) for name, v in s.items()}
        if k is not None:
            per_user = lf.group_by("user_id").len()
            s["short_lists"] = int(per_user.filter(pl.col("len") < k).select(pl.len()).collect().item())
    s["catalogue_coverage"] = s["distinct_items"] / max(catalogue_size, 1)
    new_rows = s.pop("new_item_rows")
    if new_items is not None:
        s["new_item_share"] = new_rows / max(s["rows"], 1)
    if k is None:
        s.pop("short_lists", None)
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
    spark_runner: Callable[..., dict[str, Any] | None] | None = None,
    read: RunWindow | None = None,
) -> CandidatesResult:
    """Compute and atomically publish ``<cfg.output_dir>/dt=<run_date>``.

    ``validate(temp_dir, manifest)`` runs before publishing (the nightly health checks); if it
    raises, nothing is published. ``spark_runner`` (from :func:`recsys_cl.candidates.spark.make_spark_runner`)
    replaces the local chunk loop; the engine's start-up time it reports (``timings.engine_startup_s``)
    is in ``timings`` but not in ``users_per_s``, and its ``info`` (where it ran) is the manifest's
    ``engine_info``. ``read``: :func:`read_window` of the same clicks and
    date when the caller has it already (``job.run`` reads the window before it builds an index).
    """
    t = {"start": time.perf_counter()}
    if read is None:
        read = read_window(clicks, rec.spec, run_date, cfg.lookback_days, cfg.min_known_item_share)
    history, users, window, clicks_read = read.history, read.users, read.window, read.clicks_read
    if clicks_read["known_item_share"] < 0.9:
        log.warning("%.1f%% of the window's clicks are on items the model does not know; their users' "
                    "histories are shorter than they are", 100 * (1 - clicks_read["known_item_share"]))
    if clicks_read["clicks_on_run_date"] == 0:
        log.warning("no click on the run date %s itself: is the click log late?", run_date)
    histories = UserHistories(history.filter(pl.col("user_id").is_in(users)), rec.spec)
    t["load"] = time.perf_counter()
    dt = run_date.isoformat()
    engine: dict[str, Any] = {}
    with PartitionWriter(cfg.output_dir, dt) as writer:
        if spark_runner is not None:
            engine = spark_runner(rec=rec, histories=histories, users=users, length=history_length,
                                  cfg=cfg, out_dir=writer.temp_dir) or {}
        else:
            torch.set_num_threads(cfg.n_workers)
            for s, e in chunks(len(users), cfg.chunk_size):
                writer.write_part(rec.recommend(histories.batch(users[s:e], history_length)))
        t["generate"] = time.perf_counter()
        stats = partition_stats(writer.temp_dir, rec.spec.num_items, rec.spec.items.ids[rec.spec.cold_items], cfg.k)
        if stats["short_lists"]:
            log.warning("%d of the %d users served got fewer than candidates.k=%d candidates: %s",
                        stats["short_lists"], stats["users_served"], cfg.k,
                        short_lists_reason(rec.index, rec.spec.num_items))
        recall = sampled_recall(rec, histories, users, history_length, cfg.recall_sample, cfg.seed)
        t["check"] = time.perf_counter()
        engine_timings: dict[str, float] = engine.get("timings", {})
        timings = {
            "load_s": t["load"] - t["start"],
            "generate_s": t["generate"] - t["load"],
            "checks_s": t["check"] - t["generate"],
            **engine_timings,
        }
        serving_s = timings["generate_s"] - engine_timings.get("engine_startup_s", 0.0)
        manifest: dict[str, Any] = {
            "date": dt,
            "window": str(window),
            "window_start_ts": window.start,
            "window_end_ts": window.end,
            "k": cfg.k,
            "users_active": int(len(users)),
            "window_clicks": int(clicks_read["window_clicks"]),
            "known_item_share": clicks_read["known_item_share"],
            "clicks_on_run_date": int(clicks_read["clicks_on_run_date"]),
            "model_trained_until": read.model_trained_until,
            "model_after_run_date": read.model_after_run_date,
            **stats,
            "served_share": stats["users_served"] / max(len(users), 1),
            "catalogue_size": rec.spec.num_items,
            "ann_recall": recall,
            "model_version": rec.model_version,
            "index_id": rec.index_id,
            "backend": rec.index.name,
            "index_params": rec.index.params(),
            "engine": "spark" if spark_runner is not None else "local",
            "engine_info": engine.get("info", {}),
            "chunk_size": cfg.chunk_size,
            "n_workers": cfg.n_workers,
            "timings": timings,
            "users_per_s": len(users) / max(serving_s, 1e-9),  # without the engine's start-up
            **(extra_manifest or {}),
        }
        partition = writer.commit(
            manifest, validate=None if validate is None else (lambda tmp: validate(tmp, manifest))
        )
    log.info("candidates for %s: %d users, %d rows -> %s", dt, len(users), stats["rows"], partition)
    return CandidatesResult(partition, manifest, timings)


def read_partition(partition: str | Path) -> pl.DataFrame:
    """All rows of a published partition, sorted by (user_id, rank)."""
    files = sorted(Path(partition).glob("*.parquet"))
    if not files:
        raise CandidatesError(f"{partition} holds no part files")
    return pl.read_parquet([str(f) for f in files]).sort("user_id", "rank")
