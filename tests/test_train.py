"""The real trainer on a tiny corpus prepared from tests/data: run folder contents, exact resume,
a resume after SIGKILL, the sync expert and the generator's sync critic, and DDP under torchrun.
Models are shrunk to a few channels so every run takes seconds."""

import csv
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from talkingface.config import DataConfig, TrainConfig, load_config
from talkingface.data.dataset import WindowSampler
from talkingface.data.prepare import prepare
from talkingface.training.checkpoint import load_checkpoint
from talkingface.training.trainer import train

DATA = Path(__file__).parent / "data"

TINY = [
    "generator.audio.width=8", "generator.identity.width=8", "generator.hidden=32", "frame_d.width=8",
    "seq_d.width=8", "batch_size=2", "window=11", "val_windows=2", "threads=1", 'val_split="train"',
]


@pytest.fixture(scope="module", autouse=True)
def _threads_and_logging():
    n = torch.get_num_threads()  # train() sets the process-wide thread count
    # train.log receives what the "talkingface" logger lets through; the CLI sets INFO, so do we.
    logger = logging.getLogger("talkingface")
    level = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(level)
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    src = tmp_path_factory.mktemp("train_src")
    (src / "s1").mkdir()
    for name in ("bbaf2n.mp4", "bbaf2n.align"):
        shutil.copy(DATA / "grid/s1" / name, src / "s1" / name)
    out = tmp_path_factory.mktemp("train_corpus")
    cfg = DataConfig(min_clips_train_speaker=1, val_fraction=0.0, test_fraction=0.0, workers=1)
    summary = prepare(src, out, cfg, progress=False)
    assert summary["failed"] == 0 and summary["split_counts"]["train"] == 1
    return out


def _overrides(corpus, *extra):
    return [f'corpus="{corpus}"', *TINY, *extra]


def _gen_cfg(corpus, steps):
    return load_config(TrainConfig, None, _overrides(
        corpus, f"steps={steps}", "loss.adv_start=2", "val_every=6", "ckpt_every=3", "log_every=3"))


