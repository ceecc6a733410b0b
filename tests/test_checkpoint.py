"""Checkpoints: exact round trips, half-precision export, refusal of pickled code, clean one-line
errors for broken files, atomic writes."""

import collections
import json
import os

import numpy as np
import pytest
import torch

from talkingface.config import (
    AudioEncoderConfig,
    GeneratorConfig,
    IdentityEncoderConfig,
    SyncExpertConfig,
)
from talkingface.errors import TalkingFaceError
from talkingface.models.generator import Generator
from talkingface.models.sync_expert import SyncExpert
from talkingface.training.checkpoint import (
    export_model,
    load_checkpoint,
    load_model,
    save_checkpoint,
)

TINY_G = GeneratorConfig(audio=AudioEncoderConfig(dim=32, width=8), identity=IdentityEncoderConfig(width=8, dim=32), hidden=32)
TINY_SYNC = SyncExpertConfig(width=8, dim=32, audio=AudioEncoderConfig(width=8))


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    g = Generator(TINY_G)
    with torch.no_grad():  # non-trivial values everywhere, BatchNorm statistics included
        for name, t in g.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.1)
    return g


@pytest.fixture
def exported(generator, tmp_path):
    path = tmp_path / "g.pt"
    export_model(path, "generator", generator, TINY_G, {"step": 7, "corpus": "x", "nested": {"a": [1, 2]}})
    return path


def _one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg and "\x1b" not in msg
    return msg


def test_export_load_round_trip_is_exact(generator, exported, tmp_path):
    model, cfg, meta = load_model(exported, "generator", Generator, GeneratorConfig)
    assert cfg == TINY_G
    assert meta == {"step": 7, "corpus": "x", "nested": {"a": [1, 2]}}
    assert not model.training
    want, got = generator.state_dict(), model.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert torch.equal(got[k], want[k]), k
    assert sorted(os.listdir(tmp_path)) == ["g.pt"]  # atomic write: no .tmp left behind


def test_export_half_is_smaller_and_loads_as_float32(generator, exported, tmp_path):
    half = tmp_path / "g16.pt"
    export_model(half, "generator", generator, TINY_G, half=True)
    assert half.stat().st_size < 0.6 * exported.stat().st_size
    raw = load_checkpoint(half)
    assert raw["state_dict"]["fc.weight"].dtype == torch.float16
    model, cfg, _ = load_model(half, "generator", Generator, GeneratorConfig)
    assert cfg == TINY_G
    want = generator.state_dict()
    for k, v in model.state_dict().items():
        if want[k].is_floating_point():
            assert v.dtype == torch.float32, k
            scale = max(1.0, want[k].abs().max().item())
            torch.testing.assert_close(v, want[k], atol=1e-2 * scale, rtol=0)
        else:
            assert torch.equal(v, want[k]), k  # e.g. BatchNorm's num_batches_tracked stays integral


class Custom:
    def __init__(self):
        self.x = 1


class MyDict(collections.OrderedDict):
    pass


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


@pytest.mark.parametrize("payload", [
    lambda: {"state_dict": {"w": torch.ones(2)}, "extra": Custom()},
    lambda: {"state_dict": MyDict(w=torch.ones(2))},
], ids=["custom-class", "ordereddict-subclass"])
def test_pickled_objects_are_refused(tmp_path, payload):
    path = tmp_path / "bad.pt"
    torch.save(payload(), path)
    with pytest.raises(TalkingFaceError) as e:
        load_checkpoint(path)
    msg = _one_line_error(e)
    assert "refused" in msg and str(path) in msg


def test_malicious_pickle_does_not_run(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save({"kind": "generator", "state_dict": {}, "x": Evil(marker)}, path)
    assert not marker.exists()
    with pytest.raises(TalkingFaceError) as e:
        load_checkpoint(path)
    assert "refused" in _one_line_error(e)
    with pytest.raises(TalkingFaceError):
        load_model(path, "generator", Generator, GeneratorConfig)
    assert not marker.exists()


def test_broken_files_give_one_line_errors(exported, tmp_path):
    data = exported.read_bytes()
    cases = {
        "truncated.pt": data[: len(data) // 2],
        **{f"garbage{i}.pt": np.random.default_rng(i).bytes(5000) for i in range(20)},
        "pickle-ish.pt": b"\x80\x02" + np.random.default_rng(99).bytes(3000),
        "text.pt": b"this is not a checkpoint\n" * 10,
        "empty.pt": b"",
    }
    for name, content in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(TalkingFaceError) as e:
            load_model(p, "generator", Generator, GeneratorConfig)
        msg = _one_line_error(e)
        assert name in msg and "refused" not in msg, msg  # broken, not malicious
    with pytest.raises(TalkingFaceError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(TalkingFaceError, match="not found"):
        load_checkpoint(tmp_path)  # a folder is not a checkpoint


def test_wrong_kind_and_wrong_shapes_are_refused(generator, tmp_path):
    sync = tmp_path / "sync.pt"
    export_model(sync, "sync", SyncExpert(TINY_SYNC), TINY_SYNC)
    with pytest.raises(TalkingFaceError, match="not a generator checkpoint"):
        load_model(sync, "generator", Generator, GeneratorConfig)
    model, cfg, meta = load_model(sync, "sync", SyncExpert, SyncExpertConfig)
    assert cfg == TINY_SYNC and meta == {}
    # a plain dict that is no exported model
    plain = tmp_path / "plain.pt"
    save_checkpoint(plain, {"step": 3})
    with pytest.raises(TalkingFaceError, match="not a generator checkpoint"):
        load_model(plain, "generator", Generator, GeneratorConfig)
    # weights that do not fit the config they claim
    lying = tmp_path / "lying.pt"
    export_model(lying, "generator", generator, TINY_G)
    ck = load_checkpoint(lying)
    ck["config"] = json.dumps({**json.loads(ck["config"]), "hidden": 48})
    save_checkpoint(lying, ck)
    with pytest.raises(TalkingFaceError) as e:
        load_model(lying, "generator", Generator, GeneratorConfig)
    assert "do not fit" in _one_line_error(e)


def test_save_checkpoint_is_atomic(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.arange(4)})
    save_checkpoint(path, {"step": 2, "w": torch.arange(5)})
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]
    assert load_checkpoint(path)["step"] == 2
    # a save that fails half-way keeps the previous checkpoint and leaves no temp file
    with pytest.raises(Exception):
        save_checkpoint(path, {"step": 3, "w": torch.arange(6), "bad": lambda: 0})
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]
    ck = load_checkpoint(path)
    assert ck["step"] == 2 and torch.equal(ck["w"], torch.arange(5))
