"""What a run measures while it trains: mouth opening from predicted points, the sync expert's
separation of true from shifted audio, the lip reader's viseme accuracy."""

from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import ClipTensors, to_float
from ..errors import TalkingFaceError
from ..evaluation.metrics import auc
from ..face import LIP_INNER_BOTTOM, LIP_INNER_TOP, LOWER_FACE, MOUTH_LEFT, MOUTH_RIGHT
from ..models.lip_reader import LipReader, clip_visemes
from ..models.sync_expert import SyncExpert

# Positions of the lip points inside LOWER_FACE, for mouth opening/width from predicted points.
_K = {int(v): i for i, v in enumerate(LOWER_FACE)}
I_TOP, I_BOT, I_LEFT, I_RIGHT = _K[LIP_INNER_TOP], _K[LIP_INNER_BOTTOM], _K[MOUTH_LEFT], _K[MOUTH_RIGHT]


def mouth_open_from_points(p: torch.Tensor) -> torch.Tensor:
    """(..., K, 2) lower-face points -> inner-lip gap (...), in crop units."""
    return (p[..., I_TOP, :] - p[..., I_BOT, :]).norm(dim=-1)


def lower_half(x: torch.Tensor) -> torch.Tensor:
    return x[..., x.shape[-2] // 2:, :]


def viseme_targets(phonemes: torch.Tensor) -> torch.Tensor:
    """Phoneme ids (-1 = unknown) -> viseme ids (-1 = unknown), same shape."""
    from ..phonemes import viseme_ids

    return torch.from_numpy(viseme_ids(phonemes.cpu().numpy())).long()


@torch.no_grad()
def evaluate_lip_reader(reader: LipReader, clips, max_clips: int = 200) -> dict:
    """Viseme accuracy on whole clips (frames with a known phoneme and a face), and the accuracy
    averaged over classes (the corpus is dominated by a few visemes)."""
    hits, labels = [], []
    for c in clips[:max_clips]:
        pred = clip_visemes(reader, lower_half(c.crops.float() / 127.5 - 1))
        truth = viseme_targets(c.phonemes).numpy()
        ok = (truth >= 0) & (pred >= 0) & c.found.numpy()
        hits.append(pred[ok] == truth[ok])
        labels.append(truth[ok])
    if not hits:
        return {}
    h, lab = np.concatenate(hits), np.concatenate(labels)
    per_class = [h[lab == k].mean() for k in np.unique(lab)]
    return {"acc": float(h.mean()), "balanced_acc": float(np.mean(per_class)), "frames": float(len(h))}


def clip_video(expert: SyncExpert, clip: ClipTensors) -> torch.Tensor:
    """A clip's per-frame video input for ``expert``: (T, 3, S/2, S) lower faces in [-1, 1], or
    (T, K, 2) mouth motion for a landmark expert (clips loaded with ``motion=True``)."""
    if expert.cfg.visual == "landmarks":
        if clip.motion is None:
            raise TalkingFaceError(f"{clip.clip}: a landmark sync expert needs clips loaded with motion=True")
        return clip.motion
    return lower_half(to_float(clip.crops))


@torch.no_grad()
def evaluate_sync(expert: SyncExpert, clips, min_shift: int = 13, max_windows: int = 400) -> dict:
    """Separation of true audio from audio shifted by >= min_shift frames (13 = 0.52 s at 25 fps) on
    whole clips: AUC of cosine scores, and accuracy of the calibrated logit at 0."""
    expert.eval()
    f = expert.cfg.frames
    pos, neg, pos_l, neg_l = [], [], [], []
    rng = np.random.default_rng(0)
    for c in clips:
        t = len(c.crops)
        starts = [s for s in range(0, t - f + 1, 2) if bool(c.found[s: s + f].all())]
        if not starts:
            continue
        x = clip_video(expert, c)
        v = torch.stack([x[s: s + f] for s in starts])
        ev = expert.embed_video(v)
        mids = torch.tensor([s + f // 2 for s in starts])
        ea = expert.embed_audio(c.mel.float()[mids])
        shifts = []
        for m in mids.tolist():
            choices = [d for d in range(-t, t) if abs(d) >= min_shift and 0 <= m + d < t]
            shifts.append(m + int(rng.choice(choices)) if choices else (m + t // 2) % t)
        en = expert.embed_audio(c.mel.float()[torch.tensor(shifts)])
        pos.append((ev * ea).sum(1))
        neg.append((ev * en).sum(1))
        pos_l.append(expert.logits(ev, ea))
        neg_l.append(expert.logits(ev, en))
        if sum(map(len, pos)) >= max_windows:
            break
    if not pos:
        return {}
    p, n = torch.cat(pos).numpy(), torch.cat(neg).numpy()
    pl, nl = torch.cat(pos_l).numpy(), torch.cat(neg_l).numpy()
    return {"auc": auc(p, n), "acc": float(((pl > 0).mean() + (nl < 0).mean()) / 2),
            "cos_true": float(p.mean()), "cos_shifted": float(n.mean())}
