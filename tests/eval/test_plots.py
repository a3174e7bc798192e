"""recsys_cl.eval.plots: the learning curves of a training run and the similarity histograms of the
pretraining pipelines."""

from __future__ import annotations

import numpy as np

from recsys_cl.eval import plots


def test_similarity_histograms_one_panel_per_encoder_with_means() -> None:
    panels = {
        "before": {"same class": np.linspace(0.2, 0.4, 100), "different class": np.linspace(0.1, 0.3, 300)},
        "after": {"same class": np.full(50, 0.75), "different class": np.array([])},  # an empty series is skipped
    }
    fig = plots.similarity_histograms(panels, "title")
    try:
        axes = fig.get_axes()
        assert [ax.get_title() for ax in axes] == ["before", "after"]
        before, after = ([t.get_text() for t in ax.get_legend().get_texts()] for ax in axes)
        assert before[0] == "same class (mean 0.30, n=100)" and before[1].endswith("n=300)")
        assert after == ["same class (mean 0.75, n=50)"]
        assert axes[0].get_xlim()[0] <= 0.1 and axes[0].get_xlim()[1] >= 0.75  # the data's range, shared
    finally:
        plots.close(fig)


def test_learning_curves_label_both_axes_count_whole_epochs_and_mark_the_tested_epoch() -> None:
    history = [{"train_loss": 6.0 - e, "val/recall@20": r, "val/ndcg@20": r / 2}
               for e, r in enumerate([0.10, 0.18, 0.16])]
    fig = plots.learning_curves(history, best_epoch=2)
    try:
        fig.canvas.draw()
        for ax in fig.get_axes():
            assert ax.get_xlabel() == "epoch" and ax.get_ylabel()
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks)
            assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] == [2]
        labels = [t.get_text() for t in fig.get_axes()[1].get_legend().get_texts()]
        assert labels == ["val/recall@20", "val/ndcg@20", "best epoch 2 (tested)"]
    finally:
        plots.close(fig)


def test_recall_vs_k_ticks_the_measured_ks_as_numbers() -> None:
    fig = plots.recall_vs_k({"two_tower": {1: 0.02, 10: 0.1, 20: 0.17, 200: 0.5}}, "full_ranking|...")
    try:
        fig.canvas.draw()
        (ax,) = fig.get_axes()
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "10", "20", "200"]
        assert ax.get_ylabel() == "Recall@K" and ax.get_xlabel().startswith("K")
    finally:
        plots.close(fig)


def test_run_plots_name_their_run_and_recall_vs_k_dashes_its_references() -> None:
    """A PNG opened outside its run page still says which run it shows; the references (Popularity
    under the same protocol) are dashed and in the legend; the protocol is readable under the axes."""
    history = [{"train_loss": 1.0, "val/recall@20": 0.1}]
    protocol = "full_ranking|catalogue=train_items|history_masked|split=leave_last_out(ties=row_order)"
    figs = [plots.learning_curves(history, 1, run="two_tower-softmax (run 1234abcd)"),
            plots.recall_vs_k({"two_tower": {10: 0.1, 20: 0.2}}, protocol, run="two_tower-softmax (run 1234abcd)",
                              references={"popularity (same protocol)": {10: 0.04, 20: 0.07, 100: 0.2}}),
            plots.popularity_of_recommendations(np.array([1, 5, 30]), np.array([0, 2]), np.array([1]),
                                                run="two_tower-softmax (run 1234abcd)")]
    try:
        for fig in figs:
            assert fig._suptitle is not None and fig._suptitle.get_text() == "two_tower-softmax (run 1234abcd)"
        (ax,) = figs[1].get_axes()
        assert [(line.get_label(), line.get_linestyle()) for line in ax.get_lines()] == [
            ("two_tower", "-"), ("popularity (same protocol)", "--")]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["two_tower", "popularity (same protocol)"]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "20", "100"]
        (footnote,) = [t for t in figs[1].texts if "protocol" in t.get_text()]
        assert footnote.get_fontsize() >= 7 and "history_masked" in footnote.get_text()
    finally:
        for fig in figs:
            plots.close(fig)


def test_sweep_plot_title_says_how_many_seeds_the_error_bars_are_over() -> None:
    import pandas as pd

    from recsys_cl.sweep import grid_plot

    rows = [{"model": "two_tower", "loss.temperature": t, "seed": s, "test/recall@20": 0.1 + t + s / 100}
            for t in (0.05, 0.1) for s in (0, 1)] + [{"model": "popularity", "test/recall@20": 0.07}]
    frame = pd.DataFrame(rows)
    for data, words in ((frame, "mean ± std over 2 seeds"), (frame[frame["seed"] != 1], "1 seed: no error bars")):
        fig = grid_plot(data, ["loss.temperature"])
        try:
            assert words in fig.get_axes()[0].get_title()
        finally:
            plots.close(fig)
