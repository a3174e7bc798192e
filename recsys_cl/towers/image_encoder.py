"""Small ResNet-style image encoder and the SimCLR MLP projection head, in plain torch.

Letters: B batch, C input channels, H height, W width, D embedding dim (= ``widths[-1]``),
P projection dim.

The encoder (He et al. 2016 basic blocks, CIFAR-style 3x3 stem without max-pool, sized for
28 x 28 inputs) returns the global-average-pooled representation ``h`` of SimCLR: ``(B, D)``. It is
what downstream towers use. :class:`ProjectionHead` maps ``h`` to ``z`` for the contrastive loss
only and is discarded after pretraining (see :mod:`recsys_cl.pretrain.simclr`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut (1x1 conv when the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, c_out, H', W')
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ImageEncoder(nn.Module):
    """Images ``(B, C, H, W)`` in [0, 1] -> representations ``(B, D)``, D = ``widths[-1]``.

    Args:
        in_channels: C (1 grayscale, 3 RGB).
        widths: channels per stage; every stage after the first halves H and W.
        blocks_per_stage: basic blocks per stage.
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64), blocks_per_stage: int = 1) -> None:
        super().__init__()
        if not widths:
            raise ValueError("widths must name at least one stage")
        self.in_channels = in_channels
        self.embedding_dim = int(widths[-1])
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        prev = widths[0]
        for s, w in enumerate(widths):
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(prev, w, stride=2 if (s > 0 and b == 0) else 1))
                prev = w
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ImageEncoder expects images of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}; "
                "add the channel axis for grayscale images (x[:, None]) or set model.in_channels"
            )
        if not x.is_floating_point():
            raise ValueError(f"ImageEncoder expects float pixels in [0, 1], got {x.dtype}; divide by 255 "
                             "(recsys_cl.pretrain.simclr.embed takes uint8 pixels and does)")
        h = self.blocks(self.stem(x))  # (B, D, H', W')
        return h.mean(dim=(2, 3))  # (B, D)


class ProjectionHead(nn.Module):
    """SimCLR's g(.): Linear-BN-ReLU-Linear, ``(B, D) -> (B, P)``. Used only by the pretraining loss."""

    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, out))

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)  # (B, P)
