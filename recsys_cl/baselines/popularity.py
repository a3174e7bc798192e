"""Most-popular baseline: every user gets the same ranking, by training click count."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys_cl.baselines._common import check_matrix, require_fitted


class Popularity:
    """Score of item i = number of training users who clicked i (same for every user)."""

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None  # (M,)

    def fit(self, train: sp.csr_matrix) -> "Popularity":
        """train: (U_train, M) binary CSR."""
        x = check_matrix(train, "train")
        self.counts = np.asarray(x.sum(axis=0), dtype=np.float32).ravel()
        return self

    def score(self, history: sp.csr_matrix, user_index: np.ndarray | None = None) -> np.ndarray:
        """history: (b, M) CSR (only its row count is used) -> scores (b, M) float32."""
        require_fitted(self, "counts")
        assert self.counts is not None
        h = check_matrix(history, "history", len(self.counts))
        return np.broadcast_to(self.counts, (h.shape[0], len(self.counts))).copy()
