"""The audio-conditioned recurrent generator (paper idea 1), built so that unseen faces keep
their own appearance.

Per frame: audio encoder(0.35 s log-mel) + identity vector + the reference's lower-face landmarks
-> GRU (state carried across frames and across streaming chunks) -> two heads:
  1. motion: where the lower-face landmarks (lips, jaw, chin, cheeks) move, as offsets from the
     reference's own landmarks. Cheap, supervised by real landmarks, and voice/face independent.
  2. decoder (U-Net over the identity encoder's skips): a dense backward flow (initialised by
     spreading the landmark motion with Gaussian weights, then refined), a blend mask, and an RGB
     residual for what warping cannot make (mouth interior: teeth, tongue, dark cavity).
With ``decoder_input = "motion"`` the decoder reads the landmark offsets instead of the GRU
features: the renderer then draws exactly the motion it is given and hears nothing of the voice.
Output lower face = mask * warp(reference, flow) + (1 - mask) * residual. Only the lower half of the
aligned crop is generated: the upper face is the photo itself, which keeps identity and rules out
flicker there.

Why not the paper's decoder that paints the whole 128 px face: our training data is one GRID
speaker plus a handful of clips of four other people. A painting decoder learns that speaker's mouth
and pastes it on everyone; warping the photo's own pixels carries skin, lips and lighting over to
any face. Sizes (widths 32..256, GRU 256) are picked so a model trains in about an hour on 2 cores.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import GeneratorConfig
from ..face import LIPS, LOWER_FACE
from ..phonemes import SIL
from ..phonetic import N_PHONES
from .audio_encoder import AudioEncoder
from .blocks import ResBlock, conv_block
from .identity_encoder import IdentityEncoder
from .phone_encoder import PhoneEncoder


def cat_conv(block: nn.Sequential, parts: list[torch.Tensor], per_reference: list[bool], b: int, t: int) -> torch.Tensor:
    """``block(cat(parts, 1))`` for a block that starts with a convolution, where the parts flagged
    ``per_reference`` are (B, C, H, W) tensors shared by all T frames of a clip (identity skips,
    the reference photo) and the rest are per frame (B*T, C, H, W). A convolution of a channel
    concatenation is the sum of the convolutions of its parts, so the shared parts are convolved
    once per clip and broadcast over time instead of being copied T times and convolved T times
    (same result; ~20% less decoder work at inference, less at training)."""
    first = block[0]
    conv = first[0] if isinstance(first, nn.Sequential) else first
    rest = list(first[1:] if isinstance(first, nn.Sequential) else []) + list(block[1:])
    sizes = [x.shape[1] for x in parts]
    bounds = torch.tensor([0] + sizes).cumsum(0).tolist()
    idx = {flag: [c for k, f in enumerate(per_reference) if f == flag for c in range(bounds[k], bounds[k + 1])]
           for flag in (False, True)}
    w = conv.weight
    y = F.conv2d(torch.cat([x for x, f in zip(parts, per_reference) if not f], 1), w[:, idx[False]], conv.bias,
                 conv.stride, conv.padding)  # (B*T, C', H', W')
    if idx[True]:
        yr = F.conv2d(torch.cat([x for x, f in zip(parts, per_reference) if f], 1), w[:, idx[True]], None,
                      conv.stride, conv.padding)  # (B, C', H', W')
        y = (y.view(b, t, *y.shape[1:]) + yr[:, None]).flatten(0, 1)
    for m in rest:
        y = m(y)
    return y


# Layers of the "layered" flow, as positions in face.LOWER_FACE (which starts with face.LIPS: outer
# lip from the left corner over the top (0-10) and back along the bottom (11-19), then the inner lip
# the same way (20-30 top, 31-39 bottom)). The four corners belong to both layers.
_CORNERS = [0, 10, 20, 30]
UPPER_LAYER = list(range(0, 11)) + list(range(20, 31))  # upper lip, outer and inner
LOWER_LAYER = [k for k in range(len(LOWER_FACE)) if k not in UPPER_LAYER] + _CORNERS  # lower lip, jaw, chin, cheeks
INNER_TOP, INNER_BOTTOM = list(range(20, 31)), [20] + list(range(31, 40)) + [30]
# Outer and inner lip points paired across the lip body (corners left out: there the pair meets at
# the skin): their midpoints sample the lips' own colour (GeneratorConfig.residual_colour).
LIP_BODY_PAIRS = [(k, 20 + k) for k in range(1, 10)] + [(11 + k, 31 + k) for k in range(9)]
assert LOWER_FACE[: len(LIPS)].tolist() == LIPS.tolist()


def lower_half_grid(h: int, w: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres of an (h, w) grid over the lower half of the crop, in crop units:
    xs (w,) in [0, 1], ys (h, 1) in [0.5, 1]."""
    xs = (torch.arange(w, dtype=dtype) + 0.5) / w
    ys = ((torch.arange(h, dtype=dtype) + 0.5) / h * 0.5 + 0.5)[:, None]
    return xs, ys


