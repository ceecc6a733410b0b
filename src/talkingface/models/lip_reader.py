"""The paper's lip-reading critic, built as a viseme reader: 5 frames of a lower face -> which of
14 visemes (``phonemes.VISEMES``) the middle frame shows. Trained on the corpus's per-frame phoneme
labels; compared with the SyncNet-style expert as a judge of generated mouths (the ``viseme_acc``
column of ``talkingface evaluate --lip-reader``).

Unlike the sync expert it never hears the audio: it checks that the mouth shape is the one the
phoneme needs, which a loudness-driven mouth cannot fake.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import LipReaderConfig
from .sync_expert import SyncExpert, mouth_trunk


class LipReader(nn.Module):
    def __init__(self, cfg: LipReaderConfig = LipReaderConfig()):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.net = mouth_trunk(cfg.frames, w)  # the sync expert's video trunk: grey, normalised mouths
        self.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(8 * w, cfg.n_classes))

    def forward(self, lower: torch.Tensor) -> torch.Tensor:
        """lower: (N, F, 3, H, W) lower halves in [-1, 1] -> viseme logits (N, n_classes)."""
        return self.fc(self.net(SyncExpert.to_gray(lower)).flatten(1))
