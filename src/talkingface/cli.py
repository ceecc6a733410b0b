"""The `talkingface` command. It only parses arguments and calls one entry point per job; every
problem with the user's input ends as one line on stderr and a non-zero exit, not a traceback."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys

from .errors import TalkingFaceError

log = logging.getLogger("talkingface")


def _quiet_native_logs() -> None:
    # MediaPipe / TFLite log through glog and absl to stderr; keep their chatter out of the CLI.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def _native_stderr_silenced():
    """MediaPipe's absl logging and TFLite write straight to file descriptor 2 and ignore the
    variables above. Point fd 2 at /dev/null while the command runs; Python's own stderr (errors,
    logs, progress bars) keeps writing to the real one through a duplicate descriptor."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to protect
        yield
        return
    old = sys.stderr
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        sys.stderr = open(saved, "w", buffering=1, closefd=False, errors="backslashreplace")
        yield
    finally:
        sys.stderr.flush()
        if sys.stderr is not old:
            sys.stderr.close()
        sys.stderr = old
        os.dup2(saved, 2)
        os.close(saved)


def _data_config(args):
    from .config import DataConfig, load_config

    return load_config(DataConfig, args.config, args.set)


def cmd_prepare(args) -> int:
    from .data.prepare import prepare

    cfg = _data_config(args)
    summary = prepare(args.src, args.out, cfg, progress=not args.quiet)
    for clip, reason in summary.pop("failures").items():
        print(f"failed: {clip}: {reason}", file=sys.stderr)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_select(args) -> int:
    from .data.select import run_select

    if args.size <= 0:
        raise TalkingFaceError("--size must be positive")
    res = run_select(args.corpus, args.size, args.strategy, args.seed, args.unit, args.target, args.name)
    b, a = res["before"], res["after"]
    print(f"{res['strategy']} selection of {res['size']} / {res['candidates']} train clips ({res['unit']}s)")
    print(f"  {'':18s} {'all train':>10s} {'selected':>10s}")
    print(f"  {'entropy (bits)':18s} {b['entropy']:10.3f} {a['entropy']:10.3f}")
    print(f"  {'KL to target':18s} {b['kl_to_target']:10.3f} {a['kl_to_target']:10.3f}"
          f"   (random, mean of 20 seeds: {res['random_kl_mean_20_seeds']:.3f})")
    print(f"  {'units present':18s} {b['n_phonemes_present']:10d} {a['n_phonemes_present']:10d}")
    print(f"  {'rarest count':18s} {b['min_count']:10.0f} {a['min_count']:10.0f}")
    print("  rarest after: " + ", ".join(f"{n}={c:.0f}" for n, c in a["rarest"]))
    print(f"  val/test clips in the selection (by sentence or held-out speaker): {len(res['leaked_val_test_clips'])}"
          f"; held-out speakers: {', '.join(res['held_out_speakers']) or 'none'}")
    print(f"saved {res['json']} and {res['png']}")
    return 0


def cmd_sheet(args) -> int:
    from .data.preview import contact_sheet

    res = contact_sheet(args.corpus, args.out, args.clips, args.frames)
    print(f"saved {res['out']}: {len(res['clips'])} clips of {len(res['speakers'])} speakers ({', '.join(res['speakers'])})")
    return 0


def cmd_train(args) -> int:
    from .config import TrainConfig, config_from_json, load_config
    from .training.trainer import train

    if args.resume:
        from pathlib import Path

        saved = Path(args.resume) / "config.json"
        if not saved.exists():
            raise TalkingFaceError(f"{args.resume}: not a run folder (no config.json)")
        from .config import _build, apply_overrides, to_dict

        cfg = _build(TrainConfig, apply_overrides(to_dict(config_from_json(TrainConfig, saved)), args.set))
        run_dir = train(cfg, args.resume, resume=True, progress=not args.quiet)
    else:
        cfg = load_config(TrainConfig, args.config, args.set)
        run_dir = train(cfg, args.run_dir, progress=not args.quiet)
    print(f"run folder: {run_dir}")
    return 0


