"""Shared input checks for the baselines (all take binary user x item CSR matrices)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def check_matrix(x: object, what: str, n_items: int | None = None) -> sp.csr_matrix:
    """``x`` as float32 CSR; raise ValueError if it is not 2-D or has the wrong item count."""
    if not sp.issparse(x):
        raise ValueError(f"{what} must be a scipy.sparse matrix (users x items), got {type(x).__name__}")
    m = sp.csr_matrix(x, dtype=np.float32)
    if n_items is not None and m.shape[1] != n_items:
        raise ValueError(
            f"{what} has {m.shape[1]} item columns but the model was fit on {n_items}; "
            "build both from the same item vocab (the train catalogue)"
        )
    return m


def require_fitted(model: object, attr: str) -> None:
    if getattr(model, attr, None) is None:
        raise RuntimeError(f"{type(model).__name__} is not fitted; call .fit(train) first")
