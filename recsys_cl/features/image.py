"""SimCLR view augmentations: two randomly augmented views of a batch of images, with kornia.

Letters: B batch, C channels (1 or 3), H height, W width.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020
(arXiv 2002.05709), Appendix A: random resized crop + flip, colour distortion (jitter, grayscale),
Gaussian blur. Colour jitter (saturation, hue) and random grayscale only exist for 3-channel
images; grayscale images get brightness/contrast jitter only. Everything runs batched on tensors,
on the inputs' device (kornia; torchvision is not used because it pulls a CUDA build of torch).

:class:`SimCLRTransform` follows lightly's ``MultiViewTransform``: one augmentation pipeline,
applied independently once per view.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from recsys_cl.pretrain.config import AugmentConfig


def check_images(x: Tensor, channels: int, image_size: tuple[int, ...]) -> None:
    """Raise ValueError unless ``x`` is float (B, channels, H, W) with (H, W) = ``image_size``."""
    expected = f"(B, {channels}, {image_size[0]}, {image_size[1]})"
    if x.dim() != 4 or x.shape[1] != channels or tuple(x.shape[2:]) != tuple(image_size):
        raise ValueError(
            f"images must have shape {expected}, got {tuple(x.shape)}; check data.image_size and "
            "model.in_channels, and add the channel axis for grayscale images (x[:, None])"
        )
    if not x.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {x.dtype}; divide uint8 pixels by 255")


class SimCLRTransform(nn.Module):
    """Two views of a batch: ``(B, C, H, W) -> ((B, C, H, W), (B, C, H, W))``, pixels in [0, 1].

    Args:
        cfg: augmentation strengths and probabilities.
        channels: C, 1 (grayscale: no saturation/hue jitter, no random grayscale) or 3.
        image_size: (H, W) of inputs and outputs (crops are resized back to it).
    """

    def __init__(self, cfg: AugmentConfig, channels: int, image_size: tuple[int, ...]) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.channels, self.image_size = channels, tuple(image_size)
        size = (int(image_size[0]), int(image_size[1]))
        scale = (float(cfg.crop_scale[0]), float(cfg.crop_scale[1]))
        sigma = (float(cfg.blur_sigma[0]), float(cfg.blur_sigma[1]))
        ops: list[K.AugmentationBase2D] = [
            K.RandomResizedCrop(size, scale=scale),
            K.RandomHorizontalFlip(p=cfg.flip_p),
        ]
        if channels == 3:
            ops += [
                K.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, p=cfg.jitter_p),
                K.RandomGrayscale(p=cfg.grayscale_p),
            ]
        else:
            ops += [
                K.RandomBrightness(brightness=(1 - cfg.brightness, 1 + cfg.brightness), p=cfg.jitter_p),
                K.RandomContrast(contrast=(1 - cfg.contrast, 1 + cfg.contrast), p=cfg.jitter_p),
            ]
        k = cfg.blur_kernel
        ops.append(K.RandomGaussianBlur((k, k), sigma, p=cfg.blur_p))
        self.augment = K.AugmentationSequential(*ops)

    def view(self, x: Tensor) -> Tensor:
        """One augmented view. (B, C, H, W) -> (B, C, H, W), clamped to [0, 1]."""
        return self.augment(x).clamp_(0.0, 1.0)

    def forward(self, x: Tensor, seed: int | None = None) -> tuple[Tensor, Tensor]:
        """Two independent views of ``x``; with ``seed`` the result is reproducible and the global
        torch RNG is left untouched."""
        check_images(x, self.channels, self.image_size)
        if seed is None:
            return self.view(x), self.view(x)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.view(x), self.view(x)
