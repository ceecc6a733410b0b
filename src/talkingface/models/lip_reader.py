"""The paper's lip-reading critic, built as a viseme reader: 5 frames of a lower face -> which of
14 visemes (``phonemes.VISEMES``) the middle frame shows. Trained on the corpus's per-frame phoneme
labels; compared with the SyncNet-style expert as a judge of generated mouths (the ``viseme_acc``
column of ``talkingface evaluate --lip-reader``).

Unlike the sync expert it never hears the audio: it checks that the mouth shape is the one the
phoneme needs, which a loudness-driven mouth cannot fake.
"""

from __future__ import annotations

import numpy as np
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


@torch.no_grad()
def clip_visemes(reader: LipReader, lower: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """Viseme predicted for every frame of a clip that has a full window around it.
    lower: (T, 3, H, W) lower halves in [-1, 1] -> (T,) viseme ids, -1 near the clip's ends."""
    reader.eval()
    f = reader.cfg.frames
    t = len(lower)
    out = np.full(t, -1, np.int64)
    if t < f:
        return out
    idx = torch.arange(t - f + 1)[:, None] + torch.arange(f)[None]  # (W, F)
    preds = torch.cat([reader(lower[idx[i: i + batch_size]]).argmax(1) for i in range(0, len(idx), batch_size)])
    out[f // 2: f // 2 + len(preds)] = preds.numpy()
    return out
