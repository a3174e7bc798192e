"""Item indexes for top-K inner-product retrieval: exact, Annoy and faiss behind one interface.

``from recsys_cl.index import ExactIndex, AnnoyIndex, FaissIndex, load_index, check_compatible``.
Importing this package does not import faiss (``FaissIndex`` imports it when it builds or loads).
"""

from recsys_cl.index.annoy_index import AnnoyIndex, augment_inner_product
from recsys_cl.index.base import (
    MANIFEST_FILE,
    SENTINEL_ID,
    SENTINEL_STR,
    Index,
    IndexLoadError,
    IndexMismatchError,
    Manifest,
    backend_class,
    check_compatible,
    embedding_hash,
    load_index,
    sentinel_for,
)
from recsys_cl.index.exact import ExactIndex
from recsys_cl.index.faiss_index import FaissIndex, faiss_available
from recsys_cl.index.tuning import (
    BackendChoice,
    TuneResult,
    choose_backend,
    measure,
    recall_at_k,
    tune_search_k,
)

__all__ = [
    "MANIFEST_FILE",
    "SENTINEL_ID",
    "SENTINEL_STR",
    "AnnoyIndex",
    "BackendChoice",
    "ExactIndex",
    "FaissIndex",
    "Index",
    "IndexLoadError",
    "IndexMismatchError",
    "Manifest",
    "TuneResult",
    "augment_inner_product",
    "backend_class",
    "check_compatible",
    "choose_backend",
    "embedding_hash",
    "faiss_available",
    "load_index",
    "measure",
    "recall_at_k",
    "sentinel_for",
    "tune_search_k",
]
