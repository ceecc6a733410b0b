"""`talkingface evaluate` end to end on a tiny corpus with tiny random models: the report, the
metrics file and the plots exist and hold the systems and the calibration rows."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch

from talkingface.config import (
    AudioEncoderConfig,
    DataConfig,
    GeneratorConfig,
    IdentityEncoderConfig,
    LipReaderConfig,
    SyncExpertConfig,
)
from talkingface.data.prepare import prepare
from talkingface.evaluation.evaluate import (
    checkpoint_systems,
    evaluate,
    evaluate_stills,
    file_stem,
    paired_comparisons,
    stills_report,
)
from talkingface.media import read_audio, read_video
from talkingface.models.generator import Generator
from talkingface.models.lip_reader import LipReader
from talkingface.models.sync_expert import SyncExpert
from talkingface.training.checkpoint import export_model

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    src = tmp_path_factory.mktemp("eval_src")
    for p in ["grid/s1/bbaf2n.mp4", "grid/s1/bbaf2n.align", "grid/u01/brbk7n.mp4"]:
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA / p, src / p)
    corpus = tmp_path_factory.mktemp("eval_corpus")
    # every clip in test: s1 by sentence (test_fraction 1), u01 as a held-out speaker
    prepare(src, corpus, DataConfig(min_clips_train_speaker=1, val_fraction=0.0, test_fraction=1.0, workers=1,
                                    val_speakers=()), progress=False)
    models = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    gcfg = GeneratorConfig(audio=AudioEncoderConfig(width=8), identity=IdentityEncoderConfig(width=8), hidden=32)
    g = Generator(gcfg)
    with torch.no_grad():  # move the zero-initialised motion head off zero, so the lips move (articulation)
        for p in g.motion_head[-1].parameters():
            p.normal_(0, 0.05)
    export_model(models / "gen.pt", "generator", g, gcfg)
    scfg = SyncExpertConfig(width=8, dim=32, audio=AudioEncoderConfig(width=8))
    export_model(models / "sync.pt", "sync", SyncExpert(scfg), scfg)
    lcfg = LipReaderConfig(width=8)
    export_model(models / "reader.pt", "lipread", LipReader(lcfg), lcfg)
    return corpus, models


def test_evaluate_writes_report(setup, tmp_path):
    corpus, models = setup
    out = tmp_path / "ev"
    res = evaluate([str(models / "gen.pt")], corpus, "test", models / "sync.pt", out, progress=False,
                   lip_reader=models / "reader.pt", articulations=(1.0, 2.0))
    assert sorted(res["clips"]) == ["s1/bbaf2n", "u01/brbk7n"]
    s = res["summary"]
    assert {"real", "still", "gen", "gen (cross-audio)", "gen x2", "gen x2 (cross-audio)"} <= set(s)
    for key in ("psnr", "ssim", "lmd_px", "open_corr", "open_amp", "lse_d", "lse_c", "jitter", "id_ssim", "viseme_acc"):
        assert np.isfinite(s["gen"][key]), key
    assert s["gen x2"]["psnr"] != s["gen"]["psnr"]  # the x2 row is generated with twice the motion
    assert s["still"]["open_amp"] < 0.2  # a repeated frame barely moves (landmark noise only)
    assert 0.0 <= s["real"]["viseme_acc"] <= 1.0  # the s1 clip has phoneme labels from its .align
    assert res["sync_by_viseme"]["real"] and (out / "sync_by_viseme.png").is_file()
    assert s["still"]["jitter"] == 0.0  # a repeated frame does not move
    assert s["still"]["id_ssim"] == pytest.approx(1.0)
    assert set(res["by_group"]) == {"unseen speakers"}  # nothing is in train here, so no speaker was trained on
    assert len(res["calibration"]) == 15  # 5 conditions x (dist at 0, LSE-D, LSE-C)
    wins = res["calibration_real_wins"]
    assert set(wins) == {"audio shifted 0.5 s", "audio shifted 1 s", "still face", "another clip's audio"}
    assert all(0 <= w <= 2 for w in wins.values())
    report = (out / "report.md").read_text()
    assert "## Calibration" in report and "| still |" in report and "| gen |" in report and "| gen x2 |" in report
    assert "Ranked by LSE-D (best first): " in report
    assert f"| still face | {res['calibration']['still face']:.3f} | {wins['still face']}/2 clips |" in report
    # One group holding every clip: its calibration is the overall one.
    grp = res["calibration_by_group"]["unseen speakers"]
    assert grp["still face"]["sync_dist_at_0"] == pytest.approx(res["calibration"]["still face"])
    assert grp["audio shifted 1 s"]["lse_d"] == pytest.approx(res["calibration"]["audio shifted 1 s LSE-D"])
    assert grp["still face"]["real_wins"] == wins["still face"]
    assert f"| unseen speakers (2 clips) | {grp['real audio']['sync_dist_at_0']:.3f} / " in report
    # Clip by clip: each model against the loudness-driven mouth, and the second checkpoint row against the first.
    paired = res["paired"]
    vs_loudness = {"loudness-driven -> gen", "loudness-driven -> gen x2"} if "loudness-driven" in s else set()
    assert set(paired) == {"gen -> gen x2"} | vs_loudness
    oc = paired["gen -> gen x2"]["open_corr"]
    diffs = [res["per_clip"][c]["gen x2"]["open_corr"] - res["per_clip"][c]["gen"]["open_corr"] for c in res["clips"]]
    assert oc["all"]["n"] == 2 and oc["all"]["gain"] == pytest.approx(np.mean(diffs))
    assert oc["unseen speakers"]["gain"] == pytest.approx(oc["all"]["gain"])
    assert "jitter" not in paired["gen -> gen x2"]  # real video jitters more than models: lower is not better
    assert "### Clip by clip" in report and "`gen -> gen x2`:" in report
    assert json.loads((out / "metrics.json").read_text())["split"] == "test"
    assert (out / "metrics.png").stat().st_size > 1000
    assert list((out / "sheets").glob("*.jpg"))


def test_stills_and_cli_errors(setup, tmp_path):
    corpus, models = setup
    photos, speech = tmp_path / "photos", tmp_path / "speech"
    photos.mkdir()
    speech.mkdir()
    frame = read_video(DATA / "grid/s1/bbaf2n.mp4", sample_rate=None)[0][0]
    cv2.imwrite(str(photos / "face.png"), frame[..., ::-1])
    sf.write(speech / "s.wav", read_audio(DATA / "grid/u01/brbk7n.mp4")[:16000], 16000)
    # Two runs' checkpoints share the trainer's file name: each is named by its run folder, as in evaluate.
    for run in ("run-a", "run-b"):
        (tmp_path / run).mkdir()
        shutil.copy(models / "gen.pt", tmp_path / run / "generator.pt")
    torch.manual_seed(0)
    lcfg = SyncExpertConfig(width=8, dim=32, audio=AudioEncoderConfig(width=8), visual="landmarks")
    export_model(tmp_path / "lm.pt", "sync", SyncExpert(lcfg), lcfg)
    res = evaluate_stills([str(models / "gen.pt"), str(tmp_path / "run-a/generator.pt"), str(tmp_path / "run-b/generator.pt")],
                          photos, speech, models / "sync.pt", tmp_path / "ev", landmark_sync_model=tmp_path / "lm.pt")
    assert list(res) == ["gen: face + s", "run-a: face + s", "run-b: face + s"]
    m = res["gen: face + s"]
    assert m["system"] == "gen" and np.isfinite(m["lse_d"]) and np.isfinite(m["jitter"])
    # the landmark measure, for the generated face and for the photo held still
    assert np.isfinite(m["sync_dist_at_0_lm"]) and np.isfinite(m["still_sync_dist_at_0_lm"])
    assert m["sync_dist_at_0_lm"] != m["still_sync_dist_at_0_lm"]
    for name in ("gen", "run-a", "run-b"):
        assert (tmp_path / "ev" / "stills" / f"{name}_face.jpg").is_file()
    report = stills_report(res)
    assert "| run-b | " in report and f"{m['lse_d']:.3f}" in report
    assert "sync dist at 0 (landmarks)" in report and f"{m['still_sync_dist_at_0_lm']:.3f}" in report
    assert "(landmarks)" not in stills_report({k: {c: v for c, v in r.items() if not c.endswith("_lm")} for k, r in res.items()})
    r = subprocess.run([sys.executable, "-m", "talkingface.cli", "evaluate", "--corpus", str(corpus),
                        "--sync-model", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_landmark_sync_measure_without_checkpoints(setup, tmp_path):
    """`evaluate` with no generator and a landmark sync expert: real and still rows get the *_lm
    sync columns, and the calibration (pooled and per group) is measured a second time with it."""
    from talkingface.errors import TalkingFaceError

    corpus, models = setup
    torch.manual_seed(0)
    lcfg = SyncExpertConfig(width=8, dim=32, audio=AudioEncoderConfig(width=8), visual="landmarks")
    export_model(tmp_path / "lm.pt", "sync", SyncExpert(lcfg), lcfg)
    res = evaluate([], corpus, "test", models / "sync.pt", tmp_path / "ev", progress=False, lip_reader=None,
                   landmark_sync_model=tmp_path / "lm.pt")
    assert set(res["summary"]) == {"real", "still"}
    for name in ("real", "still"):
        for key in ("lse_d_lm", "lse_c_lm", "sync_dist_at_0_lm", "lse_d"):
            assert np.isfinite(res["summary"][name][key]), (name, key)
    assert len(res["calibration"]) == len(res["calibration_lm"]) == 15
    assert res["calibration_lm"]["real audio"] == pytest.approx(res["summary"]["real"]["sync_dist_at_0_lm"])
    assert all(res["calibration_lm"][k] != res["calibration"][k] for k in res["calibration"])  # every row measured twice
    assert set(res["calibration_real_wins_lm"]) == set(res["calibration_real_wins"])
    assert set(res["calibration_by_group_lm"]["unseen speakers"]) == set(res["calibration_by_group"]["unseen speakers"])
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "### Landmark sync measure: " in report and "lse_d_lm" in report
    assert report.count("| another clip's audio | ") == 2  # one calibration table per measure
    with pytest.raises(TalkingFaceError, match="expected 'crops'"):  # a landmark expert is not a pixel one
        evaluate([], corpus, "test", tmp_path / "lm.pt", tmp_path / "ev2", progress=False)


def test_landmark_sync_option_is_on_the_cli(tmp_path, monkeypatch):
    from talkingface.cli import DEFAULT_LANDMARK_SYNC, _model_or_default, build_parser

    args = build_parser().parse_args(["evaluate", "--corpus", "c", "--landmark-sync-model", "lm.pt"])
    assert args.landmark_sync_model == "lm.pt" and args.checkpoint == []
    assert build_parser().parse_args(["evaluate", "--corpus", "c"]).landmark_sync_model is None
    monkeypatch.chdir(tmp_path)
    assert _model_or_default(None, DEFAULT_LANDMARK_SYNC) is None  # not present: no landmark measure
    (tmp_path / DEFAULT_LANDMARK_SYNC).parent.mkdir(parents=True)
    (tmp_path / DEFAULT_LANDMARK_SYNC).write_bytes(b"")
    assert _model_or_default(None, DEFAULT_LANDMARK_SYNC) == DEFAULT_LANDMARK_SYNC  # present: used by default
    assert _model_or_default("", DEFAULT_LANDMARK_SYNC) is None  # '' turns it off
    assert _model_or_default("x.pt", DEFAULT_LANDMARK_SYNC) == "x.pt"


def test_paired_comparisons_pick_the_pairs_in_checkpoint_order():
    def row(v):
        return {"lse_d": v, "open_corr": 1 - v, "jitter": v}

    per_clip = {f"s/{k}": {"real": row(0.5), "still": row(2.0), "loudness-driven": row(1.0 + k), "zeta": row(0.8 + k),
                           "zeta (cross-audio)": row(3.0), "alpha": row(0.9 + k)} for k in range(3)}
    paired = paired_comparisons(per_clip, {"g": ["s/0", "s/1"]})
    assert list(paired) == ["loudness-driven -> zeta", "loudness-driven -> alpha", "zeta -> alpha"]
    c = paired["loudness-driven -> zeta"]["lse_d"]
    assert c["all"]["gain"] == pytest.approx(0.2) and c["all"]["better"] == 3 and c["g"]["n"] == 2
    assert paired["zeta -> alpha"]["open_corr"]["all"]["gain"] == pytest.approx(-0.1)
    assert set(paired["zeta -> alpha"]) == {"lse_d", "open_corr"}  # measures no row has are left out


def test_checkpoint_systems_names_each_articulation():
    got = checkpoint_systems(["a/model.pt", "runs/v4/generator.pt", "b/model.pt"], (1.0, 1.5))
    assert got == [("model", "a/model.pt", 1.0), ("model x1.5", "a/model.pt", 1.5),
                   ("v4", "runs/v4/generator.pt", 1.0), ("v4 x1.5", "runs/v4/generator.pt", 1.5),
                   ("b/model.pt", "b/model.pt", 1.0), ("b/model.pt x1.5", "b/model.pt", 1.5)]
    assert file_stem("b/model.pt x1.5") == "b_model.pt_x1.5"


def test_loudness_baseline_parts():
    """The loudness-driven mouth: the open direction is fitted from landmark tracks (lips part, jaw
    drops), the activation follows the envelope in [0, 1], and the renderer draws given offsets."""
    from talkingface.evaluation.baselines import lip_gap, loudness_activation, open_direction, render_motion
    from talkingface.face import LIP_INNER_BOTTOM, LOWER_FACE

    rng = np.random.default_rng(0)
    k = len(LOWER_FACE)
    base = rng.uniform(0.3, 0.9, (k, 2))
    pattern = np.zeros((k, 2))
    pattern[list(LOWER_FACE).index(LIP_INNER_BOTTOM), 1] = 0.04  # opening = the lower lip drops
    tracks = []
    for _ in range(3):
        a = rng.uniform(0, 1, 40)
        pts = base + a[:, None, None] * pattern + rng.normal(0, 1e-4, (40, k, 2))
        tracks.append((pts, np.ones(40, bool)))
    d = open_direction(tracks)
    assert d.shape == (k, 2)
    assert d[list(LOWER_FACE).index(LIP_INNER_BOTTOM), 1] == pytest.approx(0.036, abs=0.005)  # 90% of the range
    assert lip_gap(base + d) > lip_gap(base)
    loud = np.r_[np.full(10, -60.0), np.full(10, -20.0), np.linspace(-60, -20, 10)]
    act = loudness_activation(loud)
    assert act.min() == 0.0 and act.max() == 1.0 and np.all(np.diff(act[20:]) >= 0)
    assert loudness_activation(np.full(10, -30.0)).max() == 0.0  # constant level: no flapping

    torch.manual_seed(0)
    g = Generator(GeneratorConfig(audio=AudioEncoderConfig(width=8), identity=IdentityEncoderConfig(width=8), hidden=32))
    ref = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    ref_pts = base.astype(np.float32)
    still = render_motion(g, ref, ref_pts, np.zeros((3, k, 2), np.float32))
    moved = render_motion(g, ref, ref_pts, np.repeat(d[None], 3, 0))
    assert still.shape == moved.shape == (3, 128, 128, 3) and still.dtype == np.uint8
    assert np.array_equal(still[:, :60], moved[:, :60])  # the upper face is the photo's
    assert np.abs(still[:, 64:].astype(int) - moved[:, 64:]).mean() > 0.1  # the offsets move the lower face


def test_other_clip_prefers_another_speaker_of_another_collection():
    from talkingface.evaluation.evaluate import collection_of, other_clip_index

    rows = [{"speaker": "s1", "source": "../shared/train/grid/s1/a.mpg"},
            {"speaker": "s1", "source": "../shared/train/grid/s1/b.mpg"},
            {"speaker": "u02", "source": "../shared/train/grid/u02/c.mpg"},
            {"speaker": "1001", "source": "../shared/train/crema-d/1001/d.mp4"},
            {"speaker": "1001", "source": "../shared/train/crema-d/1001/e.mp4"}]
    spk = [r["speaker"] for r in rows]
    col = [collection_of(r) for r in rows]
    assert col == ["grid", "grid", "grid", "crema-d", "crema-d"]
    other = [other_clip_index(k, spk, col) for k in range(len(rows))]
    for k, j in enumerate(other):
        assert spk[j] != spk[k] and col[j] != col[k]
    assert len({other[0], other[1], other[2]}) == 2  # GRID faces take the CREMA-D clips in turn
    # One collection only: another speaker; one speaker only: another clip.
    assert spk[other_clip_index(0, spk[:3], col[:3])] == "u02"
    assert other_clip_index(0, ["a", "a"], ["x", "x"]) == 1
    assert other_clip_index(0, ["a"], ["x"]) == 0


def test_ablation_claims_verdicts():
    """The claims script pairs clips: a change that helps on every clip 'held', one that hurts 'did
    not hold', noise around zero is 'no clear difference'."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablation_claims", Path(__file__).parents[1] / "scripts/ablation_claims.py")
    ac = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ac)
    rng = np.random.default_rng(0)
    clips = [f"s1/c{i}" for i in range(20)]
    per = {}
    for c in clips:
        base = {"jitter": rng.uniform(1, 2), "lse_d": rng.uniform(0.8, 1.2), "psnr_mouth": rng.uniform(25, 30)}
        per[c] = {"real": {"jitter": 3.0, "lse_d": 0.8},
                  "no-gru": dict(base), "full": {**base, "jitter": base["jitter"] - 0.3, "lse_d": base["lse_d"] + rng.normal(0, 0.05)},
                  "gru-frame-seq-d": {**base, "lse_d": base["lse_d"] - 0.2},
                  "paint": {**base, "psnr_mouth": base["psnr_mouth"] - 1 + rng.normal(0, 0.1)}}
    systems = ["real", "no-gru", "full", "gru-frame-seq-d", "paint"]
    metrics = {"clips": clips, "per_clip": per, "summary": {s: {} for s in systems},
               "by_group": {"unseen sentences": {"clips": 20, "speakers": ["s1"]}}}
    text = ac.claims_report(metrics)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ") and " -> " in line}
    assert rows["recurrence (GRU) -> smoother mouth motion"].endswith("| held |")
    assert rows["sync critic -> better lip sync"].endswith("| did not hold (worse) |")
    assert rows["warping the photo (ours) -> better on unseen faces than painting"].endswith("| held |")
    assert rows["frame discriminator -> sharper, more realistic mouths"].endswith("| not measured |")
    c = ac.compare(np.array([1.0, 2.0, 3.0]), np.array([1.01, 1.99, 3.0]), True, rng)
    assert ac.verdict(c) == "no clear difference" and c["n"] == 3
    # With the landmark sync measure in the report, the sync claims get a second verdict from it:
    # here the pixel measure says the sync critic hurt, the landmark one that it helped.
    for c in clips:
        per[c]["gru-frame-seq-d"]["lse_d_lm"] = per[c]["no-gru"]["lse_d"] + 0.1
        per[c]["full"]["lse_d_lm"] = per[c]["no-gru"]["lse_d"]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in ac.claims_report(metrics).splitlines()
            if line.startswith("| ") and " -> " in line}
    assert "| did not hold (worse) | +0.100 [+0.100, +0.100] held |" in rows["sync critic -> better lip sync"]
    assert rows["recurrence (GRU) -> smoother mouth motion"].endswith("| held |  |")  # not a sync claim


