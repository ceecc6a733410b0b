"""Phone classifier: the audio encoder trained on many voices to say which phones a 0.35 s log-mel
window holds, so that its features name the sounds and not the speaker.

The generator's audio encoder learns from the training corpus, whose speech is one voice (GRID s1):
its features fit that voice, and lips follow other voices loosely (issue 28). Trained here to
recognise phones in 261 LibriSpeech voices (and the corpus's own clips), with the phonetic front
end's labels (``phonetic.recognise``: the same front end ``generate`` uses), the same encoder sees
every voice through what the voice says. The generator then starts from these weights and keeps
them (``GeneratorConfig.audio_pretrained``).

The head reads the phone at the window's centre and at +-40 and +-80 ms (``OFFSETS``, in 10 ms mel
steps): the lips move ahead of and after a sound (coarticulation), and a feature that knows the
neighbours is what the motion half needs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import AudioEncoderConfig
from ..phonetic import N_PHONES
from .audio_encoder import AudioEncoder

OFFSETS = (-8, -4, 0, 4, 8)  # mel steps from the window's centre


class PhoneClassifier(nn.Module):
    def __init__(self, cfg: AudioEncoderConfig = AudioEncoderConfig()):
        super().__init__()
        self.cfg = cfg
        self.encoder = AudioEncoder(cfg)
        self.head = nn.Linear(cfg.dim, len(OFFSETS) * N_PHONES)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (N, n_mels, steps) -> phone logits (N, len(OFFSETS), N_PHONES)."""
        return self.head(torch.relu(self.encoder(mel))).view(len(mel), len(OFFSETS), N_PHONES)
