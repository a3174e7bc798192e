"""The train-and-evaluate recipe shared by the pipelines: data -> split -> features -> towers ->
fit -> test under the named protocol -> artifacts. Reports only through a ``Tracker``-like
object, so tests can run it against a real MLflow store in a temp folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np
import polars as pl
import torch

from recsys_cl.baselines.tuning import SELECT_BY
from recsys_cl.config import CONTENT_ENCODERS, ConfigError, RunConfig, TrackingConfig
from recsys_cl.data.errors import DataError
from recsys_cl.data.io import ClickLog, load_click_log
from recsys_cl.data.item_stats import StreamingFrequencyEstimator, item_log_prob_counting
from recsys_cl.data.negatives import build_sampler, make_user_item_matrix
from recsys_cl.data.splits import Split, split_clicks
from recsys_cl.eval import plots
from recsys_cl.eval.bootstrap import interval_metrics, interval_verdict, paired_bootstrap
from recsys_cl.eval.long_tail import head_definition, long_tail_metrics
from recsys_cl.eval.protocol import (
    ALL_CATALOGUE,
    COLD_CATALOGUE,
    EVAL_SET_SIZES,
    EvalSet,
    build_eval_set,
    evaluate,
    part_recall,
    per_user_recall,
    protocol_name,
    random_expected_metrics,
    slot_share,
    top_k_items,
)
from recsys_cl.features.sequences import Sequences
from recsys_cl.features.spec import FeatureSpec, build_feature_spec
from recsys_cl.features.vocab import Vocab
from recsys_cl.io_atomic import scratch
from recsys_cl.towers.content import build_content, load_pretrained_weights
from recsys_cl.train.batches import TrainingData
from recsys_cl.train.checkpoint import checkpoint_lock, load_checkpoint, save_model_dir
from recsys_cl.train.loop import SELECT_METRIC, EpochCallback, FitResult, fit
from recsys_cl.train.steps import FoldIn, embed_items, embed_users, fold_in_items
from recsys_cl.towers.two_tower import TwoTower, build_two_tower
from recsys_cl.utils import dist

log = logging.getLogger(__name__)
CURVE_KS = (1, 2, 5, 10, 20, 50, 100, 200)
COLD_START_K = 20
"""The cold-start comparison with Popularity (``delta_vs_popularity/recall@20_*``) is on Recall@20."""
ScoreFn = Callable[[np.ndarray], np.ndarray]
RUN_SCRATCH_PREFIX = "recsys_cl_run_"
"""Prefix of the temp folders (in ``tempfile.gettempdir()``) where a run stages its artifacts and model
for MLflow: :func:`recsys_cl.io_atomic.scratch`, so a SIGKILLed run's copy goes with the next run."""


class Reporter(Protocol):
    run_id: str
    run_name: str

    def log_params(self, params: Any) -> None: ...
    def set_tags(self, tags: Any) -> None: ...
    def log_metrics(self, metrics: Any, step: int | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, metrics: Any) -> None: ...
    def log_figure(self, figure: Any, artifact_file: str) -> None: ...
    def log_dict(self, data: Any, artifact_file: str) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_artifacts(self, local_dir: Any, artifact_path: str | None = None) -> None: ...
    def log_model(self, model_dir: Any, registered_model_name: str | None) -> str: ...
    def set_alias(self, model_uri: str, alias: str) -> None: ...
    def set_description(self, text: str) -> None: ...


