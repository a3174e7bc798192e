"""Frozen configuration of SimCLR image pretraining (``pipelines/configs/pretrain/simclr.yaml``).

Loaded with :func:`recsys_cl.config.load_config` (``load_config(path, SimCLRConfig, overrides)``),
which rejects unknown keys by their full dotted name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recsys_cl.config import ConfigError, TrackingConfig


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
        if self.train_size < 0:
            raise ConfigError(f"data.train_size must be >= 0 (0 = all), got {self.train_size}")


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
            raise ConfigError(f"augment.crop_scale must be [lo, hi] with 0 < lo <= hi <= 1, got {list(self.crop_scale)}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"augment.{name} must be a probability in [0, 1], got {v}")
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
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if not 0 < self.temperature <= 10:
            raise ConfigError(f"train.temperature must be in (0, 10], got {self.temperature}")
        if self.num_threads < 0:
            raise ConfigError(f"train.num_threads must be >= 0, got {self.num_threads}")


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
