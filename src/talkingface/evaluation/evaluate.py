"""`talkingface evaluate`: the numbers everyone uses, for one or more generator checkpoints and
simple baselines, on the held-out split of a prepared corpus, written as a report.

Protocols
- reconstruction: every clip of the split is regenerated from ONE frame of itself (its first frame
  with a face: GRID clips start with a closed mouth) and its own audio; generated crops are compared
  with the real ones (PSNR/SSIM on the crop and the mouth box, LMD and mouth opening/width
  correlation from landmarks detected on the generated crops, LSE-D/LSE-C, smoothness, identity).
- cross-audio: each clip's first frame driven by the audio of a clip of ANOTHER speaker from another
  collection (GRID face, CREMA-D voice and the reverse: ``other_clip_index``); only the
  measures that need no ground truth apply (LSE, smoothness, identity).
- calibration: the evaluation sync model must rank real clips with their own audio above the same
  clips with audio shifted by 0.5 s and 1 s, a still face, and another clip's audio.

With a landmark sync model (``SyncExpertConfig.visual = "landmarks"``) every sync number is also
measured a second way, from the mouth's landmark motion instead of its pixels (``*_lm`` columns,
``calibration_lm``): landmarks are detected on real and generated crops alike (``detect_landmarks``).

Systems: ``real`` (the real crops: the upper bound), ``still`` (the reference frame repeated: what
a metric must rank below a model), ``loudness-driven`` (lips opening with the speech envelope,
drawn by the first checkpoint's renderer: ``baselines.py``), and every checkpoint given. The sync
model used here must be a separately trained expert (other seed, other data), never the
generator's own critic.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..audio import loudness
from ..config import DataConfig, SyncExpertConfig, config_from_json
from ..data.corpus import read_manifest
from ..data.dataset import first_face, load_clips
from ..errors import TalkingFaceError
from ..face import detect_landmarks, mouth_motion
from ..inference import generate_crops, load_generator
from ..phonemes import VISEMES, viseme_ids
from ..models.sync_expert import SyncExpert
from ..training.checkpoint import load_model
from . import metrics as M
from .baselines import corpus_open_direction, loudness_activation, render_motion

log = logging.getLogger(__name__)

SHIFT_05S, SHIFT_1S = 13, 25  # frames at 25 fps (0.52 s, 1.0 s)
LOUDNESS = "loudness-driven"  # the baseline system's name in reports


def lower(crops: np.ndarray) -> torch.Tensor:
    """(T, S, S, 3) uint8 -> (T, 3, S/2, S) in [-1, 1] for the sync expert."""
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x[:, :, x.shape[2] // 2:]


def load_sync_model(path: str | Path, visual: str = "crops") -> tuple[SyncExpert, dict]:
    """An evaluation sync expert and its meta; refuses one whose video side is not ``visual``."""
    expert, cfg, meta = load_model(path, "sync", SyncExpert, SyncExpertConfig)
    if cfg.visual != visual:
        raise TalkingFaceError(f"{path}: a sync expert reading {cfg.visual!r}, expected {visual!r}")
    return expert, meta


def lm_sync(lm_expert, landmarks: np.ndarray, mel: torch.Tensor) -> dict[str, float]:
    """The landmark sync measure of one clip: (T, 478, 2) landmarks detected on its crops and its
    (T, n_mels, steps) audio windows -> :func:`metrics.lse` keys."""
    return M.lse(lm_expert, torch.from_numpy(mouth_motion(landmarks)), mel)


def clip_metrics(gen: np.ndarray, real: np.ndarray, real_lm: np.ndarray, real_curves: dict, ref: np.ndarray,
                 mel: torch.Tensor, silent: np.ndarray, expert, with_truth: bool = True,
                 av_offset: int = 0, visemes: np.ndarray | None = None,
                 by_viseme: dict | None = None, reader=None, lm_expert=None,
                 landmarks: np.ndarray | None = None) -> tuple[dict, dict | None]:
    """Metrics of one generated clip, and the mouth curves of its detected landmarks (None without
    ground truth, where no landmarks are detected). ``av_offset``: the real clip's own audio-visual
    offset (see :func:`real_av_offset`), for the ``*_av`` correlations. With ``visemes`` (T,) and a
    ``by_viseme`` dict, each 5-frame window's sync distance at offset 0 is appended to
    ``by_viseme[viseme of its middle frame]`` (frames of unknown phoneme are skipped). With a
    ``reader`` (viseme lip reader) and ``visemes``: ``viseme_acc``, how often it reads the viseme
    the speech needs off the frames. With ``lm_expert`` (a landmark sync expert): ``lse_d_lm``,
    ``lse_c_lm``, ``sync_dist_at_0_lm`` and ``av_offset_lm`` from the landmarks detected on ``gen``
    (or the given ``landmarks`` of it, to detect them once)."""
    s = gen.shape[1]
    m: dict[str, float] = {}
    gc = None
    gen_lm = landmarks
    if gen_lm is None and (with_truth or lm_expert is not None):
        gen_lm = detect_landmarks(gen)
    if with_truth:
        box = M.mouth_box(s)
        m["psnr"] = M.psnr(gen, real, max_db=60.0)
        m["ssim"] = M.ssim(gen, real)
        m["psnr_mouth"] = M.psnr(M.crop_box(gen, box), M.crop_box(real, box), max_db=60.0)
        m["ssim_mouth"] = M.ssim(M.crop_box(gen, box), M.crop_box(real, box))
        px, norm = M.lmd(gen_lm, real_lm, real_curves["iod"])
        m["lmd_px"], m["lmd_norm"] = px, norm
        gc = M.mouth_curves(gen_lm)
        m["open_corr"] = M.curve_correlation(gc["opening"], real_curves["opening"])
        m["width_corr"] = M.curve_correlation(gc["width"], real_curves["width"])
        m["open_amp"] = M.curve_amplitude(gc["opening"], real_curves["opening"])
        m["open_corr_av"] = M.curve_correlation(gc["opening"], real_curves["opening"], av_offset)
        m["width_corr_av"] = M.curve_correlation(gc["width"], real_curves["width"], av_offset)
    offsets, table, mids = M.sync_distance_table(expert, lower(gen), mel)
    ls = M.lse_from_table(offsets, table)
    if reader is not None and visemes is not None:
        from ..models.lip_reader import clip_visemes

        pred = clip_visemes(reader, lower(gen))
        ok = (visemes >= 0) & (pred >= 0)
        m["viseme_acc"] = float((pred[ok] == visemes[ok]).mean()) if ok.any() else float("nan")
    if visemes is not None and by_viseme is not None:
        d0 = table[:, offsets == 0][:, 0]
        for v, d in zip(visemes[mids], d0):
            if v >= 0 and np.isfinite(d):
                by_viseme.setdefault(VISEMES[v], []).append(float(d))
    m.update({"lse_d": ls["lse_d"], "lse_c": ls["lse_c"], "sync_dist_at_0": ls["dist_at_0"], "av_offset": ls["offset"]})
    if lm_expert is not None:
        ll = lm_sync(lm_expert, gen_lm, mel)
        m.update({"lse_d_lm": ll["lse_d"], "lse_c_lm": ll["lse_c"], "sync_dist_at_0_lm": ll["dist_at_0"],
                  "av_offset_lm": ll["offset"]})
    sm = M.smoothness(gen, M.mouth_box(s), silent)
    m["jitter"] = sm["accel"]
    m["jitter_silent"] = sm.get("accel_silent", float("nan"))
    idp = M.identity_preservation(gen, ref, s, max_db=60.0)
    m["id_psnr"], m["id_ssim"] = idp["psnr"], idp["ssim"]
    return m, gc


def system_name(checkpoint: str | Path, taken) -> str:
    """A checkpoint's name in reports: its file stem, or its run folder's name for the trainer's
    generic file names (runs/ablations/no-gru/generator.pt -> no-gru); the full path if taken."""
    p = Path(checkpoint)
    name = p.parent.name if p.stem in ("generator", "checkpoint") and p.parent.name else p.stem
    return name if name not in taken else str(checkpoint)


def checkpoint_systems(checkpoints: list[str], articulations: tuple[float, ...] = (1.0,)) -> list[tuple[str, str, float]]:
    """(name in reports, checkpoint, articulation) for every checkpoint at every articulation:
    "v4" at 1, "v4 x2" at 2 (``Generator.forward``)."""
    out, taken = [], set()
    for ck in checkpoints:
        base = system_name(ck, taken)
        taken.add(base)
        out += [(base if a == 1.0 else f"{base} x{a:g}", str(ck), float(a)) for a in articulations]
    return out


def file_stem(name: str) -> str:
    """A system or clip name as one file-name part: a full checkpoint path (a name taken twice) or
    a clip id "speaker/clip" must not become folders, and "v4 x2" gets no space."""
    return name.replace("/", "_").replace(" ", "_")


def real_av_offset(real_lse: dict, max_offset: int = 3) -> int:
    """The offset of a real clip's video against its own audio, as the evaluation sync expert finds
    it, trusted only when small (a recording lag); larger "offsets" are the expert failing on that
    clip and count as 0."""
    o = int(real_lse["av_offset"])
    return o if abs(o) <= max_offset else 0


def collection_of(row: dict) -> str:
    """The recording collection a corpus clip came from (the folder above its speaker folder, e.g.
    "grid" or "crema-d"): clips of one collection share a sentence grammar and recording set-up."""
    parts = Path(row.get("source", "")).parts
    return parts[-3] if len(parts) >= 3 else ""


def other_clip_index(k: int, speakers: list[str], collections: list[str]) -> int:
    """The clip whose audio drives clip k in the cross-audio protocol and the "another clip's audio"
    calibration row: another speaker from another collection where there is one (two GRID clips
    share one six-word grammar, so their audio lines up by chance and is no real mismatch), else
    another speaker, else the next clip. Candidates are taken in turn so one clip does not drive all."""
    n = len(speakers)
    for ok in (lambda j: speakers[j] != speakers[k] and collections[j] != collections[k],
               lambda j: speakers[j] != speakers[k],
               lambda j: j != k):
        cand = [j for j in range(n) if ok(j)]
        if cand:
            return cand[k % len(cand)]
    return k


def evaluate(checkpoints: list[str], corpus: str | Path, split: str, sync_model: str | Path, out_dir: str | Path,
             max_clips: int = 0, progress: bool = True, lip_reader: str | Path | None = None,
             articulations: tuple[float, ...] = (1.0,), keep_expression: bool = True,
             landmark_sync_model: str | Path | None = None, phones: str = "recognised", live: bool = False) -> dict:
    """``phones``: which phone track of the corpus (``prepare``'s ``phones.npz``) checkpoints that
    hear phones get: "recognised" (what ``generate`` does without a transcript) or "aligned" (with one).
    ``live``: every checkpoint is also run as a live session runs it (``streaming.live_windows``:
    the clip's audio pushed in 40 ms pieces, running normalisation), as the system "NAME (live)";
    the judges hear the offline windows for both."""
    from tqdm import tqdm

    corpus = Path(corpus)
    data_cfg = config_from_json(DataConfig, corpus / "config.json")
    all_rows = read_manifest(corpus)
    train_speakers = {r["speaker"] for r in all_rows if r["split"] == "train"}
    rows = [r for r in all_rows if r["split"] == split]
    if not rows:
        raise TalkingFaceError(f"{corpus}: no clips in split {split!r}")
    # Spread the budget over speakers: every held-out speaker first, then the rest in order.
    from collections import Counter

    per_speaker = Counter(r["speaker"] for r in rows)  # counted first: list.sort empties the list while it sorts
    rows.sort(key=lambda r: (per_speaker[r["speaker"]], r["clip"]))
    if max_clips:
        rows = rows[:max_clips]
    expert, meta = load_sync_model(sync_model)
    lm_expert, lm_meta = load_sync_model(landmark_sync_model, "landmarks") if landmark_sync_model else (None, {})
    reader = None
    if lip_reader:
        from ..config import LipReaderConfig
        from ..models.lip_reader import LipReader

        reader, _, _ = load_model(lip_reader, "lipread", LipReader, LipReaderConfig)
    loaded = {c: load_generator(c)[0] for c in checkpoints}
    gens = {name: (loaded[c], a) for name, c, a in checkpoint_systems(checkpoints, articulations)}
    out_dir = Path(out_dir)
    (out_dir / "sheets").mkdir(parents=True, exist_ok=True)
    # Models without phones (and the sync experts) read the mel rows alone (AudioEncoder).
    clips = load_clips(corpus, rows, data_cfg, phones=phones if any(g.cfg.phones != "none" for g in loaded.values()) else "")
    other_of = [other_clip_index(k, [r["speaker"] for r in rows], [collection_of(r) for r in rows])
                for k in range(len(rows))]
    # The loudness-driven mouth, rendered by the first checkpoint's renderer (see baselines.py).
    loud_renderer, open_dir = None, None
    train_rows = [r for r in all_rows if r["split"] == "train"]
    if gens and train_rows:
        loud_renderer = next(iter(loaded.values()))
        open_dir = corpus_open_direction(corpus, train_rows, data_cfg.face.crop_size)
    elif gens:
        log.info("no train clips in %s: the loudness-driven baseline (fitted on them) is left out", corpus)
    import soundfile as sf

    from ..streaming import LiveFeatures, live_windows

    live_silence = LiveFeatures().silence() if live else None  # what a live session's rest is made from
    per_clip: dict[str, dict[str, dict]] = {}
    # Per measure ("" pixels, "_lm" landmarks): calibration condition -> per-clip values.
    calibs: dict[str, dict[str, list[float]]] = {"": {}, "_lm": {}} if lm_expert is not None else {"": {}}
    by_viseme: dict[str, dict[str, list[float]]] = {}  # system -> viseme -> window sync distances at offset 0
    curves = {}
    t0 = time.time()
    for k, c in enumerate(tqdm(clips, desc="evaluate", unit="clip", disable=not progress)):
        audio, _ = sf.read(corpus / "clips" / c.clip / "audio.wav", dtype="float32")
        t = len(c.crops)
        real = c.crops.permute(0, 2, 3, 1).numpy()
        real_lm = detect_landmarks(real)
        real_curves = M.mouth_curves(real_lm)
        loud_db = loudness(audio, t)
        ri = first_face(c)
        ref = real[ri]
        still = np.repeat(ref[None], t, 0)
        silent = M.silence_mask(audio, t)
        mel = c.mel.float()
        vk = {"visemes": viseme_ids(c.phonemes.numpy()), "reader": reader, "lm_expert": lm_expert}
        res = {"real": clip_metrics(real, real, real_lm, real_curves, ref, mel, silent, expert, with_truth=False,
                                    by_viseme=by_viseme.setdefault("real", {}), landmarks=real_lm, **vk)[0]}
        av = real_av_offset(res["real"])
        res["real"]["av_offset_used"] = float(av)
        res["still"] = clip_metrics(still, real, real_lm, real_curves, ref, mel, silent, expert, av_offset=av,
                                    by_viseme=by_viseme.setdefault("still", {}), **vk)[0]
        res["real"]["loudness_open_corr"] = M.curve_correlation(loud_db, real_curves["opening"])
        res["real"]["loudness_open_corr_av"] = M.curve_correlation(loud_db, real_curves["opening"], av)
        other = clips[other_of[k]]
        if loud_renderer is not None:
            offsets = loudness_activation(loud_db)[:, None, None] * open_dir[None]
            loud = render_motion(loud_renderer, ref, c.points[ri].numpy(), offsets)
            res[LOUDNESS] = clip_metrics(loud, real, real_lm, real_curves, ref, mel, silent, expert, av_offset=av,
                                         by_viseme=by_viseme.setdefault(LOUDNESS, {}), **vk)[0]
        for name, (g, art) in gens.items():
            gen = np.stack([x for x, _ in generate_crops(g, ref, c.points[ri].numpy(), mel, articulation=art,
                                                      keep_expression=keep_expression)])
            res[name], gen_curves = clip_metrics(gen, real, real_lm, real_curves, ref, mel, silent, expert, av_offset=av,
                                                 by_viseme=by_viseme.setdefault(name, {}), **vk)
            # cross-audio: the same face driven by another clip's audio (another speaker where possible)
            omel = other.mel.float()
            xgen = np.stack([x for x, _ in generate_crops(g, ref, c.points[ri].numpy(), omel, articulation=art,
                                                       keep_expression=keep_expression)])
            osil = M.silence_mask(sf.read(corpus / "clips" / other.clip / "audio.wav", dtype="float32")[0], len(omel))
            res[f"{name} (cross-audio)"] = clip_metrics(xgen, real, real_lm, real_curves, ref, omel, osil, expert,
                                                        with_truth=False, lm_expert=lm_expert)[0]
            if live and g.cfg.phones == "none":
                lwin = live_windows(audio, t)
                lgen = np.stack([x for x, _ in generate_crops(g, ref, c.points[ri].numpy(), lwin, articulation=art,
                                                           keep_expression=keep_expression, silence=live_silence)])
                res[f"{name} (live)"] = clip_metrics(lgen, real, real_lm, real_curves, ref, mel, silent, expert,
                                                     av_offset=av, by_viseme=by_viseme.setdefault(f"{name} (live)", {}),
                                                     **vk)[0]
            if k < 3:
                _sheet(out_dir / "sheets" / f"{file_stem(c.clip)}_{file_stem(name)}.jpg", real, gen)
                curves.setdefault(name, (real_curves["opening"], gen_curves["opening"], loud_db, c.clip))
        per_clip[c.clip] = res
        # Calibration on the real clip: real audio and the still face are the rows measured above.
        lr = lower(real)
        shifted = {"audio shifted 0.5 s": torch.roll(mel, SHIFT_05S, 0), "audio shifted 1 s": torch.roll(mel, SHIFT_1S, 0),
                   "another clip's audio": _fit(other.mel.float(), t)}
        for sfx, calib in calibs.items():
            cal = {label: {k: res[sys_][k + sfx] for k in ("sync_dist_at_0", "lse_c", "lse_d")}
                   for label, sys_ in (("real audio", "real"), ("still face", "still"))}
            for label, m_ in shifted.items():
                ls = M.lse(expert, lr, m_) if sfx == "" else lm_sync(lm_expert, real_lm, m_)
                cal[label] = {"sync_dist_at_0": ls["dist_at_0"], "lse_c": ls["lse_c"], "lse_d": ls["lse_d"]}
            for label, v in cal.items():
                calib.setdefault(label, []).append(v["sync_dist_at_0"])
                calib.setdefault(label + " LSE-C", []).append(v["lse_c"])
                calib.setdefault(label + " LSE-D", []).append(v["lse_d"])
    systems = sorted({s for r in per_clip.values() for s in r}, key=lambda s: (s not in ("real", "still", LOUDNESS), s))
    summary = {}
    for s in systems:
        keys = sorted({k for r in per_clip.values() if s in r for k in r[s]})
        summary[s] = {k: float(np.nanmean([r[s][k] for r in per_clip.values() if s in r and k in r[s]])) for k in keys}
    # The same means for clips of speakers never trained on, and for unseen sentences of trained speakers.
    group_of = {c.clip: ("unseen speakers" if c.speaker not in train_speakers else "unseen sentences") for c in clips}
    by_group = {}
    for grp in sorted(set(group_of.values())):
        sub = {k: v for k, v in per_clip.items() if group_of[k] == grp}
        by_group[grp] = {"clips": len(sub), "speakers": sorted({c.speaker for c in clips if group_of[c.clip] == grp})}
        for s in systems:
            keys = sorted({k for r in sub.values() if s in r for k in r[s]})
            by_group[grp][s] = {k: float(np.nanmean([r[s][k] for r in sub.values() if s in r and k in r[s]])) for k in keys}
    result = {"corpus": str(corpus), "split": split, "clips": [c.clip for c in clips], "sync_model": str(sync_model),
              "sync_model_meta": meta, "checkpoints": checkpoints, "articulations": list(articulations),
              "keep_expression": keep_expression, "summary": summary, "by_group": by_group}
    groups = {grp: [k for k, c in enumerate(clips) if group_of[c.clip] == grp] for grp in by_group}
    for sfx, calib in calibs.items():
        cal, wins, cal_groups = calibration_tables(calib, groups)
        result.update({f"calibration{sfx}": cal, f"calibration_real_wins{sfx}": wins, f"calibration_by_group{sfx}": cal_groups})
    if lm_expert is not None:
        result.update(landmark_sync_model=str(landmark_sync_model), landmark_sync_model_meta=lm_meta)
    result["paired"] = paired_comparisons(per_clip, {g: [c for c in per_clip if group_of[c] == g] for g in by_group})
    result.update({"per_clip": per_clip, "seconds": round(time.time() - t0, 1),
                   "sync_by_viseme": {sys_: {v: {"mean": float(np.mean(d)), "n": len(d)} for v, d in vs.items()}
                                      for sys_, vs in by_viseme.items()}})
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    _plots(out_dir, summary, curves)
    _viseme_plot(out_dir / "sync_by_viseme.png", result["sync_by_viseme"])
    (out_dir / "report.md").write_text(_report(result))
    return result


def calibration_tables(calib: dict[str, list[float]], groups: dict[str, list[int]]) -> tuple[dict, dict, dict]:
    """One sync measure's calibration from its per-clip values (condition -> one value per clip, and
    "<condition> LSE-D" / "<condition> LSE-C"): the means, on how many clips real audio is closer at
    offset 0 than each mismatch, and both again within each group (name -> clip positions)."""
    if not calib:
        return {}, {}, {}
    cal = {k: float(np.mean(v)) for k, v in calib.items()}
    conditions = [k for k in calib if not k.endswith(("LSE-C", "LSE-D"))]
    real_d = np.array(calib["real audio"])
    wins = {k: int(np.sum(real_d < np.array(calib[k]))) for k in conditions if k != "real audio"}
    # The calibration again within each group: the expert was trained on one speaker, and whether it
    # still ranks real audio first on people it never saw is what decides if its numbers there mean sync.
    by_group = {grp: {label: {"sync_dist_at_0": float(np.mean(np.array(calib[label])[ks])),
                              "lse_d": float(np.mean(np.array(calib[label + " LSE-D"])[ks])),
                              "real_wins": int(np.sum(real_d[ks] < np.array(calib[label])[ks]))}
                      for label in conditions}
                for grp, ks in groups.items()}
    return cal, wins, by_group


# Measures compared clip by clip in the report (name, lower is better). Jitter is left out: real
# video jitters more than every model, so lower is not better.
PAIRED_MEASURES = (("lse_d_lm", True), ("lse_d", True), ("open_corr", False), ("width_corr", False),
                   ("psnr_mouth", False), ("lmd_norm", True), ("viseme_acc", False))


def paired_comparisons(per_clip: dict[str, dict], groups: dict[str, list[str]], seed: int = 0) -> dict:
    """Each generated system against the loudness-driven mouth (the cheapest trick that looks
    synced: every measure must rank a real model above it) and, with several checkpoints, each
    against the first, clip by clip (:func:`metrics.paired_gain`): ``{"a -> b": {measure: {group:
    gain}}}`` over all clips and within each group (name -> clip ids)."""
    systems = {s for r in per_clip.values() for s in r}
    generated = {s for s in systems if s not in ("real", "still", LOUDNESS) and not s.endswith("(cross-audio)")}
    models = list(dict.fromkeys(s for r in per_clip.values() for s in r if s in generated))  # --checkpoint order
    pairs = [(LOUDNESS, m) for m in models if LOUDNESS in systems] + [(models[0], m) for m in models[1:]]
    groups = {"all": list(per_clip), **groups}
    out = {}
    for a, b in pairs:
        rng = np.random.default_rng(seed)
        res = {}
        for key, lower_better in PAIRED_MEASURES:
            by_group = {g: M.paired_gain(clip_values(per_clip, a, key, clips), clip_values(per_clip, b, key, clips),
                                         lower_better, rng) for g, clips in groups.items()}
            if by_group["all"].get("n"):
                res[key] = by_group
        out[f"{a} -> {b}"] = res
    return out


def clip_values(per_clip: dict[str, dict], system: str, key: str, clips: list[str]) -> np.ndarray:
    """One system's value of one measure on each of the given clips (NaN where it has none)."""
    return np.array([per_clip[c].get(system, {}).get(key, np.nan) for c in clips], float)


def _fit(mel: torch.Tensor, t: int) -> torch.Tensor:
    """Another clip's per-frame audio windows, cut or looped to t frames."""
    reps = int(np.ceil(t / len(mel)))
    return mel.repeat(reps, 1, 1)[:t]


def _sheet(path: Path, real: np.ndarray, gen: np.ndarray) -> None:
    from ..viz import image_grid, save_image

    idx = np.linspace(0, len(real) - 1, 8).round().astype(int)
    save_image(path, image_grid(list(real[idx]) + list(gen[idx]), cols=len(idx)))


def _plots(out_dir: Path, summary: dict, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["psnr_mouth", "ssim_mouth", "lmd_norm", "open_corr", "width_corr", "lse_d", "lse_c", "sync_dist_at_0",
            "jitter", "jitter_silent"]
    systems = list(summary)
    fig, axes = plt.subplots(2, 5, figsize=(20, 7))
    for ax, k in zip(axes.flat, keys):
        vals = [summary[s].get(k, np.nan) for s in systems]
        ax.bar(range(len(systems)), vals)
        ax.set_xticks(range(len(systems)), systems, rotation=60, ha="right", fontsize=7)
        ax.set_title(k)
    fig.tight_layout()
    fig.savefig(out_dir / "metrics.png", dpi=80)
    plt.close(fig)
    for name, (ro, go, loud, clip) in curves.items():
        fig, ax = plt.subplots(figsize=(8, 3))
        ax.plot(ro, label="real opening")
        ax.plot(go, label=f"{name} opening")
        ax2 = ax.twinx()
        ax2.plot(loud, "k:", alpha=0.5, label="loudness (dB)")
        ax.set_xlabel("frame")
        ax.set_title(clip)
        ax.legend(loc="upper left", fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / f"mouth_opening_{name}.png", dpi=80)
        plt.close(fig)


def _viseme_plot(path: Path, sbv: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vis = [v for v in VISEMES if any(v in d for d in sbv.values())]
    if not vis:
        return
    fig, ax = plt.subplots(figsize=(12, 4))
    width = 0.8 / max(1, len(sbv))
    for i, (name, d) in enumerate(sbv.items()):
        ax.bar(np.arange(len(vis)) + i * width, [d.get(v, {}).get("mean", np.nan) for v in vis], width, label=name)
    ax.set_xticks(np.arange(len(vis)) + 0.4 - width / 2, [f"{v}\n({sbv.get('real', {}).get(v, {}).get('n', 0)})" for v in vis],
                  fontsize=7)
    ax.set_ylabel("sync distance at offset 0 (lower = in sync)")
    ax.set_title("Lip sync by viseme of the window's middle frame (evaluation expert)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _report(r: dict) -> str:
    s = r["summary"]
    cols = ["psnr", "ssim", "psnr_mouth", "ssim_mouth", "lmd_px", "lmd_norm", "open_corr", "open_amp", "width_corr", "lse_d",
            "lse_c", "sync_dist_at_0", "av_offset", "viseme_acc", "jitter", "jitter_silent", "id_psnr", "id_ssim"]
    lines = [f"# Evaluation: {r['corpus']} split `{r['split']}` ({len(r['clips'])} clips)", "",
             f"Sync model (evaluation expert, not the training critic): `{r['sync_model']}`.", "",
             "## Calibration of the sync measure (real held-out clips)", ""]
    lines += _calibration_lines(r, "")
    if r.get("calibration_lm"):
        lines += ["", f"### Landmark sync measure: `{r['landmark_sync_model']}`", "",
                  "The same calibration with a second evaluation expert whose video side is the mouth's landmark motion "
                  "(detected on the crops, in the canonical face frame, minus the clip's own mean shape), not its pixels: it "
                  "cannot key on the training speaker's looks. Its numbers are the `*_lm` columns below.", ""]
        lines += _calibration_lines(r, "_lm")
    lines += ["", "LSE-D takes the best offset within +-15 frames, so audio shifted 0.5 s (13 frames) is found back "
              "in sync at offset +13: on that row only the distance at offset 0 measures a mismatch."]
    if r.get("calibration_lm"):
        cols = cols[:cols.index("av_offset") + 1] + ["lse_d_lm", "lse_c_lm", "sync_dist_at_0_lm"] + cols[cols.index("av_offset") + 1:]
    lines += ["", "## Results", ""]
    if r.get("keep_expression"):
        lines += ["Generated with `--keep-expression` (the default of `generate`): the reference frame's mouth is each model's rest.", ""]
    elif r.get("checkpoints"):
        lines += ["Generated with `--no-keep-expression`: each model's own learnt rest.", ""]
    lines += ["| system | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, m in s.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.3f}" if c in m and np.isfinite(m[c]) else "" for c in cols) + " |")
    short = ["psnr_mouth", "ssim_mouth", "lmd_norm", "open_corr", "open_corr_av", "open_amp", "width_corr", "width_corr_av",
             "viseme_acc", "lse_d", "lse_c", "sync_dist_at_0", "jitter"]
    if r.get("calibration_lm"):
        short = short[:-1] + ["lse_d_lm", "lse_c_lm", "sync_dist_at_0_lm"] + short[-1:]
    for grp, g in r["by_group"].items():
        lines += ["", f"### {grp}: {g['clips']} clips ({', '.join(g['speakers'])})", "",
                  "| system | " + " | ".join(short) + " |", "|---|" + "---|" * len(short)]
        for name in s:
            if name in g:
                m = g[name]
                lines.append(f"| {name} | " + " | ".join(f"{m[c]:.3f}" if c in m and np.isfinite(m[c]) else "" for c in short) + " |")
        lines.append(f"\nLoudness vs real mouth opening, correlation: {g['real'].get('loudness_open_corr', float('nan')):.3f} "
                     f"(AV-corrected: {g['real'].get('loudness_open_corr_av', float('nan')):.3f}; real clips' own "
                     f"audio-visual offset used, mean {g['real'].get('av_offset_used', 0.0):+.2f} frames)")
    sbv = r.get("sync_by_viseme", {})
    vis = [v for v in VISEMES if v in sbv.get("real", {})]
    if vis:
        lines += ["", "### Lip sync by viseme (sync distance at offset 0 of 5-frame windows, by the viseme of the middle "
                  "frame; lower = in sync; n = windows)", "",
                  "| system | " + " | ".join(f"{v} (n={sbv['real'][v]['n']})" for v in vis) + " |", "|---|" + "---|" * len(vis)]
        for name, d in sbv.items():
            lines.append(f"| {name} | " + " | ".join(f"{d[v]['mean']:.3f}" if v in d else "" for v in vis) + " |")
        lines.append("\nPlot: `sync_by_viseme.png`.")
    lines += _paired_lines(r.get("paired", {}))
    lines += ["", "Loudness baseline: correlation of speech loudness (dB) with the real mouth opening: "
              f"{s['real'].get('loudness_open_corr', float('nan')):.3f} "
              f"(AV-corrected: {s['real'].get('loudness_open_corr_av', float('nan')):.3f}).", "",
              "Columns: PSNR (dB) / SSIM on the 128 px aligned crop and on its mouth box; LMD on the 20 mouth points "
              "(pixels at 128 px, and / inter-ocular distance); open/width_corr: Pearson correlation of mouth opening and "
              "width (landmarks detected on generated vs real crops); *_av: the same after undoing the real clip's own "
              "audio-visual offset as the evaluation expert measures it (|offset| <= 3 frames, else 0; CREMA-D's video leads "
              "its audio by ~2 frames), applied alike to every system and to loudness; LSE-D/LSE-C: SyncNet-style distance / confidence of "
              "our evaluation expert over offsets -15..15 (not comparable with published SyncNet numbers); sync_dist_at_0: "
              "distance at zero offset; *_lm: the same from the landmark sync expert, where one is given; av_offset: best offset in frames; viseme_acc: how often the viseme lip reader "
              "(trained apart from the generator) reads the viseme the speech needs off the frames; jitter: mean |second difference| of the mouth box "
              "(0-255), overall and within silent stretches; id_psnr/id_ssim: upper face vs the reference frame.",
              f"Took {r['seconds']} s."]
    return "\n".join(lines) + "\n"


def _paired_lines(paired: dict) -> list[str]:
    """The clip-by-clip comparisons: a table per pair, a row per measure, a column per group."""
    if not any(paired.values()):
        return []
    lines = ["", "### Clip by clip", "",
             "Each model against the loudness-driven mouth and, with several checkpoints, against the first one, on the "
             "same clips: the mean gain of the second (positive = better; lower-is-better measures flipped), its 95% "
             "bootstrap interval over clips, and on how many clips the second is better."]
    for pair, res in paired.items():
        if not res:
            continue
        groups = list(next(iter(res.values())))
        lines += ["", f"`{pair}`:", "", "| measure | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
        for key, by_group in res.items():
            cells = [f"{c['gain']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}] {c['better']}/{c['n']}" if c.get("n") else ""
                     for c in by_group.values()]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def _calibration_lines(r: dict, sfx: str) -> list[str]:
    """The calibration table of one sync measure ("" the pixel expert, "_lm" the landmark one), its
    rankings, and the same per group."""
    lines = ["| condition | sync distance at offset 0 (lower = in sync) | real audio closer on | LSE-D (min over offsets) | LSE-C |",
             "|---|---|---|---|---|"]
    conditions = ("real audio", "audio shifted 0.5 s", "audio shifted 1 s", "still face", "another clip's audio")
    cal = r[f"calibration{sfx}"]
    wins = r.get(f"calibration_real_wins{sfx}", {})
    for label in conditions:
        won = f"{wins[label]}/{len(r['clips'])} clips" if label in wins else ""
        lines.append(f"| {label} | {cal[label]:.3f} | {won} | {cal.get(label + ' LSE-D', float('nan')):.3f} | {cal[label + ' LSE-C']:.3f} |")
    for title, key in (("sync distance at offset 0", ""), ("LSE-D", " LSE-D")):
        if all(c + key in cal for c in conditions):
            order = sorted(conditions, key=lambda c: cal[c + key])
            lines.append(f"\nRanked by {title} (best first): " + " < ".join(f"{c} ({cal[c + key]:.3f})" for c in order))
    groups = {g: v for g, v in r.get(f"calibration_by_group{sfx}", {}).items() if v}
    if groups:
        lines += ["", "Per group: sync distance at offset 0 / LSE-D (real audio closer at offset 0 on n of the group's clips):", "",
                  "| group | " + " | ".join(conditions) + " |", "|---|" + "---|" * len(conditions)]
        for g, v in groups.items():
            n = r["by_group"][g]["clips"]
            lines.append(f"| {g} ({n} clips) | " + " | ".join(
                f"{v[c]['sync_dist_at_0']:.3f} / {v[c]['lse_d']:.3f}" + ("" if c == "real audio" else f" ({v[c]['real_wins']}/{n})")
                for c in conditions) + " |")
    return lines


def evaluate_stills(checkpoints: list[str], portraits: str | Path, speech: str | Path, sync_model: str | Path,
                    out_dir: str | Path, progress: bool = True, articulations: tuple[float, ...] = (1.0,),
                    keep_expression: bool = True, landmark_sync_model: str | Path | None = None) -> dict:
    """The stills test: every portrait driven by a speech clip (taken in turn), through the full
    `generate` pipeline. Saves full-size contact sheets and returns sync and smoothness measures,
    computed on the generated frames re-aligned with the photo's own alignment; with
    ``landmark_sync_model`` also the landmark sync measure (``*_lm``), the one of the two that does
    not depend on how much a portrait looks like the training speaker."""
    import cv2

    from .. import api
    from ..audio import frame_windows
    from ..face import warp_face
    from ..media import AUDIO_SUFFIXES, IMAGE_SUFFIXES
    from ..viz import image_grid, save_image

    out_dir = Path(out_dir)
    (out_dir / "stills").mkdir(parents=True, exist_ok=True)
    expert, _ = load_sync_model(sync_model)
    lm_expert = load_sync_model(landmark_sync_model, "landmarks")[0] if landmark_sync_model else None
    photos = sorted(p for p in Path(portraits).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    clips = sorted(p for p in Path(speech).iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    if not photos or not clips:
        raise TalkingFaceError(f"need photos in {portraits} and speech files in {speech}")
    results: dict[str, dict] = {}
    models = {ck: api.load_model(ck) for ck in checkpoints}
    for name, ck, art in checkpoint_systems(checkpoints, articulations):  # the same names as evaluate's tables
        model = models[ck]
        fname = file_stem(name)
        for i, photo in enumerate(photos):
            sp = clips[i % len(clips)]
            p = api.prepare_inputs(photo, sp, model.config.crop_size, phones=model.config.phones != "none")
            frames = list(api._frames(model, p, 25.0, 50, False, api.AudioConfig(), articulation=art,
                                      keep_expression=keep_expression))
            crops = np.stack([warp_face(f, p.src_matrix, model.config.crop_size) for f in frames])
            mel = frame_windows(p.mel, len(frames))
            ls = M.lse(expert, lower(crops), mel)
            still = M.lse(expert, lower(np.repeat(crops[:1], len(crops), 0)), mel)
            sm = M.smoothness(crops, M.mouth_box(crops.shape[1]))
            lms = detect_landmarks(crops)
            key = f"{name}: {photo.stem} + {sp.stem}"
            results[key] = {"system": name, "lse_d": ls["lse_d"], "lse_c": ls["lse_c"], "sync_dist_at_0": ls["dist_at_0"],
                            "still_sync_dist_at_0": still["dist_at_0"], "jitter": sm["accel"],
                            "mouth_open_range": float(np.ptp(M.mouth_curves(lms)["opening"]))}
            if lm_expert is not None:
                ll = lm_sync(lm_expert, lms, mel)
                still_lm = lm_sync(lm_expert, np.repeat(lms[:1], len(lms), 0), mel)
                results[key].update({"lse_d_lm": ll["lse_d"], "lse_c_lm": ll["lse_c"], "sync_dist_at_0_lm": ll["dist_at_0"],
                                     "still_sync_dist_at_0_lm": still_lm["dist_at_0"]})
            idx = np.linspace(0, len(frames) - 1, 10).round().astype(int)
            w = 360
            small = [cv2.resize(frames[j], (w, int(frames[j].shape[0] * w / frames[j].shape[1])), interpolation=cv2.INTER_AREA) for j in idx]
            save_image(out_dir / "stills" / f"{fname}_{photo.stem}.jpg", image_grid(small, cols=5))
            # the lower face at full photo resolution, where the detail is judged
            x0, y0, x1, y1 = _face_box(p.src_matrix, model.config.crop_size, frames[0].shape)
            zoom = [cv2.resize(frames[j][y0:y1, x0:x1], (256, int(256 * (y1 - y0) / max(1, x1 - x0)))) for j in idx]
            save_image(out_dir / "stills" / f"{fname}_{photo.stem}_mouth.jpg", image_grid(zoom, cols=5))
    (out_dir / "stills.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def _face_box(m: np.ndarray, s: int, shape) -> tuple[int, int, int, int]:
    """Image-space box of the crop's lower half."""
    from ..face import invert, transform_points

    pts = transform_points(invert(m), np.array([[0, s * 0.45], [s, s * 0.45], [0, s], [s, s]], np.float32))
    x0, y0 = np.maximum(0, pts.min(0).astype(int))
    x1, y1 = pts.max(0).astype(int)
    return int(x0), int(y0), int(min(shape[1], x1)), int(min(shape[0], y1))


def stills_report(stills: dict) -> str:
    """The stills test as report.md sections: per system means, then every portrait/speech pair."""
    keys = ["lse_d", "lse_c", "sync_dist_at_0", "still_sync_dist_at_0", "jitter", "mouth_open_range"]
    titles = ["LSE-D", "LSE-C", "sync dist at 0", "same, still face", "jitter", "mouth opening range"]
    if all("lse_d_lm" in m for m in stills.values()):
        keys += ["lse_d_lm", "sync_dist_at_0_lm", "still_sync_dist_at_0_lm"]
        titles += ["LSE-D (landmarks)", "sync dist at 0 (landmarks)", "same, still face (landmarks)"]
    head = "| " + " | ".join(titles) + " |\n|---|" + "---|" * len(titles) + "\n"
    systems = list(dict.fromkeys(m["system"] for m in stills.values()))
    out = "\n## Stills: portraits driven by speech (full generate pipeline)\n\nMeans per system:\n\n| system " + head
    for s_ in systems:
        rows = [m for m in stills.values() if m["system"] == s_]
        out += f"| {s_} | " + " | ".join(f"{np.mean([m[k] for m in rows]):.3f}" for k in keys) + " |\n"
    out += "\nEvery pair:\n\n| pair " + head
    for k, m in stills.items():
        out += f"| {k} | " + " | ".join(f"{m[c]:.3f}" for c in keys) + " |\n"
    return out + "\nContact sheets: `stills/`.\n"
