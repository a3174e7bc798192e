"""The item-index interface, its on-disk manifest, and the loader that dispatches to a backend.

An index maps a query embedding to the top-K items by inner product (TFRS ``TopK`` /
implicit's ``similar_items`` style). Every backend saves itself as a directory holding its own
files plus ``manifest.json`` (:class:`Manifest`); :func:`load_index` reads the manifest and hands
the directory to the right backend class.

Letters: M catalogue size, D embedding dim, Q queries, K top-k.

Example::

    index = ExactIndex()
    index.build(item_vectors, item_ids)            # (M, D) float32, (M,)
    ids, scores = index.query(user_vectors, k=100)  # (Q, K), (Q, K), scores descending
    index.save("artifacts/index")                   # + manifest.json
    index = load_index("artifacts/index")
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from recsys_cl.data.validate import RESERVED_ITEM_ID

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
SENTINEL_ID = RESERVED_ITEM_ID
"""Item id used to pad results when the catalogue holds fewer than K items (score ``-inf``);
``""`` (:data:`SENTINEL_STR`) when the item ids are strings."""
SENTINEL_STR = ""


def sentinel_for(ids: np.ndarray) -> int | str:
    """The padding id for an id array: -1 for integer ids, "" for string ids."""
    return SENTINEL_STR if ids.dtype.kind == "U" else SENTINEL_ID


REBUILD_HINT = "rebuild it with `python -m pipelines.build_index --model <model uri or path> --out <dir>`"


def without_rebuild_hint(message: str) -> str:
    """``message`` (an index error) cut before its :data:`REBUILD_HINT` and the separator leading to it."""
    return re.split(r"[;,]?\s*(?:upgrade recsys_cl, or )?" + re.escape(REBUILD_HINT), message)[0]


class IndexLoadError(ValueError):
    """An index directory or its manifest is missing, unreadable or inconsistent."""


class IndexMismatchError(ValueError):
    """An index was built from a different model (or embeddings) than the one it is used with."""


@dataclass(frozen=True)
class Manifest:
    """What an index directory holds and where it came from; written as ``manifest.json``."""

    backend: str
    """``exact``, ``annoy`` or ``faiss``: which class :func:`load_index` dispatches to."""
    item_count: int
    embedding_dim: int
    metric: str = "inner_product"
    """Scores are always inner products of the stored (un-augmented) vectors."""
    normalized: bool = True
    """Whether the item embeddings are L2-normalised (inner product = cosine)."""
    embedding_hash: str = ""
    """sha256 of the float32 embedding bytes and the int64 item ids (:func:`embedding_hash`)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Backend parameters: ``n_trees``, ``search_k``, ``nlist``, ``nprobe``, notes."""
    model_uri: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    model_run_id: str | None = None
    built_at: str = ""
    """UTC ISO-8601 time of the build."""
    recall_at_k: float | None = None
    """Measured recall@K against exact search on a sample of user embeddings (tuning fills it); for a
    topped-up sample (``recall_sample_source`` ``users (N active, M other)``) the lower of the whole
    sample's and the N active users' (:attr:`recall_at_k_all`, :attr:`recall_at_k_active`): the
    number the target was checked on."""
    recall_at_k_all: float | None = None
    """Recall@K on the whole sample (None in older manifests)."""
    recall_at_k_active: float | None = None
    """Recall@K on the sample's active users alone (``recall_sample_source`` ``active users`` or
    ``users (N active, M other)``: nightly's builds); None for other samples and in older manifests."""
    recall_k: int | None = None
    """The depth recall was tuned and measured at: ``index.k`` plus the query users' median number
    of seen items, since the candidate job fetches K + |seen| and drops the seen ones (``index.k``
    alone in manifests before 2026-12-07, and with item-vector queries)."""
    queries_per_s: float | None = None
    exact_queries_per_s: float | None = None
    recall_sample_size: int | None = None
    recall_sample_source: str | None = None
    """``users`` (user-tower embeddings of real histories), ``active users`` (the same, of the users a
    nightly run served when it built the index), ``users (16 active, 184 other)`` (those, topped up
    with other training users to ``index.recall_min_users``) or ``items`` (perturbed item vectors)."""
    tuning: list[dict[str, Any]] = field(default_factory=list)
    """Knob sweep of the chosen backend, and for ``auto`` the table of every backend measured."""
    chosen_reason: str | None = None
    """Why this backend (``auto``), or which backend was requested."""
    index_id: str = ""
    """Short id of this build: derived from the embedding hash, backend and params."""
    fold_in: dict[str, Any] = field(default_factory=dict)
    """New items' clicks taken into the vectors (``recsys_cl.index.build.fold_in_catalogue``):
    ``{"clicks_until", "method", "clicks", "items"}`` plus ``"step"`` (sum) or ``"clicks_since"``,
    ``"window_clicks"`` and, when the window was sampled, ``"fit_clicks"`` (fit); empty when none were
    (older manifests too)."""
    files_sha256: dict[str, str] = field(default_factory=dict)
    """sha256 of each backend file, checked by :meth:`Index.load` so that a damaged file whose
    header still parses is refused instead of serving wrong scores (empty in older manifests)."""
    manifest_version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True, default=_json_default)

    @classmethod
    def from_json(cls, text: str, source: str = "manifest.json") -> Manifest:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise IndexLoadError(f"{source}: not valid JSON ({e}); {REBUILD_HINT}") from e
        if not isinstance(raw, dict):
            raise IndexLoadError(f"{source}: expected a JSON object, found {type(raw).__name__}; {REBUILD_HINT}")
        known = {f.name for f in dataclasses.fields(cls)}
        required = {"backend", "item_count", "embedding_dim"}
        missing = sorted(required - raw.keys())
        if missing:
            raise IndexLoadError(f"{source}: missing required keys {missing}; {REBUILD_HINT}")
        unknown = sorted(raw.keys() - known)
        if unknown:
            raise IndexLoadError(
                f"{source}: unknown keys {unknown} (written by a newer recsys_cl?); {REBUILD_HINT}"
            )
        _check_field_types(raw, source)
        version = raw.get("manifest_version", MANIFEST_VERSION)
        if version > MANIFEST_VERSION:
            raise IndexLoadError(
                f"{source}: manifest_version {version} is newer than this recsys_cl reads ({MANIFEST_VERSION}): the "
                f"index was written by a newer recsys_cl; upgrade recsys_cl, or {REBUILD_HINT}"
            )
        return cls(**raw)

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        directory = Path(directory)
        if directory.is_file():
            raise IndexLoadError(f"{directory} is a file; pass the index directory that holds {MANIFEST_FILE}")
        if not directory.is_dir():
            raise IndexLoadError(f"index directory {directory} does not exist; {REBUILD_HINT}")
        path = directory / MANIFEST_FILE
        if not path.is_file():
            raise IndexLoadError(
                f"{path} is missing, so {directory} is not a complete index directory; {REBUILD_HINT}"
            )
        return cls.from_json(path.read_text(), source=str(path))

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)


