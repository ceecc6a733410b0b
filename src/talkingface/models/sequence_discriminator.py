"""Sequence discriminator (paper: Conv3d 3x3x3, stride (1,2,2), BatchNorm3d): is the motion of a
clip of lower faces real? Sees >= 11 consecutive frames at half resolution, since motion is
judged at a coarser scale than texture (and it keeps the 3-D convs affordable on a CPU)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import SequenceDiscriminatorConfig


def _block(cin: int, cout: int, stride, norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv3d(cin, cout, 3, stride, 1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm3d(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


class SequenceDiscriminator(nn.Module):
    def __init__(self, cfg: SequenceDiscriminatorConfig = SequenceDiscriminatorConfig()):
        super().__init__()
        w = cfg.width
        self.net = nn.Sequential(
            _block(3, w, (1, 2, 2), norm=False),  # (B, w, T, 16, 32)
            _block(w, 2 * w, (1, 2, 2), norm=True),  # (B, 2w, T, 8, 16)
            _block(2 * w, 4 * w, (2, 2, 2), norm=True),  # (B, 4w, T/2, 4, 8)
            _block(4 * w, 4 * w, (2, 1, 1), norm=True),  # (B, 4w, T/4, 4, 8)
            nn.Conv3d(4 * w, 1, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, 3, H, W) in [-1, 1] -> logits (B, 1, T/4, H/16, W/16) (after a 2x downscale)."""
        b, t = x.shape[:2]
        x = F.avg_pool2d(x.flatten(0, 1), 2).view(b, t, 3, x.shape[3] // 2, x.shape[4] // 2)
        return self.net(x.transpose(1, 2))  # Conv3d wants (B, C, T, H, W)
