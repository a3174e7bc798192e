"""Model + index for a run: load the model, load a saved index and check the pair, or build one in memory."""

from __future__ import annotations

import logging
import dataclasses
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from recsys_cl.candidates.window import CandidatesError, Window, clicks_up_to, parse_run_date
from recsys_cl.features.spec import FeatureSpec
from recsys_cl.index.base import Index, Manifest
from recsys_cl.towers.two_tower import TwoTower
from recsys_cl.train.steps import FoldIn, embed_items

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """A model, its provenance and item embeddings, as :func:`load_model` returns them."""

    model: TwoTower
    spec: FeatureSpec
    history_length: int
    model_dir: Path
    model_uri: str
    provenance: dict[str, Any]
    item_vectors: np.ndarray  # (M, D) float32
    embedding_hash: str
    fold: FoldIn = field(default_factory=FoldIn)
    """The model's ``item_tower.fold_in_*`` settings."""
    fold_in: dict[str, Any] = field(default_factory=dict)
    """What :func:`fold_in_new_clicks` folded into ``item_vectors``; empty before it runs."""
    config: Any = None
    """The model's own :class:`~recsys_cl.config.RunConfig` (as saved with it)."""

    @property
    def version_label(self) -> str:
        """The ``model_version`` column: registry version, else ``run:<id>``, else ``sha:<model.pt>``."""
        if self.provenance.get("model_version"):
            return str(self.provenance["model_version"])
        if self.provenance.get("model_run_id"):
            return f"run:{self.provenance['model_run_id']}"
        import hashlib

        return "sha:" + hashlib.sha256((self.model_dir / "model.pt").read_bytes()).hexdigest()[:12]


def load_model(model_uri: str, tracking: Any) -> Loaded:
    """Resolve ``model_uri`` (path, runs:/, models:/name/version, models:/name@alias) and load it."""
    from recsys_cl.index.base import embedding_hash
    from recsys_cl.tracking import TrackingError, model_provenance, resolve_model_dir
    from recsys_cl.train.checkpoint import load_model_dir

    try:
        model_dir = resolve_model_dir(model_uri, tracking)
        model, spec, model_cfg = load_model_dir(model_dir)
        prov = model_provenance(model_uri, tracking)
    except TrackingError:  # the store, not the model: reported as such by the pipelines
        raise
    except (FileNotFoundError, OSError) as e:
        raise CandidatesError(f"cannot load model {model_uri!r}: {e}") from e
    except Exception as e:  # mlflow's RESOURCE_DOES_NOT_EXIST and friends
        raise CandidatesError(
            f"cannot load model {model_uri!r}: {e}; pass --model with a model directory, runs:/<id>/model, "
            "models:/<name>/<version> or models:/<name>@<alias>"
        ) from e
    vectors = embed_items(model, spec.num_items).numpy().astype(np.float32)
    if Path(model_uri).exists():  # a local path: compared with the index manifest's absolute path
        model_uri = str(Path(model_uri).absolute())
    return Loaded(model, spec, model_cfg.user_tower.history_length, Path(model_dir), model_uri, prov,
                  vectors, embedding_hash(vectors, spec.items.ids), FoldIn.from_config(model_cfg), config=model_cfg)


def fold_in_new_clicks(loaded: Loaded, history: Any, until: str, since: int | None = None,
                       method: str | None = None, max_clicks: int | None = None) -> Loaded:
    """``loaded`` with the clicks in ``history`` (clicks up to the date ``until``; the model's
    ``fit`` reads those at or after ``since``) on items without training clicks taken into their
    vectors (``recsys_cl.index.build.fold_in_catalogue``); its ``embedding_hash`` is that of the new
    vectors, and ``fold_in`` says what was folded. ``method`` (sum | fit) overrides the model's
    ``item_tower.fold_in_method``; ``max_clicks`` the size ``fit`` samples a larger window down to."""
    from recsys_cl.index.base import embedding_hash
    from recsys_cl.index.build import fold_in_catalogue

    fold = loaded.fold if method is None else dataclasses.replace(loaded.fold, method=method)
    if max_clicks is not None:
        fold = dataclasses.replace(fold, max_clicks=max_clicks)
    vectors, info = fold_in_catalogue(loaded.model, loaded.spec, loaded.item_vectors, history,
                                      loaded.history_length, fold, until, since)
    if info["clicks"]:
        log.info("fold-in (%s): %d clicks up to %s on %d items without training clicks", info["method"],
                 info["clicks"], until, info["items"])
    return dataclasses.replace(loaded, item_vectors=vectors, fold_in=info,
                               embedding_hash=embedding_hash(vectors, loaded.spec.items.ids))