def _rows(run_dir):
    with open(Path(run_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _no_timing(row):
    return {k: v for k, v in row.items() if k != "sec_per_step"}


@pytest.fixture(scope="module")
def run6(corpus, tmp_path_factory):
    """An uninterrupted 6-step generator run (adversaries on from step 2)."""
    return train(_gen_cfg(corpus, 6), tmp_path_factory.mktemp("run6") / "run", progress=False)


def test_generator_run_folder(run6):
    d = Path(run6)
    for name in ("config.json", "metrics.csv", "losses.png", "checkpoint.pt", "generator.pt", "train.log"):
        assert (d / name).is_file() and (d / name).stat().st_size > 0, name
    rows = _rows(d)
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [int(r["step"]) for r in train_rows] == [3, 6]
    assert all(math.isfinite(float(r["loss_g"])) for r in train_rows)
    assert train_rows[-1]["loss_d"] and train_rows[-1]["g_seq"]  # the adversaries switched on
    val = [r for r in rows if r["split"] == "val"]
    assert len(val) == 1 and int(val[0]["step"]) == 6 and float(val[0]["psnr_lower"]) > 10
    sheets = list((d / "samples").glob("*.jpg"))
    videos = list((d / "samples").glob("*.mp4"))
    assert len(sheets) == 1 and len(videos) == 1
    with av.open(str(videos[0])) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 75 and frames[0].shape == (128, 256, 3)  # real | generated, whole clip
    ck = load_checkpoint(d / "checkpoint.pt")
    assert ck["step"] == 6 and set(ck["models"]) == {"generator", "frame_d", "seq_d"}
    assert not list(d.glob("*.tmp"))


def test_resume_matches_uninterrupted_run(corpus, run6, tmp_path):
    run = tmp_path / "run"
    train(_gen_cfg(corpus, 3), run, progress=False)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 3
    train(_gen_cfg(corpus, 6), run, resume=True, progress=False)
    a = load_checkpoint(Path(run6) / "checkpoint.pt")
    b = load_checkpoint(run / "checkpoint.pt")
    assert b["step"] == 6
    for name in a["models"]:
        for k, v in a["models"][name].items():
            torch.testing.assert_close(b["models"][name][k], v, atol=1e-6, rtol=0, msg=f"{name}.{k}")
    ra = [_no_timing(r) for r in _rows(run6) if r["split"] == "train"]
    rb = [_no_timing(r) for r in _rows(run) if r["split"] == "train"]
    assert ra == rb
    steps = [(r["step"], r["split"]) for r in _rows(run)]
    assert len(steps) == len(set(steps))
    # an earlier run in this process does not write into this run's log
    assert str(run) not in (Path(run6) / "train.log").read_text()


def _train_keeping_checkpoints(cfg, run_dir, monkeypatch) -> tuple[Path, dict]:
    """Trains cfg into run_dir and returns it with every checkpoint written on the way, by step
    (each as load_checkpoint reads it back), to resume from as if the run had been killed there."""
    from talkingface.training import trainer

    saved = {}
    real_save = trainer.save_checkpoint

    def save_and_keep(path, state):
        real_save(path, state)
        saved[state["step"]] = load_checkpoint(path)

    with monkeypatch.context() as m:
        m.setattr(trainer, "save_checkpoint", save_and_keep)
        run = Path(train(cfg, run_dir, progress=False))
    return run, saved


def test_lr_decay_is_linear_to_zero_and_resumes_exactly(corpus, run6, tmp_path, monkeypatch):
    """lr_decay_start=3 over 6 steps: steps 0-2 at the full rate, then 3/3, 2/3, 1/3 of it; a run
    resumed from its step-5 checkpoint (mid-decay) ends with the weights of the uninterrupted run."""
    from talkingface.errors import TalkingFaceError
    from talkingface.training.checkpoint import save_checkpoint

    cfg = dataclasses.replace(_gen_cfg(corpus, 6), lr_decay_start=3, ckpt_every=1)
    whole, saved = _train_keeping_checkpoints(cfg, tmp_path / "whole", monkeypatch)
    rows = [r for r in _rows(whole) if r["split"] == "train"]
    assert [float(r["lr_scale"]) for r in rows] == pytest.approx([1.0, 2 / 3])  # means over steps 0-2, 3-5
    ck = load_checkpoint(whole / "checkpoint.pt")
    for name in ("g", "d"):
        group = ck["optim"][name]["param_groups"][0]
        assert group["initial_lr"] == pytest.approx(2e-4) and group["lr"] == pytest.approx(2e-4 / 3)
    # Up to step 3 this is the constant-rate run6, digit for digit; the decay changes what follows.
    const = [_no_timing(r) for r in _rows(run6) if r["split"] == "train"]
    assert {k: v for k, v in _no_timing(rows[0]).items() if k != "lr_scale"} == const[0]
    g6 = load_checkpoint(Path(run6) / "checkpoint.pt")["models"]["generator"]
    assert any(not torch.equal(v, ck["models"]["generator"][k]) for k, v in g6.items())

    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    save_checkpoint(cut / "checkpoint.pt", saved[5])  # as if killed after step 5's checkpoint
    train(cfg, cut, resume=True, progress=False)
    resumed = load_checkpoint(cut / "checkpoint.pt")
    for k, v in ck["models"]["generator"].items():
        torch.testing.assert_close(resumed["models"]["generator"][k], v, atol=1e-6, rtol=0, msg=k)

    with pytest.raises(TalkingFaceError, match="lr_decay_start"):
        train(dataclasses.replace(cfg, lr_decay_start=6), tmp_path / "bad", progress=False)
    with pytest.raises(TalkingFaceError, match="augment_voice must be 'full' or 'light'"):
        train(dataclasses.replace(cfg, augment_voice="medium"), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_weight_average_is_exported_and_resumes_exactly(corpus, tmp_path, monkeypatch):
    """ema_start=4, ema_beta=0.5 over 6 steps: the export is 1/4 w4 + 1/4 w5 + 1/2 w6 of the live
    weights after steps 4-6, validation reports it as ema_*, and resuming from a checkpoint made
    before the average existed (as from a run started without it) ends with the same export."""
    from talkingface.config import GeneratorConfig
    from talkingface.errors import TalkingFaceError
    from talkingface.inference import load_generator
    from talkingface.models.generator import Generator
    from talkingface.training.checkpoint import load_model, save_checkpoint

    cfg = dataclasses.replace(_gen_cfg(corpus, 6), ema_start=4, ema_beta=0.5, ckpt_every=1)
    whole, saved = _train_keeping_checkpoints(cfg, tmp_path / "whole", monkeypatch)
    live = {k: saved[k]["models"]["generator"] for k in (4, 5, 6)}
    g, _, meta = load_model(whole / "generator.pt", "generator", Generator, GeneratorConfig)
    assert meta["ema"] == {"start": 4, "beta": 0.5, "updates": 3}
    for k, v in g.state_dict().items():
        want = live[6][k] if not v.is_floating_point() or k.endswith(("running_mean", "running_var")) \
            else 0.25 * live[4][k] + 0.25 * live[5][k] + 0.5 * live[6][k]
        torch.testing.assert_close(v, want, atol=1e-6, rtol=1e-5, msg=k)
    assert any(not torch.equal(v, live[6][k]) for k, v in g.state_dict().items())  # not the last step's
    val = [r for r in _rows(whole) if r["split"] == "val"][-1]
    assert float(val["ema_psnr_lower"]) > 10 and val["ema_psnr_lower"] != val["psnr_lower"]
    load_generator(whole / "generator.pt")  # the export loads as an ordinary generator

    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    ck3 = saved[3]
    assert int(ck3["models"]["generator_ema"]["updates"]) == 0
    del ck3["models"]["generator_ema"]
    save_checkpoint(cut / "checkpoint.pt", ck3)
    (cut / "generator.pt").unlink()
    train(cfg, cut, resume=True, progress=False)
    g2, _, _ = load_model(cut / "generator.pt", "generator", Generator, GeneratorConfig)
    for (k, a), b in zip(g.state_dict().items(), g2.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0, msg=k)

    for bad in (dataclasses.replace(cfg, ema_start=7), dataclasses.replace(cfg, ema_beta=1.0),
                _sync_cfg(corpus, "steps=2", "ema_start=1")):
        with pytest.raises(TalkingFaceError, match="weight average"):
            train(bad, tmp_path / "bad", progress=False)


def test_motion_stage_average_becomes_the_motion_half_and_resumes_exactly(corpus, tmp_path, monkeypatch):
    """loss.motion_ema_start=3 with ema_beta=0.5 over a 4-step stage 0: the motion half that stage 0
    hands on is 1/2 w3 + 1/2 w4 of the live weights (those of the same run without the average),
    the rest of the generator is untouched, and a resume from step 3 ends the same."""
    from talkingface.errors import TalkingFaceError
    from talkingface.models.generator import MOTION_MODULES
    from talkingface.training.checkpoint import save_checkpoint

    plain = load_config(TrainConfig, None, _overrides(
        corpus, "steps=4", "loss.motion_steps=4", "loss.motion_batch_size=2", "loss.freeze_motion=true",
        "ema_beta=0.5", "val_every=100", "ckpt_every=1", "log_every=1"))
    cfg = dataclasses.replace(plain, loss=dataclasses.replace(plain.loss, motion_ema_start=3))
    _, live = _train_keeping_checkpoints(plain, tmp_path / "plain", monkeypatch)
    whole, saved = _train_keeping_checkpoints(cfg, tmp_path / "whole", monkeypatch)
    w3, w4 = live[3]["models"]["generator"], live[4]["models"]["generator"]
    g = saved[4]["models"]["generator"]
    assert int(saved[4]["models"]["generator_ema"]["updates"]) == 0  # ema_start's average starts afresh
    motion = [k for k in g if k.startswith(tuple(m + "." for m in MOTION_MODULES))]
    assert motion and len(motion) < len(g)
    for k, v in g.items():
        if k in motion and v.is_floating_point() and not k.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(v, 0.5 * w3[k] + 0.5 * w4[k], atol=1e-6, rtol=1e-5, msg=k)
        else:
            assert torch.equal(v, w4[k]), k
    assert any(not torch.equal(g[k], w4[k]) for k in motion)

    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    save_checkpoint(cut / "checkpoint.pt", saved[3])
    train(cfg, cut, resume=True, progress=False)
    for k, v in load_checkpoint(cut / "checkpoint.pt")["models"]["generator"].items():
        torch.testing.assert_close(v, g[k], atol=1e-6, rtol=0, msg=k)

    bad = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, motion_ema_start=5))
    with pytest.raises(TalkingFaceError, match="motion_ema_start"):
        train(bad, tmp_path / "bad", progress=False)


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "talkingface.cli", *args], capture_output=True, text=True, **kw)


