"""One configuration: frozen dataclasses, loaded from TOML, overridden with `--set key=value`.

A config is saved beside every corpus and checkpoint (``to_dict`` -> JSON) so a result can be
reproduced by reading it. Nothing here reads files at import time.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib


@dataclass(frozen=True)
class AudioConfig:
    sample_rate: int = 16000
    # Log-mel at 100 Hz (hop 10 ms), 80 bands up to 7.6 kHz: the front end most lip-sync models use.
    n_fft: int = 512
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms -> 4 mel steps per 25 fps video frame
    n_mels: int = 80
    f_min: float = 55.0
    f_max: float = 7600.0
    # The paper's 0.35 s context around every video frame (35 steps at 100 Hz).
    window_steps: int = 35


@dataclass(frozen=True)
class FaceConfig:
    crop_size: int = 128
    # Where the canonical template puts the face inside the crop: the eye midpoint at
    # (0.5, eye_y) and an inter-ocular distance of iod * crop_size. Leaves room below the chin
    # so jaw motion stays inside the crop.
    eye_y: float = 0.34
    iod: float = 0.30
    # Several faces: "largest" or "central".
    pick: str = "largest"
    # Gaussian smoothing (in frames) of the per-frame similarity transforms of a video.
    smooth_sigma: float = 1.5
    min_detection_confidence: float = 0.5


@dataclass(frozen=True)
class DataConfig:
    fps: float = 25.0
    audio: AudioConfig = field(default_factory=AudioConfig)
    face: FaceConfig = field(default_factory=FaceConfig)
    # Split rule: speakers with fewer than this many clips are held out whole (speaker-disjoint);
    # the others are split by sentence (the same sentence text never lands in two splits).
    min_clips_train_speaker: int = 20
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    # Held-out speakers that go to validation rather than test (the rest go to test).
    val_speakers: tuple[str, ...] = ("u01",)
    workers: int = 2


@dataclass(frozen=True)
class AudioEncoderConfig:
    n_mels: int = 80
    dim: int = 256
    width: int = 32
    # > 0: the encoder sees only the first `lifter` cepstral coefficients of each log-mel frame,
    # mapped back to bands (audio.envelope_projection): spectral envelope without pitch harmonics.
    lifter: int = 0


@dataclass(frozen=True)
class IdentityEncoderConfig:
    width: int = 32
    dim: int = 256


@dataclass(frozen=True)
class GeneratorConfig:
    crop_size: int = 128
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    identity: IdentityEncoderConfig = field(default_factory=IdentityEncoderConfig)
    hidden: int = 256
    recurrent: bool = True  # False = the paper's frame-wise baseline (no GRU)
    # Whether the identity vector conditions the GRU (the motion). With one training identity it
    # can only learn that person's habits; False makes motion depend on audio and the reference's
    # lip geometry alone. True reproduces checkpoints made before this option existed.
    motion_identity: bool = True
    # "warp": flow + mask + residual over the photo's own pixels (default); "paint": the decoder
    # paints the lower face from features alone (the paper's decoder), kept to measure the choice.
    render: str = "warp"
    # What the decoder is conditioned on besides the photo: "gru", the GRU features (v1-v3: the
    # decoder can open the mouth from the voice on its own, and follows its own landmark motion at
    # only 0.53-0.83 correlation on unseen speakers), or "motion", the predicted landmark offsets
    # alone, so the renderer draws exactly the motion it is given and sees nothing of the voice.
    decoder_input: str = "gru"
    n_points: int = 69  # len(face.LOWER_FACE)
    flow_sigma: float = 0.035  # Gaussian radius (fraction of crop size) spreading landmark motion
    # How landmark motion becomes the initial dense flow. "gaussian" (v1-v4): every pixel moves
    # with a Gaussian-weighted mean of all landmarks, so teeth between parting lips are stretched
    # (half the jaw's motion) and nothing marks where the mouth interior shows. "layered": inside
    # the mouth's span, pixels above the reference's lip midline move with the upper lip only and
    # pixels below with the lower lip and jaw only; where neither layer reaches (the lips part)
    # the warp has no source and the residual paints the mouth interior (a "gap" map the decoder
    # sees and the blend mask obeys). Upper teeth stay on the upper lip, lower teeth go with the jaw.
    flow_init: str = "gaussian"
    # The colour of the residual (what the decoder paints: mouth interior, lip edges). "free": any
    # RGB (v1-v5). "lips": a grey level plus a non-negative amount of the reference's own lip hue
    # (its mean lip colour minus that colour's grey), so the interior painted on any face can only
    # be that face's shades of lip colour, white and black. With "free", v5 painted cyan, purple and
    # green bands into the mouths of the portraits: nothing in training (one speaker's mouth, a
    # sync critic that sees grey frames) tied the painted hue to the photo. "lips-relative": the
    # grey level is an offset from the lips' own grey (at initialisation the residual IS the lip
    # colour): with "lips", v6 painted wide-open mouths of the portraits light grey (mean level
    # +0.2 in [-1, 1]) where s1's interior is dark (-0.4), a grey level learnt on one face.
    residual_colour: str = "free"
    # Where the decoder may refine the landmark flow (by up to 0.05 crop units). "lower-half" (v1-v6):
    # anywhere, and v6 learnt to shift Biden's collar by up to 0.046 there, tearing it.
    # "landmarks": only near the lower-face landmarks (weight exp(-d^2 / 2 sigma^2) with d the
    # distance to the nearest one and sigma = flow_sigma): the photo's neck, collar and background
    # stay where the landmark flow puts them.
    flow_refine: str = "lower-half"
    max_point_offset: float = 0.12  # landmarks move at most this fraction of the crop per frame
    # What the audio -> motion half hears (phonetic.py). "none": the log-mel windows alone (v1-v15).
    # "with-mel": also the phone track of a many-speaker recogniser (pocketsphinx), 40 one-hot rows
    # appended below the mel bands of every audio window; "only": the phone track alone (the mel
    # rows are ignored). Phones name what is said in the same symbols for every voice.
    phones: str = "none"
    phone_dim: int = 128  # width of the phone encoder's output
    # True: the audio encoder is a phone classifier's, trained on many voices (kind = "phones",
    # models/phone_classifier.py) and loaded from TrainConfig.audio_encoder_checkpoint, and it stays
    # as it was: no updates, batch-norm statistics fixed, so the motion half cannot refit it to the
    # one voice of the training corpus.
    audio_pretrained: bool = False
    feather_rows: int = 8  # rows blended with the photo at the top of the generated half


@dataclass(frozen=True)
class FrameDiscriminatorConfig:
    width: int = 32


@dataclass(frozen=True)
class SequenceDiscriminatorConfig:
    width: int = 32


@dataclass(frozen=True)
class SyncExpertConfig:
    frames: int = 5
    width: int = 32
    dim: int = 256
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    # What the video side sees. "crops": grey lower-face pixels (a conv trunk). "landmarks": the
    # mouth's landmark motion (face.mouth_motion: canonical frame, the clip's own mean shape
    # removed; an MLP), which holds no skin, lighting or lip shape of the one training speaker.
    visual: str = "crops"


@dataclass(frozen=True)
class LipReaderConfig:
    """The paper's lip-reading critic, as a viseme reader: 5 lower-face frames -> the viseme of the
    middle frame (14 classes, ``phonemes.VISEMES``)."""

    frames: int = 5
    width: int = 32
    n_classes: int = 14


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _build(cls: type, data: dict) -> Any:
    """Build a (nested) frozen dataclass from a dict, rejecting unknown keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown config key(s) for {cls.__name__}: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in data.items():
        sub = _dataclass_type(cls, name)
        if sub is not None and isinstance(value, dict):
            kwargs[name] = _build(sub, value)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _dataclass_type(cls: type, name: str) -> type | None:
    default = next(f for f in dataclasses.fields(cls) if f.name == name)
    if default.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = default.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return type(value)
    return None


