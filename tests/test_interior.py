"""Dubbing's mouth interior from the video itself: the library picks a source frame shaped like
the generated mouth, and pasting changes only the inside of the lips."""

from pathlib import Path

import numpy as np
import pytest

from talkingface.config import FaceConfig
from talkingface.face import FaceMesh, interocular
from talkingface.interior import INNER_MESH, InteriorLibrary, inner_shape
from talkingface.media import read_video

GRID = Path(__file__).parent / "data/grid/s1/bbaf2n.mp4"


@pytest.fixture(scope="module")
def clip():
    frames, _ = read_video(GRID, sample_rate=None)
    with FaceMesh(FaceConfig(), video=True) as mesh:
        lms = [f.landmarks if (f := mesh.detect(x)) is not None else None for x in frames]
    return frames, lms


def test_the_library_picks_a_frame_with_a_matching_mouth(clip):
    frames, lms = clip
    library = InteriorLibrary(lambda k: frames[k], lms)
    assert 5 <= len(library) < len(frames)  # the open frames only
    shapes = {k: inner_shape(np.asarray(lm, np.float64)[INNER_MESH], float(interocular(lm))) for k, lm in enumerate(lms)}
    opens = sorted(library.index, key=lambda k: -shapes[k][0])
    for k in opens[:: max(1, len(opens) // 5)]:  # widest to narrowest open mouth of the clip
        j = library.pick(*shapes[k])
        assert library.index[j] == k  # its own frame is the best match
        others = InteriorLibrary(lambda i: frames[i], [lm if i != k else None for i, lm in enumerate(lms)])
        picked = others.index[others.pick(*shapes[k])]
        gaps = sorted(abs(shapes[i][0] - shapes[k][0]) for i in others.index)
        # another frame of the clip with nearly the same opening and width (over the eye distance)
        assert abs(shapes[picked][0] - shapes[k][0]) <= max(0.03, gaps[2]), (shapes[picked], shapes[k])
        assert abs(shapes[picked][1] - shapes[k][1]) <= 0.1, (shapes[picked], shapes[k])


def test_paste_changes_only_the_inside_of_the_lips(clip):
    frames, lms = clip
    library = InteriorLibrary(lambda k: frames[k], lms)
    closed = min((k for k, lm in enumerate(lms) if lm is not None),
                 key=lambda k: inner_shape(np.asarray(lms[k], np.float64)[INNER_MESH], float(interocular(lms[k])))[0])
    frame = frames[closed]
    lm = np.asarray(lms[closed], np.float64)
    iod = float(interocular(lm))
    ring = lm[INNER_MESH]
    assert library.paste(frame, ring, iod) is frame  # closed lips: nothing to paste
    opened = ring.copy()
    opened[1:10, 1] -= 0.08 * iod  # part the lips: upper ring up, lower ring down
    opened[11:20, 1] += 0.08 * iod
    out = library.paste(frame, opened, iod)
    changed = np.abs(out.astype(int) - frame.astype(int)).max(axis=2) > 0
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 20
    lo, hi = opened.min(0), opened.max(0)
    assert xs.min() >= lo[0] - 1 and xs.max() <= hi[0] + 1 and ys.min() >= lo[1] - 1 and ys.max() <= hi[1] + 1
    inside = out[ys, xs].astype(float).mean()
    assert inside < frame[ys, xs].astype(float).mean()  # the real open mouth is darker than the closed lips it covers