def test_freeze_motion_keeps_stage_0_motion_and_trains_the_renderer(corpus, tmp_path):
    """With loss.freeze_motion the audio -> motion half (and its batch-norm statistics) ends as the
    motion warm-up left it, while the renderer keeps learning."""
    from talkingface.inference import load_generator

    def run(steps, name):
        cfg = load_config(TrainConfig, None, _overrides(
            corpus, f"steps={steps}", "loss.motion_steps=2", "loss.motion_batch_size=2", "loss.freeze_motion=true",
            "loss.adv_start=3", "val_every=100", "ckpt_every=100", "log_every=1"))
        return load_generator(Path(train(cfg, tmp_path / name, progress=False)) / "generator.pt")[0]

    warm, full = run(2, "warm"), run(5, "full")
    w, f = warm.state_dict(), full.state_dict()
    motion = [k for k in w if k.startswith(("audio_encoder.", "points_in.", "gru.", "motion_head."))]
    assert motion and all(torch.equal(w[k], f[k]) for k in motion)
    renderer = [k for k in w if k.startswith(("up", "out.", "fc.")) and w[k].is_floating_point()]
    assert any(not torch.equal(w[k], f[k]) for k in renderer)


def test_teacher_motion_draws_the_real_landmark_motion(corpus, tmp_path, monkeypatch):
    """loss.teacher_motion=1: every renderer window draws the real landmark offsets (target points
    minus reference points), not the motion head's; 0 passes no offsets at all."""
    from talkingface.models.generator import Generator

    seen = []
    forward = Generator.forward

    def spy(self, *args, **kw):
        seen.append((kw.get("offsets"), kw.get("use_offsets")))
        return forward(self, *args, **kw)

    monkeypatch.setattr(Generator, "forward", spy)
    monkeypatch.setattr("talkingface.training.tasks.GeneratorTask.validate", lambda *a: {})
    monkeypatch.setattr("talkingface.training.tasks.GeneratorTask.samples", lambda *a: None)
    real = []
    sample = WindowSampler.sample

    def sample_spy(self, *a, **kw):
        real.append(sample(self, *a, **kw))
        return real[-1]

    monkeypatch.setattr(WindowSampler, "sample", sample_spy)
    for frac in (1.0, 0.0):
        seen.clear()
        real.clear()
        cfg = load_config(TrainConfig, None, _overrides(
            corpus, "steps=2", f"loss.teacher_motion={frac}", "val_every=100", "ckpt_every=100", "log_every=1"))
        train(cfg, tmp_path / f"teach{frac}", progress=False)
        assert len(seen) == 2
        for (off, use), batch in zip(seen, real):
            if frac:
                assert bool(use.all())
                torch.testing.assert_close(off, batch["points"] - batch["ref_points"][:, None])
                assert off.abs().max() > 0
            else:
                assert off is None and use is None