def test_compare_reports_pairs_clips_across_report_folders(tmp_path):
    """scripts/compare_reports.py: systems from two report folders, paired on the clips both
    scored, grouped as the reports group their speakers; a missing system is a one-line error."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_reports", Path(__file__).parents[1] / "scripts/compare_reports.py")
    cr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cr)
    clips = [f"s1/c{i}" for i in range(6)] + ["u02/a", "u02/b"]
    for name, shift, kept in (("rep-a", 0.0, clips), ("rep-b", 0.1, clips[1:])):
        per = {c: {"real": {"lse_d_lm": 0.8}, "gen": {"lse_d_lm": 1.0 + 0.01 * clips.index(c) + shift,
                                                        "psnr_mouth": 28.0 - shift}} for c in kept}
        (tmp_path / name).mkdir()
        by_group = {"unseen sentences": {"speakers": ["s1"]}, "unseen speakers": {"speakers": ["u02"]}}
        (tmp_path / name / "metrics.json").write_text(json.dumps({"per_clip": per, "by_group": by_group}))
    text = cr.compare([f"{tmp_path / 'rep-a'}:gen", f"{tmp_path / 'rep-b'}:gen"])
    assert "rep-a:gen -> rep-b:gen (7 clips" in text  # s1/c0 only in rep-a
    row = next(line for line in text.splitlines() if line.startswith("| lse_d_lm |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert cells[0].endswith("-0.100 [-0.100, -0.100] 0/7")       # all: worse by 0.1 on every clip
    assert cells[1].endswith("0/5") and cells[2].endswith("0/2")  # unseen sentences (s1), unseen speakers
    with pytest.raises(SystemExit, match="no system 'other'"):
        cr.compare([f"{tmp_path / 'rep-a'}:gen", f"{tmp_path / 'rep-b'}:other"])
    with pytest.raises(SystemExit, match="no .*missing/metrics.json"):
        cr.compare([f"{tmp_path / 'rep-a'}:gen", f"{tmp_path / 'missing'}:gen"])
