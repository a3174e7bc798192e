"""Build the item index of a trained model: embed the catalogue, build, tune, write atomically.

:func:`build_index_for_model` is what ``python -m pipelines.build_index`` calls:

1. resolve the model (path, ``runs:/``, ``models:/name/version``, ``models:/name@alias``) and its
   registry provenance; load both towers;
2. run the item tower over every item of ``spec.items`` (clicked or only in the item table);
3. embed a sample of real users (user tower on their last clicks) as tuning/recall queries;
4. build the configured backend (``auto``: every available one), tune its knob to
   ``index.target_recall`` against exact search, measure queries/s;
5. write the directory atomically (temp sibling + rename) with a manifest recording all of it.

MLflow logging is a separate step (:func:`log_index`), so the library can build without tracking.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from recsys_cl.config import IndexConfig, TrackingConfig
from recsys_cl.index.base import (
    MANIFEST_FILE,
    Index,
    Manifest,
    backend_class,
    embedding_hash,
    utc_now_iso,
    without_rebuild_hint,
)
from recsys_cl.index.exact import ExactIndex
from recsys_cl.index.faiss_index import faiss_available
from recsys_cl.index.tuning import choose_backend, measure, split_recall, tune_search_k
from recsys_cl.io_atomic import OutputError, write_directory_atomically

log = logging.getLogger(__name__)


class ModelNotFoundError(ValueError):
    """The model URI or path given to the index build does not resolve to a model."""


@dataclass(frozen=True)
class ItemEmbeddings:
    vectors: np.ndarray  # (M, D) float32
    ids: np.ndarray  # (M,) original item ids
    normalized: bool


@dataclass(frozen=True)
class IndexBuild:
    directory: Path
    manifest: Manifest
    index: Index


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------


def embed_catalogue(model: Any, spec: Any, batch_size: int = 8192) -> ItemEmbeddings:
    """Item-tower embeddings of every item in ``spec.items``: (M, D) float32 + original ids."""
    from recsys_cl.train.steps import embed_items

    vectors = embed_items(model, spec.num_items, batch_size=batch_size).numpy().astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    return ItemEmbeddings(vectors, np.asarray(spec.items.ids), bool(np.allclose(norms, 1.0, atol=1e-3)))


def fold_in_catalogue(
    model: Any, spec: Any, vectors: np.ndarray, history: Any, length: int, fold: Any, until: str,
    since: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """(M, D) catalogue vectors with the clicks in ``history`` (clicks up to the date ``until``) on
    items without training clicks taken in (:func:`recsys_cl.train.steps.fold_in_items` with ``fold``,
    a :class:`~recsys_cl.train.steps.FoldIn`; ``fit`` reads the clicks at or after ``since``), and
    what was: ``{"clicks_until", "method", "clicks", "items", ...}`` (``"clicks_since"`` for fit).
    Items with training clicks keep their vectors. The same inputs give bit-identical vectors, so an
    index built with them matches the job's model."""
    import torch

    from recsys_cl.train.steps import fold_in_items

    out, info = fold_in_items(model, spec, history, torch.from_numpy(vectors), length, fold, since)
    info = {"clicks_until": until, **info, **({"clicks_since": since} if fold.method == "fit" else {})}
    return (out.numpy() if info["items"] else vectors), info


class UserQueries(NamedTuple):
    queries: np.ndarray
    """(U, D) float32 user-tower embeddings from the users' last clicks."""
    seen: np.ndarray
    """(U,) how many distinct items each user has clicked (what the candidate job drops)."""
    given: np.ndarray
    """(U,) bool: drawn from the ``users`` asked for (False: a top-up user)."""