def test_kill_and_resume_from_cli(corpus, tmp_path):
    run = tmp_path / "killed"
    sets = [x for o in _overrides(corpus, "steps=100000", "ckpt_every=2", "log_every=1", "val_every=100000",
                                  "loss.adv_start=1") for x in ("--set", o)]
    log = tmp_path / "killed.stderr"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "talkingface.cli", "train", "-q", "--run-dir", str(run), *sets],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.time() + 120
        while not (run / "checkpoint.pt").exists():
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.2)
        time.sleep(0.5)  # let it get somewhere past the checkpoint
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    k = int(load_checkpoint(run / "checkpoint.pt")["step"])
    assert k >= 2 and k % 2 == 0
    # Starting afresh in the used folder is refused (it would mix two runs), leaving it untouched.
    before = (run / "metrics.csv").read_bytes()
    r = _cli("train", "-q", "--run-dir", str(run), *sets, timeout=120)
    assert r.returncode != 0 and "already holds a run" in r.stderr and "--resume" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (run / "metrics.csv").read_bytes() == before and int(load_checkpoint(run / "checkpoint.pt")["step"]) == k
    r = _cli("train", "-q", "--resume", str(run), "--set", f"steps={k + 3}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    rows = [x for x in _rows(run) if x["split"] == "train"]
    steps = [int(x["step"]) for x in rows]
    assert steps == list(range(1, k + 4))  # no duplicates, no gaps
    assert all(math.isfinite(float(x["loss_g"])) for x in rows)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == k + 3
    assert (run / "generator.pt").is_file()
    assert not list(run.glob("*.tmp"))


def test_sync_expert_then_generator_with_sync_critic(corpus, tmp_path):
    sync_cfg = load_config(TrainConfig, None, _overrides(
        corpus, 'kind="sync"', "sync.width=8", "sync.audio.width=8", "sync.dim=32", "batch_size=4", "steps=3",
        "log_every=1", "val_every=3", "ckpt_every=3"))
    sync_run = train(sync_cfg, tmp_path / "sync", progress=False)
    expert = Path(sync_run) / "sync_expert.pt"
    assert expert.is_file()
    rows = _rows(sync_run)
    assert [int(r["step"]) for r in rows if r["split"] == "train"] == [1, 2, 3]
    assert all(0.0 <= float(r["acc"]) <= 1.0 and math.isfinite(float(r["loss"])) for r in rows if r["split"] == "train")
    val = [r for r in rows if r["split"] == "val"]
    assert len(val) == 1 and 0.0 <= float(val[0]["auc"]) <= 1.0

    gen_cfg = load_config(TrainConfig, None, _overrides(
        corpus, f'sync_checkpoint="{expert}"', "loss.sync_start=1", "loss.adv_start=1000", "steps=2",
        "log_every=1", "val_every=2", "ckpt_every=2"))
    gen_run = train(gen_cfg, tmp_path / "gen", progress=False)
    rows = _rows(gen_run)
    by_step = {(int(r["step"]), r["split"]): r for r in rows}
    assert not by_step[(1, "train")].get("g_sync")  # before sync_start
    assert math.isfinite(float(by_step[(2, "train")]["g_sync"]))
    assert 0.0 <= float(by_step[(2, "val")]["sync_p_fake"]) <= 1.0
    ck = load_checkpoint(Path(gen_run) / "checkpoint.pt")  # lr_sync = 0: the critic stays frozen
    assert "sync_critic" not in ck["models"] and "sync" not in ck["optim"] and "loss_sync_critic" not in rows[-1]

    # loss.sync_paint / sync_mask = false change where the critic's gradient goes, not what it scores.
    flow_only = dataclasses.replace(gen_cfg, loss=dataclasses.replace(gen_cfg.loss, sync_paint=False, sync_mask=False))
    rows = _rows(train(flow_only, tmp_path / "gen-flow-only", progress=False))
    assert {(int(r["step"]), r["split"]): r for r in rows}[(2, "train")]["g_sync"] == by_step[(2, "train")]["g_sync"]


def test_sync_critic_fine_tuning_learns_and_resumes_exactly(corpus, tmp_path, monkeypatch):
    """lr_sync > 0: from sync_start the critic trains too (the paper's adversarial fine-tuning), its
    weights and optimizer travel in the checkpoint, and a resumed run ends where the uninterrupted
    one does; a checkpoint without them (fine-tuning switched on at a resume) starts it from the
    pretrained expert. (lr_sync = 0, the default, keeps none: test_sync_expert_then_generator_...)"""
    from talkingface.config import SyncExpertConfig
    from talkingface.models.sync_expert import SyncExpert
    from talkingface.training.checkpoint import load_model, save_checkpoint

    expert = Path(train(_sync_cfg(corpus, "steps=2"), tmp_path / "sync", progress=False)) / "sync_expert.pt"
    pretrained = load_model(expert, "sync", SyncExpert, SyncExpertConfig)[0].state_dict()
    cfg = load_config(TrainConfig, None, _overrides(
        corpus, f'sync_checkpoint="{expert}"', "loss.sync_start=2", "loss.adv_start=1000", "steps=4", "lr_sync=1e-3",
        "log_every=1", "val_every=4", "ckpt_every=1"))
    whole, saved = _train_keeping_checkpoints(cfg, tmp_path / "whole", monkeypatch)
    rows = {(int(r["step"]), r["split"]): r for r in _rows(whole)}
    assert not rows[(2, "train")].get("loss_sync_critic")  # step index 1 < sync_start
    assert all(math.isfinite(float(rows[(k, "train")]["loss_sync_critic"])) for k in (3, 4))
    tuned = saved[4]["models"]["sync_critic"]
    assert "sync" in saved[4]["optim"]
    assert all(torch.equal(saved[2]["models"]["sync_critic"][k], v) for k, v in pretrained.items())
    assert any(not torch.equal(tuned[k], v) for k, v in pretrained.items() if v.is_floating_point())
    # batch-norm statistics stay the pretrained ones: the critic trains in eval mode
    assert all(torch.equal(tuned[k], v) for k, v in pretrained.items() if k.endswith(("running_mean", "running_var")))

    want = load_checkpoint(whole / "checkpoint.pt")["models"]
    for name, drop in (("cut", False), ("switched-on", True)):
        cut = tmp_path / name
        shutil.copytree(whole, cut)
        ck = saved[3] if not drop else saved[2]
        if drop:  # as from a run that trained step 2 with a frozen critic: nothing tuned yet
            del ck["models"]["sync_critic"], ck["optim"]["sync"]
        save_checkpoint(cut / "checkpoint.pt", ck)
        train(cfg, cut, resume=True, progress=False)
        got = load_checkpoint(cut / "checkpoint.pt")["models"]
        for key in ("generator", "sync_critic"):
            for k, v in want[key].items():
                torch.testing.assert_close(got[key][k], v, atol=0, rtol=0, msg=f"{name} {key} {k}")


def _sync_cfg(corpus, *extra):
    return load_config(TrainConfig, None, _overrides(
        corpus, 'kind="sync"', "sync.width=8", "sync.audio.width=8", "sync.dim=32", "batch_size=4", "log_every=1",
        "val_every=1", "ckpt_every=1", *extra))


def test_keep_best_exports_the_best_validation_and_survives_a_resume(corpus, tmp_path):
    """keep_best = "auc": the exported expert is the model of the best validation (equal to a run
    stopped at that step), not the last step's; a resumed run keeps that choice."""
    from talkingface.config import SyncExpertConfig
    from talkingface.errors import TalkingFaceError
    from talkingface.models.sync_expert import SyncExpert
    from talkingface.training.checkpoint import load_model

    # A high learning rate makes the tiny expert's val AUC move from step to step.
    whole = Path(train(_sync_cfg(corpus, "steps=6", "lr_g=0.02", 'keep_best="auc"'), tmp_path / "whole", progress=False))
    aucs = [float(r["auc"]) for r in _rows(whole) if r["split"] == "val"]
    assert len(aucs) == 6 and len(set(aucs)) > 1
    best_step = 1 + int(np.argmax(aucs))  # first of ties: only a strictly better AUC replaces the export
    assert best_step < 6, "this test needs a run whose last validation is not its best"
    kept, _, meta = load_model(whole / "sync_expert.pt", "sync", SyncExpert, SyncExpertConfig)
    assert meta["step"] == best_step and meta["best"]["auc"] == pytest.approx(max(aucs))

    stopped = Path(train(_sync_cfg(corpus, f"steps={best_step}", "lr_g=0.02"), tmp_path / "stopped", progress=False))
    same, _, _ = load_model(stopped / "sync_expert.pt", "sync", SyncExpert, SyncExpertConfig)
    for (k, a), b in zip(kept.state_dict().items(), same.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)

    # Killed after step 3 and resumed: the same export.
    part = tmp_path / "part"
    train(_sync_cfg(corpus, "steps=3", "lr_g=0.02", 'keep_best="auc"'), part, progress=False)
    ck = load_checkpoint(part / "checkpoint.pt")
    best3 = 1 + int(np.argmax(aucs[:3]))
    assert json.loads(ck["best"])["step"] == best3 and set(ck["best_state"]) == {"sync"}
    (part / "sync_expert.pt").unlink()  # as if killed before the end: the export is made only then
    train(_sync_cfg(corpus, "steps=6", "lr_g=0.02", 'keep_best="auc"'), part, resume=True, progress=False)
    _, _, meta_r = load_model(part / "sync_expert.pt", "sync", SyncExpert, SyncExpertConfig)
    assert meta_r["step"] == best_step and meta_r["best"] == meta["best"]

    with pytest.raises(TalkingFaceError, match="not a val metric"):
        train(_sync_cfg(corpus, "steps=1", 'keep_best="psnr"'), tmp_path / "bad", progress=False)


def test_landmark_sync_expert_trains_and_is_no_generator_critic(corpus, tmp_path):
    """sync.visual = "landmarks": the same trainer, on mouth motion detected on the crops; the
    generator refuses it as its critic (no gradient reaches pixels through landmarks)."""
    from talkingface.config import SyncExpertConfig
    from talkingface.errors import TalkingFaceError
    from talkingface.models.sync_expert import SyncExpert
    from talkingface.training.checkpoint import load_model

    cfg = load_config(TrainConfig, None, _overrides(
        corpus, 'kind="sync"', 'sync.visual="landmarks"', "sync.width=8", "sync.audio.width=8", "sync.dim=32",
        "batch_size=4", "steps=3", "log_every=1", "val_every=3", "ckpt_every=3"))
    run = Path(train(cfg, tmp_path / "lm", progress=False))
    _, scfg, _ = load_model(run / "sync_expert.pt", "sync", SyncExpert, SyncExpertConfig)
    assert scfg.visual == "landmarks"
    rows = _rows(run)
    assert all(math.isfinite(float(r["loss"])) for r in rows if r["split"] == "train")
    val = [r for r in rows if r["split"] == "val"]
    assert len(val) == 1 and 0.0 <= float(val[0]["auc"]) <= 1.0
    gen_cfg = load_config(TrainConfig, None, _overrides(corpus, f'sync_checkpoint="{run / "sync_expert.pt"}"', "steps=1"))
    with pytest.raises(TalkingFaceError, match="must read pixels"):
        train(gen_cfg, tmp_path / "gen", progress=False)


def test_lip_reader_trains_and_reads(corpus, tmp_path):
    """kind = "lipread": the viseme reader trains on the corpus's phoneme labels, validates on
    whole clips and exports a checkpoint that predicts one viseme per frame."""
    from talkingface.config import LipReaderConfig
    from talkingface.models.lip_reader import LipReader, clip_visemes
    from talkingface.training.checkpoint import load_model
    from talkingface.training.sync_metrics import viseme_targets

    cfg = load_config(TrainConfig, None, _overrides(
        corpus, 'kind="lipread"', "lip_reader.width=8", "batch_size=4", "steps=3", "log_every=1", "val_every=3",
        "ckpt_every=3"))
    run = train(cfg, tmp_path / "lip", progress=False)
    rows = _rows(run)
    assert [int(r["step"]) for r in rows if r["split"] == "train"] == [1, 2, 3]
    assert all(math.isfinite(float(r["loss"])) for r in rows if r["split"] == "train")
    val = [r for r in rows if r["split"] == "val"]
    assert len(val) == 1 and 0.0 <= float(val[0]["acc"]) <= 1.0 and float(val[0]["frames"]) > 0
    reader, _, _ = load_model(Path(run) / "lip_reader.pt", "lipread", LipReader, LipReaderConfig)
    pred = clip_visemes(reader, torch.rand(9, 3, 64, 128) * 2 - 1)
    assert pred.shape == (9,) and (pred[:2] == -1).all() and (pred[-2:] == -1).all()
    assert ((pred[2:-2] >= 0) & (pred[2:-2] < 14)).all()
    assert viseme_targets(torch.tensor([-1, 0, 5])).tolist()[0] == -1

    # The reader as the generator's lip-reading critic (loss.lipread), from lipread_start on.
    gen_cfg = load_config(TrainConfig, None, _overrides(
        corpus, f'lipread_checkpoint="{Path(run) / "lip_reader.pt"}"', "loss.lipread=0.01", "loss.lipread_start=1",
        "loss.adv_start=1000", "steps=2", "log_every=1", "val_every=2", "ckpt_every=2"))
    rows = {(int(r["step"]), r["split"]): r for r in _rows(train(gen_cfg, tmp_path / "gen", progress=False))}
    assert not rows[(1, "train")].get("g_lipread")  # step index 0 < lipread_start
    assert float(rows[(2, "train")]["g_lipread"]) > 0
    assert all(0.0 <= float(rows[(2, "val")][f"lipread_acc_{k}"]) <= 1.0 for k in ("fake", "real"))
    from talkingface.errors import TalkingFaceError

    with pytest.raises(TalkingFaceError, match="needs lipread_checkpoint"):
        train(dataclasses.replace(gen_cfg, lipread_checkpoint=""), tmp_path / "no-reader", progress=False)
    assert not (tmp_path / "no-reader").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["generator", "sync"])
