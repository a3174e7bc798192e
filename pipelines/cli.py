"""Command-line plumbing shared by the pipelines.

Every pipeline takes ``--config``, repeatable ``--set section.key=value`` and ``--summary-json PATH``
(:func:`base_parser`), turns a bad config into ``SystemExit("config error: ...")``
(:func:`load_config_or_exit`) and writes its summary with :func:`write_summary`. The pretraining
pipelines also pin torch's threads to ``train.num_threads`` and log their encoder with
:func:`log_encoder`. Pipelines that log to MLflow wrap their
``main`` in :func:`exits_on_tracking_error`.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NoReturn, TypeVar

import torch

from recsys_cl.config import ConfigError, load_config
from recsys_cl.io_atomic import write_file_atomically
from recsys_cl.utils.threads import warn_if_cores_busy
from recsys_cl.tracking import Tracker, TrackingError

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

QUIET_LOGGERS = ("faiss.loader", "py4j")
"""Third-party loggers held to WARNING: faiss.loader reports every CPU-specific build it could not
load (AVX512, AVX2) at INFO, with a ModuleNotFoundError each, before loading the generic one; py4j
(``--engine spark``) each closed connection, and a broken one with a traceback."""


def configure_logging() -> None:
    """The pipelines' log format on stderr at INFO, without third-party start-up noise."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def exits_on_tracking_error(main: Callable[..., R]) -> Callable[..., R]:
    """``main`` with a :class:`~recsys_cl.tracking.TrackingError` (store unreachable or unusable)
    turned into ``SystemExit("tracking error: ...")``: one line, no traceback.

    While ``main`` runs (in the main thread), SIGTERM, which cron timeouts, systemd and Kubernetes
    send before SIGKILL, raises ``SystemExit(143)``, and Ctrl-C (SIGINT) ``SystemExit(130)`` (both
    :class:`Terminated`), so the cleanup a Python exception gets still runs: the MLflow run ends
    FAILED instead of RUNNING forever, and a half-written candidates partition or index is removed.
    (Not ``KeyboardInterrupt``, which py4j, under ``--engine spark``, logs with a traceback.) The
    previous handlers are restored afterwards. A :class:`Terminated` that reaches here is reported
    as one line, ``stopped by SIGTERM`` (pipelines that can say what state the stop left report it
    themselves, :func:`exit_stopped`)."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        main_thread = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, _terminated) for sig in STOP_SIGNALS} if main_thread else {}
        try:
            return main(*args, **kwargs)
        except TrackingError as e:
            raise SystemExit(f"tracking error: {e}") from None
        except Terminated as e:
            print(f"stopped by {e.signal_name}", file=sys.stderr, flush=True)
            raise SystemExit(e.code) from None
        finally:
            for sig, handler in previous.items():  # None: installed outside Python; the default is the safe guess
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    return wrapper


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""Signals that stop a pipeline through :class:`Terminated` (see :func:`exits_on_tracking_error`)."""