def cmd_generate(args) -> int:
    from . import api

    text = args.text
    if args.text_file:
        from pathlib import Path

        try:
            text = Path(args.text_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TalkingFaceError(f"{args.text_file}: cannot read the transcript: {e}") from e
    model = api.load_model(args.checkpoint, args.device)
    out = api.generate(args.face, args.audio, args.out, model=model, fps=args.fps, face_index=args.face_index,
                       chunk=args.chunk, seed=args.seed, progress=not args.quiet, crf=args.crf, preset=args.preset, precision=args.precision,
                       articulation=args.articulation, keep_expression=args.keep_expression, text=text,
                       language=args.language, blinks=args.blinks, still=args.still, head_motion=args.head_motion)
    print(f"wrote {out}")
    return 0


def cmd_serve(args) -> int:
    from .serve import Limits, serve

    return serve(args.checkpoint, args.host, args.port,
                 Limits(args.max_upload_mb, args.max_audio_seconds, args.max_queued_per_client), args.concurrency, args.device)


DEFAULT_LIP_READER = "checkpoints/lip_reader.pt"
DEFAULT_LANDMARK_SYNC = "checkpoints/sync_eval_landmarks.pt"


def _model_or_default(value: str | None, default: str) -> str | None:
    """An optional model option: the given path, '' for none, or when not given ``default`` if present."""
    from pathlib import Path

    if value is None:
        return default if Path(default).is_file() else None
    return value or None


def cmd_evaluate(args) -> int:
    import time
    from pathlib import Path

    from .evaluation.evaluate import evaluate

    out = Path(args.out) if args.out else Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-evaluate"
    res = evaluate(args.checkpoint, args.corpus, args.split, args.sync_model, out, args.max_clips, progress=not args.quiet,
                   lip_reader=_model_or_default(args.lip_reader, DEFAULT_LIP_READER), articulations=tuple(args.articulation),
                   keep_expression=args.keep_expression,
                   landmark_sync_model=_model_or_default(args.landmark_sync_model, DEFAULT_LANDMARK_SYNC),
                   phones=args.phones, live=args.live)
    if args.portraits and args.speech:
        from .evaluation.evaluate import evaluate_stills, stills_report

        stills = evaluate_stills(args.checkpoint, args.portraits, args.speech, args.sync_model, out,
                                 articulations=tuple(args.articulation), keep_expression=args.keep_expression,
                                 landmark_sync_model=_model_or_default(args.landmark_sync_model, DEFAULT_LANDMARK_SYNC))
        with open(out / "report.md", "a") as f:
            f.write(stills_report(stills))
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.md'} ({len(res['clips'])} clips, {res['seconds']} s)")
    return 0


def _crf(text: str) -> int:
    v = int(text)
    if not 0 <= v <= 51:
        raise argparse.ArgumentTypeError(f"{v} is not in 0..51")
    return v


def _checked(name: str):
    """An argparse type that runs ``api.<name>`` on the text: a bad value is a usage error."""
    def parse(text: str) -> float:
        from . import api

        try:
            return getattr(api, name)(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


_articulation = _checked("check_articulation")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="talkingface", description="One photo + one speech clip -> a lip-synced talking-face video.")
    ap.add_argument("--debug", action=argparse.BooleanOptionalAction, default=False, help="show tracebacks and debug logs")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p, config=True):
        p.add_argument("-q", "--quiet", action=argparse.BooleanOptionalAction, default=False, help="no progress bars")
        if config:
            p.add_argument("--config", help="TOML config file")
            p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value (repeatable)")

    p = sub.add_parser("generate", help="photo + speech -> lip-synced talking-face mp4 (H.264 + AAC)")
    p.add_argument("--face", required=True, help="photo of a face (jpg, png, webp, bmp, tiff; any size)")
    p.add_argument("--audio", required=True, help="speech: wav, flac, mp3, m4a, ogg, or a video's audio track")
    p.add_argument("-o", "--out", required=True, help="output .mp4")
    p.add_argument("--checkpoint", help="generator checkpoint (default: the shipped one)")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--face-index", type=int, default=0, help="which face when the photo has several (0 = largest)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--chunk", type=int, default=50, help="frames generated per step (memory stays flat)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crf", type=_crf, default=18, metavar="0-51",
                   help="H.264 quality: lower = better and bigger (default 18)")
    p.add_argument("--preset", choices=["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"],
                   help="x264 preset: slower = smaller files at the same quality (default: a fast setting, "
                        "~1.7x veryfast's file size at ~55%% of its encoding CPU; benchmarks/encoder_settings.py)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="generator arithmetic: auto = bfloat16 where the CPU has bf16 matrix units (Intel AMX; "
                        "~1.7x faster, visually identical), else float32")
    p.add_argument("--articulation", type=_articulation, default=1.0, metavar="0-3",
                   help="how far the lips and jaw move, as a multiple of the predicted motion (default 1; "
                        "README \"Articulation\" says what 1.5-2 does on unseen voices)")
    p.add_argument("--keep-expression", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the photo's own mouth (a smile, parted lips) between words (default); "
                        "--no-keep-expression closes it to the neutral rest the model learnt (README \"Expression\")")
    p.add_argument("--blinks", action=argparse.BooleanOptionalAction, default=None,
                   help="the eyes blink at a talking person's rate, more at pauses (default: on for a photo; "
                        "a video keeps its own eyes)")
    p.add_argument("--head-motion", type=_checked("check_head_motion"), default=None, metavar="0-3",
                   help="how far the head sways and nods, 0-3 (default: 1 for a photo; a video keeps its own head)")
    p.add_argument("--still", action=argparse.BooleanOptionalAction, default=False,
                   help="head and eyes exactly as in the photo: only the mouth moves (no blinks, no head motion)")
    words = p.add_mutually_exclusive_group()
    words.add_argument("--text", help="what the speech says: its phones are force-aligned to it instead of recognised "
                                      "(models that hear phones; a text that does not match is a warning)")
    words.add_argument("--text-file", metavar="FILE", help="the same, read from a UTF-8 text file")
    p.add_argument("--language", default="en",
                   help="the speech's language (default en); phones are recognised for English only, other "
                        "languages drive the lips from the audio alone")
    common(p, config=False)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("serve", help="web UI (needs the serve extra): upload a face and speech, watch and download the video")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--checkpoint", action="append", default=[],
                   help="generator checkpoint (repeatable: the page offers a choice; default: the shipped one)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest photo, video or audio upload")
    p.add_argument("--max-audio-seconds", type=float, default=120.0,
                   help="longest speech accepted (refused from its header, or where decoding passes it); "
                        "also how much of a face video is read")
    p.add_argument("--max-queued-per-client", type=int, default=2,
                   help="requests one client (page or API session) may have waiting or running; more are refused")
    p.add_argument("--concurrency", type=int, default=1, help="generations run at once; more requests wait in a queue")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("prepare", help="folder of talking-head videos -> aligned, labelled corpus")
    p.add_argument("src", help="folder searched recursively for videos; a clip's speaker is its parent folder")
    p.add_argument("out", help="corpus folder (created; re-running resumes)")
    common(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("select", help="phoneme-balanced (or random) choice of training clips")
    p.add_argument("corpus")
    p.add_argument("--size", type=int, required=True, help="number of clips to select")
    p.add_argument("--strategy", choices=["balanced", "random"], default="balanced")
    p.add_argument("--unit", choices=["phoneme", "viseme"], default="phoneme")
    p.add_argument("--target", choices=["uniform", "sqrt"], default="uniform", help="target distribution")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="selection name (default: STRATEGY-UNIT-SIZE)")
    common(p, config=False)
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("train", help="train the sync expert or the generator (config decides)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint (its saved config, plus --set)")
    p.add_argument("--run-dir", help="run folder (default runs/<time>-<name>)")
    common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics, baselines and calibration on a corpus split -> report.md")
    p.add_argument("--checkpoint", action="append", default=[], help="generator checkpoint (repeatable)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--sync-model", default="checkpoints/sync_eval.pt",
                   help="evaluation sync expert, trained apart from the generator's critic (default: the one in the repo)")
    p.add_argument("--lip-reader", help=f"viseme lip reader for the viseme_acc column (default: {DEFAULT_LIP_READER} "
                   "when present; '' = none)")
    p.add_argument("--landmark-sync-model", help="landmark sync expert (sync.visual = 'landmarks') for a second, "
                   f"identity-independent sync measure: *_lm columns and calibration (default: {DEFAULT_LANDMARK_SYNC} "
                   "when present; '' = none)")
    p.add_argument("--max-clips", type=int, default=0, help="evaluate at most this many clips (0 = all)")
    p.add_argument("--phones", choices=("recognised", "aligned"), default="recognised",
                   help="the phone track checkpoints that hear phones get: recognised without a transcript "
                        "(default, as generate without --text) or aligned to the clip's transcript")
    p.add_argument("--articulation", type=_articulation, nargs="+", default=[1.0], metavar="A",
                   help="evaluate every checkpoint at each of these articulations (rows named 'NAME xA'; default 1)")
    p.add_argument("--keep-expression", action=argparse.BooleanOptionalAction, default=True,
                   help="generate every row with the reference's mouth as the rest, as `generate` does by default "
                        "(--no-keep-expression: the model's own rest, as reports before 2026-11-26 were made)")
    p.add_argument("--live", action=argparse.BooleanOptionalAction, default=False,
                   help="also run every checkpoint as a live session does (causal audio windows, the speech "
                        "pushed in 40 ms pieces): rows named 'NAME (live)', compared clip by clip with NAME")
    p.add_argument("--portraits", help="folder of photos for the stills test (with --speech)")
    p.add_argument("--speech", help="folder of speech clips for the stills test")
    p.add_argument("-o", "--out", help="report folder (default runs/<time>-evaluate)")
    common(p, config=False)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sheet", help="contact sheet PNG of aligned crops of a corpus")
    p.add_argument("corpus")
    p.add_argument("-o", "--out", default="contact_sheet.png")
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--frames", type=int, default=3, help="frames shown per clip")
    common(p, config=False)
    p.set_defaults(func=cmd_sheet)
    return ap


def main(argv: list[str] | None = None) -> int:
    return _dispatch(build_parser().parse_args(argv))


def _dispatch(args) -> int:
    if args.debug:
        return _main(args)
    with _native_stderr_silenced():
        return _main(args)


def run() -> None:
    """The console script. After ``generate`` it exits without the interpreter's teardown: with
    torch and MediaPipe loaded that takes 0.4-0.8 s (measured: a fifth of a 3 s clip's whole run),
    and by then the video is complete and renamed into place and nothing is left to clean up."""
    args = build_parser().parse_args()
    rc = _dispatch(args)
    if args.func is cmd_generate:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


def _main(args) -> int:
    # The handler is made here, inside the redirect: it must hold the stderr that stays visible.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, handlers=[handler])
    _quiet_native_logs()
    try:
        return args.func(args)
    except TalkingFaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (run with --debug for details)", file=sys.stderr)
        return 1
    finally:
        logging.getLogger().removeHandler(handler)  # it writes to a stderr that closes with the redirect


if __name__ == "__main__":
    run()
