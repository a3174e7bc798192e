"""A semi-synthetic click log over Fashion-MNIST product photos, for the image item tower and cold start.

**Semi-synthetic: real product images, simulated users and clicks; not a real click log.** The items
are real Fashion-MNIST photos (Zalando Research, Xiao et al. 2017, MIT licence); every user, click
and timestamp is drawn from the generative story below. Never present results on it as results on
real user behaviour.

Letters: N source images, I items, U users, K product classes present among the items, M clicks.

Generative story (vectorised numpy; memory is O(M + I * H * W), never U x I):

1. **Items.** ``num_items`` training images, drawn round-robin over the classes in a seeded random
   order (balanced: 300 per class for the default 3000). Within each class the items get a random
   popularity rank ``r = 1, 2, ...`` and weight ``r ** -popularity_exponent`` (Zipf), and a random
   ``floor(cold_fraction * class size)`` of them are *late* (so every class keeps early items).
2. **Users.** Each user has taste weights over the K classes from ``Dirichlet(class_concentration)``:
   a small concentration means each user mostly likes one to three kinds of product.
3. **Clicks.** A user makes ``1 + NegBinomial`` clicks (mean ``clicks_per_user``) at uniform integer
   seconds in ``[start, start + span_days)``; a user never clicks twice in the same second (the rare
   repeats are dropped), so no (user, item, timestamp) row can repeat.
4. **Release times.** ``cutoff`` is the ``release_quantile`` (0.85) quantile of the click times, about
   85% of the span. Late items are released uniformly in ``[cutoff, cutoff + (end - cutoff) / 2)``;
   early items uniformly in the first half of ``[start, cutoff)``, and the first early item of each
   class at ``start`` so every class is on sale from the first second. Item ids follow release order.
5. **Which item.** Each click picks a class from the user's taste (or, with probability ``noise``, a
   uniform class), then an item of that class **already released at the click's time**, by Zipf
   weight; late items' weights are multiplied by ``new_item_boost`` (new arrivals are promoted).

Because ``cutoff`` (0.85) is at or after the split's 0.8 click quantile, a temporal split (``split.kind=temporal``,
``val_quantile`` 0.8, ``test_quantile`` 0.9) leaves late items with no training click but with
validation and test clicks: a model must place them from their images alone. Users keep their
tastes, so the kinds of product a user clicked before predict the late items they click.

The product class is kept as ``category`` (a String such as ``"Sneaker"``) for analysis and
evaluation only; it is deliberately **not** ``genres``, so the ``categorical`` encoder cannot carry
cold items and the image tower has to.

Example::

    images, labels = load_fashion_mnist("data/fashion-mnist", "train")
    cfg = FashionClicksConfig(seed=0)
    clicks, items = generate_fashion_clicks(images, labels, cfg)
    write_fashion_clicks("runs/fashion-clicks", clicks, items,
                         fashion_clicks_meta(clicks, items, cfg, images.shape[1:]))
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_cl.config import MAX_SEED
from recsys_cl.data.errors import DataError
from recsys_cl.data.fashion_mnist import CLASS_NAMES

log = logging.getLogger(__name__)

SEMI_SYNTHETIC = "semi-synthetic: real product images, simulated users and clicks; not a real click log"
META_KEY = b"recsys_cl.fashion_clicks"
"""Parquet key-value metadata key of both output files: the JSON of :func:`fashion_clicks_meta`."""
MIT_NOTICE = """The MIT License (MIT) Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES
OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE."""
"""Fashion-MNIST's licence (``data/fashion-mnist/copyright``), copied into every README."""
START = 1_577_836_800  # 2020-01-01T00:00:00Z
DAY = 86_400


