"""How dark the open mouth is, relative to the cheeks, in real footage and in dubs of it (issue 29).

Each talking-head video is dubbed with its own speech by every checkpoint given (as
`api.generate` does, the video as face and as speech; ``--no-interior``: without the video's
own mouth interiors), and on the real and on every dubbed frame the face mesh gives the
inner-lip polygon and two cheek patches; a frame's darkness is the mean luma (Rec. 601) inside the
inner lips over the cheeks' mean luma, averaged over the frames where the REAL mouth is clearly open
(inner-lip gap >= ``--open`` inter-ocular distances) and the generated frame's inner lips enclose
at least a few pixels. A real open mouth is dark (~0.3-0.5 of the cheeks); a painted flat fill is
lighter. Prints one line per clip and system, and writes a sheet per clip: the mouth at the four
most open real frames, real on top, each system below.

    python scripts/mouth_darkness.py --checkpoint src/talkingface/assets/talkingface.pt \
        [--videos ../shared/train/grid/s14/*.mp4 ...] [--open 0.12] [-o runs/mouth-darkness]
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import cv2
import numpy as np

from talkingface import api
from talkingface.config import FaceConfig
from talkingface.face import FaceMesh, interocular, mouth_opening
from talkingface.interior import INNER_MESH, RING
from talkingface.media import read_video

INNER_LIPS = INNER_MESH[RING]  # the inner-lip polygon, in order round it
CHEEKS = [50, 280]


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def measure(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Per frame: (opening, darkness, contrast, landmarks or None); contrast: the luma's standard
    deviation inside the inner lips over the cheeks' mean (teeth and cavity: high; a flat fill: low)."""
    opening, dark, contrast, lms = [], [], [], []
    with FaceMesh(FaceConfig(), video=True) as mesh:
        for f in frames:
            found = mesh.detect(np.ascontiguousarray(f))
            if found is None:
                opening.append(np.nan), dark.append(np.nan), contrast.append(np.nan), lms.append(None)
                continue
            lm = found.landmarks
            iod = float(interocular(lm))
            inner = np.zeros(f.shape[:2], np.uint8)
            cv2.fillPoly(inner, [np.round(lm[INNER_LIPS]).astype(np.int32)], 1)
            cheeks = np.zeros(f.shape[:2], np.uint8)
            for c in CHEEKS:
                cv2.circle(cheeks, tuple(int(v) for v in np.round(lm[c])), max(2, int(0.12 * iod)), 1, -1)
            y = luma(f.astype(np.float64))
            ok = inner.sum() >= 6 and cheeks.sum() > 0
            opening.append(float(mouth_opening(lm)))
            dark.append(float(y[inner > 0].mean() / y[cheeks > 0].mean()) if ok else np.nan)
            contrast.append(float(y[inner > 0].std() / y[cheeks > 0].mean()) if ok else np.nan)
            lms.append(lm)
    return np.array(opening), np.array(dark), np.array(contrast), lms


def mouth_tile(frame: np.ndarray, lm: np.ndarray, size: int = 96) -> np.ndarray:
    c = lm[INNER_LIPS].mean(0)
    half = int(0.55 * float(interocular(lm)))
    x0, y0 = int(c[0]) - half, int(c[1]) - half
    pad = np.pad(frame, ((half, half), (half, half), (0, 0)), mode="edge")
    crop = pad[y0 + half: y0 + 3 * half, x0 + half: x0 + 3 * half]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", action="append", required=True)
    ap.add_argument("--videos", nargs="+", default=None,
                    help="default: every non-s1 GRID and CREMA-D video in ../shared/train")
    ap.add_argument("--open", type=float, default=0.12, help="real inner-lip gap / IOD that counts as open")
    ap.add_argument("--interior", action=argparse.BooleanOptionalAction, default=True,
                    help="--no-interior: the generator's own fill, without the video's interiors (as before 2026-12-08)")
    ap.add_argument("-o", "--out", default="runs/mouth-darkness")
    a = ap.parse_args()
    videos = a.videos or sorted(p for p in glob.glob("../shared/train/*/*/*") if Path(p).suffix in (".mp4", ".mpg", ".flv", ".avi")
                                and "/grid/s1/" not in p)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    models = {Path(c).name: api.load_model(c) for c in a.checkpoint}
    rows = []
    for video in videos:
        real, _ = read_video(video, sample_rate=None)
        r_open, r_dark, r_con, r_lm = measure(real)
        open_ = r_open >= a.open
        line = {"video": video, "open_frames": int(open_.sum()), "real": float(np.nanmean(r_dark[open_])) if open_.any() else None,
                "real contrast": float(np.nanmean(r_con[open_])) if open_.any() else None}
        tiles = [[mouth_tile(real[k], r_lm[k]) for k in np.argsort(-np.nan_to_num(r_open, nan=-1))[:4]]]
        for name, model in models.items():
            p = api.prepare_inputs(video, video, model.config.crop_size)
            gen = np.stack(list(api._frames(model, p, 25.0, 50, False, api.AudioConfig(), interior=a.interior)))[: len(real)]
            g_open, g_dark, g_con, g_lm = measure(gen)
            use = open_[: len(gen)] & ~np.isnan(g_dark)
            line[name] = float(np.mean(g_dark[use])) if use.any() else None
            line[name + " contrast"] = float(np.mean(g_con[use])) if use.any() else None
            both = ~np.isnan(g_open) & ~np.isnan(r_open[: len(gen)])
            line[name + " open_corr"] = float(np.corrcoef(g_open[both], r_open[: len(gen)][both])[0, 1])
            tiles.append([mouth_tile(gen[k], g_lm[k] if g_lm[k] is not None else r_lm[k])
                          for k in np.argsort(-np.nan_to_num(r_open, nan=-1))[:4]])
        rows.append(line)
        sheet = np.concatenate([np.concatenate(t, 1) for t in tiles], 0)
        cv2.imwrite(str(out / f"{Path(video).parent.name}_{Path(video).stem}.jpg"), sheet[..., ::-1])
        vals = "  ".join(f"{k} {v:.3f} ({v - line['real']:+.3f}), contrast {line[k + ' contrast']:.3f}"
                         for k, v in line.items() if k in models and v is not None and line["real"] is not None)
        real = "none open" if line["real"] is None else f"{line['real']:.3f}, contrast {line['real contrast']:.3f}"
        print(f"{Path(video).parent.name}/{Path(video).name}: {line['open_frames']} open frames; real {real}  {vals}",
              flush=True)
    (out / "darkness.json").write_text(json.dumps(rows, indent=1) + "\n")
    for name in models:
        d = [r[name] - r["real"] for r in rows if r.get(name) is not None and r["real"] is not None]
        if d:
            c = [r[name + " contrast"] / r["real contrast"] for r in rows if r.get(name) is not None and r["real"] is not None]
            oc = [r[name + " open_corr"] for r in rows if r.get(name + " open_corr") is not None]
            print(f"{name}: darkness minus real's, mean {np.mean(d):+.3f}, within 0.08 on {sum(abs(x) <= 0.08 for x in d)}/{len(d)} "
                  f"clips; interior contrast {np.mean(c):.2f} of the real one's; opening correlation with the real "
                  f"mouth {np.mean(oc):.3f} (mean over clips)")


if __name__ == "__main__":
    main()
