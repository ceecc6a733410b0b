import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from talkingface.config import DataConfig
from talkingface.data.corpus import load_clip, read_manifest
from talkingface.data.prepare import assign_splits, prepare
from talkingface.errors import TalkingFaceError
from talkingface.media import write_video

DATA = Path(__file__).parent / "data"
# Every clip lands in train, so the small test corpus can also feed `select`.
ALL_TRAIN = DataConfig(min_clips_train_speaker=1, val_fraction=0.0, test_fraction=0.0, workers=2)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """The three real test clips plus bad inputs, laid out as speaker folders."""
    root = tmp_path_factory.mktemp("src")
    for p in ["grid/s1/bbaf2n.mp4", "grid/s1/bbaf2n.align", "grid/u01/brbk7n.mp4", "crema-d/1001/1001_DFA_NEU_XX.mp4"]:
        dst = root / p
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA / p, dst)
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    clip = (DATA / "grid/s1/bbaf2n.mp4").read_bytes()
    (bad / "truncated.mp4").write_bytes(clip[: len(clip) // 3])
    rng = np.random.default_rng(1)
    noise = [(rng.random((96, 128, 3)) * 255).astype(np.uint8) for _ in range(20)]
    write_video(bad / "noface.mp4", noise, audio=np.zeros(16000, np.float32))
    from talkingface.media import read_video
    frames, _ = read_video(DATA / "grid/s1/bbaf2n.mp4", sample_rate=None)
    write_video(bad / "silentvideo.mp4", frames[:20])  # no audio track
    import av  # an mp4 holding only audio
    with av.open(str(bad / "audioonly.mp4"), "w") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        f = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="flt", layout="mono")
        f.sample_rate = 16000
        for pkt in list(s.encode(f)) + list(s.encode(None)):
            c.mux(pkt)
    return root


@pytest.fixture(scope="module")
def corpus(src, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    summary = prepare(src, out, ALL_TRAIN, progress=False)
    return out, summary


def test_prepare_real_clips(corpus):
    out, summary = corpus
    rows = {r["clip"]: r for r in read_manifest(out)}
    assert set(rows) == {"s1/bbaf2n", "u01/brbk7n", "1001/1001_DFA_NEU_XX"}
    assert summary["clips_found"] == 9 and summary["failed"] == 6
    s1 = rows["s1/bbaf2n"]
    assert s1["frames"] == 75 and s1["phoneme_source"] == "align" and s1["face_found"] == 1.0
    assert s1["sentence"] == "bin blue at f two now"
    assert rows["u01/brbk7n"]["phoneme_source"] == "text"  # sentence decoded from the GRID file name
    assert rows["1001/1001_DFA_NEU_XX"]["sentence"] == "don't forget a jacket"
    assert rows["1001/1001_DFA_NEU_XX"]["frames"] in (50, 51, 52)  # 61 frames at 29.97 fps -> 25 fps
    clip = load_clip(out, s1)
    assert clip.crops.shape == (75, 128, 128, 3)
    assert clip.landmarks.shape == (75, 478, 2) and clip.found.all()
    assert abs(len(clip.audio) / 16000 - 3.0) < 0.05
    # phonemes: silence at both ends, speech in the middle, histogram matches the labels
    assert clip.phonemes[0] == 0 and clip.phonemes[-1] == 0 and (clip.phonemes[20:50] > 0).mean() > 0.8
    assert sum(s1["phoneme_hist"]) == 75
    # the crops really are aligned: the eyes sit where the template puts them in every frame
    from talkingface.face import eye_centres, template
    a, _ = eye_centres(clip.landmarks)
    ta, _ = eye_centres(template(DataConfig().face))
    assert np.abs(a - ta).max() < 4.0


def test_bad_inputs_fail_with_reasons_and_leave_nothing(corpus):
    out, summary = corpus
    fails = summary["failures"]
    assert set(fails) == {"bad/empty", "bad/corrupt", "bad/truncated", "bad/noface", "bad/silentvideo", "bad/audioonly"}
    assert "no video track" in fails["bad/audioonly"]
    assert "empty" in fails["bad/empty"]
    assert "no audio track" in fails["bad/silentvideo"]
    assert "face" in fails["bad/noface"]
    assert all("\n" not in r and "Traceback" not in r for r in fails.values())
    assert not list((out / "clips").glob("**/*.partial"))
    assert not (out / "clips" / "bad").exists() or not any((out / "clips" / "bad").iterdir())
    logged = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert {x["clip"] for x in logged} == set(fails)


def test_prepare_resumes(corpus, src):
    out, _ = corpus
    again = prepare(src, out, ALL_TRAIN, progress=False)
    assert again["skipped_existing"] == 3 and again["prepared_now"] == 0
    with pytest.raises(TalkingFaceError, match="another config"):
        prepare(src, out, DataConfig(), progress=False)


def test_assign_splits_by_speaker_and_sentence():
    rows = [{"clip": f"a/{i}", "speaker": "a", "sentence": f"sentence {i % 40}"} for i in range(200)]
    rows += [{"clip": "b/0", "speaker": "b", "sentence": "sentence 1"}, {"clip": "u01/0", "speaker": "u01", "sentence": "x"}]
    split = assign_splits(rows, DataConfig())
    assert split["b/0"] == "test" and split["u01/0"] == "val"  # small speakers are held out whole
    by_sentence = {}
    for r in rows[:200]:
        by_sentence.setdefault(r["sentence"], set()).add(split[r["clip"]])
    assert all(len(s) == 1 for s in by_sentence.values())  # a sentence never spans two splits
    counts = {s: sum(v == s for k, v in split.items() if k.startswith("a/")) for s in ("train", "val", "test")}
    assert counts["train"] > 100 and counts["val"] > 0 and counts["test"] > 0


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "talkingface.cli", *args], capture_output=True, text=True)


