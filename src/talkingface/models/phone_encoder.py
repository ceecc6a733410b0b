"""Phone encoder: the phone track's window around a video frame -> one feature vector.

Input is the same 0.35 s window the audio encoder reads (35 steps at 100 Hz), as one-hot rows of
the 40 phones (``phonetic.one_hot``; an all-zero column = no phonetic information). 1-D
convolutions over time see each phone with its neighbours (coarticulation: the lips start moving
for a /p/ or an /uw/ before it sounds); the output keeps where in the window each phone lies, since
the phone AT the frame matters most.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class PhoneEncoder(nn.Module):
    def __init__(self, n_phones: int = 40, dim: int = 128, steps: int = 35, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(n_phones, width, 5, 1, 2), nn.ReLU(inplace=True),  # (N, w, 35)
            nn.Conv1d(width, width, 5, 2, 2), nn.ReLU(inplace=True),  # (N, w, 18)
            nn.Conv1d(width, width, 5, 2, 2), nn.ReLU(inplace=True),  # (N, w, 9)
        )
        self.fc = nn.Linear(width * ((steps + 3) // 4), dim)

    def forward(self, phones: torch.Tensor) -> torch.Tensor:
        """phones: (N, n_phones, steps) -> (N, dim)."""
        return self.fc(self.net(phones).flatten(1))
