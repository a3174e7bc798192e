"""Grid sweeps: parse ``--grid key=v1,v2`` axes, expand them into runs, and summarise the results
as a table (CSV + Markdown) and a grouped bar plot. No MLflow here: ``pipelines.sweep`` does the
logging through ``recsys_cl.tracking``.

Example::

    axes = parse_grid(["loss.kind=softmax,debiased", "loss.temperature=0.05,0.1"])
    points = expand_grid(axes)        # 4 points, the last axis varying fastest
    points[1].overrides               # ('loss.kind=softmax', 'loss.temperature=0.1')
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from recsys_cl.config import ConfigError, UniqueKeyLoader
from recsys_cl.eval.report import TABLE_METRICS

SUMMARY_METRICS = ("val/recall@20", *(f"test/{m}" for m in TABLE_METRICS))


@dataclass(frozen=True)
class GridPoint:
    """One combination of grid values: ``values`` maps each axis key to its value text."""

    values: tuple[tuple[str, str], ...]

    @property
    def overrides(self) -> tuple[str, ...]:
        return tuple(f"{k}={v}" for k, v in self.values)

    @property
    def label(self) -> str:
        """``loss.kind=softmax,loss.temperature=0.05``: used in run names and the ``sweep_point`` tag."""
        return ",".join(self.overrides)


def split_values(text: str) -> list[str]:
    """Split ``a,b,[c,d]`` on top-level commas only, so list values (``[id,categorical]``) survive."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


SEED_KEY = "train.seed"
"""Set by ``--seeds`` in every run of a sweep or an ablation: refused in --grid, in variants and, where
``--seeds`` applies, in --set (:func:`refuse_seed_override`)."""


def refuse_seed_override(overrides: Sequence[str], where: str) -> None:
    """Raise :class:`ConfigError` when one of ``overrides`` (``key=value``) sets :data:`SEED_KEY`, which
    ``--seeds`` overrides in every run: the run would be tagged with one seed and trained with another."""
    for item in overrides:
        if item.partition("=")[0].strip() == SEED_KEY:
            raise ConfigError(f"{where} sets {item.strip()!r}, but --seeds sets {SEED_KEY} in every run (and "
                              f"overrides it); drop it and pass the seeds as --seeds, e.g. --seeds 0 1 2")