_FIELD_TYPES: dict[str, tuple[type, str]] = {
    "backend": (str, "a string"),
    "item_count": (int, "a positive integer"),
    "embedding_dim": (int, "a positive integer"),
    "manifest_version": (int, "a positive integer"),
    "embedding_hash": (str, "a string"),
    "params": (dict, "a JSON object"),
    "fold_in": (dict, "a JSON object"),
    "files_sha256": (dict, "a JSON object"),
}
"""Manifest fields the code computes with or compares, and the JSON type each must have."""


def _check_field_types(raw: dict[str, Any], source: str) -> None:
    """Raise :class:`IndexLoadError` naming the first field of ``raw`` (a parsed manifest) whose JSON
    type is wrong, e.g. ``"embedding_dim": "32"``, which would otherwise fail later and obscurely."""
    for key, (kind, expected) in _FIELD_TYPES.items():
        if key not in raw:
            continue
        value = raw[key]
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if ok and expected.startswith("a positive"):
            ok = value >= 1
        if not ok:
            raise IndexLoadError(
                f"{source}: {key} must be {expected}, found {json.dumps(value)} ({type(value).__name__}); the "
                f"manifest was edited or damaged, {REBUILD_HINT}"
            )


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def backend_file_hashes(directory: Path) -> dict[str, str]:
    """``{file name: sha256}`` of every file in ``directory`` but the manifest."""
    return {p.name: file_sha256(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}


def verify_files(directory: Path, manifest: Manifest) -> None:
    """Raise :class:`IndexLoadError` when a file listed in ``manifest.files_sha256`` is missing or
    its bytes changed since the build (a manifest without checksums passes)."""
    for name, expected in manifest.files_sha256.items():
        path = directory / name
        if not path.is_file():
            raise IndexLoadError(f"{path} is missing, the index directory is incomplete; {REBUILD_HINT}")
        if file_sha256(path) != expected:
            raise IndexLoadError(
                f"{path} does not match the checksum recorded in {MANIFEST_FILE} when the index was built: "
                f"the file was damaged or replaced, so the index is corrupt; {REBUILD_HINT}"
            )


def verify_embedding_hash(directory: Path, manifest: Manifest, index: Index) -> None:
    """Raise :class:`IndexLoadError` when the vectors and ids ``index`` loaded from ``directory`` do
    not hash to ``manifest.embedding_hash`` (a reordered ``item_ids.npy``, another model's vectors).
    Only for manifests without file checksums: files that match ``files_sha256`` (checked first,
    :func:`verify_files`) are the bytes the build wrote, and rehashing them would cost a second pass
    over the catalogue at every load (0.5 s and a vector copy at 1M x 64). A manifest without an
    embedding hash, or a backend that cannot give its vectors back (:meth:`Index.stored_items`), passes."""
    if manifest.files_sha256:
        return
    stored = index.stored_items() if manifest.embedding_hash else None
    if stored is None:
        return
    found = embedding_hash(*stored)
    if found != manifest.embedding_hash:
        raise IndexLoadError(
            f"{directory}: the stored item vectors and ids hash to {found[:12]}..., not to the embedding_hash "
            f"{manifest.embedding_hash[:12]}... in {MANIFEST_FILE}: a file was replaced or reordered after the "
            f"build, so the index is corrupt; {REBUILD_HINT}"
        )


def utc_now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def embedding_hash(vectors: np.ndarray, ids: np.ndarray) -> str:
    """sha256 over the float32 C-order bytes of ``vectors`` (M, D) and the bytes of ``ids`` (M,)
    (int64, or numpy unicode for string ids)."""
    h = hashlib.sha256()
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    h.update(f"{v.shape[0]}x{v.shape[1]}:".encode())
    h.update(v.tobytes())
    ids = np.asarray(ids)
    h.update((ids.astype(np.int64) if ids.dtype.kind in "iu" else ids.astype(str)).tobytes())
    return h.hexdigest()


def check_vectors(vectors: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate build inputs; return (float32 C-contiguous (M, D), int64 or str (M,) ids)."""
    vectors = np.asarray(vectors)
    ids = np.asarray(ids)
    if vectors.ndim != 2:
        raise ValueError(f"item vectors must be 2-D (M, D), got shape {vectors.shape}")
    if ids.ndim != 1 or ids.shape[0] != vectors.shape[0]:
        raise ValueError(
            f"ids must be 1-D with one id per vector row: got ids {ids.shape} for vectors {vectors.shape}"
        )
    if vectors.shape[0] == 0:
        raise ValueError("cannot build an index over zero items")
    if np.issubdtype(ids.dtype, np.integer):
        ids = ids.astype(np.int64)
    elif ids.dtype.kind in "UO":
        ids = ids.astype(str)  # numpy unicode: saved in .npy without pickle
    else:
        raise ValueError(f"item ids must be integers or strings, got dtype {ids.dtype}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("item ids must be unique")
    if (ids == sentinel_for(ids)).any():
        raise ValueError(f"item id {sentinel_for(ids)!r} is reserved as the padding sentinel")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(vectors).all():
        raise ValueError("item vectors contain NaN or inf")
    return vectors, ids


def check_queries(queries: np.ndarray, dim: int, k: int) -> np.ndarray:
    queries = np.asarray(queries)
    if queries.ndim == 1:
        queries = queries[None, :]
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"queries must be (Q, {dim}) to match the index, got shape {queries.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return np.ascontiguousarray(queries, dtype=np.float32)


def pad_rows(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad (Q, k') row results to (Q, k) with row -1 and score ``-inf`` (or cut them to k)."""
    q, have = rows.shape
    if have >= k:
        return rows[:, :k], scores[:, :k]
    out_rows = np.full((q, k), -1, dtype=np.int64)
    out_scores = np.full((q, k), -np.inf, dtype=np.float32)
    out_rows[:, :have] = rows
    out_scores[:, :have] = scores
    return out_rows, out_scores


class Index(ABC):
    """Top-K inner-product search over a fixed set of item vectors.

    Subclasses set :attr:`name` and :attr:`is_exact`, implement :meth:`build`, :meth:`query_rows`,
    :meth:`_save_files` and :meth:`_load_files`. Results: ids (Q, K) original item ids (int64, or
    str for string ids) and
    scores (Q, K) float32 true inner products, sorted descending, padded with
    :data:`SENTINEL_ID` / ``-inf`` when M < K.
    """

    name: ClassVar[str] = "base"
    is_exact: ClassVar[bool] = False
    tuning_knob: ClassVar[str] = ""
    """Approximate indexes: the speed/recall knob :func:`recsys_cl.index.tuning.tune` raises."""
    files: ClassVar[tuple[str, ...]] = ()
    """The file names :meth:`_save_files` writes (the manifest aside): all an index directory of this
    backend holds, so that a build replaces only such a directory
    (:func:`recsys_cl.index.build.check_replaceable`)."""
    supports_exclusion: ClassVar[bool] = False
    """Whether :meth:`query_excluding` is implemented (exact search: the excluded rows are masked in
    the score block). Approximate backends leave it False: the candidates job then fetches K + |seen|
    items with :meth:`query` and drops the seen ones (``recsys_cl.candidates.scoring.topk_unseen``)."""

    def __init__(self) -> None:
        self.manifest: Manifest | None = None

    # -- interface ----------------------------------------------------------------------------
    @abstractmethod
    def build(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Index ``vectors`` (M, D) float32 whose rows are the items ``ids`` (M,)."""

    @abstractmethod
    def query_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows for each query row: (rows (Q, k) int64 positions in :attr:`ids`, scores (Q, k)
        float32), sorted descending, padded with -1 / ``-inf`` when fewer than k are found.

        What :meth:`query` returns, before the rows are turned into item ids: callers that map items
        to their own indices (the candidates job) map the M rows once instead of every fetched id,
        which for string ids is most of the cost of a deep fetch."""

    def query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for each query row: (ids (Q, k) int64 or str, scores (Q, k) float32),
        padded with the sentinel id (:func:`sentinel_for`) / ``-inf``."""
        rows, scores = self.query_rows(queries, k)
        ids = self.ids
        out = np.full(rows.shape, sentinel_for(ids), dtype=ids.dtype)  # (Q, k)
        found = rows >= 0
        out[found] = ids[rows[found]]
        return out, scores

    def query_excluding(
        self, queries: np.ndarray, k: int, exclude_offsets: np.ndarray, exclude_rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows for each query row with some rows left out per query (its user's seen items).

        The excluded rows are scored ``-inf`` before the top k is taken, so the entries with a finite
        score are the first non-excluded rows in :meth:`query`'s order; the excluded rows, and rows
        whose score is not finite, only come after them. Only where :attr:`supports_exclusion`.

        Args:
            queries: (Q, D) float32.
            k: K >= 1.
            exclude_offsets, exclude_rows: CSR (Q + 1,), (X,): query q leaves out the rows
                ``exclude_rows[exclude_offsets[q]:exclude_offsets[q + 1]]``, positions in :attr:`ids`
                (repeats allowed).

        Returns:
            (rows (Q, K) int64 positions in :attr:`ids`, scores (Q, K) float32), sorted descending;
            padded with -1 / ``-inf`` when M < K.
        """
        raise NotImplementedError(
            f"the {self.name} index cannot exclude items while searching; query deeper and drop them"
        )

    @property
    @abstractmethod
    def ids(self) -> np.ndarray:
        """(M,) the item id of each row, as given to :meth:`build`."""

    @property
    @abstractmethod
    def size(self) -> int:
        """Number of indexed items M."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Embedding dimension D."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Backend parameters recorded in the manifest."""

    def stored_items(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(vectors (M, D) float32, ids (M,))`` as the index holds them, row by row, for
        :meth:`load` to check against the manifest's ``embedding_hash``; None when the backend cannot
        give its vectors back."""
        return None

    @abstractmethod
    def _save_files(self, directory: Path) -> None:
        """Write the backend's own files into ``directory`` (exists, empty but for the manifest)."""

    @abstractmethod
    def _load_files(self, directory: Path, manifest: Manifest) -> None:
        """Restore state from ``directory``; raise :class:`IndexLoadError` on missing/corrupt files."""

    # -- shared -------------------------------------------------------------------------------
    def default_manifest(self, **provenance: Any) -> Manifest:
        base = self.manifest or Manifest(backend=self.name, item_count=self.size, embedding_dim=self.dim)
        return base.replace(
            backend=self.name, item_count=self.size, embedding_dim=self.dim, params=self.params(), **provenance
        )

    def save(self, directory: str | Path, manifest: Manifest | None = None) -> Path:
        """Write the backend files and ``manifest.json`` into ``directory`` (created); return it.

        Not atomic by itself; :func:`recsys_cl.index.build.write_index_atomically` builds into a
        temporary sibling directory and renames it into place.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        manifest = (manifest or self.default_manifest()).replace(
            backend=self.name, item_count=self.size, embedding_dim=self.dim
        )
        if not manifest.built_at:
            manifest = manifest.replace(built_at=utc_now_iso())
        self._save_files(directory)
        manifest = manifest.replace(files_sha256=backend_file_hashes(directory))
        manifest.write(directory)
        self.manifest = manifest
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Index:
        """Load an index saved by :meth:`save`; checks the manifest names this backend."""
        directory = Path(directory)
        manifest = Manifest.read(directory)
        if manifest.backend != cls.name:
            raise IndexLoadError(
                f"{directory} holds a '{manifest.backend}' index, not '{cls.name}'; use load_index() to "
                "dispatch on the manifest"
            )
        verify_files(directory, manifest)
        index = cls._from_manifest(manifest)
        index._load_files(directory, manifest)
        if index.size != manifest.item_count or index.dim != manifest.embedding_dim:
            raise IndexLoadError(
                f"{directory}: manifest says {manifest.item_count} items x {manifest.embedding_dim} dims but "
                f"the files hold {index.size} x {index.dim}; the directory is corrupt, {REBUILD_HINT}"
            )
        verify_embedding_hash(directory, manifest, index)
        index.manifest = manifest
        return index

    @classmethod
    def _from_manifest(cls, manifest: Manifest) -> Index:
        """A blank instance configured from the manifest's params (override when __init__ takes args)."""
        return cls()

    def __repr__(self) -> str:
        try:
            size = f"M={self.size}, D={self.dim}"
        except RuntimeError:  # not built yet
            size = "unbuilt"
        return f"{type(self).__name__}({size}, {self.params()})"


_BACKENDS: dict[str, str] = {
    "exact": "recsys_cl.index.exact:ExactIndex",
    "annoy": "recsys_cl.index.annoy_index:AnnoyIndex",
    "faiss": "recsys_cl.index.faiss_index:FaissIndex",
}


def backend_class(name: str) -> type[Index]:
    """The :class:`Index` subclass for backend ``name`` (imported lazily)."""
    import importlib

    if name not in _BACKENDS:
        raise ValueError(f"unknown index backend '{name}'; expected one of {sorted(_BACKENDS)}")
    module, attr = _BACKENDS[name].split(":")
    cls: type[Index] = getattr(importlib.import_module(module), attr)
    return cls


def load_index(directory: str | Path) -> Index:
    """Read ``manifest.json`` in ``directory`` and load the index with the backend it names."""
    manifest = Manifest.read(directory)
    if manifest.backend not in _BACKENDS:
        raise IndexLoadError(
            f"{Path(directory) / MANIFEST_FILE}: unknown backend '{manifest.backend}' "
            f"(expected one of {sorted(_BACKENDS)}); {REBUILD_HINT}"
        )
    return backend_class(manifest.backend).load(directory)


def _fold_in_difference(index: dict[str, Any], job: dict[str, Any] | None) -> str:
    """What differs when the index and the job folded in different clicks ('' if nothing does)."""
    def what(f: dict[str, Any] | None) -> str:
        return f"{f['clicks']} clicks up to {f['clicks_until']}" if f and f.get("clicks") else "no clicks"

    if job is None or what(index) == what(job):
        return ""
    return f" (clicks on items without training clicks folded in: index {what(index)}, this job {what(job)})"


def check_compatible(
    manifest: Manifest,
    *,
    model_uri: str | None = None,
    model_version: str | int | None = None,
    model_run_id: str | None = None,
    embedding_dim: int | None = None,
    embedding_hash: str | None = None,
    fold_in: dict[str, Any] | None = None,
) -> None:
    """Refuse an index built from another model: raise :class:`IndexMismatchError` naming the field.

    Only the arguments given are checked. ``model_uri`` is compared only when the manifest has no
    run id / version to compare (URIs such as ``models:/x@champion`` are aliases, not identities).
    ``fold_in`` (what the job folded into its vectors) only explains an ``embedding_hash`` mismatch.
    With ``embedding_hash`` given, a manifest without one is refused: the other identity fields are
    optional (a local model has no run id or version), so nothing else would tie the index to the model.
    """
    problems: list[str] = []
    fold_note = _fold_in_difference(manifest.fold_in, fold_in)
    if embedding_dim is not None and manifest.embedding_dim != embedding_dim:
        problems.append(f"embedding_dim: index has {manifest.embedding_dim}, model has {embedding_dim}")
    if model_run_id is not None and manifest.model_run_id is not None and manifest.model_run_id != model_run_id:
        problems.append(f"model_run_id: index was built from run {manifest.model_run_id}, model is run {model_run_id}")
    if (
        model_version is not None
        and manifest.model_version is not None
        and str(manifest.model_version) != str(model_version)
    ):
        problems.append(f"model_version: index has {manifest.model_version}, model is version {model_version}")
    if (
        model_uri is not None
        and manifest.model_uri is not None
        and manifest.model_uri != model_uri
        and model_run_id is None
        and model_version is None
    ):
        problems.append(f"model_uri: index was built from {manifest.model_uri}, model is {model_uri}")
    if embedding_hash is not None and not manifest.embedding_hash:
        problems.append("embedding_hash: the index manifest has none, so nothing ties the index to this model's "
                        "item embeddings")
    elif embedding_hash is not None and manifest.embedding_hash != embedding_hash:
        problems.append(
            f"embedding_hash: index {manifest.embedding_hash[:12]}..., model's item embeddings {embedding_hash[:12]}..."
            + fold_note
        )
    if problems:
        fix = REBUILD_HINT.replace("<model uri or path>", model_uri or "<model uri or path>")
        until = (fold_in or {}).get("clicks_until") if (fold_in or {}).get("clicks") else None
        if fold_note and len(problems) == 1 and until:  # same model, other clicks: build for this date
            method = (fold_in or {}).get("method")
            flags = f"--fold-in-until {until}" + (f" --fold-in {method}" if method else "")
            fix = fix.replace("--out <dir>", f"{flags} --out <dir>")
        raise IndexMismatchError("the index does not match the model: " + "; ".join(problems) + f". Fix: {fix}")