def _parse_value(text: str) -> Any:
    """Values of `--set key=value` are read as TOML literals; bare words stay strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        node = data
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _parse_value(text.strip())
    return data


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Defaults of ``cls``, updated by a TOML file, updated by ``key=value`` overrides."""
    data: dict = to_dict(cls())
    if path is not None:
        with open(path, "rb") as f:
            _merge(data, tomllib.load(f))
    data = apply_overrides(data, overrides or [])
    return _build(cls, data)


def _merge(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n")


def config_from_json(cls: type, path: str | Path) -> Any:
    return _build(cls, json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class LossConfig:
    """Generator loss weights (paper: L1 + 0.002 frame-adv + 0.01 sequence-adv + 0.001 lip-sync) and
    the step at which each term switches on (the paper's staged schedule)."""

    l1: float = 1.0
    points: float = 20.0  # lower-face landmarks: cheap, direct supervision of the motion head
    frame_adv: float = 0.002
    seq_adv: float = 0.01
    # The SyncNet-style expert (TrainConfig.sync_checkpoint). Against the paper's lip reader in its
    # place (lipread below): the same landmark sync on two seeds, the rest split (results/README, "eval-v17").
    sync: float = 0.03
    mask_tv: float = 0.01  # keeps the blend mask smooth (no speckled paste of the residual)
    # Stage 0: the audio -> motion half alone (landmark loss, no rendering) with big batches.
    motion_steps: int = 0
    motion_batch_size: int = 64
    # From this step of stage 0 on, keep an exponential moving average of the motion half's weights
    # (weight ema_beta on the average, per step); when stage 0 ends the average replaces the live
    # motion half, which the renderer then trains on (frozen, with freeze_motion). The last step's
    # weights are one point of stage 0's noise, and with freeze_motion that point is kept for good.
    # 0 = the last step's weights (every run before v14; results/README, "eval-v15").
    motion_ema_start: int = 0
    # Keep the audio -> motion half as stage 0 left it: trained alone it follows unseen voices
    # better than after the renderer's losses (one speaker's pixels, the critics) have pulled on it
    # (scripts/motion_probe.py). Only the renderer trains after stage 0.
    freeze_motion: bool = False
    # Fraction of the renderer's training windows drawn from the REAL landmark motion instead of
    # the predicted one (teacher forcing): there the L1 target matches the motion drawn, so the
    # renderer learns to draw whatever motion it is given; elsewhere the predicted motion keeps the
    # critics on what inference produces. 0 = always the prediction (v1-v3).
    teacher_motion: float = 0.0
    adv_start: int = 1000
    sync_start: int = 1500
    # Whether the lip-sync critic's gradient reaches the residual's paint (mouth interior colour).
    # False: it may shape the flow and the blend mask (how the mouth opens) but not the colour
    # painted where the lips part. Tried in v9 against v7's light interiors: they stayed light
    # (results/README, "eval-v9"), so the default keeps the paper's full sync loss.
    sync_paint: bool = True
    # Whether it reaches the blend mask (where the photo is warped and where the residual paints).
    # With both False the critic can only move the photo's pixels (the flow). Tried in v10 against
    # the light interiors: not darker, and landmark sync worse everywhere (results/README, "eval-v10").
    sync_mask: bool = True
    # The paper's own lip-sync critic: a frozen viseme reader (TrainConfig.lipread_checkpoint, a
    # `kind = "lipread"` run) reads each generated 5-frame window, and the loss is its cross-entropy
    # against the viseme the corpus's phoneme labels give the middle frame. Unlike the sync expert
    # it never hears the audio, so it asks for the mouth SHAPE each phoneme needs. 0 = off. Its
    # gradient reaches the paint and the blend mask as sync_paint / sync_mask say.
    lipread: float = 0.0
    lipread_start: int = 1500
    # Fraction of training windows whose phone rows are blanked (all -1: "no phonetic
    # information"), so a model with generator.phones = "with-mel" still moves the lips from the
    # audio alone where the recogniser has nothing to say (another language: phonetic.phone_track).
    phone_dropout: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    name: str = "generator"
    kind: str = "generator"  # "generator", "sync" (the audio-visual sync expert), "lipread" (viseme reader) or "phones" (the phone classifier)
    corpus: str = "corpora/train"
    selection: str = ""  # a selection name under corpus/selections ('' = every train clip)
    val_split: str = "val"
    seed: int = 0
    steps: int = 3000
    batch_size: int = 4
    window: int = 12  # frames per training window (>= 11 for the sequence discriminator)
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    # The lip-sync critic's learning rate while the generator trains against it. The paper's
    # lip-reading critic is "pretrained, then fine-tuned adversarially": each step it also learns
    # that the generated windows, with their own audio, are not in sync (val's sync_p_* then use the
    # critic as it is at that step). 0 = frozen, as trained alone. Tried at 1e-4 in v12's critic
    # phase, where a frozen critic is fooled: no gain on the pixel expert, landmark sync worse
    # (results/README, "eval-v14").
    lr_sync: float = 0.0
    betas: tuple[float, float] = (0.5, 0.999)
    # From this step on every optimiser's learning rate falls linearly, reaching 0 at the last step
    # (pix2pix's schedule): at a constant rate the adversarial game keeps swinging, and the export is
    # whichever point of the swing the last step lands on. 0 = a constant rate (every run before v11).
    lr_decay_start: int = 0
    # From this step on the generator also keeps an exponential moving average of its weights
    # (weight ema_beta on the average, per step), and that average is what validation reports as
    # ema_* and what the run exports: the adversarial phase's step-to-step swings average out
    # while training itself is unchanged. 0 = no average, the last step's weights are exported.
    ema_start: int = 0
    ema_beta: float = 0.998
    augment: bool = True
    # Speaking-rate perturbation of the audio windows (data/dataset.py augment_batch): 0.25 = rates
    # 0.8-1.25x. 0 (off) keeps the random stream, and so runs made before it, unchanged.
    augment_speed: float = 0.0
    # Voice augmentation of the audio windows: "full" (a 0.8-1.25x mel stretch, spectral tilt, EQ,
    # dynamics, a masked band) or "light" (the first version's: a +-10% stretch and the masked band,
    # with its random stream: what v7's critic and the pixel evaluation expert had).
    augment_voice: str = "full"
    threads: int = 2
    log_every: int = 25
    val_every: int = 250
    ckpt_every: int = 250
    val_windows: int = 16
    # Export the model of the validation with the highest value of this val metric ("auc" for a
    # sync expert) instead of the last step's. '' = the last step's. A constant-rate critic's val
    # AUC swings from one validation to the next (0.966 at step 1000, 0.901 at 1500 in one run), and
    # the generator trains against whatever the export holds.
    keep_best: str = ""
    sync_checkpoint: str = ""  # frozen sync expert used as the lip-sync critic
    # Frozen viseme reader used as the lip-reading critic (loss.lipread). It must be trained apart
    # from the evaluation's reader (checkpoints/lip_reader.pt), which would otherwise grade its own pupil.
    lipread_checkpoint: str = ""
    # kind = "phones": a folder of speech of many voices (any depth; flac, wav, mp3, ...) the phone
    # classifier learns from beside the corpus's training clips; files under a folder whose name
    # holds "test" are its validation voices.
    voices: str = ""
    # The phone classifier (kind = "phones") whose audio encoder a generator with
    # generator.audio_pretrained starts from.
    audio_encoder_checkpoint: str = ""
    loss: LossConfig = field(default_factory=LossConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    sync: SyncExpertConfig = field(default_factory=SyncExpertConfig)
    lip_reader: LipReaderConfig = field(default_factory=LipReaderConfig)
    frame_d: FrameDiscriminatorConfig = field(default_factory=FrameDiscriminatorConfig)
    seq_d: SequenceDiscriminatorConfig = field(default_factory=SequenceDiscriminatorConfig)