def test_ddp_two_ranks_stay_in_sync(corpus, tmp_path, kind):
    run = tmp_path / "ddp"
    extra = ["steps=3", "log_every=1", "val_every=3", "ckpt_every=3", "threads=2"]
    # generator: step 1 is a motion-only step (stage 0), step 2 plain, step 3 adversarial
    extra += ["loss.motion_steps=1", "loss.motion_batch_size=2", "loss.adv_start=2", "loss.freeze_motion=true"] if kind == "generator" else ['kind="sync"', "sync.width=8", "sync.audio.width=8",
                                                               "batch_size=4"]
    sets = [x for o in _overrides(corpus, *extra) for x in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "talkingface.cli", "train", "-q", "--run-dir", str(run), *sets],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("run folder:") == 2  # both ranks finished
    assert "ddp weights in sync: True" in r.stderr
    assert "ddp weights in sync: True" in (run / "train.log").read_text()
    assert (run / ("generator.pt" if kind == "generator" else "sync_expert.pt")).is_file()
    steps = [(r["step"], r["split"]) for r in _rows(run)]
    assert len(steps) == len(set(steps))  # only rank 0 writes metrics
    assert [s for s, split in steps if split == "train"] == ["1", "2", "3"]


def test_augmentation_keeps_shapes_and_moves_points_with_the_image():
    """augment_batch: shapes kept, values finite, the voice changed, and landmarks follow the same
    geometric jitter/flip as the pixels (a dark dot drawn at a landmark stays under it)."""
    from talkingface.data.dataset import augment_batch

    n, t, s = 6, 3, 64
    img = torch.ones(n, 3, s, s)
    pts = torch.tensor([[0.3, 0.6], [0.62, 0.7]]).expand(n, 2, 2).clone()
    for i in range(n):
        x, y = (pts[i, 0] * s).long()
        img[i, :, y - 2: y + 3, x - 2: x + 3] = -1.0  # a dot under landmark 0
    mel = torch.randn(n, t, 80, 35)
    b = {"ref": img.clone(), "ref_points": pts.clone(), "target": img[:, None].expand(n, t, 3, s, s).clone(),
         "points": pts[:, None].expand(n, t, 2, 2).clone(), "mel": mel.clone()}
    augment_batch(b, np.random.default_rng(0))
    assert b["ref"].shape == (n, 3, s, s) and b["target"].shape == (n, t, 3, s, s) and b["mel"].shape == mel.shape
    assert all(torch.isfinite(v).all() for v in b.values())
    assert (b["mel"] - mel).abs().mean() > 0.1
    for i in range(n):
        x, y = (b["ref_points"][i, 0] * s).round().long()
        lum = b["ref"][i].mean(0)
        assert lum[y, x] < lum.mean() - 0.5, i  # still on the dot after rotation/scale/flip


