"""Identity encoder: the ONE reference photo (aligned crop) -> U-Net skip features + a vector.

The paper's 4 stride-2 5x5 convs (16/32/64/128) with skips; widened to 32..256 with a residual
block per scale, since on our data identity detail (skin, lips, teeth) must come from the photo.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import IdentityEncoderConfig
from .blocks import ResBlock, conv_block


class IdentityEncoder(nn.Module):
    def __init__(self, cfg: IdentityEncoderConfig = IdentityEncoderConfig()):
        super().__init__()
        w = cfg.width
        chans = [w, 2 * w, 4 * w, 8 * w]
        self.stem = conv_block(3, w, k=5)
        self.down = nn.ModuleList()
        cin = w
        for c in chans:
            self.down.append(nn.Sequential(conv_block(cin, c, stride=2, k=5), ResBlock(c)))
            cin = c
        self.fc = nn.Linear(chans[-1], cfg.dim)
        self.channels = chans

    def forward(self, ref: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """ref: (B, 3, S, S) in [-1, 1] -> skips [(B, w, S/2, S/2), ..., (B, 8w, S/16, S/16)], vector (B, dim)."""
        x = self.stem(ref)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        return skips, self.fc(x.mean((2, 3)))
