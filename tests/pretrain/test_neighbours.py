"""recsys_cl.pretrain.neighbours: random-pair cosine similarities split by shared label."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_cl.pretrain.neighbours import label_pair_similarities


def test_label_pair_similarities_hand_worked() -> None:
    # three unit vectors at 0, 60 and 90 degrees: cos(0,1) = 0.5, cos(0,2) = 0, cos(1,2) = cos(30) ~ 0.866
    angles = np.deg2rad([0.0, 60.0, 90.0])
    v = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array([[True, False], [True, True], [False, True]])  # 0-1 share, 1-2 share, 0-2 do not
    out = label_pair_similarities(v, labels, n_pairs=600, seed=0)
    assert len(out["share a label"]) + len(out["share no label"]) == 600
    assert set(np.round(out["share a label"], 3)) == {0.5, 0.866}
    assert set(np.round(out["share no label"], 3)) == {0.0}
    # pairs are uniform over the 6 ordered pairs i != j: 2 of 6 share no label
    assert len(out["share no label"]) / 600 == pytest.approx(1 / 3, abs=0.06)


def test_label_pair_similarities_never_pairs_a_row_with_itself() -> None:
    v = np.eye(5)  # distinct rows are orthogonal, a row with itself would give 1
    out = label_pair_similarities(v, np.ones((5, 1), dtype=bool), n_pairs=1000, seed=1)
    assert len(out["share a label"]) == 1000 and np.all(out["share a label"] == 0.0)
    assert len(out["share no label"]) == 0


def test_label_pair_similarities_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="N >= 2"):
        label_pair_similarities(np.eye(3), np.ones((2, 1), dtype=bool))