def test_augmentation_mirrors_mouth_motion_with_the_image_and_scales_it():
    """Mouth motion is mirrored exactly when the image is flipped (left corner <-> right corner, x
    negated) and scaled per axis by 0.6..1.61; its draws come last, so every other output of the
    batch is what it is without motion (generator runs replay unchanged)."""
    from talkingface.data.dataset import augment_batch
    from talkingface.face import SYNC_POINTS, mirror_index

    n, k = 12, len(SYNC_POINTS)
    motion = torch.randn(n, 5, k, 2)

    def batch():
        return {"ref": torch.zeros(n, 3, 16, 16), "ref_points": torch.tensor([0.2, 0.5]).expand(n, 1, 2).clone(),
                "points": torch.full((n, 5, 1, 2), 0.5), "mel": torch.randn(n, 5, 80, 35, generator=torch.Generator().manual_seed(0))}

    plain, with_motion = batch(), {**batch(), "motion": motion.clone()}
    augment_batch(plain, np.random.default_rng(0))
    augment_batch(with_motion, np.random.default_rng(0))
    for key in plain:
        assert torch.equal(plain[key], with_motion[key]), key
    flipped = with_motion["ref_points"][:, 0, 0] > 0.5  # the landmark at x = 0.2 went to the right
    assert 0 < flipped.sum() < n
    mirrored = motion[:, :, torch.from_numpy(mirror_index(SYNC_POINTS))] * torch.tensor([-1.0, 1.0])
    for i in range(n):
        src = mirrored[i] if flipped[i] else motion[i]
        ratio = with_motion["motion"][i] / src  # (5, K, 2): one scale per axis
        for axis in range(2):
            r = ratio[..., axis]
            assert torch.allclose(r, r.flatten()[0].expand_as(r), rtol=1e-4), (i, axis)
            assert 0.7 * 0.85 - 1e-6 <= r.flatten()[0] <= 1.4 * 1.15 + 1e-6


