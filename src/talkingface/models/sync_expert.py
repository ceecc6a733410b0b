"""SyncNet-style audio-visual sync expert: do 5 frames of a lower face and the audio around them
belong together? Trained alone, contrastively (negatives = the same clip's audio shifted in time,
and other clips' audio), then frozen: as the generator's lip-sync critic, and (a separately trained
instance, other seed and data) as the evaluation model behind LSE-D / LSE-C.

The video side reads grey lower-face crops (``visual = "crops"``) or the mouth's landmark motion
(``visual = "landmarks"``, evaluation only: an identity-independent second measure, since a pixel
expert trained on one speaker learns that speaker's mouth). The audio side, the loss and every
caller are the same for both.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import AudioEncoderConfig, SyncExpertConfig
from ..face import SYNC_POINTS
from .audio_encoder import AudioEncoder
from .blocks import ResBlock, conv_block


def mouth_trunk(frames: int, w: int) -> nn.Sequential:
    """Conv trunk over F grey lower-face frames stacked as channels, (N, F, 64, 128) -> (N, 8w, 1, 1).
    Grayscale mouths: lip shape is what matters, and colour would let a model key on identity.
    Shared by the sync expert and the lip reader."""
    return nn.Sequential(
        conv_block(frames, w, 2, k=5),  # (N, w, 32, 64): lip shapes survive 2x downsampling
        conv_block(w, 2 * w, 1),  # (N, 2w, 32, 64)
        ResBlock(2 * w),
        conv_block(2 * w, 4 * w, 2),  # (N, 4w, 16, 32)
        ResBlock(4 * w),
        conv_block(4 * w, 8 * w, 2),  # (N, 8w, 8, 16)
        conv_block(8 * w, 8 * w, 2),  # (N, 8w, 4, 8)
        nn.AdaptiveAvgPool2d(1),
    )


def landmark_trunk(frames: int, points: int, w: int) -> nn.Sequential:
    """MLP over F frames of K mouth points' motion (``face.mouth_motion``), (N, F, K, 2) -> (N, 8w).
    Five frames of a few dozen points need no convolution; batch norm sets the scale of the motion
    (inter-ocular units, ~0.02)."""
    return nn.Sequential(
        nn.Flatten(1),  # (N, F*K*2)
        nn.Linear(frames * points * 2, 8 * w),
        nn.BatchNorm1d(8 * w),
        nn.ReLU(inplace=True),
        nn.Linear(8 * w, 8 * w),  # (N, 8w)
        nn.BatchNorm1d(8 * w),
        nn.ReLU(inplace=True),
    )


class SyncExpert(nn.Module):
    def __init__(self, cfg: SyncExpertConfig = SyncExpertConfig()):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        if cfg.visual == "crops":
            self.video = mouth_trunk(cfg.frames, w)
        elif cfg.visual == "landmarks":
            self.video = landmark_trunk(cfg.frames, len(SYNC_POINTS), w)
        else:
            raise ValueError(f"sync.visual must be 'crops' or 'landmarks', got {cfg.visual!r}")
        self.video_fc = nn.Linear(8 * w, cfg.dim)
        self.audio = AudioEncoder(AudioEncoderConfig(cfg.audio.n_mels, cfg.dim, cfg.audio.width))
        self.logit_scale = nn.Parameter(torch.tensor(10.0))
        self.logit_bias = nn.Parameter(torch.tensor(-5.0))

    @staticmethod
    def to_gray(lower: torch.Tensor) -> torch.Tensor:
        """(N, F, 3, H, W) in [-1, 1] -> (N, F, H, W), each clip of frames mean/contrast-normalised
        so lighting and skin tone do not matter."""
        g = (0.299 * lower[:, :, 0] + 0.587 * lower[:, :, 1] + 0.114 * lower[:, :, 2])
        mu = g.mean((1, 2, 3), keepdim=True)
        sd = g.std((1, 2, 3), keepdim=True)
        return (g - mu) / (sd + 1e-3)

    def embed_video(self, video: torch.Tensor) -> torch.Tensor:
        """video: lower-face crops (N, F, 3, H, W) in [-1, 1], or with ``visual = "landmarks"`` mouth
        motion (N, F, K, 2) (``face.mouth_motion``) -> unit vectors (N, dim)."""
        x = self.to_gray(video) if self.cfg.visual == "crops" else video
        return F.normalize(self.video_fc(self.video(x).flatten(1)), dim=1)

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (N, n_mels, steps) window centred on the middle frame -> unit vectors (N, dim)."""
        return F.normalize(self.audio(mel), dim=1)

    def logits(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Sync logit for paired embeddings (N, dim), (N, dim) -> (N,)."""
        return self.logit_scale * (v * a).sum(1) + self.logit_bias

    def forward(self, video: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        return self.logits(self.embed_video(video), self.embed_audio(mel))
