"""Annoy backend: angular forest on unit vectors, or inner product through the MIPS augmentation.

Annoy's ``angular`` metric ranks by cosine. For L2-normalised embeddings cosine *is* the inner
product. For raw dot-product towers we apply the augmentation of Bachrach et al. 2014 as implicit's
``augment_inner_product_matrix`` does::

    item  x̃ = [x, sqrt(N² − ‖x‖²)]     N = max item norm, so ‖x̃‖ = N for every item
    query q̃ = [q, 0]                    so q̃·x̃ = q·x and cos(q̃, x̃) = q·x / (‖q‖ N)

and cosine order equals inner-product order. Returned scores are the true inner products
recomputed from the stored (un-augmented) vectors.

Files: ``index.ann`` (memory-mapped on load, so processes share one physical copy),
``item_ids.npy`` (row -> original item id; Annoy wants rows 0..M-1) and ``vectors.npy``.
Annoy has no batch query: :meth:`AnnoyIndex.query_rows` loops over queries, optionally in threads
(Annoy releases the GIL while it searches).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from recsys_cl.index.base import (
    REBUILD_HINT,
    Index,
    IndexLoadError,
    Manifest,
    check_queries,
    check_vectors,
    pad_rows,
)
from recsys_cl.index.exact import IDS_FILE, VECTORS_FILE, load_ids, load_npy

ANN_FILE = "index.ann"
NORM_TOLERANCE = 1e-3
"""Item vectors whose norms all lie within this of 1 are treated as L2-normalised (no augmentation)."""


def augment_inner_product(vectors: np.ndarray) -> tuple[np.ndarray, float]:
    """MIPS -> angular: (M, D) -> ((M, D + 1) with extra column sqrt(N² − ‖x‖²), N = max norm)."""
    norms_sq = np.einsum("md,md->m", vectors, vectors)  # (M,)
    max_norm_sq = float(norms_sq.max())
    extra = np.sqrt(np.clip(max_norm_sq - norms_sq, 0.0, None))[:, None]  # (M, 1)
    return np.hstack([vectors, extra]).astype(np.float32), float(np.sqrt(max_norm_sq))


def is_normalized(vectors: np.ndarray, tol: float = NORM_TOLERANCE) -> bool:
    norms = np.linalg.norm(vectors, axis=1)
    return bool(np.all(np.abs(norms - 1.0) <= tol))


class AnnoyIndex(Index):
    """Approximate top-K by inner product with Annoy.

    Args:
        n_trees: trees built; more trees -> bigger index, better recall at a given ``search_k``.
        search_k: nodes inspected per query; ``-1`` is Annoy's default ``n_trees * k``.
            :func:`recsys_cl.index.tuning.tune_search_k` raises it until a target recall is met.
        n_jobs: threads for :meth:`query` (Annoy releases the GIL during a search).
        seed: Annoy's random seed, so the same vectors give the same forest.
    """

    name: ClassVar[str] = "annoy"
    is_exact: ClassVar[bool] = False
    tuning_knob: ClassVar[str] = "search_k"
    files: ClassVar[tuple[str, ...]] = (ANN_FILE, VECTORS_FILE, IDS_FILE)

    def __init__(self, n_trees: int = 10, search_k: int = -1, n_jobs: int = 1, seed: int = 0) -> None:
        super().__init__()
        if n_trees < 1:
            raise ValueError(f"n_trees must be >= 1, got {n_trees}")
        self.n_trees = n_trees
        self.search_k = search_k
        self.n_jobs = max(1, n_jobs)
        self.seed = seed
        self._ann: Any = None
        self._vectors: np.ndarray | None = None  # (M, D) float32, un-augmented
        self._ids: np.ndarray | None = None  # (M,) int64 or str
        self._augmented = False
        self._max_norm = 1.0

    # -- build / query --------------------------------------------------------------------------
    def build(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        import annoy

        vectors, ids = check_vectors(vectors, ids)
        self._augmented = not is_normalized(vectors)
        if self._augmented:
            data, self._max_norm = augment_inner_product(vectors)
        else:
            data, self._max_norm = vectors, 1.0
        ann = annoy.AnnoyIndex(data.shape[1], "angular")
        ann.set_seed(self.seed)
        for row, v in enumerate(data):
            ann.add_item(row, v)
        ann.build(self.n_trees, n_jobs=1)
        self._ann, self._vectors, self._ids = ann, vectors, ids

    def query_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ann, vectors, _ = self._require_built()
        queries = check_queries(queries, self.dim, k)
        q = queries.shape[0]
        kk = min(k, vectors.shape[0])
        if self._augmented:  # q̃ = [q, 0]
            queries_aug = np.hstack([queries, np.zeros((q, 1), dtype=np.float32)])
        else:
            queries_aug = queries
        rows = np.full((q, kk), -1, dtype=np.int64)  # (Q, K) row numbers, -1 = not found
        search = ann.get_nns_by_vector
        search_k = self.search_k

        def run(start: int, stop: int) -> None:
            for i in range(start, stop):
                found = search(queries_aug[i].tolist(), kk, search_k)
                rows[i, : len(found)] = found

        if self.n_jobs > 1 and q >= 2 * self.n_jobs:
            bounds = np.linspace(0, q, self.n_jobs + 1).astype(int)
            with ThreadPoolExecutor(self.n_jobs) as pool:
                list(pool.map(run, bounds[:-1], bounds[1:]))
        else:
            run(0, q)
        # true inner products from the stored vectors, then re-sort (float noise in Annoy's order)
        found_mask = rows >= 0
        scores = np.einsum("qd,qkd->qk", queries, vectors[np.where(found_mask, rows, 0)])  # (Q, K)
        scores = np.where(found_mask, scores, -np.inf).astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")
        rows = np.take_along_axis(rows, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        return pad_rows(rows, scores, k)

    # -- tuning ---------------------------------------------------------------------------------
    def knob_values(self, k: int) -> list[int]:
        """Increasing ``search_k`` values to try: n_trees*k doubling up to an exhaustive search."""
        start = self.n_trees * k
        top = self.n_trees * self.size * 2
        values = []
        v = start
        while v < top:
            values.append(v)
            v *= 2
        values.append(top)
        return values

    def set_knob(self, value: int) -> None:
        self.search_k = int(value)

    # -- properties -----------------------------------------------------------------------------
    @property
    def ids(self) -> np.ndarray:
        return self._require_built()[2]

    @property
    def size(self) -> int:
        return int(self._require_built()[1].shape[0])

    @property
    def dim(self) -> int:
        return int(self._require_built()[1].shape[1])

    def params(self) -> dict[str, Any]:
        return {
            "n_trees": self.n_trees,
            "search_k": self.search_k,
            "seed": self.seed,
            "mips_augmented": self._augmented,
            "max_norm": self._max_norm,
        }

    # -- persistence ----------------------------------------------------------------------------
    @classmethod
    def _from_manifest(cls, manifest: Manifest) -> AnnoyIndex:
        p = manifest.params
        return cls(n_trees=int(p.get("n_trees", 10)), search_k=int(p.get("search_k", -1)), seed=int(p.get("seed", 0)))

    def stored_items(self) -> tuple[np.ndarray, np.ndarray]:
        _, vectors, ids = self._require_built()
        return vectors, ids

    def _save_files(self, directory: Path) -> None:
        ann, vectors, ids = self._require_built()
        ann.save(str(directory / ANN_FILE))
        np.save(directory / VECTORS_FILE, vectors)
        np.save(directory / IDS_FILE, ids)

    def _load_files(self, directory: Path, manifest: Manifest) -> None:
        import annoy

        self._vectors = load_npy(directory / VECTORS_FILE, mmap=True)
        self._ids = load_ids(directory / IDS_FILE)
        self._augmented = bool(manifest.params.get("mips_augmented", False))
        self._max_norm = float(manifest.params.get("max_norm", 1.0))
        path = directory / ANN_FILE
        if not path.is_file():
            raise IndexLoadError(f"{path} is missing, the index directory is incomplete; {REBUILD_HINT}")
        dim = self._vectors.shape[1] + (1 if self._augmented else 0)
        ann = annoy.AnnoyIndex(dim, "angular")
        try:
            ann.load(str(path))  # mmap
        except OSError as e:
            raise IndexLoadError(f"{path} is unreadable ({e}); {REBUILD_HINT}") from e
        if ann.get_n_items() != self._vectors.shape[0]:
            raise IndexLoadError(
                f"{path} holds {ann.get_n_items()} items but {VECTORS_FILE} holds {self._vectors.shape[0]}; "
                f"the directory is corrupt, {REBUILD_HINT}"
            )
        self._ann = ann

    def _require_built(self) -> tuple[Any, np.ndarray, np.ndarray]:
        if self._ann is None or self._vectors is None or self._ids is None:
            raise RuntimeError("the index is empty: call build(vectors, ids) or load a saved index first")
        return self._ann, self._vectors, self._ids
