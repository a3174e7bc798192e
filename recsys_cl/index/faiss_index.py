"""faiss backend: IVF-Flat with inner product (``faiss-cpu``, the optional ``ann`` extra).

IVF-Flat clusters the items into ``nlist`` lists with k-means (on inner product) and searches the
``nprobe`` lists nearest to the query exhaustively; scores are exact inner products of the stored
vectors, so only recall is approximate. faiss wants ~39 training points per centroid, so small
catalogues (M < 40 * nlist) fall back to ``nlist = max(1, M // 40)``, noted in the manifest.

Files: ``index.faiss`` and ``item_ids.npy`` (row -> original item id).
"""

from __future__ import annotations

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
from recsys_cl.index.exact import IDS_FILE, load_ids

FAISS_FILE = "index.faiss"
MIN_POINTS_PER_LIST = 40
MAX_TRAIN_POINTS_PER_LIST = 256


def import_faiss() -> Any:
    """Import faiss or explain how to install it."""
    try:
        import faiss
    except ImportError as e:
        raise ImportError(
            "the faiss index backend needs faiss-cpu: pip install 'recsys_cl[ann]' (or pip install faiss-cpu), "
            "or use index.backend=exact|annoy"
        ) from e
    return faiss


def faiss_available() -> bool:
    try:
        import_faiss()
    except ImportError:
        return False
    return True


def effective_nlist(nlist: int, m: int) -> int:
    """The inverted lists an IVF index of ``m`` items gets when ``nlist`` are asked for: ``nlist``,
    lowered to ``max(1, m // MIN_POINTS_PER_LIST)`` for small catalogues (k-means needs points per list)."""
    return nlist if m >= MIN_POINTS_PER_LIST * nlist else max(1, m // MIN_POINTS_PER_LIST)


class FaissIndex(Index):
    """Approximate top-K by inner product with faiss ``IndexIVFFlat``.

    Args:
        nlist: inverted lists (k-means centroids); ~sqrt(M) to 4*sqrt(M) is usual.
        nprobe: lists searched per query; :func:`recsys_cl.index.tuning.tune_search_k` raises it
            until a target recall is met.
        seed: k-means seed.
    """

    name: ClassVar[str] = "faiss"
    is_exact: ClassVar[bool] = False
    tuning_knob: ClassVar[str] = "nprobe"
    files: ClassVar[tuple[str, ...]] = (FAISS_FILE, IDS_FILE)

    def __init__(self, nlist: int = 1024, nprobe: int = 16, seed: int = 0) -> None:
        super().__init__()
        if nlist < 1 or nprobe < 1:
            raise ValueError(f"nlist and nprobe must be >= 1, got nlist={nlist}, nprobe={nprobe}")
        self.requested_nlist = nlist
        self.nlist = nlist
        self.nprobe = nprobe
        self.seed = seed
        self.note = ""
        self._index: Any = None
        self._ids: np.ndarray | None = None

    # -- build / query --------------------------------------------------------------------------
    def build(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        faiss = import_faiss()
        vectors, ids = check_vectors(vectors, ids)
        m, d = vectors.shape
        self.nlist = effective_nlist(self.requested_nlist, m)
        self.note = ""
        if self.nlist != self.requested_nlist:
            self.note = (
                f"nlist lowered from {self.requested_nlist} to {self.nlist}: {m} items < "
                f"{MIN_POINTS_PER_LIST} x nlist"
            )
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, self.nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = self.seed
        index.cp.min_points_per_centroid = 1  # we already sized nlist; silence faiss's warning
        train = vectors
        max_train = MAX_TRAIN_POINTS_PER_LIST * self.nlist
        if m > max_train:  # faiss subsamples anyway; do it deterministically
            train = vectors[np.random.default_rng(self.seed).choice(m, max_train, replace=False)]
        index.train(train)
        index.add(vectors)
        self._index, self._ids = index, ids
        self.set_knob(min(self.nprobe, self.nlist))

    def query_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index, ids = self._require_built()
        queries = check_queries(queries, self.dim, k)
        kk = min(k, ids.shape[0])
        scores, rows = index.search(queries, kk)  # (Q, K) each; rows -1 where fewer than K found
        scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32)
        return pad_rows(rows.astype(np.int64, copy=False), scores, k)

    # -- tuning ---------------------------------------------------------------------------------
    def knob_values(self, k: int) -> list[int]:
        """Increasing ``nprobe`` values: powers of two up to ``nlist`` (exhaustive)."""
        values, v = [], 1
        while v < self.nlist:
            values.append(v)
            v *= 2
        values.append(self.nlist)
        return values

    def set_knob(self, value: int) -> None:
        self.nprobe = int(min(max(1, value), self.nlist))
        if self._index is not None:
            self._index.nprobe = self.nprobe

    # -- properties -----------------------------------------------------------------------------
    @property
    def ids(self) -> np.ndarray:
        return self._require_built()[1]

    @property
    def size(self) -> int:
        return int(self._require_built()[1].shape[0])

    @property
    def dim(self) -> int:
        return int(self._require_built()[0].d)

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"nlist": self.nlist, "nprobe": self.nprobe, "seed": self.seed}
        if self.note:
            out["note"] = self.note
        return out

    # -- persistence ----------------------------------------------------------------------------
    @classmethod
    def _from_manifest(cls, manifest: Manifest) -> FaissIndex:
        p = manifest.params
        index = cls(nlist=int(p.get("nlist", 1024)), nprobe=int(p.get("nprobe", 16)), seed=int(p.get("seed", 0)))
        index.note = str(p.get("note", ""))
        return index

    def stored_items(self) -> tuple[np.ndarray, np.ndarray]:
        """IVF-Flat keeps the vectors unquantised in its lists: reconstructed in row order."""
        index, ids = self._require_built()
        return index.reconstruct_n(0, index.ntotal), ids

    def _save_files(self, directory: Path) -> None:
        faiss = import_faiss()
        index, ids = self._require_built()
        faiss.write_index(index, str(directory / FAISS_FILE))
        np.save(directory / IDS_FILE, ids)

    def _load_files(self, directory: Path, manifest: Manifest) -> None:
        faiss = import_faiss()
        self._ids = load_ids(directory / IDS_FILE)
        path = directory / FAISS_FILE
        if not path.is_file():
            raise IndexLoadError(f"{path} is missing, the index directory is incomplete; {REBUILD_HINT}")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise IndexLoadError(f"{path} is unreadable ({str(e).splitlines()[0]}); {REBUILD_HINT}") from e
        if index.ntotal != self._ids.shape[0]:
            raise IndexLoadError(
                f"{path} holds {index.ntotal} items but {IDS_FILE} holds {self._ids.shape[0]}; "
                f"the directory is corrupt, {REBUILD_HINT}"
            )
        self._index = index
        self.set_knob(self.nprobe)

    def _require_built(self) -> tuple[Any, np.ndarray]:
        if self._index is None or self._ids is None:
            raise RuntimeError("the index is empty: call build(vectors, ids) or load a saved index first")
        return self._index, self._ids
