"""Aggregate per-seed results and render the comparison tables the README shows."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

TABLE_METRICS = ("recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@20", "mrr", "coverage@20")


def mean_std(
    runs: Sequence[Mapping[str, float]], keys: Sequence[str] = TABLE_METRICS
) -> dict[str, tuple[float, float]]:
    """{metric: (mean, sample std)} over runs (std 0 for a single run); NaN where a run lacks it."""
    out = {}
    for k in keys:
        vals = np.array([r.get(k, np.nan) for r in runs], dtype=float)
        out[k] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)
    return out


def markdown_table(
    rows: Sequence[tuple[str, Mapping[str, tuple[float, float]], int]],
    keys: Sequence[str] = TABLE_METRICS,
) -> str:
    """One row per model: ``(name, {metric: (mean, std)}, n_seeds)``."""
    head = "| model | seeds | " + " | ".join(keys) + " |"
    sep = "|---|---|" + "---|" * len(keys)
    lines = [head, sep]
    for name, stats, n in rows:
        cells = [
            "n/a" if np.isnan(stats[k][0]) else f"{stats[k][0]:.4f}" + (f" ± {stats[k][1]:.4f}" if n > 1 else "")
            for k in keys
        ]
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def validation_table(runs: Sequence[Mapping[str, Any]], metric: str = "recall@20") -> str:
    """One row per variant (in first-seen order) of ablation runs ``{"variant", "seed", "val_metrics",
    "best_epoch"}``: validation ``metric`` (mean ± sample std over seeds), what a variant is chosen on,
    and each seed's best epoch."""
    lines = [f"| variant | seeds | validation {metric} | best epochs |", "|---|---|---|---|"]
    for name in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == name]
        mean, std = mean_std([r.get("val_metrics", {}) for r in mine], [metric])[metric]
        value = "n/a" if np.isnan(mean) else f"{mean:.4f}" + (f" ± {std:.4f}" if len(mine) > 1 else "")
        epochs = ", ".join(str(r.get("best_epoch", "?")) for r in mine)
        lines.append(f"| {name} | {len(mine)} | {value} | {epochs} |")
    return "\n".join(lines)