def sample_user_queries(
    model: Any, spec: Any, cfg: Any, n_users: int, seed: int = 0, clicks: pl.DataFrame | None = None,
    users: np.ndarray | None = None, min_users: int = 0,
) -> UserQueries | None:
    """User-tower embeddings of up to ``n_users`` training users from their last clicks, with how
    many distinct items each has clicked (:class:`UserQueries`).

    The clicks come from ``clicks`` when given (a job that holds the log already), else from the
    model's own click log (``cfg.data``); None (with a warning) when that is gone. Only the sampled
    users' clicks are turned into sequences. ``users``: sample among these (those the model knows),
    e.g. the users a candidates run serves; None: every training user. When fewer than
    ``min(min_users, n_users)`` of them are known, other training users (seeded) top the sample up
    to that many; ``given`` tells them apart.
    """
    from recsys_cl.data.errors import DataError
    from recsys_cl.data.io import load_click_log
    from recsys_cl.features.sequences import Sequences
    from recsys_cl.train.steps import embed_users

    known = np.asarray(spec.users.ids)
    if users is not None:
        users = np.unique(np.asarray(users))  # each user once, or the given count is off
        users = users[spec.users.encode(users) >= 0]
    users = known if users is None else users
    if len(users) == 0:
        return None
    if clicks is None:
        try:
            clicks = load_click_log(cfg.data).clicks
        except (DataError, OSError) as e:
            log.warning("cannot read the model's click log for recall queries (%s); using item vectors", e)
            return None
    rng = np.random.default_rng(seed)
    chosen = rng.choice(users, size=min(n_users, len(users)), replace=False)
    top_up = min(min_users, n_users) - len(chosen)
    if top_up > 0:
        others = known[~np.isin(known, chosen)]
        chosen = np.concatenate([chosen, rng.choice(others, size=min(top_up, len(others)), replace=False)])
    given = np.isin(chosen, users)
    order = np.argsort(chosen, kind="stable")
    chosen, given = chosen[order], given[order]
    clicks = clicks.filter(pl.col("user_id").is_in(chosen.tolist()))
    seqs = Sequences.from_clicks(clicks, spec.items, spec.users)
    history = seqs.last_windows(chosen, cfg.user_tower.history_length)  # (U, L)
    user_index = spec.users.encode(chosen)
    counts = clicks.group_by("user_id").agg(pl.col("item_id").n_unique().alias("n"))
    seen = pl.DataFrame({"user_id": chosen}).join(counts, on="user_id", how="left")["n"].fill_null(0).to_numpy()
    return UserQueries(embed_users(model, history, user_index).numpy().astype(np.float32), seen, given)


def item_queries(vectors: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Fallback queries: (n, D) sampled item vectors plus noise (when no click log is available)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), size=min(n, len(vectors)), replace=False)
    q = vectors[rows] + 0.1 * rng.standard_normal((len(rows), vectors.shape[1])).astype(np.float32)
    return q.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Build + tune
# --------------------------------------------------------------------------------------------


def make_index(backend: str, cfg: IndexConfig) -> Index:
    """An unbuilt index of ``backend`` configured from ``cfg``."""
    if backend == "exact":
        return ExactIndex()
    if backend == "annoy":
        cls = backend_class("annoy")
        return cls(  # type: ignore[call-arg]
            n_trees=cfg.n_trees, search_k=cfg.search_k, n_jobs=cfg.n_jobs, seed=cfg.seed
        )
    if backend == "faiss":
        cls = backend_class("faiss")
        return cls(nlist=cfg.nlist, nprobe=max(cfg.nprobe, 1), seed=cfg.seed)  # type: ignore[call-arg]
    raise ValueError(f"unknown index backend '{backend}'; expected exact, annoy, faiss or auto")


def _needs_tuning(index: Index, cfg: IndexConfig) -> bool:
    if index.is_exact:
        return False
    return (cfg.search_k == -1) if index.name == "annoy" else (cfg.nprobe == -1)