def test_light_voice_augmentation_is_the_first_versions_stretch_and_band_mask():
    """augment_voice = "light" reproduces the first version's voice augmentation draw for draw: a
    +-10% mel-axis stretch and one masked band (written out here as that version had it), and after
    it the random stream stands where that version left it. "full" changes the windows further
    (tilt, EQ, dynamics) and takes more draws."""
    import torch.nn.functional as F

    from talkingface.data.dataset import augment_batch

    n, t, nm, st = 5, 3, 80, 35

    def batch():
        return {"ref": torch.zeros(n, 3, 16, 16), "ref_points": torch.full((n, 2, 2), 0.5),
                "points": torch.full((n, t, 2, 2), 0.5),
                "mel": torch.randn(n, t, nm, st, generator=torch.Generator().manual_seed(0))}

    b, rng = batch(), np.random.default_rng(3)
    augment_batch(b, rng, voice="light")
    light_state = rng.bit_generator.state
    # The first version's draws: colour, geometry (unchanged since), then its voice block.
    ref_rng = np.random.default_rng(3)
    ref_rng.uniform(0.8, 1.2, (n, 3, 1, 1)), ref_rng.uniform(-0.15, 0.15, (n, 1, 1, 1))
    ref_rng.uniform(0.75, 1.25, (n, 1, 1, 1)), ref_rng.random(n)
    ref_rng.uniform(-4, 4, n), ref_rng.uniform(0.95, 1.05, n), ref_rng.uniform(-0.03, 0.03, (n, 2)), ref_rng.random(n)
    m = batch()["mel"]
    alpha = torch.from_numpy(ref_rng.uniform(0.9, 1.1, n)).float()
    ys = torch.linspace(-1, 1, nm)[None, :] * alpha[:, None]
    grid = torch.stack(torch.broadcast_tensors(torch.linspace(-1, 1, st)[None, None, :], ys[:, :, None]), -1)
    want = F.grid_sample(m, grid, mode="bilinear", padding_mode="border", align_corners=True)
    lo = ref_rng.integers(0, nm - 8, n)
    for i in range(n):
        want[i, :, lo[i]: lo[i] + int(ref_rng.integers(0, 8))] = 0.0
    torch.testing.assert_close(b["mel"], want, rtol=0, atol=0)
    assert rng.random() == ref_rng.random()  # the stream stands where the first version left it

    full, full_rng = batch(), np.random.default_rng(3)
    augment_batch(full, full_rng)
    assert not torch.allclose(full["mel"], b["mel"])
    assert full_rng.bit_generator.state != light_state  # "full" draws tilt, EQ and gain too


