"""Shapes, initial behaviour, recurrent state carry and gradient flow of every model, and the loss
terms. Tiny widths keep this fast on a CPU."""

import dataclasses
import math

import pytest
import torch

from talkingface.config import (
    AudioEncoderConfig,
    FrameDiscriminatorConfig,
    GeneratorConfig,
    IdentityEncoderConfig,
    SequenceDiscriminatorConfig,
    SyncExpertConfig,
)
from talkingface.models.audio_encoder import AudioEncoder
from talkingface.models.frame_discriminator import FrameDiscriminator
from talkingface.models.generator import Generator
from talkingface.models.identity_encoder import IdentityEncoder
from talkingface.models.sequence_discriminator import SequenceDiscriminator
from talkingface.models.sync_expert import SyncExpert
from talkingface.training import losses

S = 128
K = 69
TINY_G = GeneratorConfig(audio=AudioEncoderConfig(dim=32, width=8), identity=IdentityEncoderConfig(width=8, dim=32), hidden=32)
TINY_SYNC = SyncExpertConfig(width=8, dim=32, audio=AudioEncoderConfig(width=8))


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # One thread: on a busy 2-core machine, intra-op threads only fight each other.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


def _ref(b=2):
    """A smooth random 'photo' in [-1, 1] and plausible lower-face points in [0.25, 0.95]."""
    img = torch.nn.functional.interpolate(torch.rand(b, 3, 16, 16) * 2 - 1, size=(S, S), mode="bilinear",
                                          align_corners=False)
    pts = torch.rand(b, K, 2) * torch.tensor([0.5, 0.4]) + torch.tensor([0.25, 0.55])
    return img, pts


def _mel(b, t):
    return torch.randn(b, t, 80, 35)


def test_audio_encoder_shape():
    enc = AudioEncoder(AudioEncoderConfig(dim=48, width=8))
    assert enc(torch.randn(3, 80, 35)).shape == (3, 48)


def test_audio_encoder_lifter_ignores_pitch_detail():
    """With ``lifter`` the encoder's output does not change when only fine spectral detail (above
    the kept cepstral coefficients) changes; without it, it does. The fixed projection is not in
    the state dict."""
    fine = torch.cos(2 * math.pi * torch.arange(80.0) / 4)[None, :, None].expand(3, 80, 35)
    mel = torch.randn(3, 80, 35)
    for lifter, fine_matters in ((20, False), (0, True)):
        enc = AudioEncoder(AudioEncoderConfig(dim=48, width=8, lifter=lifter)).eval()
        with torch.no_grad():
            d = float((enc(mel) - enc(mel + fine)).abs().max())
        assert (d > 1e-3) == fine_matters, (lifter, d)
        assert not any("envelope" in k for k in enc.state_dict())


def test_identity_encoder_shapes():
    enc = IdentityEncoder(IdentityEncoderConfig(width=8, dim=40))
    skips, vec = enc(torch.rand(2, 3, S, S) * 2 - 1)
    assert [tuple(s.shape) for s in skips] == [(2, 8, 64, 64), (2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)]
    assert vec.shape == (2, 40)
    assert enc.channels == [8, 16, 32, 64]