def build_and_tune(
    emb: ItemEmbeddings, queries: np.ndarray, cfg: IndexConfig, fetch_extra: int = 0,
    also: np.ndarray | None = None,
) -> tuple[Index, dict[str, Any]]:
    """Build ``cfg.backend`` (``auto``: every available backend in ``cfg.auto_backends``), tune each
    approximate one to ``cfg.target_recall`` on ``queries`` and, for ``auto``, keep the fastest that
    meets it. Returns the index and the manifest fields describing the measurement.

    Recall is tuned and measured at the depth the candidate job fetches, ``cfg.k + fetch_extra``
    (``fetch_extra``: the typical number of seen items it drops afterwards, e.g. the median over the
    query users), as :func:`recsys_cl.candidates.model.build_index_in_memory` does: tuned at ``k``
    alone, the delivered unseen top K reaches deeper into the ranking, where approximate recall is
    lower. ``also``: (Q,) bool, the queries of the users the index is built for (the night's active
    users), all of them or, when the sample was topped up with others, some; the target must hold on
    them too, and the recall reported (``recall_at_k``) is the lower of the two
    (:func:`recsys_cl.index.tuning.sample_recall`); ``recall_at_k_all`` and ``recall_at_k_active``
    keep each (the latter None without ``also``)."""
    k = min(cfg.k + max(fetch_extra, 0), len(emb.ids))
    exact = ExactIndex()
    exact.build(emb.vectors, emb.ids)
    exact_ids = exact.query(queries, k)[0]

    if cfg.backend == "auto":
        names = [b for b in cfg.auto_backends if b != "faiss" or faiss_available()]
        skipped = [b for b in cfg.auto_backends if b not in names]
    else:
        names, skipped = [cfg.backend], []
    built: list[Index] = []
    sweeps: list[dict[str, Any]] = []
    for name in names:
        index = exact if name == "exact" else make_index(name, cfg)
        if index is not exact:
            start = time.perf_counter()
            index.build(emb.vectors, emb.ids)
            log.info("built %s over %d items in %.1f s", name, len(emb.ids), time.perf_counter() - start)
        if _needs_tuning(index, cfg):
            result = tune_search_k(index, exact_ids, queries, k, cfg.target_recall, also)
            sweeps += [{"backend": name, **row} for row in result.table]
            if not result.met_target:
                log.warning("%s did not reach recall@%d %.2f (best %.3f at %s=%s)", name, k, cfg.target_recall,
                            result.recall, result.knob, result.value)
        built.append(index)

    if cfg.backend == "auto":
        choice = choose_backend(built, queries, k, cfg.target_recall, exact=exact, also=also)
        index, reason, table = choice.index, choice.reason, choice.table
        if skipped:
            reason += f"; not considered: {skipped} (faiss-cpu not installed: pip install 'recsys_cl[ann]')"
        # the numbers the choice was made on, so the printout and the reason agree
        row = next(r for r in table if r["backend"] == index.name)
        recall, qps = row["recall"], row["queries_per_s"]
        exact_qps = next(r["queries_per_s"] for r in table if r["backend"] == "exact")
        recall_all, recall_active = _split_recall(index, queries, exact_ids, k, also)  # recall is their minimum
    else:
        index = built[0]
        table = []
        reason = f"{index.name}: requested (index.backend={cfg.backend})"
        recall_all, recall_active = _split_recall(index, queries, exact_ids, k, also)
        recall = recall_all if recall_active is None else min(recall_all, recall_active)  # as sample_recall
        qps = measure(index, queries, k, min_seconds=0.2)
        exact_qps = qps if index.is_exact else measure(exact, queries, k, min_seconds=0.2)

    fields: dict[str, Any] = {
        "recall_at_k": recall,
        "recall_at_k_all": recall_all,
        "recall_at_k_active": recall_active,
        "recall_k": k,
        "queries_per_s": qps,
        "exact_queries_per_s": exact_qps,
        "recall_sample_size": len(queries),
        "tuning": table + sweeps,
        "chosen_reason": reason,
    }
    log.info("%s", reason)
    return index, fields


def _split_recall(
    index: Index, queries: np.ndarray, exact_ids: np.ndarray, k: int, also: np.ndarray | None
) -> tuple[float, float | None]:
    """``index``'s recall@k on the whole sample and on the ``also`` queries alone
    (:func:`recsys_cl.index.tuning.split_recall`); exact search has 1 on both."""
    if index.is_exact:
        return 1.0, None if also is None or not also.any() else 1.0
    return split_recall(index.query(queries, k)[0], exact_ids, also)


# --------------------------------------------------------------------------------------------
# Atomic directory write
# --------------------------------------------------------------------------------------------


def write_index_atomically(index: Index, manifest: Manifest, target: str | Path) -> Path:
    """Save into a hidden temp directory beside ``target``, then rename it into place.

    An existing index at ``target`` is swapped with the new one in one atomic
    ``renameat2(RENAME_EXCHANGE)`` (Linux, :func:`recsys_cl.io_atomic.exchange`), so a reader
    always finds an index there, the old or the new one; the old one is then deleted. Where that
    call is missing it is moved aside first and deleted once the new one is in place (a reader may
    then find no index for an instant; a crash between the two renames leaves the old one under
    ``.<name>.old-*``, which the next build puts back or removes). Returns ``target``.

    Raises:
        OutputError: ``target`` exists and is neither an index directory nor empty, or cannot
            be created (:func:`check_replaceable`): it is never deleted.
    """
    target = Path(target).absolute()
    check_replaceable(target)
    return write_directory_atomically(target, lambda tmp: index.save(tmp, manifest))


