"""`talkingface train`: one training loop for every kind of run, chosen by config (the tasks in
tasks.py; kind = "phones" hands over to phones.py).

A run lives in ``runs/<time>-<name>/`` (run.py): the frozen config (config.json), train.log,
metrics.csv, loss plots, validation sample sheets and mp4s, and checkpoint.pt (written atomically
every ``ckpt_every`` steps). ``--resume RUN_DIR`` continues a killed run from its last checkpoint
with the same data order. Under ``torchrun --nproc_per_node=N`` the same loop runs data-parallel
(distributed.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..config import DataConfig, TrainConfig, config_from_json, to_dict
from ..data.corpus import read_manifest
from ..data.dataset import WindowSampler, load_clips
from ..errors import TalkingFaceError
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import check_ranks_in_sync, ddp_setup
from .run import Run
from .tasks import GeneratorTask, LipReadTask, SyncTask, uses_motion

log = logging.getLogger(__name__)


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


def train(cfg: TrainConfig, run_dir: str | Path | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume) a run. Returns the run folder."""
    from tqdm import tqdm

    rank, world = ddp_setup()
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
    window = {"generator": cfg.window, "sync": cfg.sync.frames, "lipread": cfg.lip_reader.frames}[cfg.kind]
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
        check_ranks_in_sync(task, rank, world)
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