@dataclass(frozen=True)
class FashionClicksConfig:
    """Knobs of the simulated users and clicks (the images are real; see the module docstring)."""

    num_items: int = 3000
    """I: items drawn from the Fashion-MNIST training images, balanced over the classes."""
    num_users: int = 2000
    """U: simulated users; ids ``0 .. U-1``."""
    clicks_per_user: float = 30.0
    """Mean clicks per user (>= 1, long-tailed: 1 + NegBinomial); every user has at least one."""
    class_concentration: float = 0.2
    """Dirichlet concentration of each user's taste over the classes: 0.2 over 10 classes puts on
    average 53% of a user's weight on their favourite kind of product and 88% on their top three."""
    noise: float = 0.05
    """Probability that a click ignores the taste and picks a uniform random class."""
    popularity_exponent: float = 1.0
    """Zipf exponent of item popularity within a class (0 = uniform)."""
    cold_fraction: float = 0.2
    """Share of each class's items that are released late (after ``release_quantile``)."""
    release_quantile: float = 0.85
    """Late items are released at or after this quantile of the click times; keep it >= the split's
    ``val_quantile`` (0.8) so that late items have no training clicks."""
    new_item_boost: float = 1.5
    """Popularity multiplier of late items (new arrivals are promoted); 1.0 = no promotion."""
    seed: int = 0
    """The only source of randomness: equal configs and images give equal logs."""
    start: int = START
    """Unix seconds of the first possible click (default 2020-01-01T00:00:00Z)."""
    span_days: int = 365
    """Length of the log in days."""

    def __post_init__(self) -> None:
        checks = {  # field: (holds, what it must be)
            "num_items": (self.num_items >= 1, ">= 1"),
            "num_users": (self.num_users >= 1, ">= 1"),
            "clicks_per_user": (math.isfinite(self.clicks_per_user) and self.clicks_per_user >= 1,
                                "a finite number >= 1"),
            "class_concentration": (self.class_concentration > 0, "> 0"),
            "noise": (0 <= self.noise <= 1, "in [0, 1]"),
            "popularity_exponent": (self.popularity_exponent >= 0, ">= 0"),
            "cold_fraction": (0 <= self.cold_fraction < 1, "in [0, 1)"),
            "release_quantile": (0 < self.release_quantile < 1, "in (0, 1)"),
            "new_item_boost": (self.new_item_boost > 0, "> 0"),
            "start": (self.start >= 0, ">= 0"),
            "span_days": (self.span_days >= 1, ">= 1"),
            "seed": (0 <= self.seed <= MAX_SEED, f"an integer in [0, {MAX_SEED}]"),  # numpy refuses < 0
        }
        bad = [f"{k} must be {need}, got {getattr(self, k)!r}" for k, (ok, need) in checks.items() if not ok]
        if bad:
            raise ValueError("; ".join(bad))

    @property
    def end(self) -> int:
        """Unix seconds just after the last possible click."""
        return self.start + self.span_days * DAY


def release_cutoff(timestamps: np.ndarray | pl.Series, quantile: float) -> int:
    """The late-release cutoff: the ``quantile`` of click times, with the split's ``lower`` rule."""
    ts = pl.Series(np.asarray(timestamps, dtype=np.int64))
    return int(ts.quantile(quantile, interpolation="lower"))  # type: ignore[arg-type]


