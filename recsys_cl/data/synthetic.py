"""A synthetic click log with planted cluster structure, for tests and scaling runs.

Generative story (all vectorised; memory is O(clicks + items + users), never users x items):

1. Items are split evenly into ``n_clusters`` clusters at random. Within a cluster, items have a
   random popularity rank ``r = 1, 2, ...`` and weight ``r ** -popularity_exponent`` (Zipf).
2. Each user draws ``clusters_per_user`` clusters (uniformly, with replacement) and taste weights
   over them from ``Dirichlet(taste_concentration)``: small concentration = one dominant cluster.
3. A user makes ``1 + NegBinomial`` clicks (mean ``clicks_per_user``, long-tailed). Each click picks
   a cluster from the user's taste (or, with probability ``noise``, any cluster uniformly) and then an
   item from that cluster's Zipf distribution.
4. Each user is active from a uniform time in the first half of ``[start, end)`` until ``end``;
   their click times are sorted uniform draws in that window (non-decreasing per user; equal
   seconds are possible and ordered by ``row_order``).

The planted structure is in the item table: ``genres = ["cluster_<c>"]``.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys_cl.data.io import ClickLog

START = 1_577_836_800  # 2020-01-01T00:00:00Z
END = 1_609_459_200  # 2021-01-01T00:00:00Z


def generate_click_log(
    n_users: int,
    n_items: int,
    n_clusters: int = 20,
    clicks_per_user: float = 20.0,
    popularity_exponent: float = 1.0,
    taste_concentration: float = 0.5,
    clusters_per_user: int = 3,
    noise: float = 0.05,
    seed: int = 0,
    start: int = START,
    end: int = END,
) -> ClickLog:
    """Generate a click log with planted user tastes over item clusters.

    Args:
        n_users: number of users (U); user ids are ``0 .. U-1``.
        n_items: number of items (I); item ids are ``0 .. I-1``, all in the item table.
        n_clusters: number of item clusters (C), ``1 <= C <= I``.
        clicks_per_user: mean clicks per user (>= 1); every user has at least one.
        popularity_exponent: Zipf exponent of item popularity within a cluster (0 = uniform).
        taste_concentration: Dirichlet concentration of each user's taste over their clusters.
        clusters_per_user: clusters in each user's taste (drawn with replacement).
        noise: probability that a click ignores the taste and picks a uniform random cluster.
        seed: the only source of randomness; equal arguments give equal logs.
        start, end: unix-second time range of the log.

    Returns:
        A :class:`ClickLog` in the loader's contract (Int64 ids and seconds, ``row_order``), rows
        grouped by user in time order; ``items`` has ``item_id``, ``title``, ``genres``.
    """
    if n_users < 1 or n_items < 1:
        raise ValueError(f"n_users and n_items must be >= 1, got {n_users} and {n_items}")
    if not 1 <= n_clusters <= n_items:
        raise ValueError(f"n_clusters must be in [1, n_items={n_items}], got {n_clusters}")
    if clicks_per_user < 1:
        raise ValueError(f"clicks_per_user must be >= 1, got {clicks_per_user}")
    if taste_concentration <= 0 or clusters_per_user < 1 or not 0 <= noise <= 1:
        raise ValueError(
            "need taste_concentration > 0, clusters_per_user >= 1 and 0 <= noise <= 1, got "
            f"{taste_concentration}, {clusters_per_user}, {noise}"
        )
    if end <= start:
        raise ValueError(f"end must be after start, got start={start}, end={end}")
    rng = np.random.default_rng(seed)
    C, K = n_clusters, clusters_per_user

    # Items: cluster of each item and, per cluster, a Zipf CDF over its items in rank order.
    item_cluster = rng.permutation(np.arange(n_items) % C)  # (I,)
    by_cluster = np.argsort(item_cluster, kind="stable")  # (I,) item ids grouped by cluster
    sizes = np.bincount(item_cluster, minlength=C)  # (C,)
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # (C,) offset of each cluster
    rank = np.arange(n_items) - np.repeat(first, sizes) + 1  # (I,) 1-based rank within cluster
    w = rank.astype(np.float64) ** -popularity_exponent
    cum = np.cumsum(w)
    total_before = np.repeat(cum[first] - w[first], sizes)
    cluster_total = np.repeat(np.add.reduceat(w, first), sizes)
    # cluster c's CDF lives in (c, c + 1]: one searchsorted samples every click at once
    cdf = np.repeat(np.arange(C), sizes) + (cum - total_before) / cluster_total  # (I,)
    cdf[first + sizes - 1] = np.arange(C) + 1.0  # exact upper ends despite rounding

    # Users: K clusters and Dirichlet taste weights each.
    user_clusters = rng.integers(0, C, size=(n_users, K))  # (U, K)
    taste = rng.dirichlet(np.full(K, taste_concentration), size=n_users)  # (U, K)
    taste_cdf = np.cumsum(taste, axis=1)  # (U, K)

    # Clicks: N = sum of per-user counts, flattened user-major.
    p = 2.0 / (2.0 + clicks_per_user - 1.0)  # NegBinomial(2, p) has mean clicks_per_user - 1
    n_clicks = 1 + rng.negative_binomial(2, p, size=n_users)  # (U,)
    user = np.repeat(np.arange(n_users), n_clicks)  # (N,)
    n = len(user)
    slot = (rng.random(n)[:, None] > taste_cdf[user, :-1]).sum(axis=1)  # (N,) in 0..K-1
    cluster = user_clusters[user, slot]  # (N,)
    random = rng.random(n) < noise
    cluster[random] = rng.integers(0, C, size=int(random.sum()))
    u = rng.random(n)
    pos = np.searchsorted(cdf, cluster + np.maximum(u, 1e-12), side="left")  # (N,)
    item = by_cluster[np.minimum(pos, n_items - 1)]

    # Time: each user is active from a uniform start in the first half of the range until ``end``;
    # their click times are sorted uniforms there (normalised cumulative exponential gaps).
    user_start = rng.integers(start, start + max((end - start) // 2, 1), size=n_users)  # (U,)
    gaps = rng.exponential(size=n)  # (N,)
    csum = np.cumsum(gaps)
    click_first = np.concatenate([[0], np.cumsum(n_clicks)[:-1]])  # (U,)
    within = csum - np.repeat(csum[click_first] - gaps[click_first], n_clicks)  # per-user cumsum
    total = within[click_first + n_clicks - 1] + rng.exponential(size=n_users)  # (U,)
    frac = within / np.repeat(total, n_clicks)  # (N,) increasing in (0, 1) per user
    timestamp = np.repeat(user_start, n_clicks) + np.floor(
        frac * np.repeat(end - user_start, n_clicks)
    ).astype(np.int64)

    clicks = pl.DataFrame(
        {
            "user_id": user.astype(np.int64),
            "item_id": item.astype(np.int64),
            "timestamp": timestamp.astype(np.int64),
            "row_order": np.arange(n, dtype=np.int64),
        }
    )
    items = pl.DataFrame({"item_id": np.arange(n_items, dtype=np.int64), "c": item_cluster}).select(
        "item_id",
        pl.format("item {}", pl.col("item_id")).alias("title"),
        pl.concat_list(pl.format("cluster_{}", pl.col("c"))).alias("genres"),
    )
    source = (
        f"synthetic(n_users={n_users},n_items={n_items},n_clusters={C},"
        f"clicks_per_user={clicks_per_user:g},seed={seed})"
    )
    return ClickLog(clicks=clicks, items=items, source=source)