class Terminated(SystemExit):
    """``SystemExit(128 + signum)``, raised by the handler :func:`exits_on_tracking_error` installs
    for :data:`STOP_SIGNALS`."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name


def _terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def exit_stopped(e: BaseException, state: str) -> NoReturn:
    """For a job stopped by a signal (``e``: a :class:`Terminated` or a Ctrl-C's ``KeyboardInterrupt``),
    print one line to stderr, ``stopped by SIGTERM: <state>``, and exit with 128 + the signal's number
    (143, 130), the shell's code for a process a signal ended. No traceback: the stop was asked for."""
    name, code = (e.signal_name, e.code) if isinstance(e, Terminated) else ("SIGINT", 128 + signal.SIGINT)
    print(f"stopped by {name}: {state}", file=sys.stderr, flush=True)
    raise SystemExit(code) from None


def shown_path(path: str | Path) -> str:
    """``path`` as ``--help`` shows it: relative to the working directory when it lies under it (the
    usual case, run from the checkout), so that argparse does not wrap a long absolute path mid-word."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` as the module docstrings lay it out (line breaks kept), with their reStructuredText
    double backticks printed as single ones: ``--help`` is read in a terminal, not rendered."""

    def _format_text(self, text: str) -> str:
        return super()._format_text(text.replace("``", "`"))

    def _expand_help(self, action: argparse.Action) -> str:
        return super()._expand_help(action).replace("``", "`")


def base_parser(
    prog: str, doc: str | None, default_config: Path,
    summary_help: str = "write the run summary (JSON) to PATH",
    set_example: str = "train.epochs=2",
) -> argparse.ArgumentParser:
    """A parser with ``--config``, ``--set`` and ``--summary-json``; add the pipeline's own flags to it."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter)
    p.add_argument("--config", default=str(default_config),
                   help=f"YAML config (default: {shown_path(default_config)})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config key, e.g. --set {set_example} (repeatable)")
    p.add_argument("--summary-json", metavar="PATH", help=summary_help)
    return p


def parse_args(argv: list[str] | None, prog: str, doc: str | None, default_config: Path) -> argparse.Namespace:
    """The pretraining pipelines' arguments (no flags of their own)."""
    return base_parser(prog, doc, default_config,
                       "write {run_id, encoder_uri, metrics, baseline_metrics, ...} to PATH").parse_args(argv)


def load_config_or_exit(args: argparse.Namespace, cls: type[T], set_threads: bool = True) -> T:
    """The validated config of ``--config`` + ``--set``; with ``set_threads``, torch's threads are set
    to ``train.num_threads`` (0 = keep torch's default)."""
    try:
        cfg = load_config(args.config, cls, overrides=args.set)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    threads = getattr(getattr(cfg, "train", None), "num_threads", 0) if set_threads else 0
    if threads:
        torch.set_num_threads(threads)
    elif set_threads and hasattr(getattr(cfg, "train", None), "num_threads"):
        warn_if_cores_busy(threads)
    return cfg


def check_output_file(path: str | Path | None, flag: str = "--summary-json") -> None:
    """Exit with ``output error: ...`` unless ``path`` (None: nothing to check) can be written: run
    before any work, so that a typo in an output path does not throw away a finished run. Creates
    nothing, like :func:`check_output_dir` (a job that then fails on its config or input leaves no
    empty folder behind): the nearest existing folder on the path must be writable, and
    :func:`write_summary` / :func:`write_text_atomic` create the rest."""
    if path is None:
        return
    p = Path(path)
    problem = None
    folder = p.absolute().parent
    missing_target = next((q for q in (folder, *folder.parents) if os.path.lexists(q) and not q.exists()), None)
    if p.is_dir():
        problem = "is a directory"
    elif (blocker := file_in_the_way(p.parent)) is not None:
        problem = f"cannot be written: {blocker} on its path is a file, not a folder"
    elif missing_target is not None:  # a link to nothing (or a loop): creating the folder would fail later
        problem = f"its folder cannot be created ({missing_target} is a symlink to a missing folder)"
    else:
        existing = next(q for q in (folder, *folder.parents) if q.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            problem = (f"its folder {p.parent} is not writable" if existing == folder
                       else f"its folder cannot be created ({existing} is not writable)")
    if problem:
        raise SystemExit(f"output error: {flag} {path} {problem}; pass a file path in a writable folder")


def file_in_the_way(folder: str | Path) -> Path | None:
    """The nearest existing one of ``folder`` and its parents when it is a file (so ``folder`` cannot be
    created), else None: ``mkdir`` only says "File exists" or "Not a directory", without naming it."""
    for q in (Path(folder), *Path(folder).parents):
        if q.exists():
            return None if q.is_dir() else q
    return None


def check_output_dir(path: str | Path, key: str) -> None:
    """Exit with ``output error: ...`` unless folder ``path`` exists or can be created, and is writable.
    Creates nothing (a job that then fails on its input leaves no empty folder behind): the nearest
    existing folder on the path must be writable, and the job's writers create the rest."""
    p = Path(path)
    blocker = file_in_the_way(p)
    if blocker is not None:
        where = "is a file" if blocker == p else f"cannot be created: {blocker} on its path is a file"
        raise SystemExit(f"output error: {key}={path} {where}, not a folder; set it to a writable folder")
    for q in (p.absolute(), *p.absolute().parents):
        if os.path.lexists(q) and not q.exists():  # a link to nothing (or a loop): mkdir would fail later
            raise SystemExit(f"output error: {key}={path} cannot be created: {q} is a symlink to a missing folder "
                             f"({os.readlink(q)}); create its target, remove the link, or set another folder")
    existing = next(q for q in (p.absolute(), *p.absolute().parents) if q.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == p.absolute() else f"cannot be created ({existing} is not writable)"
        raise SystemExit(f"output error: {key}={path} {what}; set it to a writable folder")


def check_training_dirs(configs: Iterable[Any]) -> None:
    """:func:`check_output_dir` for the folders training runs of ``configs`` (``RunConfig``) write:
    ``train.checkpoint_dir`` (else found after the first epoch) and, when a frozen content encoder
    caches its outputs, ``item_tower.cache_dir`` (else found after the encoder has run)."""
    folders: dict[tuple[str, str], None] = {}
    for cfg in configs:
        folders[("train.checkpoint_dir", cfg.train.checkpoint_dir)] = None
        tower = cfg.item_tower
        if tower.cache_dir and any(n in tower.encoders and not getattr(tower, n).trainable for n in ("text", "image")):
            folders[("item_tower.cache_dir", tower.cache_dir)] = None
    for key, folder in folders:
        check_output_dir(folder, key)


def warn_unused_settings(labelled: Iterable[tuple[str, Any]]) -> list[str]:
    """Log each distinct :meth:`~recsys_cl.config.RunConfig.unused_settings` warning of several runs'
    configs once, with the labels of the runs it holds for (``[(label, RunConfig), ...]``, e.g. an
    ablation's variants), so a ``--set`` or variant override that does nothing is flagged before any
    training, as ``train_two_tower`` flags it. Returns the lines logged."""
    by_warning: dict[str, list[str]] = {}
    for label, cfg in labelled:
        for warning in cfg.unused_settings():
            labels = by_warning.setdefault(warning, [])
            if label not in labels:
                labels.append(label)
    lines = [f"{warning} (in {', '.join(labels)})" for warning, labels in by_warning.items()]
    for line in lines:
        log.warning(line)
    return lines


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`recsys_cl.io_atomic.write_file_atomically`)."""
    write_file_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_summary(path: str | None, summary: Any) -> None:
    """Write ``summary`` as indented JSON to ``path`` (parents created, written atomically: temp file +
    rename); nothing when ``path`` is None."""
    if path:
        write_text_atomic(path, json.dumps(summary, indent=2, default=str))


def log_encoder(run: Tracker, result: Mapping[str, Any], similarities_title: str, what: str) -> dict[str, Any]:
    """Log a pretraining run's encoder and its similarity plot, the same way for every encoder:
    ``result["encoder_dir"]`` as the artifact folder ``encoder/`` (loaded back from
    ``runs:/<run_id>/encoder``) and ``result["similarities"]`` as ``plots/similarities.png``
    (:func:`recsys_cl.eval.plots.similarity_histograms`, titled ``similarities_title``); the run's
    description is ``what`` (e.g. ``**SimCLR** image encoder, compared with its random init``), the
    sizes, a table of ``result["metrics"]`` beside ``result["baseline_metrics"]`` and the encoder's
    URI. Returns the summary's first keys: ``run_id``, ``encoder_uri`` and ``encoder_dir``."""
    from recsys_cl.eval import plots  # matplotlib: only the pretraining pipelines need it

    run.log_artifacts(result["encoder_dir"], "encoder")
    fig = plots.similarity_histograms(result["similarities"], similarities_title)
    run.log_figure(fig, "plots/similarities.png")
    plots.close(fig)
    uri = f"runs:/{run.run_id}/encoder"
    sizes = ", ".join(f"{k} {v:,}" for k, v in result.get("sizes", {}).items())
    rows = "".join(f"| {k} | {v:.4f} | {result['baseline_metrics'].get(k, float('nan')):.4f} |\n"
                   for k, v in result["metrics"].items())
    run.set_description(f"{what} (sizes: {sizes}).\n\n| metric | this encoder | baseline |\n|---|---|---|\n"
                        f"{rows}\nEncoder: `{uri}`")
    return {"run_id": run.run_id, "encoder_uri": uri, "encoder_dir": result["encoder_dir"]}


def recall_text(summary: Mapping[str, Any]) -> str:
    """``recall@K vs exact 0.968 (200 users sampled)``: the delivered lists' sampled recall
    (``ann_recall``) of a candidates summary, or ``exact search``."""
    recall = summary.get("ann_recall") or {}
    if summary.get("backend") == "exact" or "recall_at_k" not in recall:
        return "exact search"
    return f"recall@K vs exact {recall['recall_at_k']:.3f} ({recall.get('sample_users', '?')} users sampled)"


def overlap_text(health: Mapping[str, Any]) -> str:
    """What nightly compared with the previous partition: the overlap, and whether it was checked."""
    if health.get("previous_partition") is None:
        return "overlap@K n/a (no earlier partition)"
    where = Path(str(health["previous_partition"])).name
    text = f"overlap@K {health['overlap_at_k']:.3f} with {where} over {health['overlap_users']} users"
    if not health.get("same_model_as_previous"):
        text += (f", not checked: model version {health.get('previous_model_version')} there, "
                 "another one now")
    return text


def print_model_after_run_date(manifest: Mapping[str, Any]) -> None:
    """A warning line when the model was trained on clicks after the run date (a backfill leak)."""
    if manifest.get("model_after_run_date"):
        print(f"warning: the model was trained on clicks up to {manifest['model_trained_until']}, after the "
              f"run date {manifest['date']}: these candidates know what users did later; for a backfill, "
              "serve a model trained on clicks up to the run date")


def print_short_lists(manifest: Mapping[str, Any]) -> None:
    """A warning line when some users got fewer than ``k`` candidates (``short_lists`` of a manifest)."""
    if manifest.get("short_lists"):
        print(f"warning: {manifest['short_lists']} of the {manifest['users_served']} users served got fewer than "
              f"k={manifest['k']} candidates (their history leaves fewer unseen items in the "
              f"{manifest['catalogue_size']}-item catalogue, or the index found fewer: raise "
              "candidates.max_extra_fetch)")


def print_fold_in(info: dict[str, Any] | None, new_item_share: float | None = None) -> None:
    """One line on new items' clicks folded into their vectors (``fold_in`` of a manifest), if any,
    and on the share of the written rows that recommend new items, when there are any."""
    if info and info.get("clicks"):
        if info.get("method") != "fit":
            how = f"summed, item_tower.fold_in_step {info.get('step', 1.0):g}"
        elif "fit_clicks" in info:
            how = (f"fit to a weighted sample of {info['fit_clicks']:,} of the window's {info['window_clicks']:,} "
                   "clicks, new items' clicks first")
        else:
            how = f"fit to the window's {info['window_clicks']:,} clicks"
        share = "" if new_item_share is None else f"; they are {new_item_share:.1%} of the rows written"
        print(f"new items: {info['clicks']} clicks up to {info['clicks_until']} taken into the vectors of "
              f"{info['items']} items without training clicks ({how}){share}")
    elif new_item_share:
        print(f"new items (no training clicks, ranked on content alone): {new_item_share:.1%} of the rows written")
