"""Writes src/talkingface/assets/speech_prior.json: the per-band log-mel statistics a live session
is normalised with before it has heard enough of its own speaker (``streaming.SpeechPrior``).

    python scripts/speech_prior.py ../shared/speech_multi

Every audio file under the folder counts once (the shipped prior: 351 LibriSpeech utterances of
261 voices, CC BY 4.0; 240 numbers, no audio, are kept)."""

import argparse
from pathlib import Path

from talkingface.media import read_audio
from talkingface.streaming import SpeechPrior

AUDIO = {".flac", ".wav", ".mp3", ".ogg", ".m4a"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("-o", "--out", default="src/talkingface/assets/speech_prior.json")
    a = ap.parse_args()
    files = sorted(p for p in Path(a.folder).rglob("*") if p.suffix.lower() in AUDIO)
    prior = SpeechPrior.of(read_audio(p) for p in files)
    Path(a.out).write_text(prior.to_json())
    print(f"{len(files)} files -> {a.out}; mean log-mel {prior.mean.mean():.2f}, std {prior.std.mean():.2f}, "
          f"floor {prior.floor.mean():.2f}")


if __name__ == "__main__":
    main()