class Generator(nn.Module):
    def __init__(self, cfg: GeneratorConfig = GeneratorConfig()):
        super().__init__()
        assert cfg.n_points == len(LOWER_FACE), "n_points must match face.LOWER_FACE"
        self.cfg = cfg
        if cfg.phones not in PHONE_INPUTS:
            raise ValueError(f"generator.phones must be one of {PHONE_INPUTS}, got {cfg.phones!r}")
        if cfg.phones != "only":
            self.audio_encoder = AudioEncoder(cfg.audio)
            if cfg.audio_pretrained:
                self.audio_encoder.requires_grad_(False)
        elif cfg.audio_pretrained:
            raise ValueError("generator.audio_pretrained needs an audio encoder (generator.phones != 'only')")
        if cfg.phones != "none":
            self.phone_encoder = PhoneEncoder(N_PHONES, cfg.phone_dim)
        self.identity_encoder = IdentityEncoder(cfg.identity)
        self.points_in = nn.Sequential(nn.Linear(2 * cfg.n_points, 128), nn.ReLU(inplace=True), nn.Linear(128, 128))
        heard = (cfg.audio.dim if cfg.phones != "only" else 0) + (cfg.phone_dim if cfg.phones != "none" else 0)
        fused = heard + (cfg.identity.dim if cfg.motion_identity else 0) + 128
        if cfg.recurrent:
            self.gru = nn.GRU(fused, cfg.hidden, batch_first=True)
        else:
            self.frame_mlp = nn.Sequential(nn.Linear(fused, cfg.hidden), nn.ReLU(inplace=True), nn.Linear(cfg.hidden, cfg.hidden))
        self.motion_head = nn.Sequential(nn.Linear(cfg.hidden, 256), nn.ReLU(inplace=True), nn.Linear(256, 2 * cfg.n_points))
        nn.init.zeros_(self.motion_head[-1].weight)  # start from "no motion": a still photo
        nn.init.zeros_(self.motion_head[-1].bias)

        c = self.identity_encoder.channels  # [w, 2w, 4w, 8w] at S/2 .. S/16
        s = cfg.crop_size
        self.h0, self.w0 = s // 32, s // 16  # lower half at S/16 resolution
        if cfg.decoder_input not in ("gru", "motion"):
            raise ValueError(f"generator.decoder_input must be 'gru' or 'motion', got {cfg.decoder_input!r}")
        if cfg.decoder_input == "motion":  # the landmark offsets, scaled to about [-1, 1], as the code
            self.motion_code = nn.Sequential(nn.Linear(2 * cfg.n_points, cfg.hidden), nn.ReLU(inplace=True))
        if cfg.flow_init not in ("gaussian", "layered"):
            raise ValueError(f"generator.flow_init must be 'gaussian' or 'layered', got {cfg.flow_init!r}")
        gap_ch = int(cfg.flow_init == "layered")  # + the gap map at the three finest scales
        if cfg.residual_colour not in RESIDUAL_COLOURS:
            raise ValueError(f"generator.residual_colour must be one of {RESIDUAL_COLOURS}, got {cfg.residual_colour!r}")
        if cfg.residual_colour != "free" and cfg.render == "paint":
            raise ValueError(f"generator.residual_colour = {cfg.residual_colour!r} needs render = 'warp': "
                             "a painted face is not all lip")
        if cfg.flow_refine not in ("lower-half", "landmarks"):
            raise ValueError(f"generator.flow_refine must be 'lower-half' or 'landmarks', got {cfg.flow_refine!r}")
        # The residual: RGB, or (grey level, amount of lip hue).
        res_ch = 3 if cfg.residual_colour == "free" else 2
        self.fc = nn.Linear(cfg.hidden, c[3] * self.h0 * self.w0)
        # Each up stage: concat(previous, identity skip of the lower half [, flow0, warped ref, gap]) -> conv.
        self.up3 = nn.Sequential(conv_block(c[3] * 2, c[2]), ResBlock(c[2]))  # at S/16 -> then x2
        self.up2 = nn.Sequential(conv_block(c[2] * 2 + 2, c[1]), ResBlock(c[1]))  # S/8
        # The two finest scales are thin: they only refine what the warp already placed.
        self.up1 = conv_block(c[1] * 2 + 2 + 3 + gap_ch, c[0])  # S/8
        self.up0 = conv_block(c[0] * 2 + 2 + 3 + gap_ch, c[0] // 2)  # S/4
        self.out = nn.Sequential(conv_block(c[0] // 2 + 3 + 3 + gap_ch, c[0] // 2), nn.Conv2d(c[0] // 2, 3 + res_ch, 3, 1, 1))
        nn.init.zeros_(self.out[-1].weight)
        with torch.no_grad():  # start as "copy the warped photo": mask ~ 1
            self.out[-1].bias.zero_()
            self.out[-1].bias[2] = 4.0

    def motion_parameters(self) -> list[nn.Parameter]:
        """The parameters only the audio -> motion half uses (the identity encoder, which the
        renderer uses too, is not among them)."""
        return [p for name in MOTION_MODULES if hasattr(self, name) for p in getattr(self, name).parameters()]

    def load_motion_half(self, other: Generator) -> None:
        """Copies ``other``'s audio -> motion half (weights and batch-norm statistics) into this
        generator; the identity encoder and the renderer stay as they are."""
        self.load_state_dict({k: v for k, v in other.state_dict().items() if k.split(".")[0] in MOTION_MODULES},
                             strict=False)

    # ------------------------------------------------------------------------------------------
    def encode_reference(self, ref: torch.Tensor, ref_points: torch.Tensor) -> dict:
        """What the generator needs from the reference photo, computed once per clip/stream.

        ref: (B, 3, S, S) in [-1, 1]; ref_points: (B, K, 2) lower-face landmarks in [0, 1] crop units.
        """
        skips, idv = self.identity_encoder(ref)
        half = [sk[:, :, sk.shape[2] // 2:] for sk in skips]  # lower half of every skip
        pts = self.points_in((ref_points - 0.5).flatten(1))
        return {"ref": ref, "ref_points": ref_points, "skips": half, "id": idv, "points_feat": pts,
                "lip_colour": self.lip_colour(ref, ref_points)}

    @staticmethod
    def lip_colour(ref: torch.Tensor, ref_points: torch.Tensor) -> torch.Tensor:
        """The reference's mean lip colour: (B, 3) in [-1, 1]. Its grey is the mean over the three
        channels, its hue what is left (zero for a grey photo).
        ref: (B, 3, S, S) in [-1, 1]; ref_points: (B, K, 2) in crop units."""
        outer, inner = zip(*LIP_BODY_PAIRS)
        body = (ref_points[:, list(outer)] + ref_points[:, list(inner)]) / 2  # (B, 18, 2)
        colour = F.grid_sample(ref, body[:, None] * 2 - 1, mode="bilinear", align_corners=False)  # (B, 3, 1, 18)
        return colour.mean((2, 3))

    def encode_motion_reference(self, ref: torch.Tensor, ref_points: torch.Tensor) -> dict:
        """What ``motion`` alone needs: without ``motion_identity`` the identity encoder (the
        costly part at large batch) is skipped."""
        if self.cfg.motion_identity:
            return self.encode_reference(ref, ref_points)
        return {"ref_points": ref_points, "points_feat": self.points_in((ref_points - 0.5).flatten(1))}

    def forward(self, mel: torch.Tensor, ref: torch.Tensor | dict, ref_points: torch.Tensor | None = None,
                state: torch.Tensor | None = None, crops: bool = True, offsets: torch.Tensor | None = None,
                use_offsets: torch.Tensor | None = None, articulation: float = 1.0,
                rest: torch.Tensor | None = None) -> dict:
        """mel: (B, T, n_mels, steps) per-frame audio windows; ref: (B, 3, S, S) or an encoded
        reference; ref_points: (B, K, 2). Returns frames (B, T, 3, S, S), lower (B, T, 3, S/2, S),
        points (B, T, K, 2), flow, mask, residual and the recurrent state for the next chunk.
        ``crops=False`` leaves out frames and lower (the photo pipeline pastes flow, mask and
        residual into the full-resolution photo itself). ``offsets`` (B, T, K, 2): draw this
        landmark motion instead of the motion head's (baselines that move the lips by a rule; the
        real motion when training the renderer), for the windows where ``use_offsets`` (B,) is True
        (default: all). ``points`` is the motion drawn, ``predicted_points`` the motion head's.
        ``articulation`` scales the motion head's offsets from the reference shape before drawing
        (1 = as predicted): on voices unlike the training speaker's the head's motion is damped
        (~0.6 of the real swing on the unseen speakers), and this is the user's say in it. Given
        ``offsets`` are drawn as they are. ``rest`` (B, K, 2): offsets to take off the motion head's
        before scaling them, so that this motion is drawn as no motion (``rest_offsets``: keep the
        photo's own expression)."""
        enc = ref if isinstance(ref, dict) else self.encode_reference(ref, ref_points)
        b, t = mel.shape[:2]
        m = self.motion(mel, enc, state)
        predicted = m["points"]
        if articulation != 1.0 or rest is not None:
            lim = self.cfg.max_point_offset  # the range the renderer was trained to draw
            off = m["offsets"] if rest is None else m["offsets"] - rest[:, None]
            m["offsets"] = (off * articulation).clamp(-lim, lim)
            m["points"] = enc["ref_points"][:, None] + m["offsets"]
        if offsets is not None:
            if use_offsets is not None:
                offsets = torch.where(use_offsets.view(b, 1, 1, 1), offsets, m["offsets"])
            m["offsets"], m["points"] = offsets, enc["ref_points"][:, None] + offsets
        out = self._render(m["h"].flatten(0, 1), enc, m["points"].flatten(0, 1), m["offsets"].flatten(0, 1), b, t, crops)
        out["points"] = m["points"]
        out["predicted_points"] = predicted
        out["state"] = m["state"]
        return out

    def motion(self, mel: torch.Tensor, enc: dict, state: torch.Tensor | None = None) -> dict:
        """The audio -> motion half alone (no rendering): GRU features h (B, T, H), landmark
        offsets and points (B, T, K, 2), and the recurrent state. Cheap enough to pre-train with
        large batches before the renderer joins in."""
        b, t = mel.shape[:2]
        a = self.hear(mel.flatten(0, 1)).view(b, t, -1)  # (B, T, Da [+ Dp])
        cond = torch.cat([enc["id"], enc["points_feat"]], 1) if self.cfg.motion_identity else enc["points_feat"]
        cond = cond[:, None].expand(b, t, -1)
        x = torch.cat([a, cond], 2)  # (B, T, Da + Di + 128)
        if self.cfg.recurrent:
            h, state = self.gru(x, state)  # (B, T, H), (1, B, H)
        else:
            h = self.frame_mlp(x)
        off = torch.tanh(self.motion_head(h)).view(b, t, -1, 2) * self.cfg.max_point_offset
        return {"h": h, "offsets": off, "points": enc["ref_points"][:, None] + off, "state": state}

    def train(self, mode: bool = True) -> "Generator":
        super().train(mode)
        if self.cfg.audio_pretrained:  # a pretrained phone classifier's encoder keeps its batch-norm statistics
            self.audio_encoder.eval()
        return self

    def hear(self, windows: torch.Tensor) -> torch.Tensor:
        """Audio windows (N, n_mels [+ N_PHONES], steps) -> what the motion half hears (N, D):
        the audio encoder's features of the mel rows, the phone encoder's of the phone rows, or
        both side by side (``generator.phones``). Windows without phone rows (a model without
        phones, or a corpus prepared before them) are read as mel alone."""
        n_mels = self.cfg.audio.n_mels
        parts = []
        if self.cfg.phones != "only":
            parts.append(self.audio_encoder(windows[:, :n_mels]))
        if self.cfg.phones != "none":
            if windows.shape[1] != n_mels + N_PHONES:
                raise ValueError(f"this generator reads phones (generator.phones = {self.cfg.phones!r}): audio windows "
                                 f"need {n_mels} mel + {N_PHONES} phone rows, got {windows.shape[1]}")
            parts.append(self.phone_encoder(windows[:, n_mels:]))
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]

    def rest_offsets(self, enc: dict, silence: torch.Tensor, frames: int = 8) -> torch.Tensor:
        """The motion the head predicts for this reference during silence: (B, K, 2).

        silence: (B, n_mels, steps) one audio window of silence (``audio.silence_window``), fed for
        ``frames`` frames: after 8 the GRU has settled to within 0.001 crop units (0.1 px) of a
        32-frame run (v1, shipped then, and v5b, on a portrait). Trained on one speaker filmed with
        a closed, neutral mouth, the head moves any face toward that rest shape when nobody speaks,
        and a smiling portrait's smile closes. Passed as ``forward(rest=...)``, the photo's
        expression becomes the rest instead."""
        if self.cfg.phones != "none" and silence.shape[1] > self.cfg.audio.n_mels:
            silence = silence.clone()  # the phone rows say "silence", not the rows' minimum (zeros)
            silence[:, self.cfg.audio.n_mels:] = 0.0
            silence[:, self.cfg.audio.n_mels + SIL] = 1.0
        mel = silence[:, None].expand(-1, frames, -1, -1)  # (B, F, n_mels, steps)
        return self.motion(mel, enc)["offsets"][:, -1]

    # ------------------------------------------------------------------------------------------
    def _initial_flow(self, points: torch.Tensor, off: torch.Tensor, hw: tuple[int, int],
                      layer: list[int] | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Backward flow on the lower-half grid from landmark motion: each output pixel samples the
        reference at (itself - motion of nearby landmarks), Gaussian-weighted; far from every
        landmark the flow fades to zero. points/off: (N, K, 2) in crop units; ``layer``: only these
        landmarks; ``weights``: ``_landmark_weights(points, hw)`` if already computed (all K
        landmarks). -> (N, 2, h, w)."""
        g = self._landmark_weights(points, hw) if weights is None else weights  # (N, HW, K)
        if layer is not None:
            g, off = g[..., layer], off[:, layer]
        flow = -(g @ off) / (g.sum(-1, keepdim=True) + 0.05)  # (N, HW, 2); 0.05 = weight of "no motion"
        return flow.transpose(1, 2).reshape(-1, 2, *hw)

    def _landmark_weights(self, points: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """exp(-d^2 / 2 sigma^2) from every pixel of the (h, w) lower-half grid to every landmark,
        sigma = flow_sigma: (N, K, 2) -> (N, h*w, K). The generator's costliest non-convolution
        step, so one forward computes it once, on the coarse grid, for every use."""
        return torch.exp(-self._landmark_d2(points, hw) / (2 * self.cfg.flow_sigma**2))

    @staticmethod
    def _landmark_d2(points: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Squared distance (crop units) from every pixel of an (h, w) lower-half grid to every
        landmark: points (N, K, 2) -> (N, h*w, K)."""
        xs, ys = lower_half_grid(*hw, points.dtype)
        grid = torch.stack(torch.meshgrid(xs, ys[:, 0], indexing="xy"), -1).reshape(1, -1, 1, 2)  # (1, HW, 1, 2)
        return ((grid - points[:, None]) ** 2).sum(-1)

    def _layered_flow(self, points: torch.Tensor, off: torch.Tensor,
                      weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The "layered" initial flow (GeneratorConfig.flow_init) and the gap map on the full
        lower-half grid: flow (N, 2, S/2, S) in crop units, gap (N, 1, S/2, S) in [0, 1], 1 where
        the lips have parted wider than in the reference and the photo has nothing to show.

        Each layer's flow is smooth, so it is spread on the coarse grid and upsampled; only the
        choice of layer per pixel is made at full resolution, which keeps the lip edges sharp."""
        s = self.cfg.crop_size
        coarse, full = (s // 8, s // 4), (s // 2, s)

        def up(x):
            return F.interpolate(x, size=full, mode="bilinear", align_corners=False)

        weights = self._landmark_weights(points, coarse) if weights is None else weights  # (N, HW, K)
        f_all, f_up, f_low = (up(self._initial_flow(points, off, coarse, layer, weights))
                              for layer in (None, UPPER_LAYER, LOWER_LAYER))  # (N, 2, S/2, S) each
        ref = points - off  # the reference's own landmarks
        xs, ys = lower_half_grid(*full, points.dtype)  # (S,), (S/2, 1)

        def along_x(pts):  # (N, k, 2) -> y of the curve through them at every column (N, S), kernel regression in x
            wx = torch.exp(-((xs[None, :, None] - pts[:, None, :, 0]) ** 2) / (2 * 0.015**2)) + 1e-8  # (N, S, k)
            return (wx * pts[:, None, :, 1]).sum(-1) / wx.sum(-1)

        # The reference's lip midline: where its upper and lower teeth (or closed lips) meet.
        mid = 0.5 * (along_x(ref[:, INNER_TOP]) + along_x(ref[:, INNER_BOTTOM]))[:, None, None]  # (N, 1, 1, S)
        corners = ref[:, [INNER_TOP[0], INNER_TOP[-1]], 0]  # (N, 2); a flipped training sample swaps them
        left, right = corners.min(1).values, corners.max(1).values  # (N,)
        soft = 0.004  # ~0.5 px: edges are anti-aliased, not stepped
        span = (torch.sigmoid((xs - left[:, None]) / soft) * torch.sigmoid((right[:, None] - xs) / soft))[:, None, None]
        # How far inside its own layer each layer's source pixel lies (backward flow: source = pixel + flow).
        d_up = mid - (ys + f_up[:, 1:2])  # > 0: the upper layer reaches this pixel
        d_low = (ys + f_low[:, 1:2]) - mid  # > 0: the lower layer reaches it
        w_up = torch.sigmoid((d_up - d_low) / soft)  # where both reach (lips pressing), the deeper one wins
        layered = w_up * f_up + (1 - w_up) * f_low
        flow = span * layered + (1 - span) * f_all  # beside the mouth: one smooth field, no tear in the cheeks
        gap = span * (torch.minimum(-d_up, -d_low) / soft).clamp(0, 1)  # (N, 1, S/2, S)
        return flow, gap

    def _landmark_reach(self, points: torch.Tensor, hw: tuple[int, int],
                        weights: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 1, h, w) on the lower-half grid: exp(-d^2 / 2 sigma^2), d the distance to the nearest
        landmark (crop units), sigma = flow_sigma: 1 on a landmark, ~0.14 two sigmas away.
        ``weights``: ``_landmark_weights(points, hw)`` if already computed (its max over landmarks
        is this: exp falls as d grows)."""
        g = self._landmark_weights(points, hw) if weights is None else weights  # (N, HW, K)
        return g.amax(-1).view(-1, 1, *hw)

    def _mouth_region(self, points: torch.Tensor, hw: tuple[int, int], margin: float = 0.03) -> torch.Tensor:
        """(N, 1, h, w) on the lower-half grid: 1 inside an ellipse around the (moved) lips grown by
        ``margin`` crop units, fading to 0 over another margin."""
        h, w = hw
        lips = points[:, : len(LIPS)]  # (N, 40, 2)
        lo, hi = lips.min(1).values, lips.max(1).values  # (N, 2)
        centre, half = (lo + hi) / 2, (hi - lo) / 2 + margin
        xs, ys = lower_half_grid(h, w, points.dtype)
        r = (((xs - centre[:, None, None, 0]) / half[:, None, None, 0]) ** 2
             + ((ys - centre[:, None, None, 1]) / half[:, None, None, 1]) ** 2).sqrt()  # (N, h, w)
        fade = margin / half.min(1).values[:, None, None]  # the outer margin, in ellipse radii
        return ((1 + fade - r) / fade).clamp(0, 1)[:, None]

    def _render(self, h: torch.Tensor, enc: dict, points: torch.Tensor, off: torch.Tensor, b: int, t: int,
                crops: bool = True) -> dict:
        n = h.shape[0]
        s = self.cfg.crop_size
        rep = lambda x: x[:, None].expand(b, t, *x.shape[1:]).reshape(n, *x.shape[1:])  # noqa: E731
        ref = enc["ref"]
        ref_low = ref[:, :, s // 2:]  # (B, 3, S/2, S)
        sk = enc["skips"]  # lower halves: (B, w, S/4, S/2) ... (B, 8w, S/32, S/16)
        layered = self.cfg.flow_init == "layered"
        coarse = (s // 8, s // 4)  # the spread motion is smooth: computed on a 4x coarser grid (4 px cells)
        weights = self._landmark_weights(points, coarse)  # (N, HW, K), for the flow and the reach
        if layered:
            flow_full, gap = self._layered_flow(points, off, weights)  # (N, 2, S/2, S), (N, 1, S/2, S)
        else:
            flow_full = F.interpolate(self._initial_flow(points, off, coarse, weights=weights), size=(s // 2, s),
                                      mode="bilinear", align_corners=False)  # (N, 2, S/2, S), crop units

        def at(x, size):  # resize to a decoder scale
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

        def gaps(size):  # the gap map as an extra decoder input, where there is one
            return [at(gap, size)] if layered else []

        def warp(img, flow):  # img (N, 3, h, w), flow in crop units (x, y)
            hh, ww = img.shape[2:]
            base = torch.stack(torch.meshgrid(torch.linspace(-1, 1, ww), torch.linspace(-1, 1, hh), indexing="xy"), -1)
            # crop units -> grid_sample units: x spans 1 crop width = 2; y spans half a crop = 2
            scale = torch.tensor([2.0, 4.0], dtype=flow.dtype)
            g = base[None] + flow.permute(0, 2, 3, 1) * scale
            return F.grid_sample(img, g, mode="bilinear", padding_mode="border", align_corners=True)

        if self.cfg.decoder_input == "motion":
            h = self.motion_code(off.flatten(1) / self.cfg.max_point_offset)  # (N, H)
        x = self.fc(h).view(n, -1, self.h0, self.w0)  # (N, 8w, S/32, S/16)
        x = cat_conv(self.up3, [x, sk[3]], [False, True], b, t)
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # S/16
        size = x.shape[2:]
        x = cat_conv(self.up2, [x, sk[2], at(flow_full, size)], [False, True, False], b, t)
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # S/8
        size = x.shape[2:]
        f = at(flow_full, size)
        gi = gaps(size)
        x = cat_conv(self.up1, [x, sk[1], f, warp(rep(at(ref_low, size)), f), *gi], [False, True, False, False] + [False] * len(gi), b, t)
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # S/4
        size = x.shape[2:]
        f = at(flow_full, size)
        gi = gaps(size)
        x = cat_conv(self.up0, [x, sk[0], f, warp(rep(at(ref_low, size)), f), *gi], [False, True, False, False] + [False] * len(gi), b, t)
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # S/2 x S: the full lower half
        ref_rep = rep(ref_low)
        warped0 = warp(ref_rep, flow_full)
        gi = [gap] if layered else []
        o = cat_conv(self.out, [x, ref_low, warped0, *gi], [False, True, False] + [False] * len(gi), b, t)  # (N, 6, S/2, S)
        refine = 0.05 * torch.tanh(o[:, 0:2])
        if self.cfg.flow_refine == "landmarks":  # smooth: computed on the coarse grid
            refine = refine * at(self._landmark_reach(points, coarse, weights), (s // 2, s))
        flow = flow_full + refine
        mask = torch.sigmoid(o[:, 2:3])
        if layered:  # where the lips parted the photo has no pixels to warp: the residual paints there
            # and nowhere far from the mouth: elsewhere the warped photo has every pixel needed, and a
            # decoder trained on one face otherwise pastes stray colour on unusual photos.
            mask = 1 - (1 - mask * (1 - gap)) * self._mouth_region(points, (s // 2, s))
        if self.cfg.residual_colour == "free":
            rgb = torch.tanh(o[:, 3:6])
        else:  # grey level + up to twice the lips' own hue (a mouth's cavity is deeper red than its lips)
            lips = rep(enc["lip_colour"])[:, :, None, None]  # (N, 3, 1, 1)
            grey = lips.mean(1, keepdim=True)
            level = torch.tanh(o[:, 3:4]) + (grey if self.cfg.residual_colour == "lips-relative" else 0)
            rgb = (level + 2 * torch.sigmoid(o[:, 4:5]) * (lips - grey)).clamp(-1, 1)
        v = lambda x: x.view(b, t, *x.shape[1:])  # noqa: E731
        paint = self.cfg.render == "paint"
        if paint:
            flow, mask = torch.zeros_like(flow), torch.zeros_like(mask)
        if not crops:
            return {"flow": v(flow), "mask": v(mask), "residual": v(rgb)}
        warped = warp(ref_rep, flow)  # (N, 3, S/2, S)
        lower = rgb if paint else mask * warped + (1 - mask) * rgb  # (N, 3, S/2, S)
        # Blend the first rows into the photo so no seam can appear at the half-way line.
        fr = self.cfg.feather_rows
        ramp = torch.ones(1, 1, s // 2, 1)
        ramp[:, :, :fr, 0] = torch.linspace(0, 1, fr + 2)[1:-1]
        lower = ramp * lower + (1 - ramp) * ref_rep
        frames = torch.cat([rep(ref[:, :, : s // 2]), lower], 2)  # (N, 3, S, S)
        # d lower / d residual and d lower / d mask: let a loss see the same frames without pulling
        # on the paint or the blend mask (training.losses.critic_input).
        residual_weight = ramp * (1 - mask)  # (N, 1, S/2, S)
        mask_weight = ramp * (warped - rgb)  # (N, 3, S/2, S)
        return {"frames": v(frames), "lower": v(lower), "flow": v(flow), "mask": v(mask), "residual": v(rgb),
                "residual_weight": v(residual_weight), "mask_weight": v(mask_weight)}


RESIDUAL_COLOURS = ("free", "lips", "lips-relative")  # GeneratorConfig.residual_colour
PHONE_INPUTS = ("none", "with-mel", "only")  # GeneratorConfig.phones
MOTION_MODULES = ("audio_encoder", "phone_encoder", "points_in", "gru", "frame_mlp", "motion_head")  # Generator.motion_parameters


def combine_motion_and_renderer(motion: Generator, renderer: Generator) -> Generator:
    """A generator with ``motion``'s audio -> motion half and ``renderer``'s identity encoder and
    decoder. Only sound where the renderer draws the landmark motion alone
    (``decoder_input = "motion"``: it never reads the motion half's features), so a motion half
    trained on its own (the trainer's stage 0) can be paired with an existing renderer without
    training the renderer again. The two configs must be the same but for what only the motion
    half reads (``MOTION_ONLY_FIELDS``: e.g. a motion half that hears phones over a renderer trained
    under one that did not); the result has ``motion``'s config."""
    if renderer.cfg.decoder_input != "motion":
        raise ValueError("the renderer reads the GRU features (decoder_input = 'gru'): retrain it instead")
    keep = {f: getattr(motion.cfg, f) for f in MOTION_ONLY_FIELDS}
    if dataclasses.replace(renderer.cfg, **keep) != motion.cfg:
        raise ValueError("the two generators' configs differ beyond the motion half's "
                         f"({', '.join(MOTION_ONLY_FIELDS)})")
    out = Generator(motion.cfg)
    out.load_state_dict({k: v for k, v in renderer.state_dict().items() if k.split(".")[0] not in MOTION_MODULES},
                        strict=False)
    out.load_motion_half(motion)
    return out.eval()


MOTION_ONLY_FIELDS = ("audio", "phones", "phone_dim", "audio_pretrained")  # GeneratorConfig fields the renderer never reads