def test_speed_perturbation_stretches_audio_windows_around_their_centre():
    """warp_windows' rate stretches the time axis about the window's centre frame (the frame the
    target mouth belongs to) and leaves the mel axis alone; in augment_batch, speed > 0 changes the
    windows and takes its own random draws (speed=0 takes none: batches equal to the code before
    the option, checked when it was added, so older runs replay bit-identically)."""
    from talkingface.data.dataset import augment_batch, warp_windows

    st = 35
    ramp = torch.linspace(-1, 1, st).expand(2, 1, 80, st).clone()  # (N, T, n_mels, steps): value = time
    one = torch.ones(2)
    torch.testing.assert_close(warp_windows(ramp, one), ramp)
    slow = warp_windows(ramp, one, torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(slow[0, 0, :, st // 2], ramp[0, 0, :, st // 2])  # the centre stays
    torch.testing.assert_close(slow[0, 0, 0], 0.5 * ramp[0, 0, 0])  # half the time span: slower speech
    assert slow[1, 0, 0, 0] == -1.0 and slow[1, 0, 0, -1] == 1.0  # twice the span, clamped at the edges
    torch.testing.assert_close(slow[0, 0, 0], slow[0, 0, 40])  # every band the same

    def draws(speed):
        rng = np.random.default_rng(0)
        b = {"ref": torch.zeros(2, 3, 16, 16), "ref_points": torch.full((2, 2, 2), 0.5),
             "points": torch.full((2, 3, 2, 2), 0.5), "mel": torch.randn(2, 3, 80, st, generator=torch.Generator().manual_seed(0))}
        augment_batch(b, rng, speed)
        return b["mel"], rng.random()

    (m0, r0), (m1, r1) = draws(0.0), draws(0.25)
    assert r0 != r1 and not torch.equal(m0, m1)  # speed > 0 takes one more draw per sample and changes the windows


def test_generator_hearing_phones_trains_on_the_recognised_track(corpus, tmp_path, monkeypatch):
    """generator.phones: prepare wrote the clip's phone tracks, training hears the recognised one
    (what generate hears without a transcript), phone dropout blanks whole windows' phone rows, and
    the exported model moves its landmarks with the phones."""
    pytest.importorskip("pocketsphinx")
    from talkingface.inference import load_generator
    from talkingface.models.generator import Generator

    tracks = np.load(next(Path(corpus).glob("clips/*/*/phones.npz")))
    assert set(tracks.files) == {"recognised", "aligned"} and (tracks["aligned"] > 0).sum() > 50
    seen = []
    motion = Generator.motion

    def spy(self, mel, enc, state=None):
        seen.append(mel.detach().clone())
        return motion(self, mel, enc, state)

    monkeypatch.setattr(Generator, "motion", spy)
    cfg = load_config(TrainConfig, None, _overrides(
        corpus, "steps=3", "loss.motion_steps=3", "loss.motion_batch_size=8", 'generator.phones="with-mel"',
        "loss.phone_dropout=0.5", "val_every=100", "ckpt_every=100", "log_every=1", "generator.decoder_input=\"motion\""))
    g = load_generator(Path(train(cfg, tmp_path / "run", progress=False)) / "generator.pt")[0]
    assert g.cfg.phones == "with-mel"
    batch = seen[0]  # (B, T, 80 + 40, 35)
    assert batch.shape[2] == 120
    rows = batch[:, :, 80:]
    per_window = rows.sum((1, 2, 3))
    assert (per_window == 0).any() and (per_window > 0).any()  # some windows blanked, some not
    kept = rows[per_window > 0]
    assert torch.all(kept.sum(2) <= 1.0 + 1e-6)  # at most one phone per step: one-hot (or padding)


def test_phone_classifier_trains_on_voices_and_its_encoder_stays_frozen_in_the_generator(corpus, tmp_path, monkeypatch):
    """kind = "phones": the classifier learns from a voices folder (its *test* folder = validation)
    and the corpus's clips, the recognised tracks are kept in the run folder and not recognised
    again, and a generator with audio_pretrained starts from its encoder and never changes it
    (weights and batch-norm statistics), while the rest of the motion half learns."""
    pytest.importorskip("pocketsphinx")
    import soundfile as sf

    from talkingface.audio import audio_frame_features
    from talkingface.config import AudioEncoderConfig
    from talkingface.errors import TalkingFaceError
    from talkingface.inference import load_generator
    from talkingface.media import read_audio
    from talkingface.models.generator import Generator
    from talkingface.models.phone_classifier import OFFSETS, PhoneClassifier
    from talkingface.phonetic import one_hot
    from talkingface.training import phones as P
    from talkingface.training.checkpoint import load_model

    audio = read_audio(DATA / "grid/s1/bbaf2n.mp4")
    voices = tmp_path / "voices"
    for sub, gain in (("train-clean/a", 0.5), ("train-clean/b", 1.0), ("test-other/c", 0.8)):
        (voices / sub).mkdir(parents=True)
        sf.write(voices / sub / "x.flac", audio * gain, 16000)
    overrides = _overrides(corpus, 'kind="phones"', f'voices="{voices}"', "steps=4", "batch_size=16",
                           "log_every=2", "val_every=2")
    run = Path(train(load_config(TrainConfig, None, overrides), tmp_path / "phones", progress=False))
    clf, clf_cfg, meta = load_model(run / "phone_classifier.pt", "phone_classifier", PhoneClassifier, AudioEncoderConfig)
    assert meta["voice_files"] == 2 and meta["corpus_clips"] == 1 and 0 <= meta["val_acc"] <= 1
    logits = clf(audio_frame_features(audio, 10)[:, :80])
    assert logits.shape == (10, len(OFFSETS), 40) and torch.isfinite(logits).all()
    assert len(np.load(run / "voices-phones.npz").files) == 3  # the three files' tracks, by content

    # The labels are the track's phones at the offsets from each window's centre.
    track = np.zeros(400, np.int64)
    track[150:160] = 7
    w = audio_frame_features(np.zeros(64000, np.float32), 100, rows=one_hot(track))  # (100, 120, 35)
    _, labels = P.labelled_windows(w, 80)
    frame = 62  # centre at step floor(62.5 * 4) = 250: no phone 7 near it
    assert (labels[frame] == 0).all()
    frame = 38  # centre at step 154: phone 7 at the centre (and +-4 steps), silence at +-8
    assert labels[frame].tolist() == [0, 7, 7, 7, 0]

    # Run again over the same voices: nothing is recognised a second time.
    monkeypatch.setattr(P, "recognise", lambda a: (_ for _ in ()).throw(AssertionError("recognised again")))
    (tmp_path / "again").mkdir()
    shutil.copy(run / "voices-phones.npz", tmp_path / "again" / "voices-phones.npz")
    train(load_config(TrainConfig, None, overrides + ["steps=1"]), tmp_path / "again", progress=False)

    cfg = load_config(TrainConfig, None, _overrides(
        corpus, "steps=3", "loss.motion_steps=3", "loss.motion_batch_size=8", 'generator.phones="with-mel"',
        "generator.audio_pretrained=true", f'audio_encoder_checkpoint="{run / "phone_classifier.pt"}"',
        "val_every=100", "ckpt_every=100", "log_every=1", 'generator.decoder_input="motion"'))
    g = load_generator(Path(train(cfg, tmp_path / "gen", progress=False)) / "generator.pt")[0]
    assert g.cfg.audio_pretrained
    for k, v in clf.encoder.state_dict().items():
        assert torch.equal(g.audio_encoder.state_dict()[k], v), k
    g.train()
    assert not g.audio_encoder.training and g.gru.training
    assert not any(p.requires_grad for p in g.audio_encoder.parameters())
    torch.manual_seed(cfg.seed)  # the trainer's initial weights
    fresh = Generator(cfg.generator)
    assert not torch.equal(fresh.gru.weight_ih_l0, g.gru.weight_ih_l0)  # the rest of the motion half learnt
    assert not torch.equal(fresh.audio_encoder.net[0][0].weight, g.audio_encoder.net[0][0].weight)  # loaded

    bad = _overrides(corpus, "steps=1", "generator.audio_pretrained=true")
    with pytest.raises(TalkingFaceError, match="audio_encoder_checkpoint"):
        train(load_config(TrainConfig, None, bad), tmp_path / "bad", progress=False)
