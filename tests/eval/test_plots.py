"""recsys_cl.eval.plots: the similarity histograms logged by the pretraining pipelines."""

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