def test_generator_output_shapes_and_ranges():
    g = Generator(TINY_G)
    ref, pts = _ref(2)
    out = g(_mel(2, 5), ref, pts)
    assert out["frames"].shape == (2, 5, 3, S, S)
    assert out["lower"].shape == (2, 5, 3, S // 2, S)
    assert out["flow"].shape == (2, 5, 2, S // 2, S)
    assert out["mask"].shape == (2, 5, 1, S // 2, S)
    assert out["residual"].shape == (2, 5, 3, S // 2, S)
    assert out["points"].shape == (2, 5, K, 2)
    assert out["state"].shape == (1, 2, TINY_G.hidden)
    assert 0 <= out["mask"].min() and out["mask"].max() <= 1
    assert -1 <= out["residual"].min() and out["residual"].max() <= 1
    for v in out.values():
        assert torch.isfinite(v).all()


def test_generator_starts_as_a_copy_of_the_photo():
    g = Generator(TINY_G).eval()
    ref, pts = _ref(2)
    with torch.no_grad():
        out = g(_mel(2, 4), ref, pts)
    frames = out["frames"]
    upper = ref[:, None, :, : S // 2].expand_as(frames[:, :, :, : S // 2])
    assert torch.equal(frames[:, :, :, : S // 2], upper)  # the upper face IS the photo
    diff = (frames[:, :, :, S // 2:] - ref[:, None, :, S // 2:]).abs().mean()
    assert diff < 0.05, diff
    assert out["mask"].mean() > 0.95  # mask starts near 1: "copy the warped photo"
    torch.testing.assert_close(out["points"], pts[:, None].expand_as(out["points"]))  # no motion yet


def _randomize_zero_init(g):
    """Move the zero-initialised output layers off zero, as training does after its first steps."""
    with torch.no_grad():
        for p in list(g.motion_head[-1].parameters()) + [g.out[-1].weight]:
            p.normal_(0, 0.05)


def test_generator_state_carry_equals_one_pass():
    g = Generator(TINY_G)
    _randomize_zero_init(g)
    g.eval()
    ref, pts = _ref(1)
    mel = _mel(1, 20)
    with torch.no_grad():
        full = g(mel, ref, pts)
        enc = g.encode_reference(ref, pts)
        state, frames, points = None, [], []
        for a, b in [(0, 7), (7, 14), (14, 20)]:
            o = g(mel[:, a:b], enc, state=state)
            state = o["state"]
            frames.append(o["frames"])
            points.append(o["points"])
    torch.testing.assert_close(torch.cat(frames, 1), full["frames"], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(points, 1), full["points"], atol=1e-5, rtol=0)
    torch.testing.assert_close(state, full["state"], atol=1e-5, rtol=0)
    # the state matters: starting the last chunk from scratch gives other points
    fresh = g(mel[:, 14:20], enc)
    assert not torch.allclose(fresh["points"], full["points"][:, 14:20], atol=1e-6)


def test_non_recurrent_generator_runs():
    import dataclasses

    g = Generator(dataclasses.replace(TINY_G, recurrent=False))
    assert not hasattr(g, "gru")
    ref, pts = _ref(2)
    out = g(_mel(2, 3), ref, pts)
    assert out["frames"].shape == (2, 3, 3, S, S) and out["state"] is None
    out["lower"].mean().backward()


def test_motion_without_identity_ignores_the_face_but_not_its_lips():
    """motion_identity=False: the motion depends on the audio and the reference's lip geometry,
    not on the identity encoder's view of the face."""
    import dataclasses

    torch.manual_seed(0)
    g = Generator(dataclasses.replace(TINY_G, motion_identity=False))
    torch.nn.init.normal_(g.motion_head[-1].weight, std=0.1)  # off the "no motion" start
    ref, pts = _ref(2)
    mel = _mel(2, 4)
    a = g.motion(mel, g.encode_reference(ref, pts))["offsets"]
    other_face = g.motion(mel, g.encode_reference(-ref, pts))["offsets"]
    torch.testing.assert_close(a, other_face)
    other_lips = g.motion(mel, g.encode_reference(ref, pts + 0.02))["offsets"]
    assert not torch.allclose(a, other_lips)
    g.motion(mel, g.encode_reference(ref, pts))["offsets"].sum().backward()
    assert g.identity_encoder.fc.weight.grad is None  # the identity vector is not used for motion
    # the cheap motion-only encoding (no identity encoder) gives the same motion
    torch.testing.assert_close(g.motion(mel, g.encode_motion_reference(ref, pts))["offsets"], a)


def test_paint_generator_outputs_only_the_painted_residual():
    import dataclasses

    g = Generator(dataclasses.replace(TINY_G, render="paint")).eval()
    ref, pts = _ref(2)
    out = g(_mel(2, 3), ref, pts)
    assert float(out["mask"].abs().max()) == 0.0 and float(out["flow"].abs().max()) == 0.0
    fr = g.cfg.feather_rows
    # below the feathered rows the output is the painted residual, not the photo
    torch.testing.assert_close(out["lower"][:, :, :, fr:], out["residual"][:, :, :, fr:])


def test_cat_conv_equals_the_concatenated_convolution():
    """Shared (per-clip) parts convolved once and broadcast over time == copying them T times."""
    from talkingface.models.blocks import ResBlock, conv_block
    from talkingface.models.generator import cat_conv

    b, t = 2, 3
    block = torch.nn.Sequential(conv_block(5 + 4 + 2, 6), ResBlock(6)).train()
    x, shared, f = torch.randn(b * t, 5, 8, 16), torch.randn(b, 4, 8, 16), torch.randn(b * t, 2, 8, 16)
    rep = shared[:, None].expand(b, t, 4, 8, 16).reshape(b * t, 4, 8, 16)
    want = block(torch.cat([x, rep, f], 1))
    got = cat_conv(block, [x, shared, f], [False, True, False], b, t)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    out_block = torch.nn.Sequential(torch.nn.Conv2d(11, 3, 3, 1, 1))  # a bare conv with a bias
    torch.testing.assert_close(cat_conv(out_block, [x, shared, f], [False, True, False], b, t),
                               out_block(torch.cat([x, rep, f], 1)), atol=1e-5, rtol=1e-5)


def test_generator_without_crops_gives_the_same_maps():
    g = Generator(TINY_G).eval()
    ref, pts = _ref(2)
    mel = _mel(2, 4)
    with torch.no_grad():
        full, maps = g(mel, ref, pts), g(mel, ref, pts, crops=False)
    assert "frames" not in maps and "lower" not in maps
    for k in ("flow", "mask", "residual", "points", "state"):
        torch.testing.assert_close(maps[k], full[k])


def test_generator_draws_given_offsets():
    """Given landmark motion replaces the motion head's: points follow it, and opening the lips
    changes the rendered lower face (what the loudness-driven baseline relies on)."""
    g = Generator(TINY_G).eval()
    with torch.no_grad():
        for p in list(g.motion_head[-1].parameters()):
            p.normal_(0, 0.02)  # a motion head that moves by itself
    ref, pts = _ref(1)
    mel = _mel(1, 3)
    off = torch.zeros(1, 3, K, 2)
    off[:, 1:, :, 1] = 0.03
    with torch.no_grad():
        out = g(mel, ref, pts, offsets=off)
        still = g(mel, ref, pts, offsets=torch.zeros_like(off))
    torch.testing.assert_close(out["points"], pts[:, None] + off)
    assert torch.equal(out["frames"][:, 0], still["frames"][:, 0])
    assert float((out["lower"][:, 2] - still["lower"][:, 2]).abs().max()) > 1e-3


def test_use_offsets_picks_given_motion_per_window():
    """``use_offsets`` draws the given motion only in the chosen windows; the others keep the
    motion head's, and ``predicted_points`` is always the motion head's."""
    g = Generator(TINY_G).eval()
    _randomize_zero_init(g)
    ref, pts = _ref(2)
    mel = _mel(2, 3)
    off = torch.full((2, 3, K, 2), 0.02)
    with torch.no_grad():
        mixed = g(mel, ref, pts, offsets=off, use_offsets=torch.tensor([True, False]))
        given = g(mel, ref, pts, offsets=off)
        own = g(mel, ref, pts)
    torch.testing.assert_close(mixed["points"][0], pts[0, None] + off[0])
    torch.testing.assert_close(mixed["points"][1], own["points"][1])
    torch.testing.assert_close(mixed["predicted_points"], own["points"])
    torch.testing.assert_close(mixed["lower"][0], given["lower"][0])
    torch.testing.assert_close(mixed["lower"][1], own["lower"][1])


def test_motion_conditioned_decoder_sees_only_the_motion():
    """decoder_input="motion": with the drawn motion given, the rendered face does not depend on the
    audio at all (no gradient reaches it: the GRU features stay out of the decoder); with "gru" it
    does. Different motion still renders differently."""
    ref, pts = _ref(1)
    off = torch.zeros(1, 3, K, 2)
    off[:, :, :, 1] = 0.02
    for mode, audio_matters in (("motion", False), ("gru", True)):
        g = Generator(dataclasses.replace(TINY_G, decoder_input=mode)).eval()
        _randomize_zero_init(g)
        mel = _mel(1, 3).requires_grad_(True)
        a = g(mel, ref, pts, offsets=off)["lower"]
        a.sum().backward()
        reached = mel.grad is not None and float(mel.grad.abs().sum()) > 0
        assert reached == audio_matters, mode
        with torch.no_grad():
            c = g(mel, ref, pts, offsets=2 * off)["lower"]
        assert float((a.detach() - c).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="decoder_input"):
        Generator(dataclasses.replace(TINY_G, decoder_input="voice"))


def test_gradients_reach_audio_identity_and_gru():
    g = Generator(TINY_G)
    g.train()
    ref, pts = _ref(2)
    mel = _mel(2, 4)
    target = torch.rand(2, 4, 3, S // 2, S) * 2 - 1
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    # At init the output layers are zero ("still photo"), so only they get gradients; one step
    # moves them off zero, after which the whole network learns.
    for step in range(2):
        opt.zero_grad()
        loss = losses.l1(g(mel, ref, pts)["lower"], target)
        loss.backward()
        if step == 0:
            assert g.out[-1].weight.grad.abs().sum() > 0
            assert g.motion_head[-1].weight.grad.abs().sum() > 0
            opt.step()

    def total(m):
        return sum(p.grad.abs().sum().item() for p in m.parameters() if p.grad is not None)

    assert total(g.audio_encoder) > 0
    assert total(g.identity_encoder) > 0
    assert total(g.gru) > 0
    assert all(p.grad is not None for p in g.gru.parameters())
    assert all(math.isfinite(p.grad.abs().sum().item()) for p in g.parameters() if p.grad is not None)


def test_frame_discriminator_shape():
    d = FrameDiscriminator(FrameDiscriminatorConfig(width=8))
    assert d(torch.rand(3, 3, S // 2, S) * 2 - 1).shape == (3, 1, 8, 16)


def test_sequence_discriminator_shape():
    d = SequenceDiscriminator(SequenceDiscriminatorConfig(width=8))
    out = d(torch.rand(2, 12, 3, S // 2, S) * 2 - 1)
    assert out.shape == (2, 1, 3, 4, 8)


def test_sync_expert_shapes():
    e = SyncExpert(TINY_SYNC)
    lower = torch.rand(3, 5, 3, S // 2, S) * 2 - 1
    mel = torch.randn(3, 80, 35)
    assert e(lower, mel).shape == (3,)
    v, a = e.embed_video(lower), e.embed_audio(mel)
    assert v.shape == a.shape == (3, 32)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(3))
    g = SyncExpert.to_gray(lower)
    assert g.shape == (3, 5, S // 2, S)


def test_landmark_sync_expert_shapes_and_loss():
    """visual = "landmarks": the video side reads (N, F, K, 2) mouth motion; same embeddings, logits
    and training loss as the pixel expert."""
    from talkingface.face import SYNC_POINTS

    cfg = dataclasses.replace(TINY_SYNC, visual="landmarks")
    e = SyncExpert(cfg)
    motion = torch.randn(3, 5, len(SYNC_POINTS), 2) * 0.02
    mel = torch.randn(3, 80, 35)
    assert e(motion, mel).shape == (3,)
    v = e.embed_video(motion)
    assert v.shape == (3, 32)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(3))
    loss, m = losses.sync_expert_loss(e, motion, mel, torch.randn(3, 80, 35))
    assert torch.isfinite(loss) and 0.0 <= m["acc"] <= 1.0
    loss.backward()
    assert all(p.grad is not None for p in e.video.parameters())
    assert sum(p.numel() for p in e.video.parameters()) < sum(p.numel() for p in SyncExpert(TINY_SYNC).video.parameters())
    with pytest.raises(ValueError, match="visual"):
        SyncExpert(dataclasses.replace(TINY_SYNC, visual="pixels"))


def test_losses_are_finite():
    real, fake = torch.randn(4, 1, 8, 16), torch.randn(4, 1, 8, 16)
    for x in (losses.d_loss(real, fake), losses.g_adv_loss(fake), losses.total_variation(torch.rand(2, 1, 8, 8)),
              losses.l1(real, fake)):
        assert x.ndim == 0 and torch.isfinite(x)
    # an all-confident discriminator: d_loss near 0; a fooled one: large
    assert losses.d_loss(torch.full((4,), 20.0), torch.full((4,), -20.0)) < 1e-6
    assert losses.d_loss(torch.full((4,), -20.0), torch.full((4,), 20.0)) > 10
    assert losses.total_variation(torch.ones(1, 1, 8, 8)) == 0

    e = SyncExpert(TINY_SYNC)
    lower = torch.rand(2, 9, 3, S // 2, S) * 2 - 1
    mel = torch.randn(2, 9, 80, 35)
    v, a = losses.sync_windows(lower, mel)
    assert v.shape == (2 * 5, 5, 3, S // 2, S) and a.shape == (2 * 5, 80, 35)
    torch.testing.assert_close(a[1], mel[0, 3])  # window starting at frame 1 -> audio of frame 3
    ls = losses.sync_loss(e, lower, mel)
    assert ls.ndim == 0 and torch.isfinite(ls)

    loss, m = losses.sync_expert_loss(e, lower[:, :5], mel[:, 2], torch.randn(2, 80, 35))
    assert torch.isfinite(loss) and 0.0 <= m["acc"] <= 1.0
    assert math.isfinite(m["nce"]) and math.isfinite(m["bce"])
    loss.backward()
    assert e.logit_scale.grad is not None and torch.isfinite(e.logit_scale.grad)


def test_lipread_loss_scores_each_window_against_its_middle_frames_viseme():
    """The lip-reading critic's loss: cross-entropy of the reader's viseme for every 5-frame window
    against the middle frame's label, unknown labels left out; its gradient reaches the frames."""
    import torch.nn.functional as F

    from talkingface.config import LipReaderConfig
    from talkingface.models.lip_reader import LipReader

    torch.manual_seed(0)
    reader = LipReader(LipReaderConfig(width=8)).eval()
    lower = (torch.rand(2, 9, 3, S // 2, S) * 2 - 1).requires_grad_(True)
    visemes = torch.randint(0, 14, (2, 9))
    visemes[0, 4] = -1  # the middle frame of clip 0's window starting at frame 2
    loss = losses.lipread_loss(reader, lower, visemes)
    with torch.no_grad():
        logits, target = [], []
        for b in range(2):
            for s in range(5):
                if visemes[b, s + 2] >= 0:
                    logits.append(reader(lower[b: b + 1, s: s + 5].detach()))
                    target.append(visemes[b, s + 2])
        want = F.cross_entropy(torch.cat(logits), torch.stack(target))
    torch.testing.assert_close(loss.detach(), want)
    loss.backward()
    assert lower.grad is not None and lower.grad.abs().sum() > 0
    unknown = losses.lipread_loss(reader, lower, torch.full((2, 9), -1))
    assert unknown.item() == 0 and unknown.requires_grad


def test_sync_critic_loss_teaches_the_critic_that_generated_windows_are_out_of_sync():
    """Some Adam steps on sync_critic_loss make the critic rate the generated windows with their
    own audio out of sync and the real ones in sync; the generator's output gets no gradient."""
    torch.manual_seed(0)
    e = SyncExpert(TINY_SYNC).eval()
    # real: smooth stripes that move with time; generated: noise (a critic can tell them apart)
    t = torch.arange(9.0)[:, None, None, None]
    real = torch.sin(torch.arange(S)[None, None, None] / 6.0 + t).expand(9, 3, S // 2, S).repeat(2, 1, 1, 1, 1)
    fake = (torch.rand(2, 9, 3, S // 2, S) * 2 - 1).requires_grad_(True)
    mel = torch.randn(2, 9, 80, 35)

    def p(x):
        with torch.no_grad():
            v, a = losses.sync_windows(x, mel, stride=2)
            return torch.sigmoid(e(v, a)).mean().item()

    assert abs(p(real) - p(fake)) < 0.1  # untrained: no opinion
    opt = torch.optim.Adam(e.parameters(), lr=1e-3)
    for _ in range(25):
        loss = losses.sync_critic_loss(e, real, fake, mel)
        assert loss.ndim == 0 and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fake.grad is None
    assert p(real) > p(fake) + 0.3, (p(real), p(fake))


def test_articulation_scales_the_predicted_motion_only():
    """``articulation`` multiplies the motion head's offsets from the reference shape (clamped to
    the renderer's range) and so changes the drawn mouth; 1 is the plain forward pass; given
    offsets are drawn unscaled; ``predicted_points`` stays the motion head's own."""
    g = Generator(TINY_G).eval()
    _randomize_zero_init(g)
    ref, pts = _ref(2)
    mel = _mel(2, 3)
    lim = g.cfg.max_point_offset
    with torch.no_grad():
        own = g(mel, ref, pts)
        one = g(mel, ref, pts, articulation=1.0)
        two = g(mel, ref, pts, articulation=2.0)
        zero = g(mel, ref, pts, articulation=0.0)
        off = torch.full((2, 3, K, 2), 0.02)
        given = g(mel, ref, pts, offsets=off, articulation=2.0)
    moved = own["points"] - pts[:, None]
    assert moved.abs().max() > 1e-3  # the randomised head does move the landmarks
    torch.testing.assert_close(one["lower"], own["lower"])
    torch.testing.assert_close(two["points"] - pts[:, None], (2 * moved).clamp(-lim, lim))
    torch.testing.assert_close(two["predicted_points"], own["points"])
    torch.testing.assert_close(zero["points"], pts[:, None].expand_as(zero["points"]))
    assert (two["lower"] - own["lower"]).abs().max() > 1e-4
    torch.testing.assert_close(given["points"], pts[:, None] + off)


def test_combine_motion_and_renderer_takes_each_half_from_its_own_model():
    """The combined generator predicts ``motion``'s landmark motion and draws given motion exactly
    as ``renderer`` does; a renderer that reads the GRU features, or configs that differ, are refused."""
    from talkingface.models.generator import combine_motion_and_renderer

    cfg = dataclasses.replace(TINY_G, decoder_input="motion", motion_identity=False)
    torch.manual_seed(0)
    mover, drawer = Generator(cfg).eval(), Generator(cfg).eval()
    _randomize_zero_init(mover)
    _randomize_zero_init(drawer)
    both = combine_motion_and_renderer(mover, drawer)
    ref, pts = _ref(1)
    mel = _mel(1, 3)
    off = torch.full((1, 3, K, 2), 0.02)
    with torch.no_grad():
        torch.testing.assert_close(both.motion(mel, both.encode_motion_reference(ref, pts))["offsets"],
                                   mover.motion(mel, mover.encode_motion_reference(ref, pts))["offsets"])
        torch.testing.assert_close(both(mel, ref, pts, offsets=off)["lower"], drawer(mel, ref, pts, offsets=off)["lower"])
        assert not torch.allclose(both(mel, ref, pts)["lower"], drawer(mel, ref, pts)["lower"])
    with pytest.raises(ValueError, match="GRU features"):
        combine_motion_and_renderer(Generator(TINY_G), Generator(TINY_G))
    with pytest.raises(ValueError, match="differ"):
        combine_motion_and_renderer(Generator(dataclasses.replace(cfg, hidden=48)), drawer)


def _template_points():
    """The canonical face's lower-face points in crop units (lips slightly parted)."""
    from talkingface.config import FaceConfig
    from talkingface.face import LOWER_FACE, template

    return torch.from_numpy(template(FaceConfig(crop_size=S))[LOWER_FACE] / S).float()[None]  # (1, K, 2)


def test_layered_flow_keeps_upper_teeth_and_opens_a_gap_for_the_interior():
    """A jaw drop (lower lip, jaw and chin down, upper lip still): with flow_init = "layered" the
    upper teeth stay, the chin follows the jaw, and between the lips a gap opens that the photo
    cannot fill (the blend mask gives it to the residual); beside the mouth nothing tears. The
    Gaussian flow of v1-v4 instead drags the teeth down (stretching them)."""
    from talkingface.models.generator import UPPER_LAYER

    g = Generator(dataclasses.replace(TINY_G, flow_init="layered")).eval()
    ref = _template_points()
    off = torch.zeros_like(ref)
    lower = [k for k in range(K) if k not in UPPER_LAYER]
    off[:, lower, 1] = 0.03  # ~4 px at 128
    flow, gap = g._layered_flow(ref + off, off)  # (1, 2, S/2, S), (1, 1, S/2, S)
    gauss = torch.nn.functional.interpolate(g._initial_flow(ref + off, off, (S // 8, S // 4)), size=(S // 2, S),
                                            mode="bilinear", align_corners=False)
    row = lambda y: round((y - 0.5) * S - 0.5)  # noqa: E731  crop y -> row of the lower half
    col = S // 2
    mid = 0.5 * (float(ref[0, 25, 1]) + float(ref[0, 35, 1]))  # where the teeth meet (inner lip midline)
    above, inside, chin = row(mid - 0.008), row(mid + 0.016), row(float(ref[0, 15, 1]) + 0.04)
    assert abs(float(flow[0, 1, above, col])) < 0.002  # upper teeth: still
    assert float(gauss[0, 1, above, col]) < -0.005  # (the Gaussian flow drags them along)
    assert float(flow[0, 1, chin, col]) < -0.02  # below the lower lip: follows the jaw down
    assert float(gap[0, 0, inside, col]) > 0.99 and float(gap[0, 0, above, col]) < 0.01
    assert float(gap[0, 0, :, : round(0.3 * S)].max()) < 1e-3  # beside the mouth: no gap

    # Nothing moves: no flow, no gap.
    still_flow, still_gap = g._layered_flow(ref, torch.zeros_like(ref))
    assert float(still_flow.abs().max()) == 0 and float(still_gap.max()) < 1e-3

    # The rendered blend mask obeys the gap: the photo is not used where the lips parted.
    img = torch.rand(1, 3, S, S) * 2 - 1
    with torch.no_grad():
        out = g(_mel(1, 1), img, ref, offsets=off[:, None], crops=False)
    assert float(out["mask"][0, 0, 0, inside, col]) < 0.01
    assert float(out["mask"][0, 0, 0, above, col]) > 0.5


def test_unknown_flow_init_is_refused():
    with pytest.raises(ValueError, match="flow_init"):
        Generator(dataclasses.replace(TINY_G, flow_init="optical"))


def test_layered_renderer_paints_only_around_the_mouth():
    """However much the decoder wants to paint, with flow_init = "layered" the residual replaces
    the photo only around the lips; far from the mouth the output is the warped photo."""
    g = Generator(dataclasses.replace(TINY_G, flow_init="layered")).eval()
    with torch.no_grad():
        g.out[-1].bias[2] = -10.0  # a decoder that asks for the residual everywhere
    ref = _template_points()
    img = torch.rand(1, 3, S, S) * 2 - 1
    with torch.no_grad():
        mask = g(_mel(1, 1), img, ref, offsets=torch.zeros(1, 1, K, 2), crops=False)["mask"][0, 0, 0]  # (S/2, S)
        mouth = ref[0, :40]
        cx, cy = float(mouth[:, 0].mean()), float(mouth[:, 1].mean())
        assert float(mask[round((cy - 0.5) * S), round(cx * S)]) < 0.01  # on the lips: the residual
        assert float(mask[:, :10].min()) == 1.0 and float(mask[-4:].min()) == 1.0  # cheek edge, bottom: the photo
        plain = Generator(TINY_G).eval()
        plain.out[-1].bias[2] = -10.0
        assert float(plain(_mel(1, 1), img, ref, offsets=torch.zeros(1, 1, K, 2), crops=False)["mask"].max()) < 0.01


def test_lip_coloured_residual_paints_only_the_photos_lip_hue():
    """With residual_colour = "lips", whatever the decoder asks for, each residual pixel is a grey
    level plus 0-2x the reference's lip hue (mean lip colour minus its grey): red lips give a
    red-axis interior, a grey photo a grey one. The free residual paints any colour."""
    from talkingface.models.generator import LIP_BODY_PAIRS

    cfg = dataclasses.replace(TINY_G, flow_init="layered", residual_colour="lips")
    g = Generator(cfg).eval()
    _randomize_zero_init(g)
    with torch.no_grad():
        g.out[-1].weight.normal_(0, 1.0)  # a decoder with strong opinions on every channel
    ref_pts = _template_points()
    img = _ref(1)[0] * 0.5
    lips = torch.tensor([0.6, -0.2, -0.1])
    for a, b in LIP_BODY_PAIRS:  # paint the lip body red
        x, y = ((ref_pts[0, a] + ref_pts[0, b]) / 2 * S).round().long().tolist()
        img[0, :, y - 1: y + 2, x - 1: x + 2] = lips[:, None, None]
    colour = Generator.lip_colour(img, ref_pts)[0]
    hue = colour - colour.mean()
    torch.testing.assert_close(hue, lips - lips.mean(), atol=0.02, rtol=0)
    with torch.no_grad():
        res = g(_mel(1, 2), img, ref_pts, crops=False)["residual"][0].flatten(2)  # (T, 3, P)
    res = res.transpose(1, 2)[(res.abs() < 0.999).all(1)]  # (P', 3): where no channel hit the [-1, 1] limits
    assert len(res) > 1000
    chroma = res - res.mean(1, keepdim=True)  # what is left after the grey level
    amount = (chroma @ hue) / hue.pow(2).sum()  # (P',): along the lip hue
    torch.testing.assert_close(chroma, amount[:, None] * hue, atol=1e-4, rtol=0)  # nothing off it
    assert float(amount.min()) >= -1e-3 and float(amount.max()) <= 2 + 1e-3 and float(amount.std()) > 0.05

    with torch.no_grad():
        grey = g(_mel(1, 1), img.mean(1, keepdim=True).expand(-1, 3, -1, -1), ref_pts, crops=False)["residual"]
    assert float((grey - grey.mean(2, keepdim=True)).abs().max()) < 1e-5

    free = Generator(dataclasses.replace(cfg, residual_colour="free")).eval()
    _randomize_zero_init(free)
    with torch.no_grad():
        free.out[-1].weight.normal_(0, 1.0)
        fres = free(_mel(1, 1), img.mean(1, keepdim=True).expand(-1, 3, -1, -1), ref_pts, crops=False)["residual"]
    assert float((fres - fres.mean(2, keepdim=True)).abs().max()) > 0.1
    with pytest.raises(ValueError, match="residual_colour"):
        Generator(dataclasses.replace(TINY_G, residual_colour="rainbow"))

    # "lips-relative": the grey level is an offset from the lips' grey, so an untrained decoder
    # paints exactly the lip colour ("lips": the hue alone, around mid-grey).
    for kind, expect in (("lips-relative", colour), ("lips", hue)):
        fresh = Generator(dataclasses.replace(cfg, residual_colour=kind)).eval()
        with torch.no_grad():
            r = fresh(_mel(1, 1), img, ref_pts, crops=False)["residual"][0, 0]  # (3, S/2, S)
        torch.testing.assert_close(r, expect[:, None, None].expand_as(r), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="warp"):
        Generator(dataclasses.replace(TINY_G, residual_colour="lips", render="paint"))


def test_critic_input_sees_the_same_frames_but_cannot_pull_on_the_paint_or_the_mask():
    """loss.sync_paint / loss.sync_mask = false: the critic's input equals the rendered frames; its
    gradient reaches the blend mask and the flow but not the residual's colour channels (paint
    off), or the flow alone (both off)."""
    g = Generator(dataclasses.replace(TINY_G, flow_init="layered", residual_colour="lips-relative"))
    _randomize_zero_init(g)
    img, pts = _ref(1)
    offsets = torch.zeros(1, 3, K, 2)
    offsets[:, :, 20:40, 1] = 0.03  # the lower lip drops: a gap the residual paints
    out = g(_mel(1, 3), img, pts, offsets=offsets)
    last = g.out[-1].weight  # output channels: 0-1 flow, 2 mask, 3- residual

    def grads(x):  # largest gradient of sum(x^2) on the last layer's flow, mask and paint channels
        last.grad = None
        x.square().sum().backward(retain_graph=True)
        return [float(last.grad[c].abs().max()) for c in (slice(0, 2), slice(2, 3), slice(3, None))]

    flow, mask, paint = grads(out["lower"])
    assert min(flow, mask, paint) > 0  # the plain loss reaches all three
    torch.testing.assert_close(losses.critic_input(out), out["lower"], atol=0, rtol=0)
    for keep_paint, keep_mask in ((False, True), (True, False), (False, False)):
        x = losses.critic_input(out, paint=keep_paint, mask=keep_mask)
        torch.testing.assert_close(x, out["lower"], atol=0, rtol=0)
        f, m, p = grads(x)
        # A removed path cancels up to rounding (the weight is multiplied in another order).
        assert (p > 0.01 * paint) if keep_paint else (p < 1e-6 * paint)
        assert (m > 0.01 * mask) if keep_mask else (m < 1e-6 * mask)
        assert f > 0.01 * flow  # the flow always learns: it moves the photo's own pixels


def test_rest_offsets_make_silence_draw_the_photo_as_it_is():
    """``rest`` = the motion the head predicts for silence: with it, silent audio draws the
    reference's own mouth (no motion), speech moves away from it by the head's motion minus that
    rest, and articulation scales the difference."""
    from talkingface.audio import silence_window

    g = Generator(TINY_G).eval()
    _randomize_zero_init(g)
    ref, pts = _ref(2)
    feats = torch.randn(80, 305)  # (C, M) an utterance's normalised log-mel (windows below cover it all)
    silence = silence_window(feats)  # (C, steps)
    assert silence.shape == (80, 35)
    torch.testing.assert_close(silence[:, 0], feats.min(1).values)
    torch.testing.assert_close(silence_window(feats.unfold(1, 35, 10).permute(1, 0, 2)), silence)  # from windows too
    with torch.no_grad():
        enc = g.encode_reference(ref, pts)
        rest = g.rest_offsets(enc, silence[None].expand(2, -1, -1))  # (B, K, 2)
        assert rest.shape == (2, K, 2) and float(rest.abs().max()) > 1e-3  # the head does not rest at the photo
        quiet = silence[None, None].expand(2, 8, -1, -1)
        kept = g(quiet, enc, rest=rest)
        torch.testing.assert_close(kept["points"][:, -1], pts, atol=1e-6, rtol=0)
        speech = _mel(2, 3)
        plain, moved = g(speech, enc), g(speech, enc, rest=rest, articulation=1.5)
    lim = g.cfg.max_point_offset
    torch.testing.assert_close(moved["points"] - pts[:, None],
                               (1.5 * (plain["points"] - pts[:, None] - rest[:, None])).clamp(-lim, lim))


def test_flow_refinement_can_be_kept_to_the_landmarks():
    """With flow_refine = "landmarks", a decoder that asks for the largest refinement everywhere
    gets it on the lips and none at the bottom of the crop, far below the chin (the collar);
    the default refines anywhere in the lower half. Bad values are refused."""
    ref = _template_points()
    img = torch.rand(1, 3, S, S) * 2 - 1
    flows = {}
    for kind in ("lower-half", "landmarks"):
        g = Generator(dataclasses.replace(TINY_G, flow_refine=kind)).eval()
        with torch.no_grad():
            g.out[-1].bias[0:2] = 10.0  # tanh -> 1: the full 0.05 on both axes
            flows[kind] = g(_mel(1, 1), img, ref, offsets=torch.zeros(1, 1, K, 2), crops=False)["flow"][0, 0]  # (2, S/2, S)
    mouth = ref[0, :40].mean(0)
    r, c = round((float(mouth[1]) - 0.5) * S), round(float(mouth[0]) * S)
    assert float(flows["landmarks"][0, r, c]) > 0.04  # on the lips: refined
    assert float(flows["landmarks"][:, -3:].abs().max()) < 0.01  # bottom rows, below the chin: little
    assert float(flows["landmarks"][:, -8:, :16].abs().max()) < 1e-3  # bottom corner (neck, collar): none
    assert float(flows["lower-half"][:, -3:].min()) > 0.049
    with pytest.raises(ValueError, match="flow_refine"):
        Generator(dataclasses.replace(TINY_G, flow_refine="nowhere"))


def test_average_generators_takes_the_mean_of_each_weight(tmp_path, monkeypatch):
    """scripts/average_generators.py: the exported model's float weights are the members' mean,
    integer buffers are kept, and generators of another shape are refused with one line."""
    import importlib.util
    from pathlib import Path

    from talkingface.errors import TalkingFaceError
    from talkingface.inference import load_generator
    from talkingface.training.checkpoint import export_model

    spec = importlib.util.spec_from_file_location("average_generators",
                                                  Path(__file__).parents[1] / "scripts/average_generators.py")
    avg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(avg)
    members = [Generator(TINY_G) for _ in range(2)]
    _randomize_zero_init(members[1])
    paths = [tmp_path / f"g{i}.pt" for i in range(2)]
    for g, p in zip(members, paths):
        export_model(p, "generator", g, TINY_G)
    out = tmp_path / "soup.pt"
    monkeypatch.setattr("sys.argv", ["average_generators.py", *map(str, paths), "-o", str(out)])
    avg.main()
    soup = load_generator(out)[0].state_dict()
    a, b = (m.state_dict() for m in members)
    moved = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert moved
    for k in a:
        want = (a[k] + b[k]) / 2 if a[k].is_floating_point() else a[k]
        torch.testing.assert_close(soup[k], want)
    other = tmp_path / "other.pt"
    export_model(other, "generator", Generator(dataclasses.replace(TINY_G, hidden=48)), dataclasses.replace(TINY_G, hidden=48))
    monkeypatch.setattr("sys.argv", ["average_generators.py", str(paths[0]), str(other), "-o", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit, match="configs differ"):
        avg.main()
    with pytest.raises(TalkingFaceError, match="different layers"):
        avg.average_state_dicts([a, {k: v for k, v in b.items() if k != next(iter(b))}])
    assert not (tmp_path / "x.pt").exists()


def _with_phones(mel: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, T, n_mels, steps) mel windows + (B, T, steps) phone ids -> the windows with one-hot phone rows."""
    from talkingface.phonetic import N_PHONES

    oh = torch.nn.functional.one_hot(ids, N_PHONES).float().permute(0, 1, 3, 2)  # (B, T, N_PHONES, steps)
    return torch.cat([mel, oh], 2)


@pytest.mark.parametrize("phones", ["with-mel", "only"])
def test_a_generator_that_hears_phones_reads_the_phone_rows(phones):
    """generator.phones: the motion depends on the phone rows below the mel bands ("only": on
    nothing else), windows without them are refused with a message, and a model without phones
    reads the mel rows of windows that carry phones exactly as windows without them."""
    cfg = dataclasses.replace(TINY_G, decoder_input="motion", motion_identity=False, phones=phones)
    torch.manual_seed(0)
    g = Generator(cfg).eval()
    _randomize_zero_init(g)
    ref, pts = _ref(1)
    mel = _mel(1, 4)
    a, b = torch.zeros(1, 4, 35, dtype=torch.long), torch.full((1, 4, 35), 7)
    with torch.no_grad():
        enc = g.encode_motion_reference(ref, pts)
        pa = g.motion(_with_phones(mel, a), enc)["offsets"]
        assert not torch.allclose(pa, g.motion(_with_phones(mel, b), enc)["offsets"])
        other_mel = g.motion(_with_phones(_mel(1, 4) + 1.0, a), enc)["offsets"]
        assert torch.allclose(pa, other_mel) == (phones == "only")
        assert g(_with_phones(mel, a), ref, pts)["frames"].shape == (1, 4, 3, cfg.crop_size, cfg.crop_size)
        # silence's rest: the phone rows say silence (id 0) whatever the window's minimum was
        rest = g.rest_offsets(g.encode_reference(ref, pts), _with_phones(mel, b)[:, 0])
        torch.testing.assert_close(rest, g.rest_offsets(g.encode_reference(ref, pts), _with_phones(mel, a)[:, 0]))
    with pytest.raises(ValueError, match="phone rows"):
        g.motion(mel, enc)
    plain = Generator(dataclasses.replace(cfg, phones="none")).eval()
    with torch.no_grad():
        e2 = plain.encode_motion_reference(ref, pts)
        torch.testing.assert_close(plain.motion(_with_phones(mel, b), e2)["offsets"], plain.motion(mel, e2)["offsets"])


def test_combine_puts_a_phone_hearing_motion_half_over_a_renderer_without_phones():
    from talkingface.models.generator import combine_motion_and_renderer

    cfg = dataclasses.replace(TINY_G, decoder_input="motion", motion_identity=False)
    torch.manual_seed(0)
    drawer = Generator(cfg).eval()
    mover = Generator(dataclasses.replace(cfg, phones="with-mel")).eval()
    _randomize_zero_init(mover)
    _randomize_zero_init(drawer)
    both = combine_motion_and_renderer(mover, drawer)
    assert both.cfg.phones == "with-mel"
    ref, pts = _ref(1)
    mel = _with_phones(_mel(1, 3), torch.full((1, 3, 35), 4))
    off = torch.full((1, 3, K, 2), 0.02)
    with torch.no_grad():
        torch.testing.assert_close(both(mel, ref, pts, offsets=off)["lower"], drawer(mel[:, :, :80], ref, pts, offsets=off)["lower"])
        torch.testing.assert_close(both.motion(mel, both.encode_motion_reference(ref, pts))["offsets"],
                                   mover.motion(mel, mover.encode_motion_reference(ref, pts))["offsets"])
