"""Health of a not-yet-published partition against the previous night (the nightly job's gate)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from recsys_cl.candidates.generate import read_partition
from recsys_cl.config import CandidatesConfig


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
    """Mean over users present in both of |new_u ∩ old_u| / min(k, |new_u|, |old_u|) -> (overlap, users).

    Partitions whose ids are of different types (a model of string item ids after one of integer ids)
    share no user: (nan, 0)."""
    a = new.select("user_id", "item_id")
    b = old.select("user_id", "item_id")
    if a.schema != b.schema:
        return float("nan"), 0
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
        "known_item_share": manifest["known_item_share"],
        "clicks_on_run_date": manifest["clicks_on_run_date"],
        "new_item_share": manifest.get("new_item_share", 0.0),
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
    if health["known_item_share"] < cfg.min_known_item_share:
        failures.append(f"only {health['known_item_share']:.3f} of the window's clicks are on items the model knows "
                        f"< candidates.min_known_item_share {cfg.min_known_item_share}")
    if cfg.require_clicks_on_run_date and health["clicks_on_run_date"] == 0:
        failures.append(f"no click on the run date {manifest['date']} itself: the click log looks late "
                        "(candidates.require_clicks_on_run_date)")
    if health["new_item_share"] > cfg.max_new_item_share:
        how = manifest.get("fold_in") or {}
        cause = ("candidates.fold_in=sum grows their vectors with every click: use fit"
                 if how.get("method") == "sum" and how.get("clicks") else
                 "their vectors outrank the trained items': retrain the model on recent clicks")
        failures.append(f"{health['new_item_share']:.3f} of the rows recommend items without training clicks > "
                        f"candidates.max_new_item_share {cfg.max_new_item_share} ({cause})")
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
