"""open_clip checkpoints into fedclip: the one place a pickle-format file is read.

fedclip's checkpoints are safetensors with a verified hash, and plain open_clip loads them
(`local-dir:CKPT`). The other direction needs a converter: an open_clip model dir in the Hugging Face
layout (`open_clip_config.json` + `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`) and
open_clip_train's `epoch_N.pt` carry the same weights, the latter as a torch pickle. Both are read here
and written as a fedclip checkpoint; `.bin` / `.pt` only through `torch.load(weights_only=True)`, which
refuses anything but tensors and plain containers (no code runs). Every other loader stays pickle-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import load_file

from fedclip.errors import ModelError
from fedclip.models import OPEN_CLIP_CONFIG_FILE, VisionClip, model_config, save_checkpoint, sha256_file

HF_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _pickled_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError or RuntimeError for what it refuses
        raise ModelError(f"{path} could not be read as tensors only ({type(e).__name__}); fedclip does not run "
                         "code from a pickle — export the weights as safetensors") from None
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} holds no state_dict of tensors; pass open_clip_train's epoch_N.pt or a model dir")
    return {k.removeprefix("module."): v for k, v in state.items()}  # DDP-trained runs prefix every key


def read_open_clip(source: str | Path, model: str | None = None) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """(name, model config, weights) of an open_clip model dir or an open_clip_train checkpoint file."""
    source = Path(source)
    if source.is_dir():
        cfg_path = source / OPEN_CLIP_CONFIG_FILE
        if not cfg_path.is_file():
            raise ModelError(f"{source} has no {OPEN_CLIP_CONFIG_FILE}; pass an open_clip model dir (Hugging Face "
                             "layout) or open_clip_train's epoch_N.pt with --model NAME")
        cfg = json.loads(cfg_path.read_text()).get("model_cfg")
        weights = next((source / w for w in HF_WEIGHTS if (source / w).is_file()), None)
        if not isinstance(cfg, dict) or weights is None:
            raise ModelError(f"{source} needs model_cfg in {OPEN_CLIP_CONFIG_FILE} and one of {', '.join(HF_WEIGHTS)}")
        state = load_file(str(weights)) if weights.suffix == ".safetensors" else _pickled_weights(weights)
        return model or source.name, cfg, state
    if not source.is_file():
        raise ModelError(f"{source} does not exist; pass an open_clip model dir or open_clip_train's epoch_N.pt")
    if model is None:
        raise ModelError(f"{source} does not record its architecture; pass --model NAME (the --model it was trained "
                         "with: a fedclip model or an open_clip architecture)")
    return model, model_config(model), _pickled_weights(source)


def import_open_clip(source: str | Path, out: str | Path, model: str | None = None) -> Path:
    """Write a fedclip checkpoint at `out` from an open_clip model dir or open_clip_train checkpoint."""
    out = Path(out)
    if out.exists():
        raise ModelError(f"{out} exists; choose a new --out")
    name, cfg, state = read_open_clip(source, model)
    clip = open_clip.CLIP(**cfg, output_dict=True)
    expected = clip.state_dict()
    wrong = sorted(k for k, v in state.items() if k in expected and expected[k].shape != v.shape)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if wrong or missing or unexpected:
        raise ModelError(f"{source} does not match the architecture {name!r} (shape mismatches: {wrong[:3]}, missing: "
                         f"{missing[:3]}, unexpected: {unexpected[:3]}); pass the --model it was trained with")
    clip.load_state_dict(state, strict=True)
    src = Path(source)
    digest = sha256_file(src) if src.is_file() else None
    return save_checkpoint(VisionClip(name, clip, cfg, tokenizer=None), out, provenance={
        "stage": "imported", "source": str(src.resolve()), **({"source_sha256": digest} if digest else {}),
        "note": "converted from open_clip; its training data and licence are the source's"})