def refuse_duplicate_seeds(seeds: Sequence[int]) -> None:
    """Raise :class:`ConfigError` when ``--seeds`` names a seed twice: the same seed trains the same model twice."""
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds has duplicates {list(seeds)}: the same seed trains the same model twice")


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["loss.kind=softmax,debiased"]`` -> ``[("loss.kind", ["softmax", "debiased"])]``.

    Raises:
        ConfigError: a spec without ``=``, an empty value, the same key given twice, or ``train.seed``
            (``--seeds`` sets it).
    """
    axes: list[tuple[str, list[str]]] = []
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--grid {spec!r} must look like section.key=v1,v2 (e.g. loss.temperature=0.05,0.1)")
        values = split_values(text)
        if any(v == "" for v in values):
            raise ConfigError(f"--grid {spec!r} has an empty value; separate values with single commas")
        if key == SEED_KEY:  # every point runs each --seeds value, which overrode the axis unseen
            raise ConfigError(f"--grid {spec!r}: {SEED_KEY} cannot be a grid axis, --seeds sets every run's seed "
                              f"(and overrides it); pass --seeds {' '.join(values)} instead")
        if key in {k for k, _ in axes}:
            raise ConfigError(f"--grid key {key!r} is given twice; put all its values in one --grid")
        unique: dict[str, str] = {}
        for v in values:  # 0.1,0.10 is one value, trained once, under its first spelling
            unique.setdefault(_parsed(v), v)
        axes.append((key, list(unique.values())))
    return axes


def _parsed(text: str) -> str:
    """A grid value as ``--set`` reads it (YAML), typed, for spotting repeats spelled differently (0.1, 0.10)."""
    try:
        value = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError:
        return f"text:{text}"  # not YAML: load_config reports it, with the key
    return f"{type(value).__name__}:{value!r}"


def expand_grid(axes: Sequence[tuple[str, Sequence[str]]]) -> list[GridPoint]:
    """Cartesian product of the axes, in the order given (the last axis varies fastest)."""
    if not axes:
        return [GridPoint(())]
    keys = [k for k, _ in axes]
    return [GridPoint(tuple(zip(keys, combo))) for combo in itertools.product(*(v for _, v in axes))]


BOOKKEEPING_KEYS = ("train.progress", "train.resume", "train.checkpoint_dir")


def sweep_key(flat_config: Mapping[str, Any], axes: Sequence[tuple[str, Sequence[str]]], seeds: Sequence[int],
              baselines: Sequence[str], name: str, data_fingerprint: str) -> str:
    """Identity of a sweep for resuming: the base config (``RunConfig.to_flat_dict()``; all of it but
    :data:`BOOKKEEPING_KEYS`, so more epochs is a new sweep), the grid, the seeds, the baselines, the
    parent run's name and the data. Any change starts a new sweep."""
    ident = json.dumps([_identity(flat_config), [[k, list(v)] for k, v in axes], list(seeds), list(baselines),
                        name, data_fingerprint])
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _identity(flat_config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A flat config as sorted ``(key, repr(value))`` pairs, :data:`BOOKKEEPING_KEYS` left out."""
    return sorted((k, repr(v)) for k, v in flat_config.items() if k not in BOOKKEEPING_KEYS)


def ablation_key(flat_configs: Mapping[str, Mapping[str, Any]], baselines: Sequence[str],
                 data_fingerprint: str) -> str:
    """Identity of an ablation for resuming: every run's config (``{run name: flat config}``, all of
    it but :data:`BOOKKEEPING_KEYS`), the baselines and the data. Any change starts a new ablation."""
    configs = {name: _identity(flat) for name, flat in sorted(flat_configs.items())}
    ident = json.dumps([configs, list(baselines), data_fingerprint])
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def summary_frame(rows: Sequence[Mapping[str, Any]], grid_keys: Sequence[str]) -> pd.DataFrame:
    """One row per run: ``run_name``, ``run_id``, ``model``, the grid keys, ``seed``, ``best_epoch``
    and :data:`SUMMARY_METRICS` (NaN where a run lacks one, e.g. baselines have no best epoch)."""
    cols = ["run_name", "run_id", "model", *grid_keys, "seed", "best_epoch", *SUMMARY_METRICS]
    frame = pd.DataFrame([{c: r.get(c, np.nan) for c in cols} for r in rows], columns=cols)
    # integers stay integers beside a baseline's missing values (summary.csv: 2, not 2.0)
    return frame.astype({"seed": "Int64", "best_epoch": "Int64"})


def markdown(frame: pd.DataFrame, protocol: str) -> str:
    """The summary table in Markdown, metrics to 4 decimals, preceded by the protocol line."""
    head = "| " + " | ".join(frame.columns) + " |"
    sep = "|" + "---|" * len(frame.columns)

    metric_cols = set(SUMMARY_METRICS)

    def cell(col: str, v: Any) -> str:
        if v is pd.NA:
            return ""
        if isinstance(v, float):
            if np.isnan(v):
                return ""
            return f"{v:.4f}" if col in metric_cols or not v.is_integer() else f"{v:.0f}"
        return str(v)

    lines = [f"Protocol: `{protocol}`", "", head, sep]
    lines += ["| " + " | ".join(cell(c, v) for c, v in zip(frame.columns, row)) + " |"
              for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def grid_plot(
    frame: pd.DataFrame, grid_keys: Sequence[str], metric: str = "test/recall@20", group_by: str | None = None
) -> Figure:
    """Bars of ``metric`` (mean over seeds, error bar = std) with the values of ``group_by`` (default:
    the first grid key) on the x axis and one bar per combination of the other keys; baselines are
    dashed horizontal lines."""
    two = frame[frame["model"] == "two_tower"]
    base = frame[frame["model"] != "two_tower"]
    keys = list(grid_keys)
    fig, ax = plt.subplots(figsize=(7, 4))
    if keys and not two.empty:
        x_key = group_by or keys[0]
        if x_key not in keys:
            raise ValueError(f"group_by {x_key!r} is not a grid key; grid keys: {keys}")
        rest = [k for k in keys if k != x_key]
        xs = list(dict.fromkeys(two[x_key]))
        series = list(dict.fromkeys(map(tuple, two[rest].itertuples(index=False)))) if rest else [()]
        width = 0.8 / len(series)
        for s, combo in enumerate(series):
            sel = two
            for k, v in zip(rest, combo):
                sel = sel[sel[k] == v]
            stats = sel.groupby(x_key, sort=False)[metric].agg(["mean", "std"]).reindex(xs)
            label = ", ".join(f"{k}={v}" for k, v in zip(rest, combo)) or "two_tower"
            ax.bar(np.arange(len(xs)) + (s - (len(series) - 1) / 2) * width, stats["mean"], width,
                   yerr=stats["std"].fillna(0.0), capsize=3, label=label)
        ax.set_xticks(np.arange(len(xs)), [str(x) for x in xs])
        ax.set_xlabel(x_key)
    elif not two.empty:
        ax.bar([0], [two[metric].mean()], label="two_tower")
    for _, row in base.iterrows():
        ax.axhline(row[metric], linestyle="--", linewidth=1, color="grey")
        ax.annotate(str(row["model"]), (ax.get_xlim()[1], row[metric]), fontsize=7, ha="right", va="bottom",
                    xytext=(-2, 1), textcoords="offset points")  # inside the axes, not across its edge
    seeds = two["seed"].nunique() if "seed" in two else 0
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed: no error bars"
    ax.set(ylabel=metric, title=f"Sweep: {metric} per grid point ({spread})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