def fold_in_for_run(loaded: Loaded, clicks: Any, run_date: date, lookback_days: int, method: str,
                    index_dir: str | Path | None = None, max_clicks: int | None = None) -> Loaded:
    """:func:`fold_in_new_clicks` for a job on ``run_date`` (``clicks``: the whole click log).

    Without a saved index: the clicks up to the run date, by ``method`` (sum | fit; ``fit`` reads the
    run's active-user window, ``lookback_days``, sampled down to ``max_clicks``). With one
    (``index_dir``), the index fixes the item vectors, so the job folds in what the index did (its
    manifest's ``fold_in``, its sample size included): nothing for an index built without it, the
    clicks up to its ``--fold-in-until`` date otherwise.

    Raises:
        CandidatesError: the index folded in clicks after the run date (a backfill would read the future).
    """
    until = run_date
    since: int | None = Window(run_date, lookback_days).start
    if index_dir is not None:
        built = Manifest.read(index_dir).fold_in  # IndexLoadError: missing / corrupt, as open_index
        if not built:
            log.debug("the index %s was built without new items' clicks folded in: serving it as built", index_dir)
            return loaded
        until = parse_run_date(str(built["clicks_until"]), f"{index_dir} manifest fold_in.clicks_until")
        since, method = built.get("clicks_since"), str(built.get("method", "sum"))
        max_clicks = built.get("max_clicks")  # None: an index from before it was recorded (20,000 then)
        if until > run_date:
            raise CandidatesError(
                f"the index {index_dir} folds in new items' clicks up to {until}, after the run date {run_date}: "
                f"its vectors would read the future of this run; build one for the date (python -m "
                f"pipelines.build_index --fold-in-until {run_date} ...) or pass an index built without "
                "--fold-in-until"
            )
        if until < run_date:
            log.info("serving the index's fold-in (clicks up to %s); clicks since then are not in the item "
                     "vectors until the index is rebuilt", until)
    return fold_in_new_clicks(loaded, clicks_up_to(clicks, until), str(until), since, method, max_clicks)


def build_index_for_loaded(
    loaded: Loaded, index_cfg: Any, out_dir: str | Path, clicks: Any = None, max_extra_fetch: int = 1000,
    query_users: np.ndarray | None = None,
) -> Any:
    """Build, tune and write the index of ``loaded``'s own item vectors, new items' folded-in clicks
    included (``recsys_cl.index.build.build_index_for_vectors``): nothing is loaded, embedded or folded
    in again, and the manifest matches ``loaded``. ``clicks``: the job's clicks, for the recall
    queries (None: the model's own click log is read); ``max_extra_fetch``: ``candidates.max_extra_fetch``;
    ``query_users``: whose queries (None: all training users).
    -> ``IndexBuild``."""
    from recsys_cl.index.build import ItemEmbeddings, build_index_for_vectors

    unit = bool(np.allclose(np.linalg.norm(loaded.item_vectors, axis=1), 1.0, atol=1e-3))
    emb = ItemEmbeddings(loaded.item_vectors, np.asarray(loaded.spec.items.ids),
                         unit and not loaded.fold_in.get("clicks"))
    return build_index_for_vectors(loaded.model, loaded.spec, loaded.config, loaded.model_uri, loaded.provenance,
                                   emb, loaded.fold_in, index_cfg, out_dir, clicks, max_extra_fetch, query_users)


def model_uri_for_run(model_uri: str | None, alias: str, tracking: Any, fallback_to_latest: bool = False) -> str:
    """``model_uri`` when given, else the registry version behind
    ``models:/<tracking.registered_model_name>@<alias>`` (``models:/<name>/<version>``), as the nightly
    job resolves it. Raises :class:`~recsys_cl.tracking.AliasNotFoundError` with the command that sets
    a missing alias (or, with ``fallback_to_latest``, takes the latest version)."""
    if model_uri is not None:
        return model_uri
    from recsys_cl.tracking import resolve_model_alias

    name = tracking.registered_model_name
    if not name:
        raise CandidatesError(
            "no model to serve: candidates.model_uri and tracking.registered_model_name are both null; pass "
            "--model with a model URI or directory, or name the registered model"
        )
    return str(resolve_model_alias(name, alias, tracking, fallback_to_latest)["uri"])


