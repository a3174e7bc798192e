"""Item-based k-nearest-neighbours with cosine similarity (Sarwar et al., WWW 2001).

sim(i, j) = c_ij / (sqrt(n_i) sqrt(n_j) + shrink), with c_ij the number of training users who
clicked both and n_i the users who clicked i. Each item keeps its ``k`` most similar items;
score(user, j) = sum over history items i of S[i, j].
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys_cl.baselines._common import check_matrix, require_fitted


class ItemKNN:
    """Args:
    k: neighbours kept per item.
    shrink: added to the cosine denominator (damps similarities between rare items).
    prune: "neighbours" — each candidate item j is scored only from its own k nearest neighbours
        (column-wise top-k of S, RecBole's convention); "votes" — each history item votes for its k
        nearest neighbours (row-wise top-k, implicit's ItemItemRecommender convention).
    block_size: items per block when computing similarities (memory ~ 8 * M * block_size bytes).
    """

    def __init__(self, k: int = 20, shrink: float = 0.0, prune: str = "neighbours",
                 block_size: int = 2048) -> None:
        if k < 1:
            raise ValueError(f"ItemKNN k must be >= 1, got {k}")
        if shrink < 0:
            raise ValueError(f"ItemKNN shrink must be >= 0, got {shrink}")
        if prune not in ("neighbours", "votes"):
            raise ValueError(f"ItemKNN prune must be 'neighbours' or 'votes', got {prune!r}")
        self.k, self.shrink, self.prune, self.block_size = int(k), float(shrink), prune, int(block_size)
        self.S: sp.csr_matrix | None = None  # (M, M)

    def fit(self, train: sp.csr_matrix) -> "ItemKNN":
        """train: (U_train, M) binary CSR."""
        x = check_matrix(train, "train").tocsc()
        m = x.shape[1]
        norms = np.sqrt(np.asarray(x.power(2).sum(axis=0)).ravel())  # (M,)
        k = min(self.k, max(m - 1, 1))
        rows, cols, vals = [], [], []
        for start in range(0, m, self.block_size):
            block = np.arange(start, min(start + self.block_size, m))
            c = (x.T @ x[:, block]).toarray().astype(np.float64)  # (M, blk): co-clicks with block
            sim = c / (norms[:, None] * norms[None, block] + self.shrink + 1e-12)
            sim[block, np.arange(len(block))] = 0.0  # no self-similarity
            top = np.argpartition(-sim, k - 1, axis=0)[:k]  # (k, blk): neighbours of each block item
            v = np.take_along_axis(sim, top, axis=0)
            keep = v > 0
            rows.append(top[keep])
            cols.append(np.broadcast_to(block, top.shape)[keep])
            vals.append(v[keep])
        # column j holds the k nearest neighbours i of item j
        s = sp.csr_matrix(
            (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
            shape=(m, m),
        )
        self.S = s if self.prune == "neighbours" else s.T.tocsr()
        return self

    def score(self, history: sp.csr_matrix, user_index: np.ndarray | None = None) -> np.ndarray:
        """history: (b, M) CSR -> scores (b, M) float32 = history @ S."""
        require_fitted(self, "S")
        assert self.S is not None
        h = check_matrix(history, "history", self.S.shape[0])
        return np.asarray((h @ self.S).toarray(), dtype=np.float32)