def test_cli_select_and_sheet(corpus, tmp_path):
    out, _ = corpus
    r = _cli("select", str(out), "--size", "2", "--strategy", "balanced")
    assert r.returncode == 0, r.stderr
    assert "KL to target" in r.stdout
    assert "val/test clips in the selection (by sentence or held-out speaker): 0" in r.stdout
    res = json.loads((out / "selections" / "balanced-phoneme-2.json").read_text())
    assert len(res["clips"]) == 2 and res["after"]["kl_to_target"] >= 0 and res["leaked_val_test_clips"] == []
    assert (out / "selections" / "balanced-phoneme-2.png").stat().st_size > 1000
    sheet = tmp_path / "sheet.png"
    r = _cli("sheet", str(out), "-o", str(sheet), "--clips", "3")
    assert r.returncode == 0, r.stderr
    import cv2
    assert cv2.imread(str(sheet)).shape[0] > 128


def test_cli_errors_are_one_line(tmp_path):
    r = _cli("prepare", str(tmp_path / "missing"), str(tmp_path / "out"))
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    r = _cli("select", str(tmp_path), "--size", "3")
    assert r.returncode == 2 and "manifest" in r.stderr and "Traceback" not in r.stderr
    r = _cli("select", str(tmp_path), "--size", "0")
    assert r.returncode == 2


def test_cli_prepare_where_every_clip_fails_exits_non_zero(tmp_path):
    """Every clip failing is an error (exit 2, one `error:` line saying why and where the reasons
    are), not a summary with "failed: 4" and exit 0."""
    src = tmp_path / "src" / "spk"
    src.mkdir(parents=True)
    for i in range(4):
        (src / f"c{i}.mp4").write_bytes(np.random.default_rng(i).bytes(3000))
    r = _cli("prepare", "-q", str(tmp_path / "src"), str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == r.stderr.strip().splitlines()[-1], r.stderr
    assert errors[0].startswith("error: all 4 clips failed (") and str(tmp_path / "out" / "failures.jsonl") in errors[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert len((tmp_path / "out" / "failures.jsonl").read_text().splitlines()) == 4


def test_prepare_without_mediapipe_says_how_to_install_once(tmp_path, monkeypatch, capfd):
    """A plain `pip install -e .` has no MediaPipe: one line naming the install command, before any
    worker starts or anything is written, instead of the same ImportError for every clip."""
    from talkingface.cli import main
    from talkingface.face import MEDIAPIPE_INSTALL

    src = tmp_path / "src" / "s1"
    src.mkdir(parents=True)
    shutil.copy(DATA / "grid/s1/bbaf2n.mp4", src)
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError
    capfd.readouterr()
    assert main(["prepare", "-q", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    assert capfd.readouterr().err.strip().splitlines() == [f"error: MediaPipe is not installed: {MEDIAPIPE_INSTALL}"]
    assert not (tmp_path / "out").exists()
