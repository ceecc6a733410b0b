"""Frame discriminator (paper: 3x3 stride-2 convs, InstanceNorm, LeakyReLU, PatchGAN): is each
generated lower face a real photo? Patch outputs judge local texture (teeth, lip edges)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import FrameDiscriminatorConfig
from .blocks import conv_block


class FrameDiscriminator(nn.Module):
    def __init__(self, cfg: FrameDiscriminatorConfig = FrameDiscriminatorConfig()):
        super().__init__()
        w = cfg.width
        self.net = nn.Sequential(
            conv_block(3, w, 2, norm="none", act="lrelu"),  # (N, w, 32, 64)
            conv_block(w, 2 * w, 2, norm="instance", act="lrelu"),  # (N, 2w, 16, 32)
            conv_block(2 * w, 4 * w, 2, norm="instance", act="lrelu"),  # (N, 4w, 8, 16)
            conv_block(4 * w, 4 * w, 1, norm="instance", act="lrelu"),
            nn.Conv2d(4 * w, 1, 3, 1, 1),  # (N, 1, 8, 16) patch logits
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) in [-1, 1] -> patch logits (N, 1, H/8, W/8)."""
        return self.net(x)
