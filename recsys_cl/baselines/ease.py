"""EASE: Embarrassingly Shallow Autoencoders (Steck, WWW 2019, https://arxiv.org/abs/1905.03375).

Closed form (Eq. 8 of the paper): with G = XᵀX + λI and P = G⁻¹,
B = I − P · diag(1 / diag(P)), i.e. B_ij = −P_ij / P_jj for i ≠ j and B_jj = 0.
Scores for a user with history row x are x B, so any user with a history can be scored (fold-in).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from recsys_cl.baselines._common import check_matrix, require_fitted


class EASE:
    """Args:
    lam: L2 penalty λ on B (Steck uses values in the hundreds for ML-20M).
    max_items: refuse to build the dense M x M matrix above this many items (memory ~ 8 M² bytes
        during fitting).
    dtype: float dtype of the solve; float64 is exact enough for any λ > 0.
    """

    def __init__(self, lam: float = 100.0, max_items: int = 20_000, dtype: type = np.float64) -> None:
        if lam <= 0:
            raise ValueError(f"EASE lam must be > 0 (it makes XᵀX + λI invertible), got {lam}")
        self.lam = float(lam)
        self.max_items = int(max_items)
        self.dtype = dtype
        self.B: np.ndarray | None = None  # (M, M), zero diagonal

    def fit(self, train: sp.csr_matrix) -> "EASE":
        """train: (U_train, M) binary CSR."""
        x = check_matrix(train, "train")
        m = x.shape[1]
        if m > self.max_items:
            raise ValueError(
                f"EASE needs a dense {m} x {m} matrix ({8 * m * m / 2**30:.1f} GiB in float64), above "
                f"max_items={self.max_items}; raise max_items if you have the memory, or restrict "
                "the catalogue"
            )
        g = (x.T @ x).toarray().astype(self.dtype)  # (M, M) Gram matrix
        g[np.diag_indices(m)] += self.lam
        # P = G⁻¹ through Cholesky (G is symmetric positive definite); potri fills the upper triangle.
        c, info = scipy.linalg.lapack.get_lapack_funcs("potrf", (g,))(g, lower=False, overwrite_a=True)
        if info != 0:
            raise np.linalg.LinAlgError(f"EASE: Cholesky of XᵀX + λI failed (info={info})")
        p, info = scipy.linalg.lapack.get_lapack_funcs("potri", (c,))(c, lower=False, overwrite_c=True)
        if info != 0:
            raise np.linalg.LinAlgError(f"EASE: inverting XᵀX + λI failed (info={info})")
        p = np.triu(p) + np.triu(p, 1).T
        b = p / (-np.diag(p))[None, :]  # B_ij = -P_ij / P_jj
        b[np.diag_indices(m)] = 0.0
        self.B = b.astype(np.float32)
        return self

    def score(self, history: sp.csr_matrix, user_index: np.ndarray | None = None) -> np.ndarray:
        """history: (b, M) CSR -> scores (b, M) float32 = history @ B."""
        require_fitted(self, "B")
        assert self.B is not None
        h = check_matrix(history, "history", self.B.shape[0])
        return np.asarray(h @ self.B, dtype=np.float32)
