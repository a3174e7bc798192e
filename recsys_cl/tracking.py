"""MLflow tracking: the only module of recsys_cl that imports mlflow.

``mlflow_run`` opens (or resumes) a run and yields a :class:`Tracker` whose methods are the
only way the rest of the code reports: params, tags, per-epoch metrics, figures, artifacts,
and the model (logged as a pyfunc wrapping our model directory, optionally registered).
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import json
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow
import mlflow.pyfunc

from recsys_cl.config import TrackingConfig
from recsys_cl.io_atomic import held_lock

log = logging.getLogger(__name__)
# mlflow's own per-file download bar floods the log when a model is registered.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class TrackingError(RuntimeError):
    """The MLflow store cannot be reached or a run cannot be opened in it; the message names the
    store and the fix. Pipelines turn it into ``tracking error: ...`` (``pipelines.cli``)."""


STORE_FIX = "check tracking.uri (or $MLFLOW_TRACKING_URI), e.g. sqlite:///mlflow.db for a local file"


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """For an ``http(s)://`` tracking URI, open one TCP connection to its host and port.

    MLflow's own client retries a refused connection with backoff for minutes before it fails;
    this says at once that nobody listens there. Other schemes (sqlite, file, databricks) pass, and
    so does a host reached through an HTTP(S) proxy (``$HTTPS_PROXY`` ...), which only MLflow's
    client can test.

    Raises:
        TrackingError: the server cannot be reached within ``timeout_s``.
    """
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if parsed.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(parsed.hostname or ""):
        return
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout_s):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise TrackingError(
            f"cannot reach the MLflow tracking server at {uri} ({reason}); start it (e.g. `mlflow server "
            f"--backend-store-uri sqlite:///mlflow.db --port {port}`) or {STORE_FIX}"
        ) from None


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """``tracking.uri`` if set, else ``$MLFLOW_TRACKING_URI``, else a SQLite file ``mlflow.db``."""
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def use_store(cfg: TrackingConfig) -> str:
    """Point MLflow at ``cfg``'s store after :func:`check_reachable`; returns the URI.

    Raises:
        TrackingError: an http(s) store that does not answer (at once, not after MLflow's retries).
    """
    uri = resolve_tracking_uri(cfg)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    ready_store(uri)
    return uri


_READY_STORES: set[str] = set()


def ready_store(uri: str) -> None:
    """Open a SQLite store once per process under an exclusive lock on ``.<db name>.lock`` beside its
    file, so that a new store is created and migrated by one process: two jobs opening the same new
    store at once (a first backfill with parallel tasks) otherwise both run MLflow's schema
    migrations on it, and one fails with ``duplicate column name: step`` or ``table experiments
    already exists``. Other stores, a folder where the lock file cannot be written and a store that
    will not open (reported by the caller's first use of it) pass as they are."""
    db = sqlite_path(uri)
    if db is None or uri in _READY_STORES:
        return
    try:
        with held_lock(db.parent / f".{db.name}.lock", f"the MLflow store {uri}"):
            _client(uri).search_experiments(max_results=1)  # creates and migrates the tables if new
    except OSError:  # a missing or read-only folder: MLflow reports it on first use
        return
    except Exception as e:  # not a database, ...: the caller's first use reports it, in its words
        log.debug("opening %s: %s: %s", uri, type(e).__name__, e)
        return
    _READY_STORES.add(uri)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative or ``sqlite:////absolute``); None for any
    other store and for an in-memory database."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if rest in ("", ":memory:") else Path(rest)


def use_existing_store(cfg: TrackingConfig) -> str:
    """:func:`use_store` for jobs that only read (resolve an alias, load a model): a SQLite store
    whose file does not exist is an error here, not a new empty database left behind; a store that
    will not open (a file that is not a database, an unsupported scheme) is one too, rather than a
    sqlalchemy or MLflow traceback from the first registry call (:func:`_check_opens`).

    Raises:
        TrackingError: the SQLite file is missing, the store will not open, or an http(s) store does
            not answer.
    """
    uri = resolve_tracking_uri(cfg)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise TrackingError(
            f"there is no MLflow store at {uri} (no file {db.resolve()}): nothing was logged there, so "
            "there is no model to read; run the job that logs it first (python -m pipelines.train_two_tower, "
            f"or pipelines.pretrain_simclr / pretrain_simcse for an encoder) or {STORE_FIX}"
        )
    use_store(cfg)
    _check_opens(uri)
    return uri


def _check_opens(uri: str) -> None:
    """Open the store at ``uri`` (tracking and registry) with one cheap query.

    Raises:
        TrackingError: it will not open, naming the store and the underlying error.
    """
    try:
        mlflow.MlflowClient().search_experiments(max_results=1)
    except Exception as e:  # sqlalchemy DatabaseError, UnsupportedModelRegistryStoreURIException, ...
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise TrackingError(
            f"could not read the MLflow store {uri}: {type(e).__name__}: {first}; {STORE_FIX}"
        ) from e


def metric_key(name: str) -> str:
    """MLflow metric names may not contain '@': ``val/recall@20`` -> ``val/recall_at_20``."""
    return name.replace("@", "_at_")


def metric_name_part(text: str) -> str:
    """``text`` as one part of a metric name: each run of characters MLflow refuses in a name (or
    that would nest it: ``/``), and of spaces, becomes one ``_``; ``+ logQ (counting)`` ->
    ``logQ_counting``. ``_`` for a text with nothing left."""
    return re.sub(r"[^\w.\-]+", "_", text).strip("_") or "_"


def _git(*args: str, cwd: Path | None = None) -> str | None:
    """stdout of ``git args`` in ``cwd`` (default: this package's folder); None when git fails."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                             cwd=cwd or Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit(cwd: Path | None = None) -> str:
    """The checked-out commit of the code (``cwd``: default this package's folder); ``unknown``
    outside a git checkout."""
    out = _git("rev-parse", "HEAD", cwd=cwd)
    return out.strip() if out is not None else "unknown"


def git_dirty(cwd: Path | None = None) -> str:
    """``true`` when tracked files differ from :func:`git_commit` (edited, staged or deleted; untracked
    files do not count), ``false`` when not, ``unknown`` outside a git checkout. The ``git_dirty`` tag:
    without it, a run of edited code carries the commit it was edited from and looks reproducible."""
    out = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return "unknown" if out is None else ("true" if out.strip() else "false")


def code_tags() -> dict[str, str]:
    """``git_commit``, ``git_dirty``, ``process`` (:func:`process_tag`) and :func:`system_tags`: the
    tags every run gets."""
    return {"git_commit": git_commit(), "git_dirty": git_dirty(), PROCESS_TAG: process_tag(), **system_tags()}


def system_tags() -> dict[str, str]:
    """``python_version``, ``torch_version``, ``numpy_version``, ``mlflow_version`` and ``cpu_count``
    (the cores this process may use): what a run's speed (``examples_per_s``) and last digits depend
    on besides the code and config, so two runs that differ there say so in the compare view. A
    package that is not installed is ``none``; read from the installed metadata, nothing imported."""
    import importlib.metadata
    import platform

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "none"

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"python_version": platform.python_version(), "torch_version": version("torch"),
            "numpy_version": version("numpy"), "mlflow_version": version("mlflow"), "cpu_count": str(cores)}


DESCRIPTION_TAG = "mlflow.note.content"
"""MLflow's tag for a run's description (the Markdown at the top of its page in the UI)."""
DESCRIPTION_CUT = "\n\n(cut here: MLflow keeps 8000 characters of a description)"


def fit_description(text: str) -> str:
    """``text`` if MLflow keeps all of it as a description, else its lines that fit and
    :data:`DESCRIPTION_CUT`."""
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    if len(text) <= MAX_TAG_VAL_LENGTH:
        return text
    room = MAX_TAG_VAL_LENGTH - len(DESCRIPTION_CUT)
    head = text[:room]
    return (head.rsplit("\n", 1)[0] if "\n" in head else head) + DESCRIPTION_CUT


def param_value(value: Any) -> str:
    """A param's value in the YAML syntax of the config files and ``--set``: ``null``, ``true`` /
    ``false``, ``[id, categorical]``, numbers and strings as they are. One spelling for every run of
    every pipeline, which a value can be copied from into ``--set key=value`` and searched for
    (``params.model.normalize = 'true'``); ``str`` wrote ``True`` and ``['id', 'categorical']`` beside
    YAML's ``null``."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, list, tuple, dict)):
        import yaml

        plain = list(value) if isinstance(value, tuple) else value
        try:
            return yaml.safe_dump(plain, default_flow_style=True, width=1 << 30).strip().removesuffix("...").strip()
        except yaml.YAMLError:  # a numpy number inside a list, ...: as Python writes it
            return str(value)
    return str(value)


class Tracker:
    """Reporting handle for one active MLflow run."""

    def __init__(self, run: Any) -> None:
        self.run_id: str = run.info.run_id
        self.run_name: str = run.info.run_name or ""
        self.experiment_id: str = run.info.experiment_id
        self.artifact_uri: str = run.info.artifact_uri
        self._last_steps: dict[str, int] | None = None  # per-epoch keys -> last step logged before us

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params as :func:`param_value` writes them (at most 6,000 characters, MLflow's limit); a key
        the run already holds (a resumed run) keeps its value."""
        clean = {k: param_value(v)[:6000] for k, v in params.items()}
        existing = mlflow.get_run(self.run_id).data.params
        mlflow.log_params({k: v for k, v in clean.items() if k not in existing})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags as strings; a None value is left out (not the string "None")."""
        mlflow.set_tags({k: str(v) for k, v in tags.items() if v is not None})

    def set_description(self, text: str) -> None:
        """The run's description: Markdown the UI shows at the top of the run's page. MLflow keeps a
        tag of at most ``MAX_TAG_VAL_LENGTH`` (8000) characters, so a longer text is cut after its
        last whole line that fits, and says so."""
        mlflow.set_tag(DESCRIPTION_TAG, fit_description(text))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        finite = {metric_key(k): float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        mlflow.log_metrics(finite, step=step)

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Log an epoch's metrics at step ``epoch``, leaving out those the run already holds at that
        step: a job killed after logging an epoch but before its checkpoint resumes from the epoch
        before and trains it again, and MLflow would show the epoch twice."""
        if self._last_steps is None:
            self._last_steps = self._logged_steps([metric_key(k) for k in metrics])
        fresh = {k: v for k, v in metrics.items() if self._last_steps.get(metric_key(k), 0) < epoch}
        if len(fresh) < len(metrics):
            log.info("epoch %d's metrics were logged before this run was resumed; kept as logged", epoch)
        self.log_metrics(fresh, step=epoch)

    def _logged_steps(self, keys: list[str]) -> dict[str, int]:
        """The last step of each of ``keys`` this run holds (only a resumed run holds any)."""
        held = mlflow.get_run(self.run_id).data.metrics
        client = mlflow.MlflowClient()
        return {k: max(m.step for m in client.get_metric_history(self.run_id, k)) for k in keys if k in held}

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        mlflow.log_figure(figure, artifact_file)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        """``data`` as JSON (or YAML for a ``.yaml`` name). A value JSON cannot hold is written as its
        number (a numpy scalar) or its ``str`` (a path, ...) instead of failing the run."""
        def plain(value: Any) -> Any:
            return value.item() if hasattr(value, "item") and getattr(value, "ndim", None) == 0 else str(value)

        mlflow.log_dict(json.loads(json.dumps(dict(data), default=plain)), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        mlflow.log_text(text, artifact_file)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifacts(str(local_dir), artifact_path)

    def log_artifact(self, local_file: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(local_file), artifact_path)

    def log_model(self, model_dir: str | Path, registered_model_name: str | None) -> str:
        """Log ``model_dir`` as a pyfunc model; register it when a name is given. Returns its URI."""
        with warnings.catch_warnings():
            # We log a python_model object on purpose (it only points at model_dir) and its
            # predict takes a DataFrame, so skip mlflow's advice on both.
            warnings.simplefilter("ignore", UserWarning)
            logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
            info = self._log_pyfunc(model_dir, registered_model_name)
        if registered_model_name and info.registered_model_version is not None:
            return f"models:/{registered_model_name}/{info.registered_model_version}"
        return f"runs:/{self.run_id}/model"

    def set_alias(self, model_uri: str, alias: str) -> None:
        """Point registry ``alias`` at the version in ``model_uri`` (``models:/<name>/<version>``)."""
        if not model_uri.startswith("models:/"):
            raise ValueError(
                f"tracking.set_alias={alias!r} needs a registered model, but the model is {model_uri}; "
                "set tracking.registered_model_name"
            )
        name, version = model_uri.removeprefix("models:/").rsplit("/", 1)
        mlflow.MlflowClient().set_registered_model_alias(name, alias, version)

    def _log_pyfunc(self, model_dir: str | Path, registered_model_name: str | None) -> Any:
        from mlflow.models import ModelSignature
        from mlflow.types.schema import Array, ColSpec, Schema

        import numpy as np

        from recsys_cl.features.spec import FeatureSpec

        # the UI and `mlflow models serve` show (and check) what predict takes and returns; item ids
        # are integers or strings, as in the click log the model was trained on
        ids = np.asarray(FeatureSpec.load(Path(model_dir) / "features").items.ids)
        kind = "long" if ids.dtype.kind in "iu" else "string"
        signature = ModelSignature(
            inputs=Schema([ColSpec(Array(kind), "history")]),
            outputs=Schema([ColSpec(Array(kind), "item_ids"), ColSpec(Array("float"), "scores"),
                            ColSpec("long", "history_known")]),
        )
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=TwoTowerPyfunc(),
            signature=signature,
            artifacts={"model_dir": str(model_dir)},
            pip_requirements=["torch==2.13.0", "numpy", "polars", "pyarrow", "pyyaml"],
            registered_model_name=registered_model_name,
        )


@contextlib.contextmanager
def mlflow_run(
    cfg: TrackingConfig,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    run_id: str | None = None,
) -> Iterator[Tracker]:
    """Open a run in ``cfg.experiment`` (or resume ``run_id``); ends it FAILED on an exception.

    Raises:
        TrackingError: the store cannot be reached or opened, or the run cannot be started there.
    """
    uri = resolve_tracking_uri(cfg)
    check_reachable(uri)
    ready_store(uri)
    try:
        mlflow.set_tracking_uri(uri)
        _set_experiment(cfg.experiment, uri)
        mark_dead_runs(uri, cfg.experiment)
        run = _start_run(uri, run_id, run_name or cfg.run_name)
    except Exception as e:  # sqlalchemy, OSError, MlflowException ...: all mean "this store will not open"
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise TrackingError(
            f"could not open an MLflow run in the store {uri} (experiment {cfg.experiment!r}): "
            f"{type(e).__name__}: {first}; {STORE_FIX}"
        ) from e
    try:
        tracker = Tracker(run)
        tracker.set_tags({**code_tags(), **dict(tags or {})})
        yield tracker
    except BaseException:
        end_active_run(uri, "FAILED")
        raise
    else:
        end_active_run(uri, "FINISHED")


def _start_run(uri: str, run_id: str | None, run_name: str | None, parent_run_id: str | None = None) -> Any:
    """Resume the run ``run_id`` when the store has it (no longer a killed run: its
    :data:`KILLED_TAG` goes), else start one named ``run_name``; nested (under ``parent_run_id``
    when new) when ``parent_run_id`` is given."""
    if run_id is not None:
        try:
            mlflow.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            log.warning("run %s to resume is not in %s; starting a new run", run_id, uri)
            run_id = None
    nested = parent_run_id is not None
    if run_id is None:
        return mlflow.start_run(run_name=run_name, nested=nested, parent_run_id=parent_run_id)
    run = mlflow.start_run(run_id=run_id, nested=nested)
    if KILLED_TAG in run.data.tags:
        _client(uri).delete_tag(run_id, KILLED_TAG)
    return run


PROCESS_TAG = "process"
"""Tag on every run: ``<host>:<pid>:<process start time>`` of the process that runs it, so that a
later job can tell a run whose process was killed (SIGKILL, OOM, a lost node) from one still going."""


def _start_ticks(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc/<pid>/stat`` field 22), None if it does not exist."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_tag() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid()) or '?'}"


def _process_gone(tag: str) -> bool:
    """True when the process named by a :data:`PROCESS_TAG` value on this host no longer exists
    (a reused pid has another start time); False when it may still run."""
    try:
        _, pid_text, ticks = tag.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:  # not written by process_tag: leave the run alone
        return False
    if ticks != "?":
        return _start_ticks(pid) != ticks
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _run_process_gone(row: Any) -> bool:
    """For a ``search_runs`` row: its ``process`` tag names a process of this host that is gone."""
    tag = row.get(f"tags.{PROCESS_TAG}")
    if not isinstance(tag, str) or tag.rsplit(":", 2)[0] != socket.gethostname():
        return False
    return _process_gone(tag)


def _client(uri: str) -> Any:
    """An ``MlflowClient`` bound to the store ``uri`` (registry: ``MLFLOW_REGISTRY_URI`` or the same
    store). Built explicitly so that it never asks an active Spark session for a registry URI, which
    fails once a SIGTERM has ended Spark's JVM (see :func:`end_active_run`)."""
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)


KILLED_TAG = "killed_because"
"""Tag on a run marked KILLED by a later job: why (its process was gone). Removed when the run is
resumed (``mlflow_run(run_id=...)``), since it no longer describes the run."""


def mark_dead_runs(uri: str, experiment: str) -> list[str]:
    """Mark KILLED the runs of ``experiment`` that are RUNNING but whose process, on this host, is
    gone; a SIGKILLed job cannot end its own run. Runs of other hosts are left alone. Returns their
    ids. Never raises: a store that refuses is only logged."""
    try:
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            return []
        host = socket.gethostname()
        runs = mlflow.search_runs(
            [exp.experiment_id], output_format="list",
            filter_string=f"attributes.status = 'RUNNING' and tags.{PROCESS_TAG} LIKE '{host.replace(chr(39), '')}:%'")
        dead = [r for r in runs if r.data.tags[PROCESS_TAG].rsplit(":", 2)[0] == host
                and _process_gone(r.data.tags[PROCESS_TAG])]
        client = _client(uri)
        for r in dead:
            client.set_tag(r.info.run_id, KILLED_TAG,
                           f"its process ({r.data.tags[PROCESS_TAG]}) was gone when {process_tag()} started a run")
            client.set_terminated(r.info.run_id, status="KILLED")
            log.warning("run %s (%s) was RUNNING but its process is gone: marked KILLED (a job that resumes it "
                        "reopens it, and it ends FINISHED or FAILED)",
                        r.info.run_id, r.data.tags.get("mlflow.runName"))
        return [r.info.run_id for r in dead]
    except Exception as e:  # housekeeping must not stop a job
        log.warning("could not look for runs left RUNNING by killed jobs in %s: %s: %s", uri, type(e).__name__, e)
        return []


def end_active_run(uri: str, status: str) -> None:
    """End the active run with ``status``, telling the store ``uri`` first through a client bound to it.

    ``mlflow.end_run`` builds a client that asks an active Spark session for a registry URI. When a
    SIGTERM has also ended Spark's JVM (``--engine spark``), that call fails, and a killed job would
    leave its run RUNNING; here the status is written before ``end_run`` is tried.
    """
    run = mlflow.active_run()
    if run is not None:
        _client(uri).set_terminated(run.info.run_id, status)
    try:
        mlflow.end_run(status=status)
    except Exception as e:  # the status is already stored; only MLflow's in-process run stack is left
        log.warning("run %s is %s in %s, but mlflow.end_run failed: %s: %s",
                    None if run is None else run.info.run_id, status, uri, type(e).__name__, e)


def sqlite_artifact_root(uri: str) -> Path | None:
    """``<folder of the database>/mlruns`` for a ``sqlite:///`` tracking URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    db = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not db or db == ":memory:":
        return None
    return Path(db).absolute().parent / "mlruns"


def _set_experiment(name: str, uri: str) -> None:
    """Activate experiment ``name``, creating it when missing. In a SQLite store a new experiment
    keeps its artifacts beside the database (``<db folder>/mlruns/<name>``); MLflow's default is
    ``./mlruns`` of whatever folder the first run started in, which scatters one store's artifacts
    over working directories and mixes several stores' artifacts in one."""
    root = sqlite_artifact_root(uri)
    if root is not None and mlflow.get_experiment_by_name(name) is None:
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        try:
            mlflow.create_experiment(name, artifact_location=(root / slug).as_uri())
        except mlflow.exceptions.MlflowException:
            if mlflow.get_experiment_by_name(name) is None:  # not a concurrent creation: a real error
                raise
    mlflow.set_experiment(name)


MLFLOW_URI_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


def is_mlflow_uri(path: str | None) -> bool:
    """Whether ``path`` is an MLflow artifact URI (fetched from a store) rather than a local path."""
    return bool(path) and str(path).startswith(MLFLOW_URI_SCHEMES)


def resolve_model_dir(uri: str, tracking: TrackingConfig | None = None) -> Path:
    """A local folder for ``uri``: an existing path, or an MLflow artifact URI (``runs:/...``,
    ``models:/...``) downloaded from the store of ``tracking`` (None = the current tracking URI).
    For a logged two-tower pyfunc model, the recsys_cl model directory inside it.

    Raises:
        FileNotFoundError: ``uri`` is neither an existing path nor an MLflow URI, or the store has
            no such run / model / artifact (the message names the store and how to fix it).
    """
    p = Path(uri)
    if p.exists():
        return p
    if not uri.startswith(("runs:/", "models:/", "mlflow-artifacts:/", "file:")):
        raise FileNotFoundError(
            f"{uri!r} is neither an existing directory nor an MLflow URI "
            "(runs:/<run_id>/<artifact path>, models:/<name>/<version>, models:/<name>@<alias>)"
        )
    if tracking is not None:  # runs:/ and models:/ live in the store: a missing SQLite file is an error
        use_existing_store(tracking) if uri.startswith(("runs:/", "models:/")) else use_store(tracking)
    # a private temp folder, removed when the process exits (MLflow's default one is never removed:
    # every run that read a runs:/ encoder left ~90 MB in /tmp)
    from recsys_cl.io_atomic import scratch_dir

    dst = str(scratch_dir("recsys_cl_artifact_"))  # a SIGKILLed job's copy is removed by the next one
    atexit.register(shutil.rmtree, dst, ignore_errors=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst))
    except (mlflow.exceptions.MlflowException, OSError) as e:
        shutil.rmtree(dst, ignore_errors=True)
        name, at, alias = uri.removeprefix("models:/").partition("@")
        if uri.startswith("models:/") and at and "/" not in name:  # say what the registry has and how to set it
            try:
                resolve_model_alias(name, alias, fallback_hint=False)
            except AliasNotFoundError as missing:
                raise FileNotFoundError(f"{uri}: {missing}") from None
        name, _, version = uri.removeprefix("models:/").rpartition("/")
        stage = version.lower() in ("none", "staging", "production", "archived")  # MLflow's legacy stages
        if uri.startswith("models:/") and not at and name and not stage:  # a version that is not there
            versions = registered_versions(mlflow.MlflowClient(), name)
            if versions:
                have = sorted((int(v.version) for v in versions))
                listed = ", ".join(map(str, have))
                if not version.isdigit():  # MLflow reads it as a stage: 'Invalid Model Version stage'
                    raise FileNotFoundError(
                        f"{uri}: {version!r} is not a version of registered model {name!r} (versions: {listed}); "
                        f"for the alias write models:/{name}@{version}, for a version pass one of them, "
                        f"e.g. models:/{name}/{have[-1]}"
                    ) from None
                raise FileNotFoundError(
                    f"{uri}: registered model {name!r} has no version {version} in {mlflow.get_tracking_uri()} "
                    f"(versions: {listed}); pass one of them, e.g. models:/{name}/{have[-1]}"
                ) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(
            f"{uri} could not be fetched from the MLflow store {mlflow.get_tracking_uri()} ({first}); "
            "check the run id / model name in the URI, or point tracking.uri (or $MLFLOW_TRACKING_URI) "
            "at the store the run was logged to"
        ) from None
    # a pyfunc model keeps our directory under artifacts/<basename>/
    for candidate in (local, *sorted((local / "artifacts").glob("*"))):
        if (candidate / "model.pt").is_file():
            return candidate
    return local


class TwoTowerPyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    """``mlflow models serve``-able wrapper: input rows with a ``history`` list of item ids
    (oldest first) -> top-10 item ids and scores, and ``history_known``, how many of the history's
    items the model knows (unknown ids are ignored; 0 means the row was ranked as an empty history).
    No item of a row's history is recommended back."""

    def load_context(self, context: Any) -> None:
        from recsys_cl.train.checkpoint import load_model_dir
        from recsys_cl.train.steps import embed_items

        self.model, self.spec, self.cfg = load_model_dir(context.artifacts["model_dir"])
        self.items = embed_items(self.model, self.spec.num_items)

    # predict is attached after the class body (below): mlflow inspects predict's type hints
    # when the class is created and nags that a DataFrame input is not a list[...] hint.
    def _predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        import numpy as np
        import pandas as pd
        import torch

        from recsys_cl.candidates.histories import batch_from_lists
        from recsys_cl.train.steps import embed_users

        # every item of a row is masked, not only the last history_length the user tower reads
        batch = batch_from_lists(model_input["history"], self.spec.items, self.cfg.user_tower.history_length)
        if len(batch) == 0:
            return pd.DataFrame({"item_ids": [], "scores": [], "history_known": []})
        users = embed_users(self.model, batch.windows, batch.user_index)
        scores = users @ self.items.T  # (U, M)
        rows = np.repeat(np.arange(len(batch)), np.diff(batch.seen_offsets))
        scores[torch.from_numpy(rows), torch.from_numpy(batch.seen_items)] = float("-inf")
        top = torch.topk(scores, k=min(10, scores.shape[1]), dim=1)
        ok = torch.isfinite(top.values).numpy()  # rows with < 10 unseen items are cut short
        ends = np.cumsum(ok.sum(axis=1))[:-1]
        ids = self.spec.items.decode(top.indices.numpy()[ok])
        # how many of a row's items the model knows: 0 for ids of another id space, which are ignored
        return pd.DataFrame({"item_ids": np.split(ids, ends), "scores": np.split(top.values.numpy()[ok], ends),
                             "history_known": np.diff(batch.seen_offsets)})


TwoTowerPyfunc.predict = TwoTowerPyfunc._predict  # type: ignore[method-assign]


# --- index (issue 3)


def model_provenance(uri: str, tracking: TrackingConfig | None = None) -> dict[str, str | None]:
    """Registry name, version and source run id of a model URI; ``None`` where it has none.

    ``models:/name/3`` and ``models:/name@alias`` are looked up in the registry (the alias resolved
    to the version it points at now); ``runs:/<id>/...`` gives the run id; a local path gives
    nothing (the index manifest then records only the path).
    """
    out: dict[str, str | None] = {"model_name": None, "model_version": None, "model_run_id": None}
    if uri.startswith("runs:/"):
        out["model_run_id"] = uri[len("runs:/"):].split("/", 1)[0] or None
        return out
    if not uri.startswith("models:/"):
        return out
    if tracking is not None:
        use_existing_store(tracking)
    client = mlflow.MlflowClient()
    ref = uri[len("models:/"):].rstrip("/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    else:
        name, _, version = ref.partition("/")
        if not version.isdigit():
            raise ValueError(f"model URI {uri!r}: expected models:/<name>/<version> or models:/<name>@<alias>")
        mv = client.get_model_version(name, version)
    out.update(model_name=mv.name, model_version=str(mv.version), model_run_id=mv.run_id)
    return out


def log_index_run(
    cfg: TrackingConfig,
    *,
    index_dir: str | Path,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    tags: Mapping[str, Any],
    tables: Mapping[str, Any] | None = None,
    run_name: str = "build_index",
) -> str:
    """Log one index build as its own MLflow run: params, metrics, tags (``model_run_id`` links it
    to the model run; MLflow's ``mlflow.parentRunId`` is not used because the model run is closed),
    the index directory as artifacts under ``index/`` and ``tables`` as JSON. Returns the run id."""
    with mlflow_run(cfg, run_name=run_name, tags=tags) as tracker:
        tracker.log_params(params)
        tracker.log_metrics(metrics)
        for name, table in (tables or {}).items():
            tracker.log_dict({"rows": table}, f"{name}.json")
        tracker.log_artifacts(index_dir, "index")
        return tracker.run_id


# --- candidates (issue 3)


class AliasNotFoundError(LookupError):
    """A registered model has no version under the requested alias; the message says how to set it."""


def registered_versions(client: Any, name: str) -> list[Any]:
    """The versions of registered model ``name`` (``ModelVersion`` objects); empty when there is no
    such model or the registry cannot be searched: only used to say what exists in an error."""
    try:
        return list(client.search_model_versions(f"name='{name}'"))
    except mlflow.exceptions.MlflowException:
        return []


def resolve_model_alias(
    name: str, alias: str, tracking: TrackingConfig | None = None, fallback_to_latest: bool = False,
    fallback_hint: bool = True,
) -> dict[str, str | bool | None]:
    """``{"model_name", "model_version", "model_run_id", "uri", "fell_back"}`` for ``models:/name@alias``.

    When the alias is missing: raise :class:`AliasNotFoundError` with the command that sets it, or
    (``fallback_to_latest``) log a warning and use the registered model's latest version.
    ``fallback_hint``: the message also names ``candidates.fallback_to_latest`` (jobs that read it).
    """
    if tracking is not None:
        use_existing_store(tracking)
    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias)
        fell_back = False
    except mlflow.exceptions.MlflowException as e:
        versions = registered_versions(client, name)
        if not versions:
            raise AliasNotFoundError(
                f"registered model {name!r} does not exist (or has no versions) in "
                f"{mlflow.get_tracking_uri()}; train one first (python -m pipelines.train_two_tower) "
                "or point tracking.uri at the right store"
            ) from e
        latest = max(versions, key=lambda v: int(v.version))
        if not fallback_to_latest:
            try:
                aliases = dict(client.get_registered_model(name).aliases or {})
            except mlflow.exceptions.MlflowException:
                aliases = {}
            close = difflib.get_close_matches(alias, list(aliases), n=1)
            known = ""
            if aliases:  # a typo must not be answered with the command that creates it
                known = ("; its aliases: " + ", ".join(f"{a} -> version {v}" for a, v in sorted(aliases.items()))
                         + (f" (did you mean {close[0]!r}: models:/{name}@{close[0]}?)" if close else ""))
            raise AliasNotFoundError(
                f"registered model {name!r} has no alias {alias!r} (versions: "
                f"{', '.join(sorted((str(v.version) for v in versions), key=int))}; latest {latest.version}"
                f"{known}). Train with "
                f"--set tracking.set_alias={alias} to point it at the new version (make demo does), or set it now: "
                f"python -c \"import mlflow; mlflow.set_tracking_uri('{mlflow.get_tracking_uri()}'); "
                f"mlflow.MlflowClient().set_registered_model_alias('{name}', '{alias}', {latest.version})\""
                + (" or run with --set candidates.fallback_to_latest=true" if fallback_hint else "")
            ) from e
        log.warning("model %s has no alias %r; falling back to the latest version %s", name, alias, latest.version)
        mv, fell_back = latest, True
    return {
        "model_name": mv.name,
        "model_version": str(mv.version),
        "model_run_id": mv.run_id,
        "uri": f"models:/{mv.name}/{mv.version}",
        "fell_back": fell_back,
    }


# --- benchmark


def log_benchmark_run(
    cfg: TrackingConfig,
    *,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    tags: Mapping[str, Any],
    artifacts: list[str | Path],
    run_name: str = "benchmark_candidates",
) -> str:
    """Log one benchmark as its own MLflow run: params, metrics (``<backend>/<name>``), tags and the
    report files (Markdown, JSON) under ``benchmark/``. Returns the run id."""
    with mlflow_run(cfg, run_name=run_name, tags=tags) as tracker:
        tracker.log_params(params)
        tracker.log_metrics(metrics)
        for path in artifacts:
            tracker.log_artifact(path, "benchmark")
        return tracker.run_id


# --- sweeps and comparing runs (issue 6)

SWEEP_PARENT_TAG = "sweep_id"
"""Tag on every run of a sweep (parent and children): the parent's run id, for filtering in the UI
(``tags.sweep_id = '<id>'``). Children also get MLflow's own ``mlflow.parentRunId`` (nesting)."""


@contextlib.contextmanager
def mlflow_child_run(
    cfg: TrackingConfig,
    parent_run_id: str,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    parent_tag: str = SWEEP_PARENT_TAG,
) -> Iterator[Tracker]:
    """Open a run nested under ``parent_run_id`` (shown folded under it in the UI's run table), or
    resume the run ``run_id`` there (a killed child that continues from its checkpoint; one of an
    earlier parent moves under this one).

    The parent may be open (inside ``mlflow_run``) or closed; the child is ended FINISHED, or FAILED
    on an exception, and the parent stays active afterwards. Tagged with :func:`code_tags` and
    ``parent_tag`` (``sweep_id``, ``ablation_id``) = ``parent_run_id`` besides ``tags``.
    """
    uri = resolve_tracking_uri(cfg)
    ready_store(uri)
    mlflow.set_tracking_uri(uri)
    _set_experiment(cfg.experiment, uri)
    run = _start_run(uri, run_id, run_name, parent_run_id)
    try:
        tracker = Tracker(run)
        tracker.set_tags({**code_tags(), PARENT_RUN_TAG: parent_run_id, parent_tag: parent_run_id,
                          **dict(tags or {})})
        yield tracker
    except BaseException:
        end_active_run(uri, "FAILED")
        raise
    else:
        end_active_run(uri, "FINISHED")


PARENT_RUN_TAG = "mlflow.parentRunId"
"""MLflow's tag that nests a run under another in the UI's runs table."""
SWEEP_KEY_TAG = "sweep_key"
"""Tag on a sweep's parent: the identity of its arguments and data (``pipelines.sweep``). A rerun
with the same key finds an unfinished parent and continues it."""
SWEEP_ROW_TAG = "sweep_row"
"""Tag on a finished sweep child: its row of the sweep summary, as JSON, so a resumed sweep
rebuilds the table without retraining it."""


def unfinished_parent(cfg: TrackingConfig, key_tag: str, key: str, parent_tag: str) -> tuple[str | None, Any]:
    """The newest parent run tagged ``key_tag = key`` that did not finish, and its children (runs
    tagged ``parent_tag = <its id>``) as a :func:`search_runs_frame`: ``(parent_run_id, children)``;
    ``(None, empty frame)`` when there is none (the newest finished, or still runs in a live process
    or on another host: a new parent).

    Children of that parent still marked RUNNING whose process is gone are marked KILLED: a killed
    parent cannot end them, and the rerun trains (or resumes) them again.
    """
    import pandas as pd

    frame = search_runs_frame(cfg, f"tags.{key_tag} = '{key}'")
    if frame.empty:
        return None, pd.DataFrame()
    newest = frame.sort_values("start_time").iloc[-1]  # an older unfinished one was given up on
    if newest["status"] == "FINISHED" or (newest["status"] == "RUNNING" and not _run_process_gone(newest)):
        return None, pd.DataFrame()
    parent_id = str(newest["run_id"])
    children = search_runs_frame(cfg, f"tags.{parent_tag} = '{parent_id}'")
    children = children[children["run_id"] != parent_id]
    client = _client(resolve_tracking_uri(cfg))
    for _, child in children[children["status"] == "RUNNING"].iterrows():
        if _run_process_gone(child):
            client.set_tag(child["run_id"], KILLED_TAG, "its parent run was continued by a new process")
            client.set_terminated(child["run_id"], status="KILLED")
    return parent_id, children


def _finished_rows(children: Any, row_tag: str) -> list[tuple[str, str, str]]:
    """``(run name, run id, row JSON)`` of the FINISHED ``children`` that carry ``row_tag``, oldest first."""
    col = f"tags.{row_tag}"
    if children.empty or col not in children.columns:
        return []
    done = children[(children["status"] == "FINISHED") & children[col].notna()].sort_values("start_time")
    return [(str(n), str(i), str(r)) for n, i, r in zip(done["tags.mlflow.runName"], done["run_id"], done[col])]


def unfinished_sweep(cfg: TrackingConfig, key: str) -> tuple[str | None, dict[str, str]]:
    """:func:`unfinished_parent` of a sweep and its finished children's summary rows:
    ``(parent_run_id, {child run name: row JSON})``; ``(None, {})`` when there is none."""
    parent_id, children = unfinished_parent(cfg, SWEEP_KEY_TAG, key, SWEEP_PARENT_TAG)
    return parent_id, {name: row for name, _, row in _finished_rows(children, SWEEP_ROW_TAG)}


ABLATION_PARENT_TAG = "ablation_id"
"""Tag on every run of an ablation (``pipelines.ablation``; parent and children): the parent's run
id, for filtering in the UI (``tags.ablation_id = '<id>'``)."""
ABLATION_KEY_TAG = "ablation_key"
"""Tag on an ablation's parent run: the identity of its configs, baselines and data
(:func:`recsys_cl.sweep.ablation_key`). A rerun with the same key continues an unfinished parent."""
ABLATION_ROW_TAG = "ablation_row"
"""Tag on a finished ablation run: what the table needs of it, as JSON, so that a rerun of an
interrupted ablation reuses it instead of training it again."""


def ablation_row_tag(row: Mapping[str, Any]) -> dict[str, str]:
    """``{ABLATION_ROW_TAG: row as JSON}`` for a finished run (``run_id`` left out: the run has its own);
    empty, with a warning, when the JSON is longer than MLflow keeps in a tag: the run is then trained
    again by a resumed ablation rather than failing at its end."""
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    text = json.dumps({k: v for k, v in row.items() if k != "run_id"})
    if len(text) > MAX_TAG_VAL_LENGTH:
        log.warning("this run's ablation row is %d characters, over MLflow's %d for a tag: a resumed ablation "
                    "will train it again", len(text), MAX_TAG_VAL_LENGTH)
        return {}
    return {ABLATION_ROW_TAG: text}


def unfinished_ablation(cfg: TrackingConfig, key: str) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """:func:`unfinished_parent` of an ablation and its finished runs: ``(parent_run_id, {run name:
    row})``, each row with its ``run_id``; the newest run of a name wins. ``(None, {})`` when there is
    none: the last ablation with ``key`` completed, or none ran."""
    parent_id, children = unfinished_parent(cfg, ABLATION_KEY_TAG, key, ABLATION_PARENT_TAG)
    return parent_id, {name: {**json.loads(row), "run_id": run_id}
                       for name, run_id, row in _finished_rows(children, ABLATION_ROW_TAG)}


def search_runs_frame(cfg: TrackingConfig, filter_string: str = "") -> Any:
    """All runs of ``cfg.experiment`` as a pandas DataFrame (``mlflow.search_runs`` columns:
    ``run_id``, ``params.*``, ``metrics.*``, ``tags.*``); empty when the experiment does not exist."""
    import pandas as pd

    use_store(cfg)
    exp = mlflow.get_experiment_by_name(cfg.experiment)
    if exp is None:
        return pd.DataFrame()
    return mlflow.search_runs([exp.experiment_id], filter_string=filter_string)