OUT_FIX = "pass --out (index.output_dir) a new or empty directory, or an index directory to replace"
"""How to fix a refused index output of ``build_index`` (nightly names its own setting)."""


def check_replaceable(target: str | Path, fix: str = OUT_FIX, writable: bool = True) -> None:
    """An index build replaces its target directory whole; refuse unless the target is absent,
    empty, or an index: its ``manifest.json`` reads as a :class:`Manifest` and it holds nothing but
    the files its backend writes (:attr:`Index.files`), or, when the manifest is damaged, nothing but
    index file names. So ``--out`` pointed at the wrong folder (a nightly index root, a home
    directory, a web app with its own ``manifest.json``) deletes nothing. With ``writable``, the
    folder it goes in must be creatable and writable (:func:`_check_creatable`), so that a bad path
    fails here, before any work. ``fix``: how to choose another target, ending the message.

    Raises:
        OutputError: naming what is there and how to fix it.
    """
    target = Path(target)
    if writable:
        _check_creatable(target, fix)
    if not target.exists():
        return
    if not target.is_dir():
        raise OutputError(f"index output {target} is a file, not a directory; {fix}")
    entries = sorted(p.name for p in target.iterdir())
    problem = _not_an_index(target, entries) if entries else ""
    if problem:
        raise OutputError(
            f"index output {target} exists and is not an index directory ({problem}); "
            f"a build replaces its target whole, so it will not delete this; {fix}"
        )


def _check_creatable(target: Path, fix: str) -> None:
    """Refuse ``target`` when the folder it is written in cannot be made: a file on its path, or a
    nearest existing folder in which nothing can be created (read-only, ``/proc``). Probed by
    creating and removing a hidden temp folder there, which is what the writer does first."""
    folder = target.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"index output {target} cannot be created: {folder} is a file, not a directory; {fix}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{target.name}.tmp-probe-", dir=folder))
    except OSError as e:
        raise OutputError(
            f"index output {target} cannot be created: nothing can be written in {folder} ({e.strerror or e}); {fix}"
        ) from None


def _not_an_index(directory: Path, entries: list[str]) -> str:
    """Why the non-empty ``directory`` (holding ``entries``) is not an index a build may replace
    ('' when it is one)."""
    if MANIFEST_FILE not in entries:
        return f"no {MANIFEST_FILE}; it holds {_shown(entries)}"
    try:
        manifest = Manifest.read(directory)
        backend = backend_class(manifest.backend)
    except (ValueError, OSError) as e:  # IndexLoadError, an unknown backend, an unreadable file
        if "item_ids.npy" in entries and all(name in _index_file_names() and (directory / name).is_file()
                                             for name in entries):
            return ""  # a damaged index (index files only, every backend writes item ids): its load error says rebuild
        return f"its {MANIFEST_FILE} is not an index manifest: {without_rebuild_hint(str(e))}"
    allowed = {MANIFEST_FILE, *backend.files}
    extra = [name for name in entries if name not in allowed or not (directory / name).is_file()]
    if extra:
        return f"besides a {manifest.backend} index it holds {_shown(extra)}, which no index build writes"
    return ""


def _index_file_names() -> set[str]:
    """Every file name an index build of any backend writes (the manifest included)."""
    names = {MANIFEST_FILE}
    for backend in ("exact", "annoy", "faiss"):  # the modules import annoy / faiss only when used
        names.update(backend_class(backend).files)
    return names


def _shown(entries: list[str]) -> str:
    """The first few names of ``entries`` for a message, with the count when there are more."""
    return ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")


# --------------------------------------------------------------------------------------------
# The whole job
# --------------------------------------------------------------------------------------------