@dataclass
class Prepared:
    """Data, split and evaluation sets: identical for the two-tower model and every baseline.

    ``ranked`` (indices into ``spec.items``) is the item set the protocol ranks, column j of the
    eval sets = item ``ranked[j]``: the training catalogue, every item (``eval.catalogue=all_items``),
    or for ``split.kind=cold_start`` the cold items (no training click).
    """

    clicks: ClickLog
    split: Split
    spec: FeatureSpec
    val_set: EvalSet
    test_set: EvalSet
    protocol: str
    fingerprint: str
    ranked: np.ndarray
    content_key: str = "[]"
    """:func:`content_key` of the config the spec's content features were built for."""

    @functools.cached_property
    def longest_history(self) -> int:
        """Clicks of the user with the most clicks in the whole log: no history window ever holds more."""
        per_user = self.clicks.clicks.group_by("user_id").len()["len"].to_numpy()  # (users,)
        return int(per_user.max()) if len(per_user) else 0

    @functools.cached_property
    def resume_fingerprint(self) -> str:
        """What a run must share with the one whose checkpoint it resumes (or an ablation / sweep with
        the one whose finished runs it reuses), besides the config: the click log (:attr:`fingerprint`),
        the item table as the run reads it (every column: titles, tags, genres, pixels) and the content
        encoders' identity (``spec.content_meta``, with each encoder folder's ``encoder_sha256``: a
        retrained encoder written to the same folder is another encoder under the same config; and the
        ``code_version`` that computed the features, :func:`recsys_cl.towers.content.code_version`,
        so a torch upgrade or a bumped ``CONTENT_CACHE_VERSION`` starts afresh too). Inputs,
        not the frozen features themselves, whose last bits may vary with the thread count."""
        h = hashlib.sha256(self.fingerprint.encode())
        items = self.clicks.items
        if items is not None:
            h.update(repr(items.schema).encode())
            h.update(items.hash_rows(seed=0).sort().to_numpy().tobytes())  # order-independent, as fingerprint
        h.update(json.dumps(self.spec.content_meta, sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]

    @property
    def cold_start(self) -> bool:
        return self.split.cold_items is not None

    @property
    def ranked_vocab(self) -> Vocab:
        """Vocabulary of the ranked items; its index j is ``spec.items`` index ``ranked[j]``."""
        return Vocab(self.spec.items.ids[self.ranked], name=self.spec.items.name)

    @property
    def all_items(self) -> bool:
        """``eval.catalogue=all_items``: items without training clicks are ranked with the trained ones."""
        return ALL_CATALOGUE in self.protocol

    def tags(self, cfg: RunConfig) -> dict[str, str]:
        """The data and protocol tags of every run on this preparation (two-tower, baseline, sweep).
        The sizes say what the fingerprint cannot: how many clicks, users and items, and how many
        items each ranking is over (full-ranking metrics fall as that grows). ``popularity_strata``
        names what ``head_targets/*``, ``tail_targets/*`` and ``tail_share@20`` mean
        (:func:`~recsys_cl.eval.long_tail.head_definition`); a cold-start split has no head and no such tag."""
        return {
            "dataset": Path(cfg.data.path).name,
            "data_source": self.clicks.source,
            "data_fingerprint": self.fingerprint,
            "data_clicks": str(self.clicks.clicks.height),
            "data_users": str(len(self.spec.users)),
            "data_items": str(self.spec.num_items),
            "ranked_items": str(len(self.ranked)),
            "split": cfg.split.kind,
            "protocol": self.protocol,
            **({} if self.cold_start else {"popularity_strata": head_definition(cfg.eval.head_share)}),
        }


def fingerprint(clicks: pl.DataFrame) -> str:
    """Order-independent content hash of the click log (user, item, timestamp)."""
    h = clicks.select("user_id", "item_id", "timestamp").hash_rows(seed=0).sort()
    return hashlib.sha256(h.to_numpy().tobytes()).hexdigest()[:16]


def artifact_resolver(tracking: TrackingConfig) -> Callable[[str], Path]:
    """``uri -> local folder`` for pretrained encoders: an existing path as it is, an MLflow URI
    (``runs:/<run_id>/encoder``) fetched from the store of ``tracking`` (the run's own
    ``tracking.uri``, not whatever store happens to be the default)."""

    def resolve(uri: str) -> Path:
        from recsys_cl.tracking import resolve_model_dir  # mlflow is imported only when needed

        return resolve_model_dir(uri, tracking)

    return resolve


def prepare(cfg: RunConfig, content: bool = True) -> Prepared:
    """Load and validate the click log, split it in time, build features and evaluation sets.

    ``content=False`` leaves out ``cfg.item_tower``'s content features and checks: for callers that
    run several configs on one preparation and apply each one's with :func:`with_content`
    (ablation, sweep), so the base config's encoders need not suit the data."""
    t0 = time.perf_counter()
    data = load_click_log(cfg.data)
    split = split_clicks(data.clicks, cfg.split)
    data = as_of_training_cutoff(data, split)
    spec = build_feature_spec(split.train, data.items)
    if split.cold_items is not None:
        if data.items is None:
            raise DataError(
                "split.kind=cold_start ranks items never clicked in training, so it needs an item table "
                "listing them (data.items_path; MovieLens folders have movies.csv)"
            )
        ranked = spec.cold_items
        protocol = protocol_name(split.protocol, catalogue=COLD_CATALOGUE)
    elif cfg.eval.catalogue == "all_items":
        ranked = np.arange(spec.num_items)
        protocol = protocol_name(split.protocol, catalogue=ALL_CATALOGUE)
    else:
        ranked = spec.catalogue
        protocol = protocol_name(split.protocol)
    if len(ranked) < 2:  # else training runs and every metric is a meaningless 0
        what = "cold items" if split.cold_items is not None else "items with training clicks"
        raise DataError(
            f"only {len(ranked)} {what} to rank (split {split.protocol}); full ranking needs at least 2. "
            "The click log is too small for this split: use more data or another split.kind"
        )
    ranked_vocab = Vocab(spec.items.ids[ranked], name=spec.items.name)
    known = spec.items if split.cold_items is not None else None
    val_set = build_eval_set(split.train, split.val_targets(), ranked_vocab, spec.users, protocol, known)
    test_set = build_eval_set(split.test_history(), split.test_targets(), ranked_vocab, spec.users, protocol, known)
    log.info(
        "data %s: %d clicks, %d users, %d items (%d with training clicks, %d ranked); %d val / %d test users (%.1fs)",
        data.source, data.clicks.height, len(spec.users), spec.num_items, len(spec.catalogue), len(ranked),
        len(val_set.user_ids), len(test_set.user_ids), time.perf_counter() - t0,
    )
    prep = Prepared(data, split, spec, val_set, test_set, protocol, fingerprint(data.clicks), ranked)
    return with_content(prep, cfg) if content else prep


def check_history_length(cfg: RunConfig, prep: Prepared, where: str = "") -> None:
    """Refuse a ``user_tower.history_length`` (L) longer than the longest user history in the click log.

    Every position past it holds padding in every window, yet the position table (L, D), each batch's
    (B, L, D) activations and the (users, L) evaluation windows are allocated at L: a typo such as
    100000000 allocated 24 GB and was killed without a message. Not capped to the longest history in
    silence: that changes the model (the position table's size, the initialisation of every layer drawn
    after it, the L that serving reads from the saved config), so the user picks the value.

    The training pipelines (train_two_tower, sweep, ablation) call it before a run opens, through
    :func:`check_run_config`; :func:`run_two_tower` does not, so that a notebook may run the shipped
    config (L = 50) on a tiny fixture. There, ``user_tower.history_length <= MAX_HISTORY_LENGTH``
    bounds the cost. ``where``: which of several runs set it and where to change it (a sweep's grid
    point, an ablation variant); empty: the config and ``--set``.

    Raises:
        ConfigError: naming the key, the value and the longest history; before any allocation.
    """
    L, longest = cfg.user_tower.history_length, prep.longest_history
    if L > longest:
        fix = where or f"e.g. --set user_tower.history_length={min(longest, 50)}"
        raise ConfigError(
            f"user_tower.history_length={L} is longer than the longest user history in the click log "
            f"({longest} clicks), so the extra positions would only ever hold padding while memory grows with L; "
            f"set it to at most {longest}, {fix}"
        )


def check_num_sampled(cfg: RunConfig, prep: Prepared, where: str = "") -> None:
    """Refuse a ``negatives.num_sampled`` (N) larger than the number of items the sampler draws from.

    ``uniform`` and ``popularity`` draw with replacement from the items with training clicks, so
    draws beyond that number can only repeat items, while each batch's item-tower pass and its
    (B, B + N) scores and masks grow with N. Not capped in silence: N changes the loss and the
    negatives' logQ (``log N q_i``), so the user picks the value. No check when
    ``negatives.sampled`` is ``none`` (N is then unused).

    Called by the same pipelines as :func:`check_history_length` (:func:`check_run_config`), before a
    run opens; ``where`` as there.

    Raises:
        ConfigError: naming the key, the value and the number of items; before any allocation.
    """
    n, items = cfg.negatives.num_sampled, len(prep.spec.catalogue)
    if cfg.negatives.sampled != "none" and n > items:
        fix = where or f"e.g. --set negatives.num_sampled={items}"
        raise ConfigError(
            f"negatives.num_sampled={n} is more than the {items} items with training clicks that "
            f"negatives.sampled={cfg.negatives.sampled} draws from (with replacement), so the extra draws "
            f"only repeat items while every batch's (B, B + N) scores grow with N; set it to at most {items}, {fix}"
        )


def check_run_config(cfg: RunConfig, prep: Prepared, where: str = "") -> Prepared:
    """What the training pipelines check of each run's config against the data before any run opens
    or trains: :func:`check_history_length` (before any (users, L) array or encoder output is made),
    :func:`check_num_sampled` (before any (B, B + N) scores), then the content ``cfg.item_tower``
    needs (:func:`with_content`). ``where`` as in :func:`check_history_length`.

    Returns:
        ``prep`` with ``cfg``'s content features.

    Raises:
        ConfigError, DataError: as those functions do.
    """
    check_history_length(cfg, prep, where)
    check_num_sampled(cfg, prep, where)
    return with_content(prep, cfg)


def as_of_training_cutoff(data: ClickLog, split: Split) -> ClickLog:
    """``data`` with the item table as known at the split's training cutoff (tags applied before it).

    Time-ordered splits only (``split.train_end``); leave_last_out has a cutoff per user, so the
    item table keeps every tag there (docs/content_and_cold_start.md, "Item text as of the training
    cutoff").
    """
    if split.train_end is None or data.item_tags is None:
        return data
    items = data.items_as_of(split.train_end)
    kept = int((data.item_tags["timestamp"] < split.train_end).sum())
    log.info("item tags: %d of %d applied before the training cutoff are used (item text as of then)",
             kept, data.item_tags.height)
    return dataclasses.replace(data, items=items)


def content_key(cfg: RunConfig) -> str:
    """What the content features depend on: the text / image sections of the encoders in use."""
    it = cfg.item_tower
    return repr([(name, getattr(it, name)) for name in CONTENT_ENCODERS if name in it.encoders])


def with_content(prep: Prepared, cfg: RunConfig) -> Prepared:
    """``prep`` with the content features ``cfg.item_tower`` needs (text / image encoder outputs or
    inputs, see :func:`recsys_cl.towers.content.build_content`); unchanged when it has them.

    Raises:
        DataError: the item table lacks what an encoder reads (genres for ``categorical``, a text
            column, an image of the right shape), before any run opens or trains.
    """
    if "categorical" in cfg.item_tower.encoders and len(prep.spec.genres) == 0:
        raise DataError(
            "item_tower.encoders includes 'categorical' but the item table has no genres "
            "(no 'genres' column, or it is empty); remove 'categorical' from "
            "item_tower.encoders (e.g. --set 'item_tower.encoders=[id]') or provide an item table with a genres column"
        )
    key = content_key(cfg)
    if key == prep.content_key:
        return prep
    content, meta = build_content(prep.spec.items, prep.clicks.items, cfg.item_tower,
                                  artifact_resolver(cfg.tracking), cfg.item_tower.cache_dir)
    spec = dataclasses.replace(prep.spec, content=content, content_meta=meta)
    return dataclasses.replace(prep, spec=spec, content_key=key)


def training_data(prep: Prepared, cfg: RunConfig) -> TrainingData:
    """Sequences, targets, logQ source, sampler and masks for ``fit``."""
    spec = prep.spec
    seq = Sequences.from_clicks(prep.split.train, spec.items, spec.users)
    positions = seq.training_positions(min_history=0 if cfg.user_tower.use_user_id else 1)
    log_p = estimator = None
    if cfg.loss.logq == "counting":
        log_p = item_log_prob_counting(seq.item_index[seq.item_index >= 0], spec.num_items)
    elif cfg.loss.logq == "streaming":
        estimator = StreamingFrequencyEstimator(
            num_buckets=cfg.loss.streaming_buckets,
            num_hashes=cfg.loss.streaming_hashes,
            alpha=cfg.loss.streaming_alpha,
        )
    sampler = build_sampler(cfg.negatives.sampled, spec.item_counts, cfg.negatives.popularity_alpha)
    keys = None
    if cfg.loss.mask_user_history:
        ok = (seq.item_index >= 0) & (seq.user_index >= 0)
        keys = make_user_item_matrix(
            seq.user_index[ok], seq.item_index[ok], len(spec.users), spec.num_items
        )
    return TrainingData(
        sequences=seq,
        positions=positions,
        history_length=cfg.user_tower.history_length,
        num_items=spec.num_items,
        log_p=log_p,
        estimator=estimator,
        sampler=sampler,
        num_sampled=cfg.negatives.num_sampled,
        user_item_keys=keys,
        in_batch=cfg.negatives.in_batch,
    )


def two_tower_score_fn(
    model: TwoTower, spec: FeatureSpec, history: pl.DataFrame, eval_set: EvalSet, length: int,
    ranked: np.ndarray | None = None, fold: FoldIn | None = None, since: int | None = None,
) -> ScoreFn:
    """Scores (b, M_r) for rows of ``eval_set``: user embeddings from each user's last ``length``
    clicks in ``history`` (all strictly before their targets) against every ranked item
    (``ranked``: indices into ``spec.items``; default the training catalogue).

    ``fold`` (cold start): first take the clicks in ``history`` on items without training clicks
    into their vectors (:func:`fold_in_items`; ``fit`` reads the clicks at or after ``since``)."""
    seq = Sequences.from_clicks(history, spec.items, spec.users)
    windows = seq.last_windows(eval_set.user_ids, length)  # (U, L)
    users = embed_users(model, windows, spec.users.encode(eval_set.user_ids))  # (U, D)
    ranked = spec.catalogue if ranked is None else ranked
    every = embed_items(model, spec.num_items)  # (M, D)
    if fold is not None and fold.active:
        every, _ = fold_in_items(model, spec, history, every, length, fold, since)
    items = every[torch.from_numpy(ranked)]  # (M_r, D)

    def score(rows: np.ndarray) -> np.ndarray:
        return (users[torch.as_tensor(rows)] @ items.T).numpy()

    return score


def epoch_logger(reporter: Reporter) -> EpochCallback:
    """``fit``'s ``on_epoch_end`` for ``reporter``: every epoch's metrics at step = epoch, but the
    validation set's sizes (``val/n_users``, ``val/n_skipped_users``: :data:`EVAL_SET_SIZES`) once,
    at step 0 with the first epoch, as a baseline run logs them: the same number at every epoch was a
    flat curve in the UI."""
    sizes = {f"val/{k}" for k in EVAL_SET_SIZES}

    def log_epoch(epoch: int, metrics: Mapping[str, float]) -> None:
        if epoch == 1:  # a resumed run logged them before it was killed
            reporter.log_metrics({k: v for k, v in metrics.items() if k in sizes}, step=0)
        reporter.on_epoch_end(epoch, {k: v for k, v in metrics.items() if k not in sizes})

    return log_epoch


def _paired_delta(reporter: Reporter, prep: Prepared, score_fn: ScoreFn, reference: ScoreFn, name: str,
                  batch_size: int) -> dict[str, Any]:
    """``score_fn`` - ``reference`` Recall@20 on the test users with a 95% paired bootstrap, logged as
    ``<name>/recall@20_{delta,low,high}``; returned with the metric, n_users and verdict."""
    delta = paired_bootstrap(
        per_user_recall(score_fn, prep.test_set, COLD_START_K, batch_size),
        per_user_recall(reference, prep.test_set, COLD_START_K, batch_size),
    )
    reporter.log_metrics(interval_metrics(f"{name}/recall@{COLD_START_K}", delta))
    return {"metric": f"recall@{COLD_START_K}", **delta, "n_users": prep.test_set.n_users,
            "verdict": interval_verdict(delta)}


def new_item_share(score_fn: ScoreFn, prep: Prepared, k: int = COLD_START_K, batch_size: int = 1024) -> float:
    """Of the test users' top-``k`` slots, the share held by items without training clicks."""
    return slot_share(score_fn, prep.test_set, np.isin(prep.ranked, prep.spec.cold_items), k, batch_size)


def new_item_metrics(score_fn: ScoreFn, prep: Prepared, batch_size: int = 1024) -> dict[str, float]:
    """``eval.catalogue=all_items``: where the new items (no training clicks) stand in the lists.

    ``new_item_share@20`` (:func:`new_item_share`), and Recall@20 on the test targets that are new
    items and on those that are not, each over the users who have such targets
    (``{new,warm}_targets/recall@20``, ``{new,warm}_targets/n_users``)."""
    out = {f"new_item_share@{COLD_START_K}": new_item_share(score_fn, prep, batch_size=batch_size)}
    is_new = np.isin(prep.ranked, prep.spec.cold_items)
    parts = {"new_targets": is_new, "warm_targets": ~is_new}
    out.update(part_recall(score_fn, prep.test_set, parts, COLD_START_K, batch_size))
    return out


def popularity_metrics(score_fn: ScoreFn, prep: Prepared, head_share: float, batch_size: int = 1024
                       ) -> dict[str, float]:
    """Head/tail Recall@20 and the tail's share of the top-20 slots on the test users
    (:func:`recsys_cl.eval.long_tail.long_tail_metrics`), head and tail from ``spec.item_counts``: the
    training clicks of each item, never the validation or test period's (0 for the new items of
    ``eval.catalogue=all_items``, which are tail, also in the folded lists of ``test_fold_in/*``: the
    clicks an item is folded in with never make it head).

    Raises:
        ValueError: on a cold-start split, where every ranked item has 0 training clicks (no head).
    """
    if prep.cold_start:
        raise ValueError("popularity strata need training clicks on the ranked items; a cold-start split "
                         "ranks only items without any (all tail)")
    return long_tail_metrics(score_fn, prep.test_set, prep.spec.item_counts[prep.ranked], head_share,
                             COLD_START_K, batch_size)


def item_kind_metrics(score_fn: ScoreFn, prep: Prepared, head_share: float, batch_size: int = 1024
                      ) -> dict[str, float]:
    """The test metrics split by kind of item, those ``prep``'s protocol has: new vs warm items
    (:func:`new_item_metrics`, ``eval.catalogue=all_items``) and head vs tail
    (:func:`popularity_metrics`, every split but cold start). A run computes them for its model's
    lists (``test/*``) and, with fold-in, for the folded lists (``test_fold_in/*``), from the same
    training clicks: an item folded in has none, so it is new and tail in both, and each stratum has
    the same targets and users in both (the comparison is the lists, not the strata)."""
    out = new_item_metrics(score_fn, prep, batch_size) if prep.all_items else {}
    if not prep.cold_start:  # the long tail: every ranked item of a cold-start split is without training clicks
        out.update(popularity_metrics(score_fn, prep, head_share, batch_size))
    return out


def run_two_tower(cfg: RunConfig, reporter: Reporter, prep: Prepared | None = None) -> dict[str, Any]:
    """Train, select on validation, test once, log everything. Returns the run summary.

    Holds the run's checkpoint (:func:`lock_checkpoint`) from before the first epoch until it is
    deleted at the end, so a second process with the same config and data fails at once.

    Raises:
        CheckpointInUseError: another live process trains this config on this data.
    """
    prep = with_content(prep, cfg) if prep is not None else prepare(cfg)
    with lock_checkpoint(cfg, prep.resume_fingerprint) if dist.is_main() else contextlib.nullcontext():
        return _run_two_tower(cfg, reporter, prep)


def _run_two_tower(cfg: RunConfig, reporter: Reporter, prep: Prepared) -> dict[str, Any]:
    # torch_threads: what fit trains with (train.num_threads, or torch's default for 0), which
    # examples_per_s depends on
    reporter.set_tags({**prep.tags(cfg), "model": "two_tower", "loss_kind": cfg.loss.kind,
                       "logq": logq_tag(cfg), "negatives": _negatives_tag(cfg), SELECTED_ON_TAG: SELECTED_ON_EPOCH,
                       "torch_threads": cfg.train.num_threads or torch.get_num_threads()})
    reporter.log_params(run_params(cfg))  # the whole config: config/resolved_config.yaml
    what = two_tower_description(cfg, prep)
    reporter.set_description(f"{what}\n\nTraining (up to {cfg.train.epochs} epochs).")  # a running or failed run
    if dist.world_size() > 1:
        reporter.set_tags({"world_size": dist.world_size()})
    torch.manual_seed(cfg.train.seed)
    model = build_two_tower(prep.spec, cfg.model, cfg.user_tower, cfg.item_tower)
    load_pretrained_weights(model, prep.spec.content_meta, artifact_resolver(cfg.tracking))
    data = training_data(prep, cfg)
    L = cfg.user_tower.history_length

    def validate(m: TwoTower) -> dict[str, float]:
        fn = two_tower_score_fn(m, prep.spec, prep.split.train, prep.val_set, L, prep.ranked)
        return evaluate(fn, prep.val_set, ks=cfg.eval.ks, batch_size=cfg.eval.batch_size)

    ckpt = checkpoint_path(cfg, prep.resume_fingerprint)
    result: FitResult = fit(
        model, data, cfg.train, cfg.loss, validate,
        on_epoch_end=epoch_logger(reporter), checkpoint_path=ckpt,
        extra_state={"run_id": reporter.run_id}, negatives=cfg.negatives,
    )
    if not dist.is_main():  # distributed: rank 0 tests, logs and writes the artifacts
        return {"rank": dist.rank(), "best_epoch": result.best_epoch,
                "val_metrics": {k.removeprefix("val/"): v for k, v in result.best_metrics.items()}}
    score_fn = two_tower_score_fn(result.model, prep.spec, prep.split.test_history(), prep.test_set, L, prep.ranked)
    ks = tuple(sorted(set(cfg.eval.ks) | set(CURVE_KS)))
    test = evaluate(score_fn, prep.test_set, ks=ks, batch_size=cfg.eval.batch_size)
    reporter.log_metrics({f"test/{k}": v for k, v in test.items()})
    # val/* is a curve (one point per epoch), so MLflow's runs table and compare view show its last
    # epoch; best/val/* is the epoch whose weights were tested, what runs are chosen on
    reporter.log_metrics({"best_epoch": result.best_epoch, **selected_val_metrics(result.best_metrics)})
    baselines: dict[str, dict[str, float]] = {}
    delta: dict[str, Any] = {}
    fold_in: dict[str, float] = {}
    fold_delta: dict[str, Any] = {}
    if prep.cold_start:  # the reference points on the same cold targets, in the same run
        baselines = cold_start_baselines(prep, ks, cfg.eval.batch_size)
        for name, values in baselines.items():
            reporter.log_metrics({f"baseline/{name}/{k}": v for k, v in values.items()})
        delta = _paired_delta(reporter, prep, score_fn, cold_start_popularity(prep), "delta_vs_popularity",
                              cfg.eval.batch_size)
    fold = FoldIn.from_config(cfg)
    if (prep.cold_start or prep.all_items) and fold.active:
        # the same model, the clicks on items without training clicks before the test period taken in
        fold_fn = two_tower_score_fn(result.model, prep.spec, prep.split.test_history(), prep.test_set, L,
                                     prep.ranked, fold, since=prep.split.train_end)
        fold_in = evaluate(fold_fn, prep.test_set, ks=ks, batch_size=cfg.eval.batch_size)
        fold_in.update(item_kind_metrics(fold_fn, prep, cfg.eval.head_share, cfg.eval.batch_size))
        if prep.cold_start:
            fold_delta = _paired_delta(reporter, prep, fold_fn, cold_start_popularity(prep),
                                       "delta_fold_in_vs_popularity", cfg.eval.batch_size)
        else:  # all items ranked: does taking the clicks in beat leaving new items on content alone?
            fold_delta = _paired_delta(reporter, prep, fold_fn, score_fn, "delta_fold_in_vs_none",
                                       cfg.eval.batch_size)
        reporter.log_metrics({f"test_fold_in/{k}": v for k, v in fold_in.items()})
    parts = item_kind_metrics(score_fn, prep, cfg.eval.head_share, cfg.eval.batch_size)
    test.update(parts)
    reporter.log_metrics({f"test/{k}": v for k, v in parts.items()})
    _log_artifacts(reporter, cfg, prep, result, score_fn, test, baselines)
    with scratch(RUN_SCRATCH_PREFIX) as tmp:  # a SIGKILL while MLflow copies it: the next run removes it
        model_dir = save_model_dir(tmp / "model", result.model, prep.spec, cfg)
        model_uri = reporter.log_model(model_dir, cfg.tracking.registered_model_name)
    if cfg.tracking.set_alias:
        reporter.set_alias(model_uri, cfg.tracking.set_alias)
    if ckpt.exists():
        ckpt.unlink()  # finished: the next run with this config starts fresh
    summary = {
        "run_id": reporter.run_id,
        "model_uri": model_uri,
        "protocol": prep.protocol,
        "best_epoch": result.best_epoch,
        "val_metrics": {k.removeprefix("val/"): v for k, v in result.best_metrics.items()},
        "test_metrics": {k: v for k, v in test.items() if _is_headline(k, cfg.eval.ks)},
    }
    if baselines:
        headline = {n: {k: v for k, v in m.items() if _is_headline(k, cfg.eval.ks)} for n, m in baselines.items()}
        summary["baseline_metrics"] = headline["popularity"]
        summary["baseline_name"] = "popularity"
        summary["random_metrics"] = headline["random"]
        summary["delta_vs_baseline"] = delta
    if fold_in:
        summary["fold_in_method"] = fold.method
        summary["fold_in_metrics"] = {k: v for k, v in fold_in.items() if _is_headline(k, cfg.eval.ks)}
        summary["fold_in_delta_vs_" + ("baseline" if baselines else "none")] = fold_delta
    stopped = ", stopped early" if result.stopped_early else ""
    reporter.set_description(
        f"{what}\n\nBest epoch {result.best_epoch} of {len(result.history)} trained{stopped} (chosen on "
        f"validation {SELECT_METRIC} = {result.best_metrics.get('val/' + SELECT_METRIC, float('nan')):.4f}); "
        f"tested once: {_headline_text(test)}.\n\n{_protocol_text(prep)}"
    )
    reporter.log_dict(summary, "summary.json")
    return summary


def two_tower_description(cfg: RunConfig, prep: Prepared) -> str:
    """The first paragraph of a two-tower run's description (Markdown): the model as its tags and
    the main config keys say it, and the data it was trained on."""
    loss = f"{cfg.loss.kind} loss, temperature {cfg.loss.temperature}"
    if cfg.loss.kind == "debiased":
        loss += f", tau+ {cfg.loss.tau_plus}"
    elif cfg.loss.kind == "triplet":
        loss += f", margin {cfg.loss.margin}"
    return (f"**Two-tower** ({loss}; logQ {logq_tag(cfg)}; negatives {_negatives_tag(cfg)}; item encoders "
            f"{', '.join(cfg.item_tower.encoders)}; {cfg.user_tower.pooling} pooling over the last "
            f"{cfg.user_tower.history_length} clicks; dim {cfg.model.embedding_dim}; seed {cfg.train.seed}) "
            f"{_data_text(cfg, prep)}.")


def _data_text(cfg: RunConfig, prep: Prepared) -> str:
    tags = prep.tags(cfg)
    return (f"on `{tags['dataset']}` ({int(tags['data_clicks']):,} clicks, {int(tags['data_users']):,} users, "
            f"{int(tags['data_items']):,} items), split {cfg.split.kind}")


def _headline_text(test: dict[str, float]) -> str:
    """``recall@20 0.1770, ndcg@10 0.0545, mrr 0.0527`` (those of them ``test`` holds)."""
    return ", ".join(f"{k} {test[k]:.4f}" for k in ("recall@20", "ndcg@10", "mrr") if k in test)


def _protocol_text(prep: Prepared) -> str:
    return f"Protocol: `{prep.protocol}` over {len(prep.ranked):,} items, {prep.test_set.n_users:,} test users."


def cold_start_baselines(prep: Prepared, ks: tuple[int, ...], batch_size: int = 1024) -> dict[str, dict[str, float]]:
    """Test metrics of Popularity and of a random ranking on the cold-start test targets.

    Cold items have no training clicks, so Popularity counts each cold item's clicks in the test
    targets' history (train + validation periods: what is known before the test period), ties broken
    at random (seed 0; most cold items have no click at all before the test period). ``random`` is
    the exact expectation of a uniformly random ranking (:func:`random_expected_metrics`).
    """
    return {
        "popularity": evaluate(cold_start_popularity(prep), prep.test_set, ks=ks, batch_size=batch_size),
        "random": random_expected_metrics(prep.test_set, ks),
    }


def cold_start_popularity(prep: Prepared) -> ScoreFn:
    """Popularity's scores (b, M_r) over the ranked cold items: their clicks before the test
    period, ties broken at random (seed 0); see :func:`cold_start_baselines`."""
    idx = prep.ranked_vocab.encode(prep.split.test_history()["item_id"])
    counts = np.bincount(idx[idx >= 0], minlength=len(prep.ranked)).astype(np.float64)
    scores = counts + np.random.default_rng(0).random(len(counts)) * 0.5  # (M_r,) ties -> random order

    def popularity(rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(scores, (len(rows), len(scores)))

    return popularity


def checkpoint_path(cfg: RunConfig, data_fingerprint: str) -> Path:
    """Where a run with this config on this data checkpoints; a rerun resumes only from its own
    file, so changed data (``data_fingerprint``: :attr:`Prepared.resume_fingerprint`, the click log,
    item table and content encoders) or a changed config starts afresh."""
    key = hashlib.sha256(f"{config_hash(cfg)}|{data_fingerprint}".encode()).hexdigest()[:16]
    return Path(cfg.train.checkpoint_dir) / f"{key}.pt"


def lock_checkpoint(cfg: RunConfig, data_fingerprint: str) -> contextlib.AbstractContextManager[Path]:
    """Hold :func:`checkpoint_path` for this process (:func:`recsys_cl.train.checkpoint.checkpoint_lock`):
    a pipeline takes it before :func:`resumable_run_id` reads the checkpoint and keeps it while the run
    trains, so a second process with this config and data never resumes another's unfinished run.

    Raises (on entering):
        CheckpointInUseError: another live process holds it; the message names it and the fixes.
    """
    return checkpoint_lock(checkpoint_path(cfg, data_fingerprint))


def resumable_run_id(cfg: RunConfig, data_fingerprint: str) -> str | None:
    """The MLflow run id of an interrupted run with this config on this data, if a checkpoint is left."""
    if not cfg.train.resume:
        return None
    state = load_checkpoint(checkpoint_path(cfg, data_fingerprint))
    return None if state is None else state.get("extra", {}).get("run_id")


def config_hash(cfg: RunConfig) -> str:
    """Identity of a training run for resuming: everything but bookkeeping keys (epochs may be raised
    to train on). ``tracking.*`` is part of it: a resumed run keeps its MLflow run, experiment and
    logged params, so a rerun that changes them must start a new run."""
    flat = cfg.to_flat_dict()
    for key in ("train.epochs", "train.progress", "train.resume", "train.checkpoint_dir"):
        flat.pop(key, None)
    flat = {k: v for k, v in flat.items() if not k.startswith("baselines.")}
    return hashlib.sha256(repr(sorted(flat.items())).encode()).hexdigest()[:16]


SELECTED_ON_TAG = "selected_on"
"""Tag: what chose the model whose ``best/val/*`` and ``test/*`` a run logs (they differ by model)."""
SELECTED_ON_EPOCH = f"val/{SELECT_METRIC} (epoch)"
SELECTED_ON_HYPERPARAMETERS = f"val/{SELECT_BY} (hyperparameters)"
SELECTED_ON_CHILD = f"val/{SELECT_METRIC} (child run)"
SELECTED_PREFIX = "best/"
"""Prefix of the validation metrics of the model a run tested (``best/val/recall@20``): the best
epoch of a two-tower run, the chosen hyperparameters of a baseline, the best child of a sweep."""


def selected_val_metrics(val: dict[str, float]) -> dict[str, float]:
    """``{"best/val/<metric>": value}`` for the ``val/*`` entries of ``val`` (other keys, e.g.
    ``train_loss``, left out)."""
    return {SELECTED_PREFIX + k: v for k, v in val.items() if k.startswith("val/")}


def _is_headline(key: str, ks: tuple[int, ...]) -> bool:
    if "@" not in key:
        return True
    return int(key.split("@")[1]) in set(ks) | {10, 20}


def logq_tag(cfg: RunConfig) -> str:
    """``none``, ``counting``, ``streaming``, or with a partial ``loss.logq_weight`` w
    ``counting_x0.5``: the ``logq`` tag of a two-tower run (and part of its default name), so runs
    that differ only in w are told apart in the runs list. ``none`` for ``loss.kind: triplet``, which
    applies no correction whatever ``loss.logq`` says (:meth:`RunConfig.unused_settings` warns)."""
    if cfg.loss.kind == "triplet":
        return "none"
    if cfg.loss.logq != "none" and cfg.loss.logq_weight != 1.0:
        return f"{cfg.loss.logq}_x{cfg.loss.logq_weight:g}"
    return cfg.loss.logq


def negatives_tag(cfg: RunConfig) -> str:
    """``in_batch``, ``in_batch+uniformx1024``, ...: the ``negatives`` tag of a two-tower run."""
    return _negatives_tag(cfg)


def _negatives_tag(cfg: RunConfig) -> str:
    parts = ["in_batch"] if cfg.negatives.in_batch else []
    if cfg.negatives.sampled != "none":
        parts.append(f"{cfg.negatives.sampled}x{cfg.negatives.num_sampled}")
    if cfg.negatives.queue.kind != "none":
        parts.append(f"{cfg.negatives.queue.kind}_queue{cfg.negatives.queue.size}")
    if cfg.negatives.hard.kind != "none":
        parts.append(f"hard_{cfg.negatives.hard.kind}")
    return "+".join(parts)


def plot_title(reporter: Reporter) -> str:
    """``<run name> (run <first 8 of the id>)``: what a run's plots say above them."""
    return f"{reporter.run_name} (run {reporter.run_id[:8]})" if reporter.run_id else reporter.run_name


def reference_curves(
    prep: Prepared, cold_start_baselines: dict[str, dict[str, float]], batch_size: int = 1024
) -> dict[str, dict[int, float]]:
    """Test Recall@K (K in :data:`CURVE_KS`) of what a two-tower run's Recall@K plot is read
    against, under its protocol: Popularity fitted on the training clicks, exactly as a
    ``baseline-popularity`` run tests it; on a cold-start split the run's own ``cold_start_baselines``
    (Popularity and random on the cold targets)."""
    if prep.cold_start:
        return {f"{name} (same targets)": _recall_curve(m) for name, m in cold_start_baselines.items()}
    from recsys_cl.baselines.popularity import Popularity
    from recsys_cl.baselines.tuning import score_fn_for
    from recsys_cl.eval.protocol import interaction_matrix

    model = Popularity().fit(interaction_matrix(prep.split.train, prep.spec.users, prep.ranked_vocab))
    test = evaluate(score_fn_for(model, prep.test_set), prep.test_set, ks=CURVE_KS, batch_size=batch_size)
    return {"popularity (same protocol)": _recall_curve(test)}


def _log_artifacts(
    reporter: Reporter, cfg: RunConfig, prep: Prepared, result: FitResult, score_fn: ScoreFn,
    test: dict[str, float], baselines: dict[str, dict[str, float]],
) -> None:
    from recsys_cl.config import dump_config

    reporter.log_text(dump_config(cfg), "config/resolved_config.yaml")
    with scratch(RUN_SCRATCH_PREFIX) as tmp:
        prep.spec.save(tmp / "vocab")
        reporter.log_artifacts(tmp / "vocab", "vocab")
        emb_dir = tmp / "item_embeddings"
        emb_dir.mkdir()
        emb = embed_items(result.model, prep.spec.num_items).numpy().astype(np.float32)
        pl.DataFrame({"item_id": prep.spec.items.ids, "embedding": emb}).write_parquet(
            emb_dir / "item_embeddings.parquet"
        )
        reporter.log_artifacts(emb_dir, "item_embeddings")
    run = plot_title(reporter)
    figs = {
        "plots/learning_curves.png": plots.learning_curves(result.history, result.best_epoch, run=run),
        "plots/recall_vs_k.png": plots.recall_vs_k(
            {"two_tower": _recall_curve(test)}, prep.protocol, run=run,
            references=reference_curves(prep, baselines, cfg.eval.batch_size),
        ),
    }
    if not prep.cold_start:  # cold items have no training clicks: nothing to plot
        figs["plots/popularity.png"] = plots.popularity_of_recommendations(
            prep.spec.item_counts[prep.ranked],
            top_k_items(score_fn, prep.test_set, 20).ravel(),
            prep.test_set.targets.indices,
            run=run,
        )
    for name, fig in figs.items():
        reporter.log_figure(fig, name)
        plots.close(fig)


def require_warm_split(name: str, prep: Prepared) -> None:
    """Raise DataError when ``prep`` is a cold-start split, which click-based baselines cannot rank."""
    if prep.cold_start:
        raise DataError(
            f"baseline {name!r} ranks items by their training clicks and cannot rank cold items "
            "(split.kind=cold_start); the two-tower run logs Popularity and random on the same cold "
            "targets (baseline/popularity/*, baseline/random/*). Use split.kind=temporal or leave_last_out here"
        )


def run_baseline(
    name: str, cfg: RunConfig, prep: Prepared, reporter: Reporter
) -> dict[str, Any]:
    """Tune one baseline on validation NDCG@10 and test it, under the identical split/protocol."""
    require_warm_split(name, prep)
    from recsys_cl.baselines import tune_and_evaluate
    from recsys_cl.eval.protocol import interaction_matrix

    # tagged before tuning (minutes for EASE on 10k items), as a two-tower run is before training: the
    # UI's filters find it while it runs, and a run that fails still says what it was.
    # loss_kind / negatives "none": every run carries the same tag keys, so UI filters never miss one
    reporter.set_tags({**prep.tags(cfg), "model": name, "loss_kind": "none", "logq": "none", "negatives": "none",
                       SELECTED_ON_TAG: SELECTED_ON_HYPERPARAMETERS})
    reporter.log_params({"baseline.name": name, **protocol_params(cfg)})

    grids: dict[str, Any] = {
        "ease": {"lam": list(cfg.baselines.ease_lambdas)},
        "itemknn": {"k": list(cfg.baselines.itemknn_k)},
        "als": {"factors": [cfg.baselines.als_factors]},
        "bpr": {"factors": [cfg.baselines.als_factors]},
    }
    # the ranked items' columns: with eval.catalogue=all_items the new items' are empty (score 0 or
    # the model's prior), as they would be for these models in serving
    train = interaction_matrix(prep.split.train, prep.spec.users, prep.ranked_vocab)
    ks = tuple(sorted(set(cfg.eval.ks) | set(CURVE_KS)))
    res = tune_and_evaluate(name, train, prep.val_set, prep.test_set, grids.get(name), ks=ks)
    from recsys_cl.baselines.tuning import score_fn_for

    score_fn = score_fn_for(res["model"], prep.test_set)
    # new/warm items and head/tail: a warm split (required above)
    res["test"].update(item_kind_metrics(score_fn, prep, cfg.eval.head_share))
    reporter.log_params({f"baseline.{k}": v for k, v in res["params"].items()})
    for params, val in res["val_by_params"]:
        reporter.log_metrics({f"tuning/{_param_str(params)}/ndcg@10": val["ndcg@10"]})
    # val/* at eval.ks only, as a two-tower run logs it: the compare view lines the two up key by key
    val = {f"val/{k}": v for k, v in res["val"].items() if "@" not in k or int(k.split("@")[1]) in cfg.eval.ks}
    reporter.log_metrics({**val, **selected_val_metrics(val)})
    reporter.log_metrics({f"test/{k}": v for k, v in res["test"].items()})
    reporter.log_metrics({"fit_seconds": res["fit_seconds"]})
    from recsys_cl.config import dump_config

    reporter.log_text(dump_config(cfg), "config/resolved_config.yaml")
    fig = plots.recall_vs_k({name: _recall_curve(res["test"])}, prep.protocol, run=plot_title(reporter))
    reporter.log_figure(fig, "plots/recall_vs_k.png")
    plots.close(fig)
    chosen = ", ".join(f"{k} {v}" for k, v in res["params"].items())
    val = f"validation {SELECT_BY} = {res['val'][SELECT_BY]:.4f}"
    reporter.set_description(
        f"**{name} baseline** {_data_text(cfg, prep)}; "
        + (f"hyperparameters ({chosen}) chosen on {val}" if chosen else f"no hyperparameters to tune ({val})")
        + f"; tested once: {_headline_text(res['test'])}.\n\n{_protocol_text(prep)}"
    )
    summary = {
        "run_id": reporter.run_id,
        "model": name,
        "params": res["params"],
        "protocol": prep.protocol,
        "fit_seconds": res["fit_seconds"],
        "test_metrics": {k: v for k, v in res["test"].items() if _is_headline(k, cfg.eval.ks)},
    }
    reporter.log_dict(summary, "summary.json")
    return summary


def run_params(cfg: RunConfig, runs: Iterable[RunConfig] | None = None,
               baselines: Sequence[str] = ()) -> dict[str, Any]:
    """``cfg``'s flat config as params, less the sections that no run of ``runs`` (default: ``cfg``
    alone) reads (:meth:`RunConfig.unused_sections`): a run without a
    text encoder logged the 4 ``item_tower.text.*`` keys, and every two-tower run the 44
    ``candidates.*``, ``index.*`` and ``baselines.*`` keys, which the compare view showed as
    differences between runs that read none of them. The whole config is the run's
    ``config/resolved_config.yaml``.

    ``baselines``: the baselines a parent run (a sweep's, an ablation's) also runs. It then reads the
    ``baselines`` section, and ``baselines.models`` is logged as these names: ``--baselines
    popularity`` ran Popularity alone while the param showed the config's list."""
    unused = set.intersection(*(set(c.unused_sections()) for c in (list(runs) if runs is not None else [cfg])))
    if baselines:
        unused.discard("baselines")
    params = {k: v for k, v in cfg.to_flat_dict().items() if not k.startswith(tuple(f"{u}." for u in unused))}
    if baselines:
        params["baselines.models"] = list(baselines)
    return params


def parent_tags(base: RunConfig, prep: Prepared, configs: Iterable[RunConfig]) -> dict[str, str]:
    """The tags of a parent run over the two-tower runs of ``configs`` (a sweep's, an ablation's):
    ``prep``'s data and protocol tags, ``model`` and each of ``loss_kind``, ``logq`` and ``negatives``
    as its runs' distinct values joined by commas, so the parent answers the filters its runs do."""
    configs = list(configs)

    def distinct(values: Iterable[str]) -> str:
        return ",".join(dict.fromkeys(values))

    return {**prep.tags(base), "model": "two_tower", "loss_kind": distinct(c.loss.kind for c in configs),
            "logq": distinct(logq_tag(c) for c in configs), "negatives": distinct(_negatives_tag(c) for c in configs)}


PROTOCOL_SECTIONS = ("data.", "split.", "eval.")
"""Config sections that decide what a run is evaluated on: every run, two-tower or baseline, logs
them under the same names, so the compare view shows whether two runs' numbers are comparable."""


def protocol_params(cfg: RunConfig) -> dict[str, Any]:
    """The ``data.*``, ``split.*`` and ``eval.*`` keys of ``cfg`` as params (:data:`PROTOCOL_SECTIONS`)."""
    return {k: v for k, v in cfg.to_flat_dict().items() if k.startswith(PROTOCOL_SECTIONS)}


def _recall_curve(test: dict[str, float]) -> dict[int, float]:
    """``{K: test Recall@K}`` at the :data:`CURVE_KS` that ``test`` holds."""
    return {k: test[f"recall@{k}"] for k in CURVE_KS if f"recall@{k}" in test}


def _param_str(params: dict[str, Any]) -> str:
    return "_".join(f"{k}_{v}" for k, v in params.items()) or "default"


class NullReporter:
    """A Reporter that records nothing: what ranks other than 0 report to in a distributed run."""

    run_id = ""
    run_name = ""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None
