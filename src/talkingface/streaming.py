"""Causal audio features: the generator's per-frame log-mel windows for speech that arrives in
pieces (a microphone), with no future beyond the windows' own look-ahead.

The offline path (``audio.audio_frame_features``) normalises every mel band over the whole
utterance, which a live stream does not have. Here:

- ``LogMelStream`` gives exactly the steps ``audio.log_mel`` gives the whole signal (the same
  reflect padding at both ends), each as soon as its 32 ms of samples are in.
- ``RunningNormalizer`` replaces the utterance's mean and scale per band by running ones, started
  from a prior (``assets/speech_prior.json``: the bands' statistics over 261 LibriSpeech voices,
  ``scripts/speech_prior.py``) that fades within the first seconds, and forgetting with a 30 s
  memory so a long session follows a change of microphone or room. Each step is normalised once,
  with the statistics as they stand when it arrives.
- ``LiveFeatures`` cuts the window of every video frame once its last step is in: a 25 fps
  frame's 35-step window ends 170 ms after the frame's centre, plus half an FFT frame (16 ms),
  which is the look-ahead a live session waits for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from .audio import _log_mel_steps, log_mel, mel_filterbank, normalize_utterance, window_starts
from .config import AudioConfig


@dataclass(frozen=True)
class SpeechPrior:
    """Per-band statistics of the log-mel of speech: what a live stream is normalised with before
    it has statistics of its own. mean, std: (n_mels,) of the raw log-mel; floor: (n_mels,) each
    band's per-utterance minimum after ``normalize_utterance``, averaged over utterances (the
    silence offline windows are padded with)."""

    mean: np.ndarray
    std: np.ndarray
    floor: np.ndarray

    @classmethod
    def shipped(cls) -> SpeechPrior:
        d = json.loads(resources.files("talkingface.assets").joinpath("speech_prior.json").read_text())
        return cls(*(np.asarray(d[k], np.float32) for k in ("mean", "std", "floor")))

    @classmethod
    def of(cls, utterances, cfg: AudioConfig = AudioConfig()) -> SpeechPrior:
        """From waveforms at ``cfg.sample_rate`` (an iterable of 1-D arrays)."""
        total, total2, n, floors = 0.0, 0.0, 0, []
        for x in utterances:
            m = log_mel(x, cfg).double()  # (n_mels, M)
            total, total2, n = total + m.sum(1), total2 + (m**2).sum(1), n + m.shape[1]
            floors.append(normalize_utterance(m.float()).amin(1))
        mean = total / n
        std = (total2 / n - mean**2).clamp_min(0).sqrt()
        return cls(mean.float().numpy(), std.float().numpy(), torch.stack(floors).mean(0).numpy())

    def to_json(self) -> str:
        return json.dumps({k: [round(float(v), 5) for v in getattr(self, k)] for k in ("mean", "std", "floor")}) + "\n"


class LogMelStream:
    """``audio.log_mel`` of a signal that arrives in pieces: ``push`` returns the steps whose
    samples are all in, ``flush`` the rest at the end. Together they equal ``log_mel`` of the whole
    signal (up to float rounding). Only the samples the next steps need are kept."""

    def __init__(self, cfg: AudioConfig = AudioConfig()):
        self.cfg = cfg
        self._window, self._fb = torch.hann_window(cfg.win_length), mel_filterbank(cfg)
        self._head = np.zeros(0, np.float32)  # the first samples, until there are enough to reflect
        self._buf: np.ndarray | None = None  # padded samples from step self.steps * hop on
        self.samples = 0  # samples pushed
        self.steps = 0  # steps returned

    def _compute(self, upto: int) -> torch.Tensor:
        hop, n_fft = self.cfg.hop_length, self.cfg.n_fft
        k = upto - self.steps
        if k <= 0:
            return torch.zeros(self.cfg.n_mels, 0)
        seg = torch.from_numpy(self._buf[: (k - 1) * hop + n_fft])[None]
        out = _log_mel_steps(seg, self.cfg, self._window, self._fb)[0]  # (n_mels, k)
        self._buf, self.steps = self._buf[k * hop:], upto
        return out

    def push(self, x: np.ndarray) -> torch.Tensor:
        """x: (N,) float32 samples at ``cfg.sample_rate`` -> (n_mels, J) new log-mel steps."""
        x = np.asarray(x, np.float32).reshape(-1)
        self.samples += len(x)
        half = self.cfg.n_fft // 2
        if self._buf is None:
            self._head = np.concatenate([self._head, x])
            if len(self._head) <= half:  # reflection needs half + 1 samples
                return torch.zeros(self.cfg.n_mels, 0)
            self._buf, self._head = np.concatenate([self._head[1: half + 1][::-1], self._head]), self._head[:0]
        else:
            self._buf = np.concatenate([self._buf, x])
        # Step j covers padded[j * hop : j * hop + n_fft]; the buffer holds padded[steps * hop:].
        ready = self.steps + max(0, (len(self._buf) - self.cfg.n_fft) // self.cfg.hop_length + 1)
        return self._compute(ready)

    def flush(self) -> torch.Tensor:
        """The steps left at the end of the signal (its end reflected, as ``log_mel`` does)."""
        if self._buf is None:  # too short to reflect: log_mel pads it as it does any short signal
            out = log_mel(self._head, self.cfg) if len(self._head) else torch.zeros(self.cfg.n_mels, 0)
            self._head, self._buf, self.steps = self._head[:0], np.zeros(0, np.float32), out.shape[1]
            return out
        half = self.cfg.n_fft // 2
        self._buf = np.concatenate([self._buf, self._buf[-half - 1: -1][::-1]])
        return self._compute(self.samples // self.cfg.hop_length + 1)


class RunningNormalizer:
    """Causal ``audio.normalize_utterance``: per-band mean and scale of the steps so far, blended
    with ``prior``'s. The prior weighs as much as ``prior_steps`` steps at the start and fades with
    the same time constant (after 5 s it weighs under 1 %: a microphone 20 dB off the prior's level
    is then normalised as if there were none); the stream's own steps are forgotten with a memory
    of ``memory_steps`` (an exponential average once the stream is longer than that)."""

    def __init__(self, prior: SpeechPrior, prior_steps: int = 100, memory_steps: int = 3000, eps: float = 1e-3):
        self.decay, self.prior_decay = 1.0 - 1.0 / memory_steps, 1.0 - 1.0 / prior_steps
        self.eps = eps
        self._prior_w = float(prior_steps)
        self._prior_mean = torch.from_numpy(prior.mean).double()
        self._prior_m2 = torch.from_numpy(prior.std).double() ** 2 + self._prior_mean**2
        self._w, self._sum, self._sum2 = 0.0, torch.zeros_like(self._prior_mean), torch.zeros_like(self._prior_mean)

    def __call__(self, steps: torch.Tensor) -> torch.Tensor:
        """(n_mels, J) raw log-mel steps, in order -> the same normalised, each with the statistics
        of everything up to and including itself."""
        out = torch.empty_like(steps)
        for j in range(steps.shape[1]):  # J is a few steps per push: a plain loop is cheap
            x = steps[:, j].double()
            self._w = self._w * self.decay + 1.0
            self._sum = self._sum * self.decay + x
            self._sum2 = self._sum2 * self.decay + x**2
            self._prior_w *= self.prior_decay
            w = self._w + self._prior_w
            mean = (self._sum + self._prior_w * self._prior_mean) / w
            m2 = (self._sum2 + self._prior_w * self._prior_m2) / w
            std = (m2 - mean**2).clamp_min(0).sqrt()
            out[:, j] = ((x - mean) / (std + self.eps)).float()
        return out


class LiveFeatures:
    """Speech samples in, the generator's audio windows out, frame by frame, causally.

    ``push(samples)`` -> (k, n_mels, window_steps) windows of the k video frames whose window is
    now complete; ``flush(n_frames)`` -> those of the remaining frames up to ``n_frames`` (the
    steps past the end filled with silence, as ``audio.frame_windows`` does)."""

    def __init__(self, fps: float = 25.0, cfg: AudioConfig = AudioConfig(), prior: SpeechPrior | None = None):
        self.fps, self.cfg = fps, cfg
        self.prior = prior or SpeechPrior.shipped()
        self._mel = LogMelStream(cfg)
        self._norm = RunningNormalizer(self.prior)
        self._floor = torch.from_numpy(self.prior.floor).clone()  # (n_mels,) silence, normalised
        self._steps = torch.zeros(cfg.n_mels, 0)  # normalised steps from index self._first on
        self._first = 0
        self.frames = 0  # windows returned

    def silence(self) -> torch.Tensor:
        """(n_mels, window_steps): one window of silence, as ``audio.silence_window`` gives offline."""
        return self._floor[:, None].expand(-1, self.cfg.window_steps).clone()

    @property
    def lookahead_s(self) -> float:
        """How far past a frame's centre the speech must be in before the frame can be made."""
        return (self.cfg.window_steps // 2 * self.cfg.hop_length + self.cfg.n_fft // 2) / self.cfg.sample_rate

    def _add(self, raw: torch.Tensor) -> None:
        if raw.shape[1]:
            norm = self._norm(raw)
            self._floor = torch.minimum(self._floor, norm.amin(1))
            self._steps = torch.cat([self._steps, norm], 1)

    def _window_start(self, i: int) -> int:
        return int(window_starts(torch.tensor([i]), self.fps, self.cfg)[0])

    def _cut(self, upto: int) -> torch.Tensor:
        """Windows of frames self.frames .. upto - 1 from the kept steps (silence outside them)."""
        w = self.cfg.window_steps
        out = []
        for i in range(self.frames, upto):
            s = self._window_start(i) - self._first
            win = self._steps[:, max(0, s): max(0, s + w)]
            left = max(0, -s)
            right = w - left - win.shape[1]
            fill = self._floor[:, None]
            out.append(torch.cat([fill.expand(-1, left), win, fill.expand(-1, right)], 1))
        self.frames = max(self.frames, upto)
        keep = self._window_start(self.frames) - self._first  # steps no later frame needs
        if keep > 0:
            self._steps, self._first = self._steps[:, keep:], self._first + keep
        return torch.stack(out) if out else torch.zeros(0, self.cfg.n_mels, w)

    def push(self, samples: np.ndarray) -> torch.Tensor:
        self._add(self._mel.push(samples))
        have = self._first + self._steps.shape[1]  # steps known so far
        ready = self.frames
        while self._window_start(ready) + self.cfg.window_steps <= have:
            ready += 1
        return self._cut(ready)

    def flush(self, n_frames: int) -> torch.Tensor:
        self._add(self._mel.flush())
        return self._cut(n_frames)


def live_windows(audio: np.ndarray, n_frames: int, fps: float = 25.0, cfg: AudioConfig = AudioConfig(),
                 chunk_s: float = 0.04) -> torch.Tensor:
    """The (n_frames, n_mels, window_steps) windows a live session makes of ``audio`` pushed in
    ``chunk_s`` pieces: what ``evaluate --live`` compares with the offline windows."""
    feats = LiveFeatures(fps, cfg)
    step = max(1, int(round(chunk_s * cfg.sample_rate)))
    parts = [feats.push(audio[s: s + step]) for s in range(0, len(audio), step)]
    parts.append(feats.flush(n_frames))
    return torch.cat(parts)[:n_frames]
