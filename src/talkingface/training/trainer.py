"""`talkingface train`: one training loop for the sync expert and the generator, chosen by config.

A run lives in ``runs/<time>-<name>/``: the frozen config (config.json), train.log, metrics.csv,
loss plots, validation sample sheets and mp4s, and checkpoint.pt (written atomically every
``ckpt_every`` steps). ``--resume RUN_DIR`` continues a killed run from its last checkpoint with the
same data order. Under ``torchrun --nproc_per_node=N`` the same loop runs data-parallel (DDP, gloo on
CPU, nccl on GPU): each rank draws its own windows, gradients are averaged, rank 0 writes.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..config import DataConfig, TrainConfig, config_from_json, save_config, to_dict
from ..data.corpus import read_manifest
from ..data.dataset import ClipTensors, WindowSampler, first_face, load_clips, to_float
from ..errors import TalkingFaceError
from ..evaluation.metrics import auc, pearson
from ..face import LIP_INNER_BOTTOM, LIP_INNER_TOP, LOWER_FACE, MOUTH_LEFT, MOUTH_RIGHT
from ..models.frame_discriminator import FrameDiscriminator
from ..models.generator import Generator
from ..models.lip_reader import LipReader, clip_visemes
from ..models.sequence_discriminator import SequenceDiscriminator
from ..models.sync_expert import SyncExpert
from . import losses
from .checkpoint import export_model, load_checkpoint, load_model, save_checkpoint

log = logging.getLogger(__name__)

# Positions of the lip points inside LOWER_FACE, for mouth opening/width from predicted points.
_K = {int(v): i for i, v in enumerate(LOWER_FACE)}
I_TOP, I_BOT, I_LEFT, I_RIGHT = _K[LIP_INNER_TOP], _K[LIP_INNER_BOTTOM], _K[MOUTH_LEFT], _K[MOUTH_RIGHT]


def mouth_open_from_points(p: torch.Tensor) -> torch.Tensor:
    """(..., K, 2) lower-face points -> inner-lip gap (...), in crop units."""
    return (p[..., I_TOP, :] - p[..., I_BOT, :]).norm(dim=-1)


def lower_half(x: torch.Tensor) -> torch.Tensor:
    return x[..., x.shape[-2] // 2:, :]


# ----------------------------------------------------------------------------------------------


class Run:
    """Run folder, logging, metrics CSV, plots, checkpoints; rank 0 writes, other ranks stay quiet."""

    _handler: logging.Handler | None = None  # the train.log handler of the latest run in this process

    def __init__(self, cfg: TrainConfig, run_dir: Path | None, rank: int):
        self.rank = rank
        Run.close()  # an earlier run in this process must not keep logging into its own train.log
        if run_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = Path("runs") / f"{stamp}-{cfg.name}"
        self.dir = Path(run_dir)
        if rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "samples").mkdir(exist_ok=True)
            save_config(cfg, self.dir / "config.json")
            fh = logging.FileHandler(self.dir / "train.log")
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logging.getLogger("talkingface").addHandler(fh)
            Run._handler = fh
        self.csv = self.dir / "metrics.csv"

    @staticmethod
    def close() -> None:
        if Run._handler is not None:
            logging.getLogger("talkingface").removeHandler(Run._handler)
            Run._handler.close()
            Run._handler = None

    def truncate_metrics(self, step: int) -> None:
        """After a resume, forget rows logged after the checkpoint (they will be redone)."""
        if self.rank or not self.csv.exists():
            return
        with open(self.csv) as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if int(r["step"]) <= step]
        self._write_rows(keep)

    def _write_rows(self, rows: list[dict]) -> None:
        keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "step", k != "split", k))
        tmp = self.csv.with_name(self.csv.name + ".tmp")
        with open(tmp, "w", newline="") as f:  # atomic: a run killed mid-write keeps the old file
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.csv)

    def log_metrics(self, step: int, split: str, metrics: dict) -> None:
        if self.rank:
            return
        rows = []
        if self.csv.exists():
            with open(self.csv) as f:
                rows = list(csv.DictReader(f))
        rows.append({"step": step, "split": split, **{k: f"{v:.6g}" for k, v in metrics.items()}})
        self._write_rows(rows)
        log.info("step %d %s %s", step, split, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

    def plot(self) -> None:
        if self.rank or not self.csv.exists():
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with open(self.csv) as f:
            rows = list(csv.DictReader(f))
        keys = sorted({k for r in rows for k in r if k not in ("step", "split") and r.get(k)})
        if not keys:
            return
        cols = 4
        nrow = (len(keys) + cols - 1) // cols
        fig, axes = plt.subplots(nrow, cols, figsize=(4 * cols, 2.6 * nrow), squeeze=False)
        for ax, k in zip(axes.flat, keys):
            for split in ("train", "val"):
                pts = [(int(r["step"]), float(r[k])) for r in rows if r["split"] == split and r.get(k)]
                if pts:
                    ax.plot(*zip(*pts), label=split, marker="." if split == "val" else None)
            ax.set_title(k, fontsize=9)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(self.dir / "losses.png", dpi=80)
        plt.close(fig)


# ----------------------------------------------------------------------------------------------


def _ddp_setup() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _wrap(model: torch.nn.Module, world: int) -> torch.nn.Module:
    if world > 1:
        return torch.nn.parallel.DistributedDataParallel(model)
    return model


def _average_gradients(model: torch.nn.Module, world: int) -> None:
    """Data-parallel gradient averaging for steps that do not go through a DDP wrapper."""
    if world <= 1:
        return
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


def _bare(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def lr_scale(cfg: TrainConfig, step: int) -> float:
    """The learning rate of (0-based) `step` as a fraction of the configured one (cfg.lr_decay_start)."""
    if cfg.lr_decay_start <= 0 or step < cfg.lr_decay_start:
        return 1.0
    return (cfg.steps - step) / (cfg.steps - cfg.lr_decay_start)


def _load_rows(cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    corpus = Path(cfg.corpus)
    rows = read_manifest(corpus)
    train = [r for r in rows if r["split"] == "train"]
    if cfg.selection:
        sel_path = corpus / "selections" / f"{cfg.selection}.json"
        if not sel_path.exists():
            raise TalkingFaceError(f"{sel_path}: no such selection (run `talkingface select` first)")
        chosen = set(json.loads(sel_path.read_text())["clips"])
        train = [r for r in train if r["clip"] in chosen]
    val = [r for r in rows if r["split"] == cfg.val_split]
    if not train:
        raise TalkingFaceError(f"{corpus}: no training clips")
    return train, val


class _SingleModelTask:
    """A task that trains one network with one Adam optimizer and exports it as ``file``.

    Not DDP-wrapped: the sync loss needs the expert's two embeddings, not its forward, and a DDP
    wrapper only averages gradients of outputs of its own forward. Gradients are averaged by hand
    in ``_update`` instead."""

    key, kind, file = "", "", ""

    def __init__(self, cfg: TrainConfig, world: int, model: torch.nn.Module, model_cfg):
        self.cfg, self.world, self.model, self.model_cfg = cfg, world, model, model_cfg
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr_g, betas=(0.9, 0.999))

    def modules(self) -> dict:
        return {self.key: _bare(self.model)}

    def optimizers(self) -> dict:
        return {self.key: self.opt}

    def _update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        _average_gradients(self.model, self.world)
        self.opt.step()

    def samples(self, *_):
        pass

    def export(self, run: Run, step: int, meta: dict) -> None:
        export_model(run.dir / self.file, self.kind, _bare(self.model), self.model_cfg, {"step": step, **meta})


class SyncTask(_SingleModelTask):
    """Trains the audio-visual sync expert on 5-frame windows (of lower-face crops, or of mouth
    motion for ``sync.visual = "landmarks"``)."""

    key, kind, file = "sync", "sync", "sync_expert.pt"

    def __init__(self, cfg: TrainConfig, world: int):
        super().__init__(cfg, world, SyncExpert(cfg.sync), cfg.sync)

    def step(self, batch: dict, step: int) -> dict:
        self.model.train()
        f = self.cfg.sync.frames
        video = batch["motion"][:, :f] if self.cfg.sync.visual == "landmarks" else lower_half(batch["target"][:, :f])
        mid = f // 2
        loss, m = losses.sync_expert_loss(self.model, video, batch["mel"][:, mid], batch["neg_mel"][:, mid])
        self._update(loss)
        return {"loss": loss.item(), **m}

    @torch.no_grad()
    def validate(self, sampler: WindowSampler, run: Run, step: int) -> dict:
        return evaluate_sync(_bare(self.model), sampler.clips)


class LipReadTask(_SingleModelTask):
    """Trains the viseme reader (the paper's lip-reading critic) on 5-frame windows: cross-entropy
    on the middle frame's viseme; frames of unknown phoneme are ignored."""

    key, kind, file = "lip_reader", "lipread", "lip_reader.pt"

    def __init__(self, cfg: TrainConfig, world: int):
        from ..phonemes import VISEMES

        if cfg.lip_reader.n_classes != len(VISEMES):
            raise TalkingFaceError(f"lip_reader.n_classes must be {len(VISEMES)} (the visemes of phonemes.py)")
        super().__init__(cfg, world, LipReader(cfg.lip_reader), cfg.lip_reader)

    def step(self, batch: dict, step: int) -> dict:
        self.model.train()
        f = self.cfg.lip_reader.frames
        target = viseme_targets(batch["phonemes"][:, f // 2])
        logits = self.model(lower_half(batch["target"][:, :f]))
        loss = torch.nn.functional.cross_entropy(logits, target, ignore_index=-1)
        self._update(loss)
        known = target >= 0
        acc = (logits.argmax(1)[known] == target[known]).float().mean().item() if known.any() else float("nan")
        return {"loss": loss.item(), "acc": acc}

    @torch.no_grad()
    def validate(self, sampler: WindowSampler, run: Run, step: int) -> dict:
        return evaluate_lip_reader(_bare(self.model), sampler.clips)


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


def uses_motion(cfg: TrainConfig) -> bool:
    """Whether a run's clips must be loaded with mouth motion (the landmark sync expert)."""
    return cfg.kind == "sync" and cfg.sync.visual == "landmarks"


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


class WeightAverage(torch.nn.Module):
    """An exponential moving average of a model's weights (buffers copied as they are). Its state
    dict holds the averaged model and the number of updates, so it checkpoints like any module;
    the first update copies the model."""

    def __init__(self, model: torch.nn.Module, beta: float):
        super().__init__()
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.beta = beta
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        beta = self.beta if self.updates > 0 else 0.0
        for a, p in zip(self.model.parameters(), model.parameters()):
            a.lerp_(p.detach(), 1.0 - beta)
        for a, b in zip(self.model.buffers(), model.buffers()):
            a.copy_(b)
        self.updates += 1


class GeneratorTask:
    """Trains the recurrent generator with L1 + landmarks, then frame/sequence adversaries, then the
    lip-sync critics: the sync expert (frozen, or fine-tuned along with ``lr_sync``) and/or the
    paper's lip reader (frozen), switching terms on at the configured steps (the paper's staged
    schedule)."""

    def __init__(self, cfg: TrainConfig, world: int):
        self.cfg = cfg
        g = Generator(cfg.generator)
        if cfg.generator.audio_pretrained:
            if not cfg.audio_encoder_checkpoint:
                raise TalkingFaceError("generator.audio_pretrained needs audio_encoder_checkpoint (a phone "
                                       "classifier: train one with kind = 'phones')")
            from ..config import AudioEncoderConfig
            from ..models.phone_classifier import PhoneClassifier

            clf, clf_cfg, _ = load_model(cfg.audio_encoder_checkpoint, "phone_classifier", PhoneClassifier, AudioEncoderConfig)
            if clf_cfg != cfg.generator.audio:
                raise TalkingFaceError(f"{cfg.audio_encoder_checkpoint}: its audio encoder ({clf_cfg}) is not "
                                       f"generator.audio ({cfg.generator.audio})")
            g.audio_encoder.load_state_dict(clf.encoder.state_dict())
        self.g = _wrap(g, world)
        self.fd = _wrap(FrameDiscriminator(cfg.frame_d), world)
        self.sd = _wrap(SequenceDiscriminator(cfg.seq_d), world)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas))
        self.opt_d = torch.optim.Adam(list(self.fd.parameters()) + list(self.sd.parameters()), lr=cfg.lr_d,
                                      betas=tuple(cfg.betas))
        self.expert = None
        if cfg.sync_checkpoint and cfg.loss.sync > 0:
            from ..config import SyncExpertConfig

            self.expert, _, _ = load_model(cfg.sync_checkpoint, "sync", SyncExpert, SyncExpertConfig)
            if self.expert.cfg.visual != "crops":
                raise TalkingFaceError(f"{cfg.sync_checkpoint}: the lip-sync critic must read pixels (sync.visual = "
                                       f"'crops', not {self.expert.cfg.visual!r}): its gradient reaches the generator through them")
            self.expert.requires_grad_(False)
        # Batch-norm statistics stay the pretrained ones (the expert is in eval mode): only its
        # weights follow the generator.
        self.opt_sync = (torch.optim.Adam(self.expert.parameters(), lr=cfg.lr_sync, betas=tuple(cfg.betas))
                         if self.expert is not None and cfg.lr_sync > 0 else None)
        self.reader = None
        if cfg.lipread_checkpoint and cfg.loss.lipread > 0:
            from ..config import LipReaderConfig

            self.reader = load_model(cfg.lipread_checkpoint, "lipread", LipReader, LipReaderConfig)[0]
            self.reader.requires_grad_(False)  # frozen, in eval mode: dropout off, batch-norm statistics kept
        self.world = world
        # One average serves both: stage 0's motion half (loss.motion_ema_start), then, started
        # afresh, the whole generator from ema_start.
        self.g_ema = (WeightAverage(_bare(self.g), cfg.ema_beta)
                      if cfg.ema_start > 0 or cfg.loss.motion_ema_start > 0 else None)

    def modules(self) -> dict:
        m = {"generator": _bare(self.g), "frame_d": _bare(self.fd), "seq_d": _bare(self.sd)}
        if self.g_ema is not None:
            m["generator_ema"] = self.g_ema
        if self.opt_sync is not None:
            m["sync_critic"] = self.expert
        return m

    def exported(self) -> torch.nn.Module:
        """The generator a run exports: the weight average once it has started, else the live one."""
        if self.g_ema is not None and self.g_ema.updates > 0:
            return self.g_ema.model
        return _bare(self.g)

    def optimizers(self) -> dict:
        o = {"g": self.opt_g, "d": self.opt_d}
        if self.opt_sync is not None:
            o["sync"] = self.opt_sync
        return o

    def motion_step(self, batch: dict, step: int) -> dict:
        """Stage 0: audio -> lower-face landmark motion only."""
        lc = self.cfg.loss
        g = _bare(self.g)
        g.train()
        enc = g.encode_motion_reference(batch["ref"], batch["ref_points"])
        mel = batch["mel"]  # (B, T, n_mels [+ N_PHONES], steps)
        if lc.phone_dropout > 0 and g.cfg.phones == "with-mel":
            # Whole windows without phones, so the mel path alone must carry them (phonetic.phone_track "none").
            drop = torch.rand(mel.shape[0]) < lc.phone_dropout  # (B,)
            mel = mel.clone()
            mel[drop, :, g.cfg.audio.n_mels:] = 0.0
        m = g.motion(mel, enc)
        loss = losses.l1(m["points"], batch["points"])
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        # Called on the bare module, DDP's hooks stay idle: average the gradients by hand.
        _average_gradients(g, dist.get_world_size() if hasattr(self.g, "module") else 1)
        self.opt_g.step()
        if lc.motion_ema_start and step + 1 >= lc.motion_ema_start:
            self.g_ema.update(g)
            if step + 1 == lc.motion_steps:  # the end of stage 0: its average becomes the motion half
                g.load_motion_half(self.g_ema.model)
                self.g_ema.updates.zero_()  # ema_start's average starts afresh from this generator
        return {"points": loss.item()}

    def step(self, batch: dict, step: int) -> dict:
        lc = self.cfg.loss
        adv = step >= lc.adv_start and (lc.frame_adv > 0 or lc.seq_adv > 0)
        use_sync = self.expert is not None and step >= lc.sync_start
        use_lipread = self.reader is not None and step >= lc.lipread_start
        frozen = lc.freeze_motion and lc.motion_steps > 0
        self.g.train()
        if frozen and hasattr(_bare(self.g), "audio_encoder"):
            _bare(self.g).audio_encoder.eval()  # its batch-norm statistics stay those of stage 0
        if lc.teacher_motion > 0:
            b = batch["mel"].shape[0]
            teach = torch.rand(b) < lc.teacher_motion  # (B,); torch's RNG is in the checkpoint: resumable
            real_off = batch["points"] - batch["ref_points"][:, None]  # (B, T, K, 2)
            out = self.g(batch["mel"], batch["ref"], batch["ref_points"], offsets=real_off, use_offsets=teach)
        else:
            out = self.g(batch["mel"], batch["ref"], batch["ref_points"])
        fake = out["lower"]  # (B, T, 3, S/2, S)
        real = lower_half(batch["target"])
        m = {}
        loss_l1 = losses.l1(fake, real)
        loss_pts = losses.l1(out["predicted_points"], batch["points"])
        loss = lc.l1 * loss_l1 + lc.points * loss_pts + lc.mask_tv * losses.total_variation(out["mask"])
        m.update(l1=loss_l1.item(), points=loss_pts.item())
        if adv:
            self.fd.requires_grad_(False)
            self.sd.requires_grad_(False)
            g_frame = losses.g_adv_loss(self.fd(fake.flatten(0, 1)))
            g_seq = losses.g_adv_loss(self.sd(fake))
            loss = loss + lc.frame_adv * g_frame + lc.seq_adv * g_seq
            m.update(g_frame=g_frame.item(), g_seq=g_seq.item())
        if use_sync or use_lipread:
            seen = losses.critic_input(out, lc.sync_paint, lc.sync_mask)  # what the lip-sync critics see
        if use_sync:
            ls = losses.sync_loss(self.expert, seen, batch["mel"])
            loss = loss + lc.sync * ls
            m["g_sync"] = ls.item()
        if use_lipread:
            lread = losses.lipread_loss(self.reader, seen, viseme_targets(batch["phonemes"]))
            loss = loss + lc.lipread * lread
            m["g_lipread"] = lread.item()
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        if frozen:  # gradients still flow (DDP expects every parameter's), they are just not applied
            for p in _bare(self.g).motion_parameters():
                p.grad = None
        self.opt_g.step()
        if self.g_ema is not None and step + 1 >= self.cfg.ema_start:
            self.g_ema.update(_bare(self.g))
        m["loss_g"] = loss.item()
        if adv:
            self.fd.requires_grad_(True)
            self.sd.requires_grad_(True)
            f = fake.detach()
            ld = (losses.d_loss(self.fd(real.flatten(0, 1)), self.fd(f.flatten(0, 1)))
                  + losses.d_loss(self.sd(real), self.sd(f)))
            self.opt_d.zero_grad(set_to_none=True)
            ld.backward()
            self.opt_d.step()
            m["loss_d"] = ld.item()
        if use_sync and self.opt_sync is not None:
            self.expert.requires_grad_(True)
            # Every 4th window (half the generator's): the critic's step costs more than its loss term.
            lsc = losses.sync_critic_loss(self.expert, real, fake, batch["mel"], stride=4)
            self.opt_sync.zero_grad(set_to_none=True)
            lsc.backward()
            _average_gradients(self.expert, self.world)  # not DDP-wrapped: averaged by hand
            self.opt_sync.step()
            self.expert.requires_grad_(False)
            m["loss_sync_critic"] = lsc.item()
        return m

    @torch.no_grad()
    def validate(self, sampler: WindowSampler, run: Run, step: int) -> dict:
        b = sampler.fixed(self.cfg.val_windows, seed=self.cfg.seed)
        m = self._validate(_bare(self.g).eval(), b)
        if self.g_ema is not None and self.g_ema.updates > 0:
            m.update({f"ema_{k}": v for k, v in self._validate(self.g_ema.model, b).items()})
        return m

    def _validate(self, g: Generator, b: dict) -> dict:
        out = g(b["mel"], b["ref"], b["ref_points"])
        fake, real = out["lower"], lower_half(b["target"])
        mse = ((fake - real) ** 2).mean((2, 3, 4)).clamp_min(1e-10)
        psnr = (10 * torch.log10(4.0 / mse)).mean()  # range [-1, 1] -> peak-to-peak 2
        opening_pred = mouth_open_from_points(out["points"])
        opening_real = mouth_open_from_points(b["points"])
        corr = np.mean([pearson(opening_pred[i], opening_real[i]) for i in range(len(fake))])
        m = {"l1": losses.l1(fake, real).item(), "psnr_lower": psnr.item(),
             "points": losses.l1(out["points"], b["points"]).item(), "mouth_open_corr": float(corr)}
        if self.expert is not None:
            v, a = losses.sync_windows(fake, b["mel"])
            vr, _ = losses.sync_windows(real, b["mel"])
            m["sync_p_fake"] = torch.sigmoid(self.expert(v, a)).mean().item()
            m["sync_p_real"] = torch.sigmoid(self.expert(vr, a)).mean().item()
        if self.reader is not None:  # the critic's own viseme accuracy on generated and real windows
            vis = viseme_targets(b["phonemes"])
            for name, x in (("fake", fake), ("real", real)):
                v, target = losses.lipread_windows(x, vis, self.reader.cfg.frames)
                m[f"lipread_acc_{name}"] = (self.reader(v).argmax(1) == target).float().mean().item()
        return m

    @torch.no_grad()
    def samples(self, sampler: WindowSampler, run: Run, step: int) -> None:
        """Sheet: per validation window, real frames above generated ones; plus an mp4 of one whole
        validation clip generated from its first frame and its own audio."""
        from ..inference import generate_crops, tensor_to_crops
        from ..media import write_video
        from ..viz import image_grid, save_image

        g = _bare(self.g).eval()
        b = sampler.fixed(4, seed=self.cfg.seed)
        out = g(b["mel"], b["ref"], b["ref_points"])
        tiles = []
        t = b["target"].shape[1]
        idx = np.linspace(0, t - 1, 6).round().astype(int)
        for i in range(len(b["ref"])):
            tiles += list(tensor_to_crops(b["target"][i, idx]))
            tiles += list(tensor_to_crops(out["frames"][i, idx]))
        save_image(run.dir / "samples" / f"step{step:06d}.jpg", image_grid(tiles, cols=len(idx)))
        c = sampler.clips[0]
        ref_i = first_face(c)
        crops = [x for x, _ in generate_crops(g, c.crops[ref_i].permute(1, 2, 0).numpy(), c.points[ref_i].numpy(), c.mel)]
        real = c.crops.permute(0, 2, 3, 1).numpy()
        side = [np.concatenate([r, f], 1) for r, f in zip(real, crops)]
        write_video(run.dir / "samples" / f"step{step:06d}.mp4", side, 25.0)

    def export(self, run: Run, step: int, meta: dict) -> None:
        if self.g_ema is not None:
            meta = {**meta, "ema": {"start": self.cfg.ema_start, "beta": self.cfg.ema_beta,
                                    "updates": int(self.g_ema.updates)}}
        export_model(run.dir / "generator.pt", "generator", self.exported(), self.cfg.generator, {"step": step, **meta})


# ----------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, run_dir: str | Path | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume) a run. Returns the run folder."""
    from tqdm import tqdm

    rank, world = _ddp_setup()
    torch.set_num_threads(max(1, cfg.threads // world))
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    if cfg.kind not in ("sync", "generator", "lipread", "phones"):
        raise TalkingFaceError(f"train.kind must be 'sync', 'generator', 'lipread' or 'phones', got {cfg.kind!r}")
    if not 0 <= cfg.lr_decay_start < cfg.steps:
        raise TalkingFaceError(f"lr_decay_start must be 0 (a constant rate) or a step before steps={cfg.steps}, "
                               f"got {cfg.lr_decay_start}")
    if cfg.augment_voice not in ("full", "light"):
        raise TalkingFaceError(f"augment_voice must be 'full' or 'light', got {cfg.augment_voice!r}")
    if cfg.kind == "generator" and cfg.loss.lipread > 0 and not cfg.lipread_checkpoint:
        raise TalkingFaceError("loss.lipread > 0 needs lipread_checkpoint (a viseme reader: train one with kind = 'lipread')")
    for key, start, last_key, last in (("ema_start", cfg.ema_start, "steps", cfg.steps),
                                       ("loss.motion_ema_start", cfg.loss.motion_ema_start,
                                        "loss.motion_steps", cfg.loss.motion_steps)):
        if start and (cfg.kind != "generator" or not 0 < start <= last or not 0 <= cfg.ema_beta < 1):
            raise TalkingFaceError(f"{key}={start}, ema_beta={cfg.ema_beta}: a weight average is kept for the "
                                   f"generator only, from a step in 1..{last_key}={last}, with 0 <= ema_beta < 1")
    if cfg.kind == "generator" and cfg.window < 11 and cfg.loss.seq_adv > 0:
        raise TalkingFaceError("the sequence discriminator needs windows of >= 11 frames")
    if not resume and run_dir is not None and rank == 0:
        # Starting afresh in a used folder would mix two runs' metrics and overwrite the checkpoint.
        used = [n for n in ("checkpoint.pt", "metrics.csv") if (Path(run_dir) / n).exists()]
        if used:
            raise TalkingFaceError(f"{run_dir} already holds a run ({used[0]}): continue it with --resume "
                                   f"{run_dir}, or give another --run-dir")
    run = Run(cfg, Path(run_dir) if run_dir else None, rank)
    data_cfg = config_from_json(DataConfig, Path(cfg.corpus) / "config.json")
    train_rows, val_rows = _load_rows(cfg)
    window = {"generator": cfg.window, "sync": cfg.sync.frames, "lipread": cfg.lip_reader.frames}.get(cfg.kind, 1)
    log.info("run %s: %d train clips, %d val clips, %s", run.dir, len(train_rows), len(val_rows), cfg.kind)
    motion = uses_motion(cfg)
    # Training hears the recognised phone track, what generate hears without a transcript.
    phones = "recognised" if cfg.kind == "phones" or (cfg.kind == "generator" and cfg.generator.phones != "none") else ""
    train_clips = load_clips(cfg.corpus, train_rows, data_cfg, progress=progress and rank == 0, motion=motion,
                             phones=phones)
    if cfg.kind == "phones":
        from .phones import train_phones

        train_phones(cfg, run, train_clips, data_cfg, progress=progress and rank == 0)
        return run.dir
    val_clips = load_clips(cfg.corpus, val_rows, data_cfg, motion=motion, phones=phones) if val_rows else []
    sampler = WindowSampler(train_clips, window, augment=cfg.augment, speed=cfg.augment_speed,
                            voice=cfg.augment_voice, n_mels=data_cfg.audio.n_mels)
    val_sampler = WindowSampler(val_clips, window, augment=False) if val_clips else None
    if cfg.keep_best and val_sampler is None:
        raise TalkingFaceError(f"keep_best={cfg.keep_best!r} needs validation clips (split {cfg.val_split!r} is empty)")

    task = {"sync": SyncTask, "generator": GeneratorTask, "lipread": LipReadTask}[cfg.kind](cfg, world)
    rng = np.random.default_rng([cfg.seed, rank])
    start = 0
    # cfg.keep_best: the best validation so far, {"step", "value"}, and its weights. They travel in
    # the checkpoint and are exported only when the run ends, so an exported file still means a
    # finished run (scripts/train_from_scratch.sh skips a stage by it).
    best: dict | None = None
    best_state: dict | None = None
    ck_path = run.dir / "checkpoint.pt"
    if resume:
        ck = load_checkpoint(ck_path)
        for k, mod in task.modules().items():
            if k == "generator_ema" and k not in ck["models"]:  # switched on at this resume
                log.info("%s holds no weight average: it starts afresh, from the live weights at its start step "
                         "(ema_start=%d, loss.motion_ema_start=%d) or at the next step, whichever is later",
                         ck_path, cfg.ema_start, cfg.loss.motion_ema_start)
                continue
            if k == "sync_critic" and k not in ck["models"]:  # fine-tuning switched on at this resume
                log.info("%s holds no fine-tuned sync critic: it starts from %s", ck_path, cfg.sync_checkpoint)
                continue
            mod.load_state_dict(ck["models"][k])
        for k, opt in task.optimizers().items():
            if k == "sync" and k not in ck["optim"]:
                continue
            opt.load_state_dict(ck["optim"][k])
        start = int(ck["step"])
        rng.bit_generator.state = json.loads(ck["rng"])[rank] if world > 1 else json.loads(ck["rng"])[0]
        torch.set_rng_state(ck["torch_rng"])
        best, best_state = json.loads(ck.get("best", "null")), ck.get("best_state")
        run.truncate_metrics(start)
        log.info("resumed %s at step %d", run.dir, start)

    def checkpoint(step: int) -> None:
        states = [rng.bit_generator.state]
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, rng.bit_generator.state)
            states = gathered
        if rank == 0:
            save_checkpoint(ck_path, {
                "step": step, "config": json.dumps(to_dict(cfg)), "rng": json.dumps(states),
                "torch_rng": torch.get_rng_state(), "best": json.dumps(best), "best_state": best_state,
                "models": {k: m.state_dict() for k, m in task.modules().items()},
                "optim": {k: o.state_dict() for k, o in task.optimizers().items()},
            })

    t0 = time.time()

    def export(step: int, extra: dict) -> None:
        task.export(run, step, {"train_seconds": round(time.time() - t0, 1), "corpus": cfg.corpus,
                                "selection": cfg.selection, **extra})

    # The configured rate of each parameter group, kept in the optimiser's state (so in the
    # checkpoint) the way torch's schedulers keep it; the rate itself is set anew every step.
    for opt in task.optimizers().values():
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
    acc: dict[str, list[float]] = {}
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=cfg.name, disable=not progress or rank > 0)
    for step in bar:
        scale = lr_scale(cfg, step)
        for opt in task.optimizers().values():
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * scale
        if cfg.kind == "generator" and step < cfg.loss.motion_steps:
            m = task.motion_step(sampler.sample(cfg.loss.motion_batch_size, rng, targets=False), step)
        else:
            # A landmark sync expert reads no pixels: leave the crops (the costly part) out.
            m = task.step(sampler.sample(cfg.batch_size, rng, negatives=cfg.kind == "sync", targets=not motion), step)
        if cfg.lr_decay_start:
            m["lr_scale"] = scale
        for k, v in m.items():
            acc.setdefault(k, []).append(v)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            avg = {k: float(np.mean(v)) for k, v in acc.items()}
            avg["sec_per_step"] = (time.time() - t0) / max(1, done - start)
            run.log_metrics(done, "train", avg)
            bar.set_postfix({k: f"{v:.3g}" for k, v in list(avg.items())[:4]})
            acc = {}
        # Validation before the checkpoint, so that the checkpoint holds the best model so far.
        if (done % cfg.val_every == 0 or done == cfg.steps) and rank == 0 and val_sampler is not None:
            val = task.validate(val_sampler, run, done)
            run.log_metrics(done, "val", val)
            if cfg.keep_best:
                if cfg.keep_best not in val:
                    raise TalkingFaceError(f"keep_best={cfg.keep_best!r} is not a val metric of a {cfg.kind} run "
                                           f"(it logs {', '.join(sorted(val)) or 'none'})")
                if math.isfinite(val[cfg.keep_best]) and (best is None or val[cfg.keep_best] > best["value"]):
                    best = {"step": done, "value": float(val[cfg.keep_best])}
                    best_state = {k: {n: v.detach().clone() for n, v in m.state_dict().items()}
                                  for k, m in task.modules().items()}
                    log.info("step %d: best %s so far (%.4f)", done, cfg.keep_best, best["value"])
            task.samples(val_sampler, run, done)
            run.plot()
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            checkpoint(done)
    if world > 1:
        _check_ranks_in_sync(task, rank, world)
    if rank == 0 and not cfg.keep_best:
        export(cfg.steps, {})
    elif rank == 0:
        if best is None:
            raise TalkingFaceError(f"keep_best={cfg.keep_best!r}: no validation gave a finite value; nothing exported")
        for k, m in task.modules().items():
            m.load_state_dict(best_state[k])
        export(best["step"], {"best": {cfg.keep_best: best["value"]}, "steps": cfg.steps})
        log.info("exported the model of step %d (%s %.4f)", best["step"], cfg.keep_best, best["value"])
    if world > 1:
        dist.barrier()
    Run.close()
    return run.dir


def _check_ranks_in_sync(task, rank: int, world: int) -> None:
    """Data-parallel ranks must end with identical weights (else rank 0 exports one of N models):
    compare a float64 checksum of every trained module's parameters across ranks."""
    sums = torch.tensor([float(sum(p.detach().double().sum() + p.detach().double().square().sum() for p in m.parameters()))
                         for m in task.modules().values()], dtype=torch.float64)
    gathered = [torch.zeros_like(sums) for _ in range(world)]
    dist.all_gather(gathered, sums)
    in_sync = all(torch.equal(g, gathered[0]) for g in gathered)
    if rank == 0:
        log.info("ddp weights in sync: %s", in_sync)
    if not in_sync:
        raise RuntimeError(f"ddp ranks ended with different weights (checksums {[g.tolist() for g in gathered]})")
