"""A speed reference: the layout of Wav2Lip's generator (Prajwal et al., ACM MM 2020), written here
from its published description, with random weights. It is never trained or used to make video;
`generate_speed.py` times it beside our generator, in the same process, so that speed can be quoted
as a ratio on the CPU at hand instead of as absolute numbers from one machine.

The layout: every frame is generated on its own from a 96x96 face with 6 channels (the target
frame with its lower half masked + a reference frame of the same face) and an 80 x 16 log-mel
window (0.2 s). A face encoder of stride-2 conv blocks with residual blocks between them takes the
face down to 1x1x512, an audio encoder takes the mel window to 1x1x512, and a decoder of
transposed convs brings the audio embedding back up to 96x96, concatenating the face encoder's
feature map of the same size at every step (U-Net skips); a 1x1 conv + sigmoid gives the RGB frame.
Every conv is followed by batch norm and ReLU. About 36 M parameters.

    python benchmarks/wav2lip_reference.py     # parameter count and frames/s on this CPU
"""

from __future__ import annotations

import time

import torch
from torch import nn

FACE_SIZE = 96
MEL_SHAPE = (80, 16)  # mel bands x mel steps (0.2 s at 80 steps/s)


class ConvBlock(nn.Module):
    """Conv + batch norm + ReLU; ``residual`` adds the block's input before the ReLU (same shape)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride=1, padding=0, residual: bool = False,
                 transpose: bool = False, output_padding: int = 0):
        super().__init__()
        if transpose:
            conv = nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding)
        else:
            conv = nn.Conv2d(cin, cout, kernel, stride, padding)
        self.body = nn.Sequential(conv, nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return torch.relu(y + x if self.residual else y)


def down(cin: int, cout: int, n_res: int, kernel: int = 3, stride=2, padding=1) -> nn.Sequential:
    """One resolution step down: a strided conv, then ``n_res`` residual 3x3 blocks."""
    return nn.Sequential(ConvBlock(cin, cout, kernel, stride, padding),
                         *[ConvBlock(cout, cout, 3, 1, 1, residual=True) for _ in range(n_res)])


def up(cin: int, cout: int, n_res: int, stride: int = 2, padding: int = 1, output_padding: int = 1) -> nn.Sequential:
    """One resolution step up: a transposed conv, then ``n_res`` residual 3x3 blocks."""
    return nn.Sequential(ConvBlock(cin, cout, 3, stride, padding, transpose=True, output_padding=output_padding),
                         *[ConvBlock(cout, cout, 3, 1, 1, residual=True) for _ in range(n_res)])


class Wav2LipGenerator(nn.Module):
    """(B, 6, 96, 96) faces in [0, 1] + (B, 1, 80, 16) mel windows -> (B, 3, 96, 96) frames in (0, 1)."""

    def __init__(self):
        super().__init__()
        self.face_encoder = nn.ModuleList([
            ConvBlock(6, 16, 7, 1, 3),                                      # (B, 16, 96, 96)
            down(16, 32, 2),                                                # (B, 32, 48, 48)
            down(32, 64, 3),                                                # (B, 64, 24, 24)
            down(64, 128, 2),                                               # (B, 128, 12, 12)
            down(128, 256, 2),                                              # (B, 256, 6, 6)
            down(256, 512, 1),                                              # (B, 512, 3, 3)
            nn.Sequential(ConvBlock(512, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0)),  # (B, 512, 1, 1)
        ])
        self.audio_encoder = nn.Sequential(
            down(1, 32, 2, stride=1),                                       # (B, 32, 80, 16)
            down(32, 64, 2, stride=(3, 1)),                                 # (B, 64, 27, 16)
            down(64, 128, 2, stride=3),                                     # (B, 128, 9, 6)
            down(128, 256, 2, stride=(3, 2)),                               # (B, 256, 3, 3)
            ConvBlock(256, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0),     # (B, 512, 1, 1)
        )
        # Each decoder step reads the previous step's output concatenated with the face encoder's
        # map of the same size, hence the input widths (512 + 512, 512 + 256, ...).
        self.decoder = nn.ModuleList([
            ConvBlock(512, 512, 1, 1, 0),                                   # (B, 512, 1, 1)
            up(1024, 512, 1, stride=1, padding=0, output_padding=0),        # (B, 512, 3, 3)
            up(1024, 512, 2),                                               # (B, 512, 6, 6)
            up(768, 384, 2),                                                # (B, 384, 12, 12)
            up(512, 256, 2),                                                # (B, 256, 24, 24)
            up(320, 128, 2),                                                # (B, 128, 48, 48)
            up(160, 64, 2),                                                 # (B, 64, 96, 96)
        ])
        self.out = nn.Sequential(ConvBlock(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1), nn.Sigmoid())  # (B, 3, 96, 96)

    def forward(self, faces: torch.Tensor, mels: torch.Tensor) -> torch.Tensor:
        skips = []
        x = faces
        for block in self.face_encoder:
            x = block(x)
            skips.append(x)
        x = self.audio_encoder(mels)
        for block in self.decoder:
            x = torch.cat([block(x), skips.pop()], 1)  # the deepest skip first
        return self.out(x)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def frames_per_second(batch: int = 50, chunks: int = 10, seed: int = 0) -> float:
    """Frames/s of the random-weight generator in float32 under ``torch.inference_mode``: one
    warm-up batch, then ``chunks`` batches of ``batch`` frames (what generate_speed.py times ours with)."""
    torch.manual_seed(seed)
    model = Wav2LipGenerator().eval()
    faces = torch.rand(batch, 6, FACE_SIZE, FACE_SIZE)
    mels = torch.randn(batch, 1, *MEL_SHAPE)
    with torch.inference_mode():
        model(faces, mels)  # warm-up
        t0 = time.perf_counter()
        for _ in range(chunks):
            model(faces, mels)
        return batch * chunks / (time.perf_counter() - t0)


if __name__ == "__main__":
    print(f"Wav2Lip-architecture generator: {n_parameters(Wav2LipGenerator()) / 1e6:.1f} M parameters, "
          f"{frames_per_second():.1f} frames/s (float32, batches of 50, {torch.get_num_threads()} threads)")