def build_index_for_model(
    model_uri: str,
    index_cfg: IndexConfig,
    out_dir: str | Path,
    tracking: TrackingConfig | None = None,
    fold_in: tuple[Any, str, int | None, str] | None = None,
    fold_in_max_clicks: int | None = None,
    max_extra_fetch: int = 1000,
) -> IndexBuild:
    """Embed the model's catalogue, build + tune ``index_cfg.backend``, write ``out_dir`` atomically.
    ``max_extra_fetch``: see :func:`build_index_for_vectors`.

    ``fold_in = (clicks, until, since, method)``: take the clicks (a frame of clicks up to the date
    ``until``; ``fit`` reads those at or after ``since``) on items without training clicks into their
    vectors first, by ``method`` (sum | fit; :func:`fold_in_catalogue`, the model's
    ``item_tower.fold_in_step``); the manifest records it under ``fold_in``. The recall queries' user
    histories come from ``fold_in``'s clicks when given, else from the model's own click log
    (:func:`sample_user_queries`). ``fold_in_max_clicks``: ``fit``'s sample size for a larger window
    (None: :data:`recsys_cl.train.steps.FIT_MAX_CLICKS`).

    Raises:
        OutputError: ``out_dir`` holds something other than an index, or cannot be created (checked
            before any work).
        ModelNotFoundError: the model cannot be fetched or loaded.
    """
    from recsys_cl.tracking import TrackingError, model_provenance, resolve_model_dir
    from recsys_cl.train.checkpoint import load_model_dir

    check_replaceable(out_dir)
    try:
        model_dir = resolve_model_dir(model_uri, tracking)
        provenance = model_provenance(model_uri, tracking)
        model, spec, model_cfg = load_model_dir(model_dir)  # a folder that is not a model: FileNotFoundError
    except TrackingError:  # the store, not the model: the pipeline says "tracking error"
        raise
    except Exception as e:  # FileNotFoundError, MlflowException (unknown name/version/alias), ...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        fix = ("" if "pass one of them" in reason or "tracking.uri" in reason else  # it says what to do already
               ". Pass an existing model directory or an MLflow URI (runs:/<run_id>/model, models:/<name>/<version>, "
               "models:/<name>@<alias>) and check tracking.uri points at the right store")
        raise ModelNotFoundError(f"cannot load model {model_uri!r}: {reason}{fix}") from e

    start = time.perf_counter()
    emb = embed_catalogue(model, spec, index_cfg.embed_batch_size)
    log.info("embedded %d items (dim %d) in %.1f s", len(emb.ids), emb.vectors.shape[1], time.perf_counter() - start)
    folded: dict[str, Any] = {}
    if fold_in is not None:
        from recsys_cl.train.steps import FIT_MAX_CLICKS, FoldIn

        vectors, folded = fold_in_catalogue(model, spec, emb.vectors, fold_in[0], model_cfg.user_tower.history_length,
                                            dataclasses.replace(FoldIn.from_config(model_cfg), method=fold_in[3],
                                                                max_clicks=fold_in_max_clicks or FIT_MAX_CLICKS),
                                            fold_in[1], fold_in[2])
        emb = ItemEmbeddings(vectors, emb.ids, emb.normalized and not folded["clicks"])
        log.info("folded %d clicks up to %s into %d items without training clicks",
                 folded["clicks"], folded["clicks_until"], folded["items"])

    model_uri = model_uri if not Path(model_uri).exists() else str(Path(model_uri).absolute())
    return build_index_for_vectors(model, spec, model_cfg, model_uri, provenance, emb, folded, index_cfg, out_dir,
                                   None if fold_in is None else fold_in[0], max_extra_fetch)


