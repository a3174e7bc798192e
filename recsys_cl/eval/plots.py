"""Figures logged with every run: learning curves, recall@K vs K, popularity of recommendations,
and (pretraining) cosine-similarity histograms before vs after."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullLocator  # noqa: E402


def _name_run(fig: Figure, run: str) -> None:
    """Write ``run`` (the run's name and id) above the figure: a PNG downloaded, or opened from a
    second run's artifacts, still says which run it shows."""
    if run:
        fig.suptitle(run, fontsize=9, color="dimgrey")


def learning_curves(history: Sequence[Mapping[str, float]], best_epoch: int | None = None, run: str = "") -> Figure:
    """Training loss and validation Recall@20 / NDCG@20 / Recall@50 per epoch (``history[i]`` is
    epoch i + 1), whole epochs on the x axis; ``best_epoch``, the epoch whose weights were kept and
    tested, is a dashed line on both panels; ``run`` above both (:func:`_name_run`)."""
    epochs = np.arange(1, len(history) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(epochs, [h["train_loss"] for h in history], marker="o")
    a.set(xlabel="epoch", ylabel="train loss (mean over the epoch's batches)", title="Training loss")
    for key in ("val/recall@20", "val/ndcg@20", "val/recall@50"):
        if history and key in history[0]:
            b.plot(epochs, [h[key] for h in history], marker="o", label=key)
    b.set(xlabel="epoch", ylabel="metric value", title="Validation (full ranking)")
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1,
                       label=f"best epoch {best_epoch} (tested)" if ax is b else None)
    if b.get_legend_handles_labels()[0]:
        b.legend(fontsize=8)
    _name_run(fig, run)
    fig.tight_layout()
    return fig


def recall_vs_k(
    curves: Mapping[str, Mapping[int, float]], protocol: str, run: str = "",
    references: Mapping[str, Mapping[int, float]] | None = None,
) -> Figure:
    """One line per model: test Recall@K for each K; ``references`` (e.g. Popularity under the same
    protocol) dashed, so the model's curve reads against them; the protocol under the axes, ``run``
    above (:func:`_name_run`)."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    lines = [(name, curve, False) for name, curve in curves.items()]
    lines += [(name, curve, True) for name, curve in (references or {}).items()]
    for name, curve, dashed in lines:
        ks = sorted(curve)
        ax.plot(ks, [curve[k] for k in ks], marker="o", label=name, linestyle="--" if dashed else "-",
                markersize=4 if dashed else 6)
    ax.set(xscale="log", xlabel="K (log scale)", ylabel="Recall@K", title="Test Recall@K")
    ks = sorted({k for curve in [*curves.values(), *(references or {}).values()] for k in curve})
    if ks:  # tick the Ks measured, written as numbers (1, 2, 5, ... 200), not as powers of ten
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.xaxis.set_minor_locator(NullLocator())
    # the protocol under the plot, one "|" part per line when long: at 6 points on one line it was
    # too small to read in the UI's artifact view
    text = protocol if len(protocol) <= 70 else protocol.replace("|", "\n")
    fig.text(0.01, 0.01, f"protocol: {text}", fontsize=7, color="dimgrey", va="bottom")
    ax.legend(loc="upper left")  # Recall@K rises with K: the upper left stays empty
    _name_run(fig, run)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * text.count("\n"), 1, 1))
    return fig


def popularity_of_recommendations(
    item_counts: np.ndarray, recommended: np.ndarray, clicked: np.ndarray, run: str = ""
) -> Figure:
    """Histogram of log10(train clicks) for recommended items vs the test targets clicked; ``run``
    above (:func:`_name_run`)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, np.log10(item_counts.max() + 1) + 0.1, 30).tolist()
    for label, idx in (("recommended (top-20)", recommended), ("clicked (test targets)", clicked)):
        idx = idx[idx >= 0]
        ax.hist(np.log10(item_counts[idx] + 1), bins=bins, alpha=0.5, density=True, label=label)
    ax.set(xlabel="log10(1 + training clicks of item)", ylabel="density",
           title="Popularity of recommended vs clicked items")
    ax.legend(loc="upper right")  # few items have many clicks; "best" scans every bar, slowly (matplotlib warns)
    _name_run(fig, run)
    fig.tight_layout()
    return fig


def similarity_histograms(panels: Mapping[str, Mapping[str, np.ndarray]], title: str) -> Figure:
    """One panel per encoder (e.g. before / after pretraining), side by side on the same axes: a
    density histogram of cosine similarity for each kind of pair (e.g. pairs sharing a label vs
    not), its mean in the legend; 80 bins over the range of all the values.
    ``panels``: {panel title: {series name: cosines (P,)}}."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), sharex=True, sharey=True,
                             squeeze=False)
    values = [c for series in panels.values() for c in series.values() if len(c)]
    lo = max(-1.0, min((float(np.min(c)) for c in values), default=-1.0))
    hi = min(1.0, max((float(np.max(c)) for c in values), default=1.0))
    bins = np.linspace(lo, max(hi, lo + 1e-3), 81).tolist()  # the data's range: ReLU features crowd near 1
    for ax, (name, series) in zip(axes[0], panels.items()):
        for label, cos in series.items():
            if len(cos):
                ax.hist(cos, bins=bins, density=True, alpha=0.45,
                        label=f"{label} (mean {np.mean(cos):.2f}, n={len(cos)})")
        ax.set(xlabel="cosine similarity", title=name)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("density")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)
