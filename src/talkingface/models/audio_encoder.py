"""Audio encoder: the 0.35 s log-mel window around a video frame -> one feature vector.

The paper's encoder (5 conv-BN-ReLU layers, 16..256 channels, FC to 512) adapted to 80-band
log-mel input and narrowed to 256-d output for CPU training.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..audio import envelope_projection
from ..config import AudioEncoderConfig
from .blocks import ResBlock, conv_block


class AudioEncoder(nn.Module):
    def __init__(self, cfg: AudioEncoderConfig = AudioEncoderConfig()):
        super().__init__()
        w = cfg.width
        # Downsample early: full-resolution layers dominate the cost and add little here.
        self.net = nn.Sequential(
            conv_block(1, w // 2, stride=(2, 1)),  # (N, w/2, 40, 35)
            conv_block(w // 2, w, stride=2),  # (N, w, 20, 18)
            ResBlock(w),
            conv_block(w, 2 * w, stride=2),  # (N, 2w, 10, 9)
            ResBlock(2 * w),
            conv_block(2 * w, 4 * w, stride=2),  # (N, 4w, 5, 5)
            conv_block(4 * w, 8 * w),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(8 * w, cfg.dim)
        self.n_mels = cfg.n_mels
        self.lifter = cfg.lifter
        if cfg.lifter:  # fixed, rebuilt from the config: not stored in checkpoints
            self.register_buffer("envelope", envelope_projection(cfg.n_mels, cfg.lifter), persistent=False)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (N, n_mels [+ more rows], steps) -> (N, dim). Rows past the mel bands (a phone track,
        ``phonetic``) are not read here."""
        mel = mel[:, : self.n_mels]
        if self.lifter:
            mel = torch.matmul(self.envelope.to(mel.dtype), mel)  # (N, n_mels, steps)
        return self.fc(self.net(mel[:, None]).flatten(1))
