"""SyncNet-style audio-visual sync expert: do 5 frames of a lower face and the audio around them
belong together? Trained alone, contrastively (negatives = the same clip's audio shifted in time,
and other clips' audio), then frozen: as the generator's lip-sync critic, and (a separately trained
instance, other seed and data) as the evaluation model behind LSE-D / LSE-C.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import AudioEncoderConfig, SyncExpertConfig
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


class SyncExpert(nn.Module):
    def __init__(self, cfg: SyncExpertConfig = SyncExpertConfig()):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.video = mouth_trunk(cfg.frames, w)
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

    def embed_video(self, lower: torch.Tensor) -> torch.Tensor:
        """lower: (N, F, 3, H, W) -> unit vectors (N, dim)."""
        return F.normalize(self.video_fc(self.video(self.to_gray(lower)).flatten(1)), dim=1)

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (N, n_mels, steps) window centred on the middle frame -> unit vectors (N, dim)."""
        return F.normalize(self.audio(mel), dim=1)

    def logits(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Sync logit for paired embeddings (N, dim), (N, dim) -> (N,)."""
        return self.logit_scale * (v * a).sum(1) + self.logit_bias

    def forward(self, lower: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        return self.logits(self.embed_video(lower), self.embed_audio(mel))
