import json

import pytest

from talkingface.config import DataConfig, config_from_json, load_config, save_config


def test_defaults_toml_and_overrides(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('fps = 30.0\n[face]\ncrop_size = 96\n')
    cfg = load_config(DataConfig, toml, ["face.pick=central", "audio.n_mels=40", "val_speakers=['a', 'b']"])
    assert cfg.fps == 30.0 and cfg.face.crop_size == 96 and cfg.face.pick == "central"
    assert cfg.audio.n_mels == 40 and cfg.val_speakers == ("a", "b")
    assert DataConfig().face.crop_size == 128  # defaults untouched
    with pytest.raises(Exception):
        cfg.fps = 1.0  # frozen


def test_unknown_keys_and_bad_override_rejected():
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(DataConfig, None, ["face.nonsense=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(DataConfig, None, ["fps"])


def test_json_round_trip(tmp_path):
    cfg = load_config(DataConfig, None, ["face.iod=0.25"])
    save_config(cfg, tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text())["face"]["iod"] == 0.25
    assert config_from_json(DataConfig, tmp_path / "c.json") == cfg


def test_sync_expert_visual_round_trips_and_defaults_to_crops(tmp_path):
    """configs/sync_eval_landmarks.toml builds a landmark expert trained like configs/sync_eval.toml
    (same data and seed); the field survives config.json; older configs without it read pixels."""
    from pathlib import Path

    from talkingface.config import SyncExpertConfig, TrainConfig, to_dict

    root = Path(__file__).parents[1] / "configs"
    lm = load_config(TrainConfig, root / "sync_eval_landmarks.toml")
    px = load_config(TrainConfig, root / "sync_eval.toml")
    assert lm.kind == "sync" and lm.sync.visual == "landmarks" and px.sync.visual == "crops"
    assert (lm.corpus, lm.selection, lm.seed, lm.val_split) == (px.corpus, px.selection, px.seed, px.val_split)
    save_config(lm, tmp_path / "c.json")
    assert config_from_json(TrainConfig, tmp_path / "c.json") == lm
    old = to_dict(SyncExpertConfig())
    del old["visual"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert config_from_json(SyncExpertConfig, tmp_path / "old.json").visual == "crops"
    assert load_config(TrainConfig, None, ["sync.visual=landmarks"]).sync.visual == "landmarks"


def test_every_shipped_config_loads_and_the_recipes_differ_only_where_they_say():
    """Each configs/*.toml parses (no unknown keys). v11 trains exactly v7's steps, so that its
    from-scratch wall time and its live weights are v7's (results/README, "eval-v12"): the two
    differ only in the name and the weight average. v12 is v11 with a weaker, shorter sync-critic
    phase and the average from the adversarial start (results/README, "eval-v13"): its first 3300
    steps are v11's, which is what lets eval-v13 branch from the same checkpoints. v13 is v12 with
    a longer motion stage (results/README, "eval-v14"); v14 is v13 with that stage's weight average
    handed on ("eval-v15"); v15 is v14 on seed 1 with the lip-reading critic in the sync expert's
    place, at its weight and start ("eval-v17", "eval-v18")."""
    import dataclasses
    from pathlib import Path

    from talkingface.config import TrainConfig, to_dict

    root = Path(__file__).parents[1] / "configs"
    files = sorted(root.rglob("*.toml"))
    assert len(files) > 10
    cfgs = {p.relative_to(root).as_posix(): load_config(TrainConfig, p) for p in files}
    v7, v11 = cfgs["history/generator-v7.toml"], cfgs["history/generator-v11.toml"]
    assert v11.ema_start == v7.loss.sync_start and 0 < v11.ema_beta < 1 and v7.ema_start == 0
    same = dataclasses.replace(v11, name=v7.name, ema_start=v7.ema_start, ema_beta=v7.ema_beta)
    assert to_dict(same) == to_dict(v7)
    v12 = cfgs["history/generator-v12.toml"]
    assert v12.ema_start == v12.loss.adv_start and v12.loss.sync < v11.loss.sync
    assert v12.loss.sync_start < v12.steps < v11.steps
    same = dataclasses.replace(v12, name=v11.name, steps=v11.steps, ema_start=v11.ema_start,
                               loss=dataclasses.replace(v12.loss, sync=v11.loss.sync))
    assert to_dict(same) == to_dict(v11)
    # v13: v12 with a longer motion stage, every later step moved by as much (results/README, "eval-v14")
    v13 = cfgs["history/generator-v13.toml"]
    shift = v13.loss.motion_steps - v12.loss.motion_steps
    assert shift > 0
    same = dataclasses.replace(v13, name=v12.name, steps=v13.steps - shift, ema_start=v13.ema_start - shift,
                               loss=dataclasses.replace(v13.loss, motion_steps=v12.loss.motion_steps,
                                                        adv_start=v13.loss.adv_start - shift,
                                                        sync_start=v13.loss.sync_start - shift))
    assert to_dict(same) == to_dict(v12)
    # v14: v13 with stage 0's weight average handed on (results/README, "eval-v15")
    v14 = cfgs["history/generator-v14.toml"]
    assert 0 < v14.loss.motion_ema_start < v14.loss.motion_steps and v13.loss.motion_ema_start == 0
    same = dataclasses.replace(v14, name=v13.name, loss=dataclasses.replace(v14.loss, motion_ema_start=0))
    assert to_dict(same) == to_dict(v13)
    # v15: v14 on seed 1, the lip reader as the lip-sync critic instead of the sync expert
    v15 = cfgs["generator.toml"]
    assert v15.loss.sync == 0 and v15.lipread_checkpoint and v15.loss.lipread == v14.loss.sync
    assert v15.loss.lipread_start == v14.loss.sync_start and v15.seed != v14.seed
    same = dataclasses.replace(v15, name=v14.name, seed=v14.seed, lipread_checkpoint="",
                               sync_checkpoint=v14.sync_checkpoint,
                               loss=dataclasses.replace(v15.loss, sync=v14.loss.sync, lipread=0,
                                                        lipread_start=v14.loss.lipread_start))
    assert to_dict(same) == to_dict(v14)
