"""The paper's lip-reading critic, built as a viseme reader: 5 frames of a lower face -> which of
14 visemes (``phonemes.VISEMES``) the middle frame shows. Trained on the corpus's per-frame phoneme
labels; compared with the SyncNet-style expert as a judge of generated mouths
(``scripts/compare_critics.py``).

Unlike the sync expert it never hears the audio: it checks that the mouth shape is the one the
phoneme needs, which a loudness-driven mouth cannot fake.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import LipReaderConfig
from .blocks import ResBlock, conv_block
from .sync_expert import SyncExpert


class LipReader(nn.Module):
    def __init__(self, cfg: LipReaderConfig = LipReaderConfig()):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.net = nn.Sequential(  # the sync expert's video trunk: grey, normalised mouths
            conv_block(cfg.frames, w, 2, k=5),  # (N, w, 32, 64)
            conv_block(w, 2 * w, 1),
            ResBlock(2 * w),
            conv_block(2 * w, 4 * w, 2),  # (N, 4w, 16, 32)
            ResBlock(4 * w),
            conv_block(4 * w, 8 * w, 2),  # (N, 8w, 8, 16)
            conv_block(8 * w, 8 * w, 2),  # (N, 8w, 4, 8)
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(8 * w, cfg.n_classes))

    def forward(self, lower: torch.Tensor) -> torch.Tensor:
        """lower: (N, F, 3, H, W) lower halves in [-1, 1] -> viseme logits (N, n_classes)."""
        return self.fc(self.net(SyncExpert.to_gray(lower)).flatten(1))
