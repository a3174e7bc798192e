"""ALS and BPR from the optional ``implicit`` package (``pip install 'recsys_cl[baselines]'``).

* ALS — Hu, Koren & Volinsky, ICDM 2008. Scores fold in the history: the user factor is
  re-solved from the given history rows (``recalculate_user``), so any user with a history works.
* BPR — Rendle et al., UAI 2009. ``implicit`` has no fold-in for BPR, so ``score`` needs the
  train-user row (``user_index``) and uses the learned user factors; the history is only used for
  its shape. Users without train clicks (``user_index == -1``) raise an error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys_cl.baselines._common import check_matrix, require_fitted


def _import_implicit() -> Any:
    try:
        import implicit.cpu.als
        import implicit.cpu.bpr
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the ALS/BPR baselines need the optional 'implicit' package: "
            "pip install 'recsys_cl[baselines]'"
        ) from e
    return implicit


class ALS:
    """Implicit-feedback matrix factorisation by alternating least squares (CPU).

    Args: factors, regularization, alpha (confidence = 1 + alpha * click), iterations, random_state.
    """

    def __init__(self, factors: int = 64, regularization: float = 0.01, alpha: float = 1.0,
                 iterations: int = 15, random_state: int | None = 0) -> None:
        self.params = dict(factors=factors, regularization=regularization, alpha=alpha,
                           iterations=iterations, random_state=random_state)
        self.model: Any = None

    def fit(self, train: sp.csr_matrix) -> "ALS":
        implicit = _import_implicit()
        x = check_matrix(train, "train")
        from threadpoolctl import threadpool_limits

        # implicit's own threads do the work; a multi-threaded BLAS underneath only slows it down
        with threadpool_limits(1, "blas"):
            self.model = implicit.cpu.als.AlternatingLeastSquares(**self.params)
            self.model.fit(x, show_progress=False)
        return self

    def score(self, history: sp.csr_matrix, user_index: np.ndarray | None = None) -> np.ndarray:
        """history: (b, M) CSR -> scores (b, M) float32 from user factors re-solved on the history."""
        require_fitted(self, "model")
        items = np.asarray(self.model.item_factors)  # (M, F)
        h = check_matrix(history, "history", items.shape[0])
        users = self.model.recalculate_user(np.arange(h.shape[0]), h)  # (b, F)
        return np.asarray(users @ items.T, dtype=np.float32)


class BPR:
    """Bayesian personalised ranking matrix factorisation (CPU); see the module note on fold-in.

    Args: factors, learning_rate, regularization, iterations, random_state, num_threads (1 by
    default, which is reproducible with a fixed random_state; 0 = all cores, faster, but implicit's
    Hogwild SGD then gives different factors on every run).
    """

    def __init__(self, factors: int = 64, learning_rate: float = 0.01, regularization: float = 0.01,
                 iterations: int = 100, random_state: int | None = 0, num_threads: int = 1) -> None:
        self.params = dict(factors=factors, learning_rate=learning_rate, regularization=regularization,
                           iterations=iterations, random_state=random_state, num_threads=num_threads)
        self.model: Any = None

    def fit(self, train: sp.csr_matrix) -> "BPR":
        implicit = _import_implicit()
        x = check_matrix(train, "train")
        self.model = implicit.cpu.bpr.BayesianPersonalizedRanking(**self.params)
        self.model.fit(x, show_progress=False)
        return self

    def score(self, history: sp.csr_matrix, user_index: np.ndarray | None = None) -> np.ndarray:
        """history: (b, M) CSR; user_index: (b,) train-user rows -> scores (b, M) float32."""
        require_fitted(self, "model")
        items = np.asarray(self.model.item_factors)  # (M, F + 1), last column is the item bias
        h = check_matrix(history, "history", items.shape[0])
        if user_index is None:
            raise ValueError("BPR cannot fold in a history; pass user_index (rows of the train matrix)")
        idx = np.asarray(user_index, dtype=np.int64)
        if idx.shape != (h.shape[0],) or np.any(idx < 0):
            raise ValueError(
                "BPR needs a train-user row (>= 0) for every scored user; "
                f"got shape {idx.shape} with {int(np.sum(idx < 0))} unknown users"
            )
        users = np.asarray(self.model.user_factors)[idx]  # (b, F + 1), last column is 1
        return np.asarray(users @ items.T, dtype=np.float32)
