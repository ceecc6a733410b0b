"""Quick probe of the audio -> motion half on voices never trained on.

Trains only the generator's motion half (audio encoder + GRU + landmark head, no renderer: minutes
on 2 cores) on the training selection, then runs every clip of a held-out split from its first
face frame's landmarks and its own audio, and prints the correlation of the predicted inner-lip
gap with the real one (from the corpus landmarks), for unseen sentences of trained speakers and for
unseen speakers, next to the correlation of speech loudness with the real gap. ``--checkpoint``
probes a trained generator's motion half instead of training one; with ``--render`` it also renders
every clip and measures, on landmarks tracked on the rendered crops, how faithfully the renderer
draws the motion it was given (rendered gap vs the model's own predicted gap) and how well the
whole chain follows the real mouth (landmarks tracked the same way on the real crops), and the
renderer's ceiling: the clip drawn from the real landmark motion instead of the predicted one.
Amplitudes (standard deviation of the generated gap over the real one's) show under-articulation.

    python scripts/motion_probe.py --steps 1500 [--phoneme-aux 0.1] [--seed 0] [--speed 0.25] [--synthetic-voices 1]
                                   [--swing-loss 1] [--set audio.lifter=20]
    python scripts/motion_probe.py --checkpoint src/talkingface/assets/talkingface.pt [--render]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from talkingface.audio import loudness
from talkingface.config import (
    DataConfig,
    GeneratorConfig,
    config_from_json,
    load_config,
)
from talkingface.data.corpus import read_manifest
from talkingface.data.dataset import WindowSampler, first_face, load_clips
from talkingface.evaluation.evaluate import detect_landmarks
from talkingface.evaluation.metrics import curve_amplitude, mouth_curves, pearson
from talkingface.inference import generate_crops, load_generator, tensor_to_crops
from talkingface.models.generator import Generator
from talkingface.phonemes import PHONEMES
from talkingface.training.sync_metrics import mouth_open_from_points


def mouth_width(p: torch.Tensor) -> np.ndarray:
    """(T, K, 2) lower-face points -> distance between the outer lip corners (T,)."""
    return (p[:, 0] - p[:, 10]).norm(dim=-1).numpy()


def tracked_opening(crops: np.ndarray) -> np.ndarray:
    """(T, S, S, 3) uint8 crops -> inner-lip gap (T,) from landmarks tracked on them (NaN where none)."""
    return mouth_curves(detect_landmarks(crops))["opening"]


def probe(g: Generator, clips, rows, train_speakers, render: bool = False) -> dict:
    g.eval()
    res = defaultdict(list)
    with torch.no_grad():
        for c, r in zip(clips, rows):
            ri = first_face(c)
            ref, ref_pts = c.crops[ri: ri + 1].float() / 127.5 - 1, c.points[ri: ri + 1].float()
            enc = g.encode_motion_reference(ref, ref_pts)
            pred_pts = g.motion(c.mel.float()[None], enc)["points"][0]
            pred = mouth_open_from_points(pred_pts).numpy()
            real = mouth_open_from_points(c.points.float()).numpy()
            ok = c.found.numpy().astype(bool)
            grp = "unseen sentences" if r["speaker"] in train_speakers else "unseen speakers"
            res[grp].append(pearson(pred[ok], real[ok]))
            # mouth width: outer lip corners (face.LOWER_FACE positions 0 and 10)
            res[grp + " width"].append(pearson(mouth_width(pred_pts)[ok], mouth_width(c.points.float())[ok]))
            res[grp + " loudness"].append(pearson(loudness(c.audio, len(pred))[ok], real[ok]))
            if grp == "unseen speakers":  # 8 clips of 3 people: say who the mean is made of
                res[f"speaker {r['speaker']}"].append(res[grp][-1])
                res[f"speaker {r['speaker']} loudness"].append(res[grp + " loudness"][-1])
            res[grp + " amplitude"].append(curve_amplitude(pred[ok], real[ok]))
            if render:
                crops = np.stack([x for x, _ in generate_crops(g, c.crops[ri].permute(1, 2, 0).numpy(),
                                                               c.points[ri].numpy(), c.mel.float())])
                drawn = tracked_opening(crops)
                shown = tracked_opening(c.crops.permute(0, 2, 3, 1).numpy())
                seen = ok & np.isfinite(drawn) & np.isfinite(shown)
                res[grp + " rendered vs own motion"].append(pearson(drawn[seen], pred[seen]))
                res[grp + " rendered vs real"].append(pearson(drawn[seen], shown[seen]))
                res[grp + " rendered amplitude"].append(curve_amplitude(drawn[seen], shown[seen]))
                # The renderer's ceiling: the same clip drawn from the REAL landmark motion.
                out = g(c.mel.float()[None], ref, ref_pts, offsets=(c.points.float() - ref_pts)[None])
                taught = tracked_opening(np.stack(list(tensor_to_crops(out["frames"][0]))))
                seen = ok & np.isfinite(taught) & np.isfinite(shown)
                res[grp + " real motion rendered vs real"].append(pearson(taught[seen], shown[seen]))
                res[grp + " real motion rendered amplitude"].append(curve_amplitude(taught[seen], shown[seen]))
    return {k: float(np.mean(v)) for k, v in res.items()} | {k + " n": len(v) for k, v in res.items() if k.startswith("unseen") and k.count(" ") == 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="corpora/train")
    ap.add_argument("--selection", default="balanced-phoneme-240")
    ap.add_argument("--split", default="test")
    ap.add_argument("--checkpoint")
    ap.add_argument("--render", action=argparse.BooleanOptionalAction, default=False,
                    help="also render every clip and track landmarks on the result (minutes)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--window", type=int, default=12)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--phoneme-aux", type=float, default=0.0,
                    help="weight of a per-frame phoneme classification loss on the audio features")
    ap.add_argument("--swing-loss", type=float, default=0.0,
                    help="weight of a loss on how far the predicted lip gap swings within each window vs the real one")
    ap.add_argument("--synthetic-voices", type=int, default=0, metavar="N",
                    help="add N copies of every GRID training clip voiced by espeak-ng (scripts/synthetic_voices.py)")
    ap.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--speed", type=float, default=0.0, help="speaking-rate perturbation (TrainConfig.augment_speed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="generator config override for the trained probe, e.g. audio.lifter=20")
    ap.add_argument("--phones", choices=("recognised", "aligned"), default="recognised",
                    help="the phone track a generator that hears phones gets on the probed split")
    ap.add_argument("--out", help="append the result as a JSON line to this file")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    corpus = Path(args.corpus)
    cfg = config_from_json(DataConfig, corpus / "config.json")
    rows = read_manifest(corpus)
    train_speakers = {r["speaker"] for r in rows if r["split"] == "train"}
    test_rows = [r for r in rows if r["split"] == args.split]
    t0 = time.time()
    g = load_generator(args.checkpoint)[0] if args.checkpoint else None
    gcfg = g.cfg if g is not None else load_config(GeneratorConfig, None, ["motion_identity=false", *args.set])
    phones = args.phones if gcfg.phones != "none" else ""  # the track generate hears (phonetic.py)
    test = load_clips(corpus, test_rows, cfg, phones=phones)
    import soundfile as sf

    for c, r in zip(test, test_rows):  # the loudness reference needs the waveform
        c.audio = sf.read(corpus / "clips" / r["clip"] / "audio.wav", dtype="float32")[0]
    if g is None:
        chosen = set(json.loads((corpus / "selections" / f"{args.selection}.json").read_text())["clips"])
        train_rows = [r for r in rows if r["split"] == "train" and r["clip"] in chosen]
        train = load_clips(corpus, train_rows, cfg, phones="recognised" if phones else "")
        if args.synthetic_voices:
            from synthetic_voices import synthetic_copies

            train += synthetic_copies(train, train_rows, args.synthetic_voices, np.random.default_rng(1000 + args.seed))
        g = Generator(gcfg)
        head = torch.nn.Linear(g.cfg.audio.dim, len(PHONEMES))
        opt = torch.optim.Adam(g.motion_parameters() + list(head.parameters()), lr=args.lr, betas=(0.5, 0.999))
        sampler = WindowSampler(train, args.window, augment=args.augment, speed=args.speed, n_mels=cfg.audio.n_mels)
        rng = np.random.default_rng(args.seed)
        for step in range(args.steps):
            g.train()
            b = sampler.sample(args.batch_size, rng, targets=False)
            enc = g.encode_motion_reference(b["ref"], b["ref_points"])
            m = g.motion(b["mel"], enc)
            loss = F.l1_loss(m["points"], b["points"])
            if args.swing_loss > 0:  # L1 regresses to the median: uncertain voices get a damped mouth
                swing = mouth_open_from_points(m["points"]).std(1)  # (B,) over the window's frames
                loss = loss + args.swing_loss * F.l1_loss(swing, mouth_open_from_points(b["points"]).std(1))
            if args.phoneme_aux > 0:
                feats = g.audio_encoder(b["mel"].flatten(0, 1))  # (N*T, Da): computed again, cheap next to the GRU batch
                ph = b["phonemes"].flatten()
                keep = ph >= 0
                if keep.any():
                    loss = loss + args.phoneme_aux * F.cross_entropy(head(feats[keep]), ph[keep])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (step + 1) % 250 == 0:
                print(f"step {step + 1} loss {loss.item():.4f} {time.time() - t0:.0f} s", flush=True)
    res = probe(g, test, test_rows, train_speakers, render=args.render)
    res = {"args": {k: v for k, v in vars(args).items() if k != "out"}, "seconds": round(time.time() - t0), **res}
    print(json.dumps(res))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
