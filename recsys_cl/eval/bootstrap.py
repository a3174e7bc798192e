"""Paired bootstrap interval for the difference of two per-example scores.

Letters: N examples, R bootstrap resamples.

Used where two models are scored on the *same* examples (e.g. an encoder before and after
pretraining, on the same held-out movies): resampling the examples, not each model separately,
keeps the pairing, so the interval reflects how much the difference depends on which examples
happened to be held out. It says nothing about training-seed noise.
"""

from __future__ import annotations

import numpy as np


def paired_bootstrap(
    after: np.ndarray, before: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """``{"delta", "low", "high", "n_boot", "n"}``: mean(after - before) and its expanded percentile
    interval.

    The plain percentile interval of a mean is about ``mean +- z sigma_n`` (sigma with divisor N),
    narrower than the t interval ``mean +- t_{N-1} s``: too narrow for few examples (17 cold-start
    test users: by 11%). The expanded percentile interval (Hesterberg 2015, "What teachers should
    know about the bootstrap", sec. 5.2) reads the resampled means at the tail probability
    ``Phi(sqrt(N / (N - 1)) t_{N-1}(tail))`` instead of ``tail``, so that for symmetric data it
    matches the t interval; for N = 1,000 it widens the interval by 0.2%. N = 1 keeps ``tail``.

    Args:
        after, before: per-example scores of the two models on the same examples. Shape: (N,), N >= 1.
        n_boot: R, resamples of the N examples with replacement.
        level: coverage of the two-sided interval, in (0, 1).
        seed: numpy seed of the resampling (the result is deterministic).
    """
    a, b = np.asarray(after, dtype=np.float64), np.asarray(before, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired_bootstrap needs two (N,) arrays of the same length >= 1, got {a.shape}, {b.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    diff = a - b  # (N,)
    rows = np.random.default_rng(seed).integers(0, diff.size, size=(n_boot, diff.size))  # (R, N)
    means = diff[rows].mean(axis=1)  # (R,)
    tail = expanded_tail((1.0 - level) / 2.0, diff.size)
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return {"delta": float(diff.mean()), "low": float(low), "high": float(high), "n_boot": float(n_boot),
            "n": float(diff.size)}


def expanded_tail(tail: float, n: int) -> float:
    """The tail probability at which the expanded percentile interval reads the bootstrap
    distribution: ``Phi(sqrt(n / (n - 1)) * t_{n-1}.ppf(tail))`` (``tail`` itself when n = 1)."""
    from scipy import stats

    if n < 2:
        return tail
    return float(stats.norm.cdf(np.sqrt(n / (n - 1.0)) * stats.t.ppf(tail, n - 1)))


def interval_verdict(interval: dict[str, float]) -> str:
    """``"better"`` when the whole interval of after - before is above 0, ``"worse"`` when it is
    below 0, else ``"no clear difference"`` (``interval``: :func:`paired_bootstrap`'s result)."""
    if interval["low"] > 0.0:
        return "better"
    if interval["high"] < 0.0:
        return "worse"
    return "no clear difference"


def interval_metrics(prefix: str, interval: dict[str, float]) -> dict[str, float]:
    """``{prefix_delta, prefix_low, prefix_high}`` of :func:`paired_bootstrap`'s result, to log as
    metrics (e.g. ``prefix = "delta/genre_recall@10"``)."""
    return {f"{prefix}_{k}": float(interval[k]) for k in ("delta", "low", "high")}
