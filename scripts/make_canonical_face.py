"""Build src/talkingface/assets/canonical_face.npy: the mean frontal face shape that every crop is
aligned to. Averages MediaPipe landmarks (normalised: eye midpoint at the origin, inter-ocular
distance 1, eyes level) over the first, mouth-closed frame of clips of several people and over
still portraits.

    python scripts/make_canonical_face.py ../shared/train ../shared/data/portraits
"""

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from talkingface.face import FaceMesh, normalize_shape
from talkingface.media import is_image, iter_video, read_image

VIDEO_SUFFIXES = {".mp4", ".mpg", ".avi", ".mov", ".flv", ".mkv", ".webm"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--per-speaker", type=int, default=10, help="clips used per speaker folder")
    ap.add_argument("-o", "--out", default="src/talkingface/assets/canonical_face.npy")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)

    shapes = []
    with FaceMesh() as mesh:
        for folder in args.folders:
            files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES or is_image(p))
            by_dir: dict[Path, list[Path]] = {}
            for p in files:
                by_dir.setdefault(p.parent, []).append(p)
            for d, ps in by_dir.items():
                per_speaker = []
                for p in ps[: args.per_speaker] if not is_image(ps[0]) else ps:
                    img = read_image(p) if is_image(p) else next(iter_video(p))
                    face = mesh.detect(img)
                    if face is not None:
                        per_speaker.append(normalize_shape(face.landmarks))
                if per_speaker:
                    # Each person weighs the same, however many clips they have.
                    if is_image(ps[0]):
                        shapes.extend(per_speaker)
                    else:
                        shapes.append(np.mean(per_speaker, 0))
                    logging.info("%s: %d faces", d, len(per_speaker))
    if not shapes:
        sys.exit("no faces found")
    mean = np.mean(shapes, 0).astype(np.float32)
    np.save(args.out, mean)
    logging.info("saved %s from %d people/photos", args.out, len(shapes))


if __name__ == "__main__":
    main()