def build_index_for_vectors(
    model: Any, spec: Any, model_cfg: Any, model_uri: str, provenance: dict[str, Any], emb: ItemEmbeddings,
    folded: dict[str, Any], index_cfg: IndexConfig, out_dir: str | Path, clicks: pl.DataFrame | None = None,
    max_extra_fetch: int = 1000, query_users: np.ndarray | None = None,
) -> IndexBuild:
    """Build + tune ``index_cfg.backend`` on item vectors already embedded (and with ``folded``, the
    ``fold_in`` info, new items' clicks already taken in), write ``out_dir`` atomically.

    :func:`build_index_for_model` calls it after loading and embedding; a job that holds the model and
    its vectors already (nightly) calls it directly, so nothing is loaded, embedded or fitted twice.
    ``clicks``: where the recall queries' user histories come from (:func:`sample_user_queries`).
    Recall is tuned at ``index.k`` + the query users' median number of seen items, at most
    ``max_extra_fetch`` (``candidates.max_extra_fetch``: the most the job adds to its first fetch).
    ``query_users``: draw the recall queries from these users (nightly passes the night's active
    users, who have often seen more than the median training user, so the index is tuned for the
    depth their lists reach), topped up with other training users to ``index_cfg.recall_min_users``
    queries when there are fewer; None: all training users.

    Raises:
        OutputError: ``out_dir`` holds something other than an index, or cannot be created.
    """
    check_replaceable(out_dir)
    sampled = sample_user_queries(model, spec, model_cfg, index_cfg.recall_sample_users, index_cfg.seed, clicks,
                                  query_users, 0 if query_users is None else index_cfg.recall_min_users)
    if sampled is None and query_users is not None:  # none of them known to the model: training users
        log.warning("none of the %d query users is a training user of the model; recall is tuned on training "
                    "users instead", len(np.unique(query_users)))
        query_users = None
        sampled = sample_user_queries(model, spec, model_cfg, index_cfg.recall_sample_users, index_cfg.seed, clicks)
    if sampled is not None and sampled.given.any():
        queries, n_given = sampled.queries, int(sampled.given.sum())
        source = "users" if query_users is None else "active users"
        if n_given < len(queries):
            source = f"users ({n_given} active, {len(queries) - n_given} other)"
        # the job fetches K + min(|seen|, max_extra_fetch) and drops the seen items: the depth the
        # users asked for reach, not the top-up users'
        fetch_extra = min(int(np.median(sampled.seen[sampled.given])), max_extra_fetch)
        also = None if query_users is None else sampled.given  # all True then: no active users to tell apart
    else:
        queries, source = item_queries(emb.vectors, index_cfg.recall_sample_users, index_cfg.seed), "items"
        fetch_extra, also = 0, None

    index, measured = build_and_tune(emb, queries, index_cfg, fetch_extra, also)
    manifest = index.default_manifest(
        model_uri=model_uri,
        **provenance,
        normalized=bool(model_cfg.model.normalize and emb.normalized),
        embedding_hash=embedding_hash(emb.vectors, emb.ids),
        built_at=utc_now_iso(),
        recall_sample_source=source,
        fold_in=folded,
        **measured,
    )
    manifest = manifest.replace(index_id=f"{manifest.embedding_hash[:12]}-{index.name}")
    directory = write_index_atomically(index, manifest, out_dir)
    return IndexBuild(directory, manifest, index)


def log_index(build: IndexBuild, tracking: TrackingConfig, index_cfg: IndexConfig) -> str:
    """Log the build as an MLflow run in the serving experiment (:meth:`TrackingConfig.for_serving`),
    linked to the model run (tag ``model_run_id``); returns its id."""
    from recsys_cl.config import flatten
    from recsys_cl.tracking import log_index_run

    m = build.manifest
    params = {**flatten({"index": vars(index_cfg)}), **{f"built.{k}": v for k, v in m.params.items()},
              "built.backend": m.backend, "item_count": m.item_count, "embedding_dim": m.embedding_dim,
              "recall_k": m.recall_k}
    # one key for every build (the depth, recall_k, varies with the users' seen items: a param);
    # recall_vs_exact is the lower of the two after it (the active users' only for nightly's builds)
    metrics = {"recall_vs_exact": m.recall_at_k, "recall_vs_exact_all": m.recall_at_k_all,
               "recall_vs_exact_active": m.recall_at_k_active, "queries_per_s": m.queries_per_s,
               "exact_queries_per_s": m.exact_queries_per_s}
    # the folder written (nightly writes candidates.index_root/<name>/v<version>, not index.output_dir)
    params["index.output_dir"] = str(build.directory)
    tags = {"job": "index", "kind": "index", "index_dir": str(build.directory),
            "model_uri": m.model_uri, "model_name": m.model_name,
            "model_version": m.model_version, "model_run_id": m.model_run_id, "index_id": m.index_id,
            "embedding_hash": m.embedding_hash, "backend": m.backend, "chosen_reason": m.chosen_reason}
    return log_index_run(
        tracking.for_serving(),  # beside the nightly runs, not among the training runs
        index_dir=build.directory,
        params=params,
        metrics={k: float(v) for k, v in metrics.items() if v is not None},
        tags={k: v for k, v in tags.items() if v is not None},
        tables={"tuning": m.tuning} if m.tuning else None,
    )
