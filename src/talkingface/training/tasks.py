"""The three things `talkingface train` trains, one class each: the sync expert (``SyncTask``),
the viseme lip reader (``LipReadTask``) and the generator with its critics (``GeneratorTask``).
A task holds its networks and optimisers (``modules``, ``optimizers``: what a checkpoint saves),
takes one step on a batch of windows, validates, draws samples and exports its model; the loop
in trainer.py is the same for all."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.distributed as dist

from ..config import TrainConfig
from ..data.dataset import WindowSampler, first_face
from ..errors import TalkingFaceError
from ..evaluation.metrics import pearson
from ..models.frame_discriminator import FrameDiscriminator
from ..models.generator import Generator
from ..models.lip_reader import LipReader
from ..models.sequence_discriminator import SequenceDiscriminator
from ..models.sync_expert import SyncExpert
from . import losses
from .checkpoint import export_model, load_model
from .distributed import average_gradients, bare, wrap
from .run import Run
from .sync_metrics import evaluate_lip_reader, evaluate_sync, lower_half, mouth_open_from_points, viseme_targets


def uses_motion(cfg: TrainConfig) -> bool:
    """Whether a run's clips must be loaded with mouth motion (the landmark sync expert)."""
    return cfg.kind == "sync" and cfg.sync.visual == "landmarks"


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
        return {self.key: bare(self.model)}

    def optimizers(self) -> dict:
        return {self.key: self.opt}

    def _update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.model, self.world)
        self.opt.step()

    def samples(self, *_):
        pass

    def export(self, run: Run, step: int, meta: dict) -> None:
        export_model(run.dir / self.file, self.kind, bare(self.model), self.model_cfg, {"step": step, **meta})


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
        return evaluate_sync(bare(self.model), sampler.clips)


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
        return evaluate_lip_reader(bare(self.model), sampler.clips)


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
        self.g = wrap(g, world)
        self.fd = wrap(FrameDiscriminator(cfg.frame_d), world)
        self.sd = wrap(SequenceDiscriminator(cfg.seq_d), world)
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
        self.g_ema = (WeightAverage(bare(self.g), cfg.ema_beta)
                      if cfg.ema_start > 0 or cfg.loss.motion_ema_start > 0 else None)

    def modules(self) -> dict:
        m = {"generator": bare(self.g), "frame_d": bare(self.fd), "seq_d": bare(self.sd)}
        if self.g_ema is not None:
            m["generator_ema"] = self.g_ema
        if self.opt_sync is not None:
            m["sync_critic"] = self.expert
        return m

    def exported(self) -> torch.nn.Module:
        """The generator a run exports: the weight average once it has started, else the live one."""
        if self.g_ema is not None and self.g_ema.updates > 0:
            return self.g_ema.model
        return bare(self.g)

    def optimizers(self) -> dict:
        o = {"g": self.opt_g, "d": self.opt_d}
        if self.opt_sync is not None:
            o["sync"] = self.opt_sync
        return o

    def motion_step(self, batch: dict, step: int) -> dict:
        """Stage 0: audio -> lower-face landmark motion only."""
        lc = self.cfg.loss
        g = bare(self.g)
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
        average_gradients(g, dist.get_world_size() if hasattr(self.g, "module") else 1)
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
        if frozen and hasattr(bare(self.g), "audio_encoder"):
            bare(self.g).audio_encoder.eval()  # its batch-norm statistics stay those of stage 0
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
            for p in bare(self.g).motion_parameters():
                p.grad = None
        self.opt_g.step()
        if self.g_ema is not None and step + 1 >= self.cfg.ema_start:
            self.g_ema.update(bare(self.g))
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
            average_gradients(self.expert, self.world)  # not DDP-wrapped: averaged by hand
            self.opt_sync.step()
            self.expert.requires_grad_(False)
            m["loss_sync_critic"] = lsc.item()
        return m

    @torch.no_grad()
    def validate(self, sampler: WindowSampler, run: Run, step: int) -> dict:
        b = sampler.fixed(self.cfg.val_windows, seed=self.cfg.seed)
        m = self._validate(bare(self.g).eval(), b)
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

        g = bare(self.g).eval()
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
