"""Loss terms: pure functions of tensors (and, for sync, a frozen expert)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator: real -> 1, fake -> 0 (binary cross-entropy on logits)."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def g_adv_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator: the non-saturating form, -log D(G(z))."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def sync_windows(lower: torch.Tensor, mel: torch.Tensor, frames: int = 5, stride: int = 1):
    """Cut 5-frame windows out of sequences for the sync expert.

    lower: (B, T, 3, H, W); mel: (B, T, n_mels, steps) -> (N, frames, 3, H, W), (N, n_mels, steps) with the
    audio window of each video window's middle frame."""
    t = lower.shape[1]
    starts = range(0, t - frames + 1, stride)
    v = torch.stack([lower[:, s: s + frames] for s in starts], 1).flatten(0, 1)
    a = torch.stack([mel[:, s + frames // 2] for s in starts], 1).flatten(0, 1)
    return v, a


def critic_input(out: dict, paint: bool = True, mask: bool = True) -> torch.Tensor:
    """The generator's rendered lower faces ``out["lower"]`` (B, T, 3, H, W), same values, with the
    gradient into the residual's paint (``paint=False``) and/or the blend mask (``mask=False``)
    taken out. lower = ramp * (mask * warped + (1 - mask) * residual) + (1 - ramp) * photo is linear
    in each with weight ``out["residual_weight"]`` and ``out["mask_weight"]``; subtracting
    weight * (x - x.detach()) (zero in value) removes that path and keeps the others. The weights
    stay attached: with only the paint removed the mask still learns where to paint."""
    lower = out["lower"]
    if not paint:
        res = out["residual"]  # (B, T, 3, H, W)
        lower = lower - out["residual_weight"] * (res - res.detach())
    if not mask:
        m = out["mask"]  # (B, T, 1, H, W)
        lower = lower - out["mask_weight"] * (m - m.detach())
    return lower


def sync_loss(expert, lower: torch.Tensor, mel: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """-log P(in sync) of generated lower faces with their own audio, under a frozen expert."""
    v, a = sync_windows(lower, mel, expert.cfg.frames, stride)
    logit = expert(v, a)
    return F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))


def lipread_windows(lower: torch.Tensor, visemes: torch.Tensor, frames: int = 5, stride: int = 1):
    """The windows of lower faces (B, T, 3, H, W) whose middle frame has a known viseme (visemes
    (B, T), -1 = unknown), and that viseme: (N, frames, 3, H, W), (N,)."""
    # sync_windows pairs each video window with its middle frame's entry of any (B, T, ...) tensor.
    v, target = sync_windows(lower, visemes, frames, stride)
    known = target >= 0
    return v[known], target[known]


def lipread_loss(reader, lower: torch.Tensor, visemes: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Cross-entropy of the viseme a frozen lip reader reads off each window of generated lower
    faces (B, T, 3, H, W) against the true viseme of the window's middle frame, visemes (B, T)
    (-1 = unknown: left out; zero loss, still attached, when no window has a known one)."""
    v, target = lipread_windows(lower, visemes, reader.cfg.frames, stride)
    if not len(target):
        return lower.sum() * 0
    return F.cross_entropy(reader(v), target)


def sync_critic_loss(expert, real: torch.Tensor, fake: torch.Tensor, mel: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """The sync critic's adversarial fine-tuning: real lower faces with their own audio are in
    sync; the generated ones with the same audio are not, nor are the real ones with another
    window's audio (so it keeps judging sync, not only real vs generated). real, fake (B, T, 3, H,
    W), mel (B, T, n_mels, steps); fake is detached here."""
    v_real, mel_w = sync_windows(real, mel, expert.cfg.frames, stride)
    v_fake, _ = sync_windows(fake.detach(), mel, expert.cfg.frames, stride)
    n, b = len(v_real), real.shape[0]
    v = expert.embed_video(torch.cat([v_real, v_fake]))  # (2N, D): each trunk runs once
    a = expert.embed_audio(mel_w)  # (N, D)
    a_other = a.roll(n // b if b > 1 else 1, 0)  # the next clip's audio; with one clip, the next window's
    pos, neg_fake, neg_audio = expert.logits(v[:n], a), expert.logits(v[n:], a), expert.logits(v[:n], a_other)
    return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
            + 0.5 * F.binary_cross_entropy_with_logits(neg_fake, torch.zeros_like(neg_fake))
            + 0.5 * F.binary_cross_entropy_with_logits(neg_audio, torch.zeros_like(neg_audio)))


def sync_expert_loss(expert, video: torch.Tensor, mel: torch.Tensor, neg_mel: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Training loss of the sync expert on windows: InfoNCE over the batch's true and shifted audio,
    plus a binary term that calibrates the logit (so the critic's P(in sync) is meaningful).
    video: the expert's video input, lower faces (B, F, 3, H, W) or mouth motion (B, F, K, 2); mel
    and neg_mel (B, n_mels, steps)."""
    v = expert.embed_video(video)  # (B, D)
    a = expert.embed_audio(torch.cat([mel, neg_mel]))  # (2B, D)
    logits = expert.logit_scale * v @ a.T + expert.logit_bias  # (B, 2B)
    target = torch.arange(len(v))
    nce = F.cross_entropy(logits, target)
    pos = logits[target, target]
    neg = logits[target, target + len(v)]
    bce = F.binary_cross_entropy_with_logits(torch.cat([pos, neg]), torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]))
    acc = ((pos > 0).float().mean() + (neg < 0).float().mean()) / 2
    return nce + bce, {"nce": nce.item(), "bce": bce.item(), "acc": acc.item()}


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
