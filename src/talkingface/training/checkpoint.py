"""Checkpoints: plain dicts of tensors plus JSON config text, written atomically and read with
``torch.load(weights_only=True)``, so an untrusted file cannot run code when loaded."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ..config import _build, to_dict
from ..errors import TalkingFaceError

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write ``payload`` (tensors, numbers, strings, lists/dicts of them) to ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:  # a failed or interrupted save leaves neither a temp file nor a broken path
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TalkingFaceError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names the blocked class/function ("GLOBAL module.name"); without one, the bytes are
        # simply not a pickle (garbage), which is not a refusal.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:
            raise TalkingFaceError(f"{path}: not a readable checkpoint (corrupt or not a torch file)") from None
        raise TalkingFaceError(f"{path}: refused: the checkpoint holds pickled objects ({found.group(1)}), "
                               "not plain tensors") from None
    except Exception as e:  # garbage bytes make the unpickler fail in many ways (IndexError, KeyError, ...)
        raise TalkingFaceError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None


def export_model(path: str | Path, kind: str, model: torch.nn.Module, cfg: Any, meta: dict | None = None,
                 half: bool = False) -> None:
    """A shippable single-model checkpoint: {'format', 'kind', 'config' (JSON), 'meta' (JSON), 'state_dict'}.

    ``half`` stores floating tensors as float16 (half the size; loaded back as float32)."""
    sd = {k: (v.half() if half and v.is_floating_point() else v).detach().clone() for k, v in model.state_dict().items()}
    save_checkpoint(path, {"format": FORMAT_VERSION, "kind": kind, "config": json.dumps(to_dict(cfg)),
                           "meta": json.dumps(meta or {}), "state_dict": sd})


def load_model(path: str | Path, kind: str, model_cls: type, cfg_cls: type, device: str = "cpu"):
    """Build ``model_cls(config)`` from an exported checkpoint. Returns (model in eval mode, config, meta)."""
    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or ck.get("kind") != kind or "state_dict" not in ck:
        raise TalkingFaceError(f"{path}: not a {kind} checkpoint")
    cfg = _build(cfg_cls, json.loads(ck["config"]))
    model = model_cls(cfg)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in ck["state_dict"].items()}
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise TalkingFaceError(f"{path}: weights do not fit the model ({str(e).splitlines()[0][:120]})") from None
    return model.to(device).eval(), cfg, json.loads(ck.get("meta", "{}"))
