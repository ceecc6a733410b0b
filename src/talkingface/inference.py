"""Inference core: from one aligned reference crop and per-frame audio windows to generated crops,
streamed in chunks with the generator's recurrent state carried across them (memory stays flat
with audio length). Pasting back into the full photo lives in ``compose.py``."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .audio import silence_window
from .config import GeneratorConfig
from .models.generator import Generator


def load_generator(path, device: str = "cpu") -> tuple[Generator, GeneratorConfig, dict]:
    from .training.checkpoint import load_model

    return load_model(path, "generator", Generator, GeneratorConfig, device)


PRECISIONS = ("auto", "fp32", "bf16")


def compute_dtype(precision: str = "auto", device: str = "cpu") -> torch.dtype | None:
    """The autocast dtype for generation, or None for plain float32.

    "auto" picks bfloat16 on a CPU with bf16 matrix units (Intel AMX): there the generator runs
    ~1.7x faster and its outputs move by < 0.05 px of flow and < 3/255 of residual (measured,
    README "Speed and memory"). Elsewhere bf16 is emulated and slower, so "auto" is float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "fp32" or not str(device).startswith("cpu"):
        return None  # GPUs: float32 until someone measures there
    if precision == "bf16":
        return torch.bfloat16
    try:
        return torch.bfloat16 if torch.cpu._is_amx_tile_supported() else None
    except AttributeError:  # a torch without the probe: play safe
        return None


def crop_to_tensor(crop: np.ndarray) -> torch.Tensor:
    """(S, S, 3) uint8 -> (1, 3, S, S) float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def tensor_to_crops(x: torch.Tensor) -> np.ndarray:
    """(N, 3, S, S) in [-1, 1] -> (N, S, S, 3) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate_crops(model: Generator, ref_crop: np.ndarray, ref_points: np.ndarray, mel: torch.Tensor,
                   chunk: int = 50, device: str = "cpu", offsets: np.ndarray | None = None,
                   articulation: float = 1.0, keep_expression: bool = False,
                   silence: torch.Tensor | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (crop (S, S, 3) uint8, lower-face points (K, 2) in crop units) per frame.

    ref_points: (K, 2) lower-face landmarks of the reference in [0, 1] crop units; mel: (T, n_mels, steps);
    offsets: (T, K, 2) landmark motion to draw instead of the model's own; articulation: scale of
    the model's own motion (both: ``Generator.forward``); keep_expression: the reference's mouth is
    the rest (``Generator.rest_offsets``), with silence taken from these windows, or ``silence``
    (n_mels, steps) where given (a live session's, which knows no future).
    """
    model.eval()
    enc = model.encode_reference(crop_to_tensor(ref_crop).to(device),
                                 torch.as_tensor(ref_points, dtype=torch.float32)[None].to(device))
    silence = silence_window(mel.float()) if silence is None else silence
    rest = model.rest_offsets(enc, silence[None].to(device)) if keep_expression else None
    state = None
    for s in range(0, len(mel), chunk):
        m = mel[s: s + chunk].float()[None].to(device)  # (1, t, n_mels, steps)
        off = None if offsets is None else torch.as_tensor(offsets[s: s + chunk], dtype=torch.float32)[None].to(device)
        out = model(m, enc, state=state, offsets=off, articulation=articulation, rest=rest)
        state = out["state"]
        crops = tensor_to_crops(out["frames"][0])
        pts = out["points"][0].cpu().numpy()
        yield from zip(crops, pts)