def generate_fashion_clicks(
    images: np.ndarray, labels: np.ndarray, cfg: FashionClicksConfig
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Simulate users clicking on real Fashion-MNIST items (semi-synthetic; see the module docstring).

    Args:
        images: uint8 source images, shape (N, C, H, W) as :func:`load_fashion_mnist` returns them.
        labels: Fashion-MNIST class ids 0..9, shape (N,).
        cfg: the simulation knobs.

    Returns:
        ``clicks``: ``user_id``, ``item_id``, ``timestamp`` (all Int64; unix seconds), sorted by
        (timestamp, user_id); no repeated (user, item, timestamp) row, and each click is at or after
        its item's ``release_ts``.
        ``items``: ``item_id`` (Int64, ``0 .. I-1`` in release order), ``category`` (String class
        name, for analysis only), ``release_ts`` (Int64), ``image`` (List(UInt8): the C*H*W pixels,
        row-major); sorted by item_id. The image shape (C, H, W) is not a column: it is in the
        metadata (:func:`fashion_clicks_meta`).

    Raises:
        DataError: images/labels of the wrong shape, dtype or range, or fewer images than items.
    """
    _check_inputs(images, labels, cfg)
    rng = np.random.default_rng(cfg.seed)
    src = _balanced_sample(labels, cfg.num_items, rng)  # (I,) indices into images
    present, ci = np.unique(labels[src], return_inverse=True)  # (K,), (I,) class index per item
    K, I = len(present), len(src)
    late, weight = _late_and_weights(ci, K, cfg, rng)  # (I,), (I,)
    _check_some_late(late, ci, K, len(np.unique(labels)), cfg)

    # Clicks: user and time first; a user's repeated second is dropped so no row can repeat.
    p = 2.0 / (2.0 + cfg.clicks_per_user - 1.0)  # NegBinomial(2, p) has mean clicks_per_user - 1
    n_clicks = 1 + rng.negative_binomial(2, p, size=cfg.num_users)  # (U,)
    user = np.repeat(np.arange(cfg.num_users, dtype=np.int64), n_clicks)  # (M,)
    ts = rng.integers(cfg.start, cfg.end, size=len(user))  # (M,)
    order = np.lexsort((ts, user))
    user, ts = user[order], ts[order]
    keep = np.ones(len(user), dtype=bool)
    keep[1:] = (user[1:] != user[:-1]) | (ts[1:] != ts[:-1])
    user, ts = user[keep], ts[keep]
    M = len(user)

    cutoff = release_cutoff(ts, cfg.release_quantile)
    release = _release_times(ci, late, K, cutoff, cfg, rng)  # (I,)

    # Class of each click: the user's Dirichlet taste by inverse CDF, or uniform noise.
    taste_cdf = np.cumsum(rng.dirichlet(np.full(K, cfg.class_concentration), size=cfg.num_users), axis=1)
    click_class = (rng.random(M)[:, None] > taste_cdf[user, :-1]).sum(axis=1)  # (M,) in 0..K-1
    noisy = rng.random(M) < cfg.noise
    click_class[noisy] = rng.integers(0, K, size=int(noisy.sum()))
    item_index = _pick_released(ci, release, weight, click_class, ts, cfg.start, rng)  # (M,)

    # Item ids in release order (ties broken at random), like an auto-increment catalogue.
    by_release = np.lexsort((rng.random(I), release))
    item_id = np.empty(I, dtype=np.int64)
    item_id[by_release] = np.arange(I)

    clicks = pl.DataFrame(
        {"user_id": user, "item_id": item_id[item_index], "timestamp": ts.astype(np.int64)}
    ).sort("timestamp", "user_id", "item_id")
    items = _items_frame(images[src][by_release], present[ci][by_release], release[by_release])
    log.info(
        "%s: %d clicks by %d users on %d Fashion-MNIST items (%d late, released from %d)",
        SEMI_SYNTHETIC, clicks.height, cfg.num_users, I, int(late.sum()), cutoff,
    )
    return clicks, items


def _check_inputs(images: np.ndarray, labels: np.ndarray, cfg: FashionClicksConfig) -> None:
    if images.ndim != 4 or images.dtype != np.uint8:
        raise DataError(
            f"images must be uint8 of shape (N, C, H, W), got {images.dtype} {images.shape}; pass "
            "load_fashion_mnist(...)[0] (add the channel axis to (N, H, W) arrays with images[:, None])"
        )
    if labels.shape != (len(images),):
        raise DataError(f"labels must have shape ({len(images)},) to match the images, got {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise DataError(
            f"labels must be Fashion-MNIST class ids 0..{len(CLASS_NAMES) - 1}, got "
            f"{int(labels.min())}..{int(labels.max())}"
        )
    if cfg.num_items > len(images):
        raise DataError(
            f"num_items={cfg.num_items} but only {len(images)} images were given; lower num_items"
        )


def _check_some_late(
    late: np.ndarray, ci: np.ndarray, K: int, n_classes: int, cfg: FashionClicksConfig
) -> None:
    """A cold-start log needs late items: refuse settings under which ``floor(cold_fraction * class
    size)`` is 0 in every class (``cold_fraction=0`` asks for none and is let through)."""
    if cfg.cold_fraction == 0 or late.any():
        return
    largest = int(np.bincount(ci, minlength=K).max())
    per_class = math.ceil(1 / cfg.cold_fraction)
    while math.floor(cfg.cold_fraction * per_class) < 1:
        per_class += 1
    fix = f"raise num_items to at least {n_classes * per_class} ({per_class} per class)"
    if largest >= 2:
        fix += f" or cold_fraction to at least {math.ceil(10_000 / largest) / 10_000}"
    raise DataError(
        f"num_items={cfg.num_items} with cold_fraction={cfg.cold_fraction} leaves no late (cold-start) "
        f"items: each class gets floor(size * cold fraction) of them and has at most {largest} items; {fix}"
    )


def _balanced_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` image indices, round-robin over the classes: a random permutation, ordered by each
    image's rank within its class in that permutation (so classes differ in size by at most one,
    unless a class runs out of images)."""
    perm = rng.permutation(len(labels))  # (N,)
    rank = _rank_within_group(labels[perm])  # (N,)
    return perm[np.lexsort((np.arange(len(perm)), rank))[:n]]


def _rank_within_group(group: np.ndarray) -> np.ndarray:
    """0-based position of each element among the elements of its group, in array order."""
    order = np.argsort(group, kind="stable")
    sizes = np.bincount(group[order])
    first = np.repeat(np.cumsum(sizes) - sizes, sizes)
    rank = np.empty(len(group), dtype=np.int64)
    rank[order] = np.arange(len(group)) - first
    return rank


def _late_and_weights(
    ci: np.ndarray, K: int, cfg: FashionClicksConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per item: the late flag (``floor(cold_fraction * class size)`` per class, at random) and the
    Zipf popularity weight of an independent random rank within the class, boosted when late."""
    sizes = np.bincount(ci, minlength=K)  # (K,)
    late_pos = _rank_within_group_random(ci, rng)
    late = late_pos < np.floor(cfg.cold_fraction * sizes)[ci]  # (I,)
    rank = _rank_within_group_random(ci, rng) + 1  # (I,) independent of lateness
    weight = rank.astype(np.float64) ** -cfg.popularity_exponent
    return late, np.where(late, weight * cfg.new_item_boost, weight)


def _rank_within_group_random(group: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    perm = rng.permutation(len(group))
    rank = np.empty(len(group), dtype=np.int64)
    rank[perm] = _rank_within_group(group[perm])
    return rank


def _release_times(
    ci: np.ndarray, late: np.ndarray, K: int, cutoff: int, cfg: FashionClicksConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """Late items: uniform in [cutoff, cutoff + (end - cutoff) / 2); early items: uniform in the first
    half of [start, cutoff), the first early item of each class moved to ``start``."""
    late_end = cutoff + max((cfg.end - cutoff) // 2, 1)
    early_end = cfg.start + max((cutoff - cfg.start) // 2, 1)
    release = np.where(
        late, rng.integers(cutoff, late_end, size=len(ci)), rng.integers(cfg.start, early_end, size=len(ci))
    )
    early = np.flatnonzero(~late)
    first = early[np.lexsort((release[early], ci[early]))]  # early items by (class, release)
    is_first = np.ones(len(first), dtype=bool)
    is_first[1:] = ci[first[1:]] != ci[first[:-1]]
    release[first[is_first]] = cfg.start  # cold_fraction < 1 leaves every class an early item
    return release.astype(np.int64)


def _pick_released(
    ci: np.ndarray, release: np.ndarray, weight: np.ndarray, click_class: np.ndarray, ts: np.ndarray,
    start: int, rng: np.random.Generator,
) -> np.ndarray:
    """For each click, an item of ``click_class`` released at or before ``ts``, by weight.

    Items sorted by (class, release) lay every class's released-by-t items out as one contiguous
    run; one cumulative sum over all items then samples every click with one ``searchsorted``.

    Returns:
        Item indices into ``ci``, shape (M,).
    """
    order = np.lexsort((release, ci))  # (I,)
    span = int(max(release.max(), ts.max())) - start + 1
    key = ci[order].astype(np.int64) * span + (release[order] - start)  # (I,) increasing
    cum = np.cumsum(weight[order])  # (I,)
    sizes = np.bincount(ci, minlength=int(ci.max()) + 1)
    first = (np.cumsum(sizes) - sizes)[click_class]  # (M,) first sorted position of the class
    end = np.searchsorted(key, click_class * span + (ts - start), side="right")  # (M,) > first
    low = cum[first] - weight[order][first]
    target = low + rng.random(len(ts)) * (cum[end - 1] - low)
    pos = np.clip(np.searchsorted(cum, target, side="left"), first, end - 1)
    return order[pos]


def _items_frame(images: np.ndarray, labels: np.ndarray, release: np.ndarray) -> pl.DataFrame:
    """(I, C, H, W) uint8 images -> List(UInt8) column of C*H*W row-major pixels, plus the rest."""
    n = len(images)
    flat = np.ascontiguousarray(images.reshape(n, -1))
    offsets = pa.array(np.arange(0, flat.size + 1, flat.shape[1], dtype=np.int32))
    image = pa.ListArray.from_arrays(offsets, pa.array(flat.ravel(), type=pa.uint8()))
    return pl.DataFrame(
        {
            "item_id": np.arange(n, dtype=np.int64),
            "category": np.asarray(CLASS_NAMES, dtype=object)[labels].tolist(),
            "release_ts": release.astype(np.int64),
            "image": pl.from_arrow(image),
        },
        schema={"item_id": pl.Int64, "category": pl.String, "release_ts": pl.Int64,
                "image": pl.List(pl.UInt8)},
    )


# --------------------------------------------------------------------------------------------
# Metadata and files
# --------------------------------------------------------------------------------------------


def fashion_clicks_meta(
    clicks: pl.DataFrame, items: pl.DataFrame, cfg: FashionClicksConfig, image_shape: Sequence[int],
    val_quantile: float = 0.8, test_quantile: float = 0.9,
) -> dict[str, Any]:
    """Counts, the config and the image shape of a generated log, for the README and file metadata.

    ``val_quantile`` / ``test_quantile`` are the temporal split's cutoffs (``split.*``): the meta
    reports how late items fall around them (no clicks before the val cutoff, their share after).
    """
    ts = clicks["timestamp"]
    cutoff = release_cutoff(ts, cfg.release_quantile)
    t_val = release_cutoff(ts, val_quantile)
    t_test = release_cutoff(ts, test_quantile)
    late_ids = items.filter(pl.col("release_ts") >= cutoff).select("item_id")
    on_late = clicks.join(late_ids, on="item_id", how="semi")
    after_cut = clicks.filter(pl.col("timestamp") >= cutoff)
    test = clicks.filter(pl.col("timestamp") >= t_test)

    def share(part: pl.DataFrame, whole: pl.DataFrame) -> float:
        return round(part.height / whole.height, 4) if whole.height else 0.0

    return {
        "description": SEMI_SYNTHETIC,
        "source_images": "Fashion-MNIST training split (Zalando Research, Xiao et al. 2017; MIT licence)",
        "config": dataclasses.asdict(cfg),
        "image_shape": [int(s) for s in image_shape],
        "image_column": "image: List(UInt8), C*H*W pixels, row-major (C, H, W)",
        "counts": {
            "clicks": clicks.height,
            "users": clicks["user_id"].n_unique(),
            "items": items.height,
            "late_items": late_ids.height,
            "late_items_clicked": on_late["item_id"].n_unique(),
            "categories": items["category"].n_unique(),
        },
        "time": {
            "start": int(cfg.start), "end": int(cfg.end), "late_release_cutoff": cutoff,
            "split_val_cutoff": t_val, "split_test_cutoff": t_test,
            "split_quantiles": [val_quantile, test_quantile],
        },
        "late_item_clicks": {
            "before_val_cutoff": on_late.filter(pl.col("timestamp") < t_val).height,
            "share_of_clicks_after_release_cutoff": share(
                after_cut.join(late_ids, on="item_id", how="semi"), after_cut),
            "share_of_test_period_clicks": share(test.join(late_ids, on="item_id", how="semi"), test),
        },
    }


OUTPUT_FILES = ("clicks.parquet", "items.parquet", "README.md")
"""The output set: ``--out`` holds these and nothing else."""
TMP_PREFIX = ".make_fashion_clicks.tmp-"
"""Temp folder that earlier versions wrote the set into *inside* ``--out`` (``<prefix><pid>-<hex>``);
a run killed there left it, and it goes with the old folder when a rerun replaces it."""
_TMP_TAG = r"\d+-[0-9a-f]{8}"  # <pid>-<8 hex digits>, as every writer here names its temps


def _legacy_temp(entry: Path) -> bool:
    """A hidden leftover of earlier versions' killed runs inside ``--out``, replaced with the folder:
    a ``<TMP_PREFIX><pid>-<hex>`` folder holding only output files, or a ``.<output file>.tmp-<pid>-<hex>`` file."""
    if entry.is_symlink():
        return False
    if re.fullmatch(re.escape(TMP_PREFIX) + _TMP_TAG, entry.name):
        return entry.is_dir() and all(p.name in OUTPUT_FILES and p.is_file() and not p.is_symlink()
                                      for p in entry.iterdir())
    names = "|".join(re.escape(f) for f in OUTPUT_FILES)
    return entry.is_file() and re.fullmatch(rf"\.({names})\.tmp-{_TMP_TAG}", entry.name) is not None


def check_fashion_clicks_out(out_dir: str | Path) -> Path:
    """Refuse an ``out_dir`` that is a file, the working directory or a folder above it, or that
    holds anything but an earlier output of :func:`write_fashion_clicks`, since a write replaces the
    folder whole. Creates nothing: run it before generating.

    An earlier output holds only :data:`OUTPUT_FILES` as plain files, at least one of them a Parquet
    file, and every Parquet file carries :data:`META_KEY` (earlier versions, which moved the files in
    one by one, could leave only some of them, and hidden temps: :func:`_legacy_temp`). A README.md
    alone is not taken for one; any other entry, hidden ones, folders and links included, is refused.

    Raises:
        OutputError: naming what was found, what an earlier output holds, and the fix.
    """
    from recsys_cl.io_atomic import OutputError, replaces_cwd

    out = Path(out_dir)
    why = replaces_cwd(out, "--out", "fashion-clicks")
    if why is not None:  # the rerun from inside an output folder, or --out ..: never the user's working folder
        raise OutputError(f"--out {out} is not replaced: the output folder is replaced whole, and it is {why}")
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder; pass a new or empty folder")
    if not out.exists():
        return out
    expected = (f"an earlier output holds only {', '.join(OUTPUT_FILES)}, written by make_fashion_clicks, "
                "and is replaced whole")
    entries = sorted((p for p in out.iterdir() if not _legacy_temp(p)), key=lambda p: p.name)
    foreign = [p.name + (" (a link)" if p.is_symlink() else " (a folder)" if p.is_dir() else "")
               for p in entries
               if p.name not in OUTPUT_FILES or p.is_symlink() or not p.is_file()]
    if foreign:
        more = f" and {len(foreign) - 10} more" if len(foreign) > 10 else ""
        raise OutputError(
            f"--out {out} holds {', '.join(foreign[:10])}{more}, which make_fashion_clicks does not write "
            f"({expected}, so they would be deleted). Move them out, or pass a new or empty folder"
        )
    parquets = [p for p in entries if p.suffix == ".parquet"]
    if entries and not parquets:
        raise OutputError(
            f"--out {out} holds {', '.join(p.name for p in entries)} but no Parquet file, so not an earlier "
            f"make_fashion_clicks output ({expected}). Move it out, or pass a new or empty folder"
        )
    for path in parquets:
        try:
            kv = pq.read_schema(path).metadata or {}
        except (pa.ArrowException, OSError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise OutputError(
                f"--out {out}: {path.name} is not a readable Parquet file ({reason}), so not an earlier "
                "make_fashion_clicks output; it is not replaced: delete it or pass a new or empty folder"
            ) from e
        if META_KEY not in kv:
            raise OutputError(
                f"--out {out}: {path.name} has no {META_KEY.decode()} metadata, so it was not written by "
                f"make_fashion_clicks ({expected}). Move it out, or pass a new or empty folder"
            )
    return out


def write_fashion_clicks(
    out_dir: str | Path, clicks: pl.DataFrame, items: pl.DataFrame, meta: dict[str, Any]
) -> Path:
    """Write ``clicks.parquet``, ``items.parquet`` and ``README.md`` into ``out_dir`` as one set.

    The folder is replaced whole (:func:`recsys_cl.io_atomic.write_directory_atomically`): the set
    is written and fsynced in a hidden temp folder beside ``out_dir``, then swapped in with one
    rename. A reader, or a run killed at any point, finds the old complete set or the new one, never
    a mix; the killed run's temp folder is removed by the next write once its pid is gone, so just
    rerun. Both Parquet files carry ``meta`` as JSON under the key-value metadata key :data:`META_KEY`.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        OutputError: ``out_dir`` is a file, the working directory or a folder above it, holds other
            entries than an earlier output of this function (:func:`check_fashion_clicks_out`), or
            cannot be written.
    """
    from recsys_cl.io_atomic import OutputError, write_directory_atomically

    out = check_fashion_clicks_out(out_dir)
    meta_json = json.dumps(meta, sort_keys=True)

    def write(folder: Path) -> None:
        for name, frame in (("items.parquet", items), ("clicks.parquet", clicks)):
            table = frame.to_arrow()
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: meta_json})
            pq.write_table(table, folder / name, compression="zstd")
        (folder / "README.md").write_text(_readme(meta), encoding="utf-8")

    try:
        write_directory_atomically(out.absolute(), write)  # absolute: a relative "." has no name to sit beside
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(f"--out {out} cannot be written ({e.strerror or e}); the set is written beside it "
                          f"first, so {out.absolute().parent} must be writable too, on a disk with room for the "
                          "set") from e
    log.info("%s: wrote %s (%d clicks, %d items)", SEMI_SYNTHETIC, out, clicks.height, items.height)
    return out


def read_fashion_clicks_meta(path: str | Path) -> dict[str, Any]:
    """The metadata dict stored in a ``clicks.parquet`` / ``items.parquet`` written here."""
    kv = pq.read_schema(path).metadata or {}
    if META_KEY not in kv:
        raise DataError(f"{path}: no {META_KEY.decode()} metadata; was it written by write_fashion_clicks?")
    out: dict[str, Any] = json.loads(kv[META_KEY])
    return out


COUNT_KEYS = ("clicks", "users", "items", "late_items", "late_items_clicked", "categories")


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _readme(meta: dict[str, Any]) -> str:
    c, late, t = meta["counts"], meta["late_item_clicks"], meta["time"]
    return f"""# Fashion clicks: a semi-synthetic click log over Fashion-MNIST

**{SEMI_SYNTHETIC.capitalize()}.**
The items are real product photos from Fashion-MNIST; the users, their tastes, their clicks and all
timestamps are simulated by `recsys_cl.data.fashion_clicks`. Use it to test the image item tower
and cold start; never report results on it as results on real users.

## Files

- `clicks.parquet`: `user_id`, `item_id`, `timestamp` (Int64; unix seconds).
- `items.parquet`: `item_id` (Int64), `category` (String Fashion-MNIST class name, for analysis
  only: it is deliberately not `genres`), `release_ts` (Int64; no click precedes it), `image`
  (List(UInt8): the C*H*W pixels, row-major, image shape {meta["image_shape"]} = [C, H, W]).

## Counts

| clicks | users | items | late items | late items clicked | categories |
|---|---|---|---|---|---|
| {" | ".join(str(c[k]) for k in COUNT_KEYS)} |

Late items are released at or after {_iso(t["late_release_cutoff"])}, the
{meta["config"]["release_quantile"]} quantile of click times. Under the temporal split at click-time
quantiles {t["split_quantiles"]} (validation from {_iso(t["split_val_cutoff"])}, test from
{_iso(t["split_test_cutoff"])}), {late["before_val_cutoff"]} late-item clicks fall in training, and late
items get {late["share_of_test_period_clicks"]:.1%} of the test-period clicks
({late["share_of_clicks_after_release_cutoff"]:.1%} of all clicks after their release cutoff).

## Source and licence

Images: Fashion-MNIST, Copyright (c) 2017 Zalando SE (Zalando Research), MIT licence; Han Xiao,
Kashif Rasul, Roland Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms", arXiv:1708.07747, 2017. https://github.com/zalandoresearch/fashion-mnist

{MIT_NOTICE}

## Metadata (also in both Parquet files under the key `{META_KEY.decode()}`)

```json
{json.dumps(meta, indent=2, sort_keys=True)}
```
"""