def check_saved_index(index_dir: str | Path, backend: str = "auto") -> Manifest:
    """Read only the saved index's manifest, before anything heavier: a missing directory or manifest
    (:class:`~recsys_cl.index.base.IndexLoadError`) or an index of another backend than ``backend``
    fails here, before the click log and the model are read. Returns the manifest."""
    m = Manifest.read(index_dir)
    if backend not in ("auto", m.backend):
        raise CandidatesError(
            f"--backend {backend} but {index_dir} holds an index of backend '{m.backend}'; pass --backend "
            f"{m.backend} (or auto), or build the other backend with pipelines.build_index"
        )
    return m


def open_index(index_dir: str | Path, loaded: Loaded, backend: str = "auto") -> tuple[Index, str, str]:
    """Load a saved index and refuse it unless its manifest matches the model (checked first, so a
    foreign index is reported as such before its files are read), then its files match the manifest.
    -> (index, index_id, reason)."""
    from recsys_cl.index.base import check_compatible, load_index

    m = check_saved_index(index_dir, backend)
    check_compatible(  # IndexMismatchError naming the field
        m,
        model_uri=loaded.model_uri,
        model_version=loaded.provenance.get("model_version"),
        model_run_id=loaded.provenance.get("model_run_id"),
        embedding_dim=int(loaded.item_vectors.shape[1]),
        embedding_hash=loaded.embedding_hash,
        fold_in=loaded.fold_in,
    )
    index = load_index(index_dir)  # IndexLoadError: missing / corrupt files
    index_id = m.index_id or f"{m.backend}-{(m.embedding_hash or loaded.embedding_hash)[:12]}"
    return index, index_id, f"loaded {m.backend} index from {index_dir} (manifest checked against the model)"


def build_index_in_memory(
    backend: str, loaded: Loaded, sample_queries: np.ndarray, k: int, target_recall: float = 0.95,
    fetch_extra: int = 0,
) -> tuple[Index, str, str]:
    """An index built from the model's item embeddings, no files. ``auto`` measures and picks.

    -> (index, index_id, reason). Annoy/faiss are tuned to ``target_recall`` on ``sample_queries``
    at the depth the job really fetches, ``k + fetch_extra`` (``fetch_extra`` = typical number of
    seen items dropped afterwards): tuned at ``k`` alone, the delivered unseen top-k reaches deeper
    into the ranking, where approximate recall is lower (measured: faiss tuned to 0.95 at 100
    delivered 0.91 after dropping 10 seen items per user).
    """
    from recsys_cl.index.base import backend_class
    from recsys_cl.index.exact import ExactIndex
    from recsys_cl.index.tuning import choose_backend, tune_search_k

    exact = ExactIndex()
    exact.build(loaded.item_vectors, loaded.spec.items.ids)
    hash12 = loaded.embedding_hash[:12]
    if backend == "exact":
        return exact, f"exact-{hash12}", "exact index built in memory (no --index given)"
    kk = min(k + fetch_extra, exact.size)
    names = ["annoy", "faiss"] if backend == "auto" else [backend]
    built: list[Index] = [exact] if backend == "auto" else []
    for name in names:
        try:
            idx = backend_class(name)()
            idx.build(loaded.item_vectors, loaded.spec.items.ids)
        except ImportError as e:
            if backend == "auto":
                log.info("auto: skipping %s (%s)", name, e)
                continue
            raise CandidatesError(f"backend {name} is not installed ({e}); pip install -e '.[ann]'") from e
        tune_search_k(idx, exact, sample_queries, kk, target_recall)
        built.append(idx)
    if backend != "auto":
        idx = built[0]
        return idx, f"{idx.name}-{hash12}", f"{idx.name} index built in memory, tuned to recall {target_recall}"
    choice = choose_backend(built, sample_queries, kk, target_recall, exact=exact)
    return choice.index, f"{choice.index.name}-{hash12}", choice.reason
