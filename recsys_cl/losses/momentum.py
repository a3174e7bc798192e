"""Momentum (key) encoder of MoCo: an exponential moving average of the online item tower.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020
(arXiv 1911.05722), Eq. (2): ``theta_k <- m * theta_k + (1 - m) * theta_q``. The key tower is a
frozen copy of the online tower; :func:`momentum_update` is its only update.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def momentum_copy(online: nn.Module) -> nn.Module:
    """A deep copy of ``online`` with gradients off, in eval mode: the initial key encoder."""
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    return target.eval()


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """``theta_k <- m * theta_k + (1 - m) * theta_q`` for every parameter; buffers are copied.

    Args:
        online: the trained module (theta_q).
        target: the momentum copy (theta_k), same architecture; updated in place.
        m: momentum in [0, 1]; 0 copies ``online``, 1 leaves ``target`` unchanged.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {m}")
    q_params, k_params = dict(online.named_parameters()), dict(target.named_parameters())
    if q_params.keys() != k_params.keys():
        raise ValueError(
            "online and target modules must have the same parameters (build the target with "
            f"momentum_copy); differing names: {sorted(q_params.keys() ^ k_params.keys())[:5]}"
        )
    for name, q in q_params.items():
        k_params[name].mul_(m).add_(q.detach(), alpha=1.0 - m)
    k_buffers = dict(target.named_buffers())
    for name, b in online.named_buffers():
        k_buffers[name].copy_(b)
