"""VisionCLIP models: registered open_clip configs, one factory, and checkpoint directories.

Architectures are data (`model_configs/*.json`, registered with open_clip under their file names),
so `open_clip.create_model("visionclip-tiny")` works once this module is imported. A checkpoint is a
directory that plain open_clip loads without fedclip (`local-dir:CKPT`):

    CKPT/model.safetensors        weights, open_clip's own key names (never pickle)
    CKPT/open_clip_config.json    {"model_cfg": ..., "preprocess_cfg": ...}  (open_clip / model-hub layout)
    CKPT/config.json              fedclip's record: model name, config and provenance
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import load_file, save_file

from fedclip import io
from fedclip.errors import ModelError

CONFIG_DIR = Path(__file__).parent / "model_configs"
MODEL_NAMES: tuple[str, ...] = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
WEIGHTS_FILE = "model.safetensors"
OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"
FEDCLIP_CONFIG_FILE = "config.json"

# Fundus photographs are not ImageNet photographs, but the mean/std only needs to be consistent between
# training and inference; we keep open_clip's (OpenAI) values so open_clip's own transforms match ours.
PREPROCESS_CFG = {
    "mean": list(open_clip.OPENAI_DATASET_MEAN),
    "std": list(open_clip.OPENAI_DATASET_STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}

open_clip.add_model_config(CONFIG_DIR)


def model_config(name: str) -> dict[str, Any]:
    """The model config registered under `name`: fedclip's, or an open_clip architecture (`ViT-B-32`, …;
    randomly initialised wherever it is created: no weights are downloaded). A copy: safe to edit."""
    if name in MODEL_NAMES:
        return json.loads((CONFIG_DIR / f"{name}.json").read_text())
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}, or an open_clip "
                         "architecture (python -c 'import open_clip; print(open_clip.list_models())')")
    return cfg


@dataclass
class VisionClip:
    """A model with what it needs to be used: its name, config and tokenizer."""

    name: str
    model: open_clip.CLIP
    config: dict[str, Any]
    tokenizer: Any

    @property
    def image_size(self) -> int:
        return int(self.config["vision_cfg"]["image_size"])


def create(name: str, seed: int | None = 0, device: str | torch.device = "cpu") -> VisionClip:
    """A freshly initialised model (no weights are downloaded, ever)."""
    config = model_config(name)
    with torch.random.fork_rng(devices=[]), _quiet_open_clip():  # the caller's RNG and logging stay as they were
        if seed is not None:
            torch.manual_seed(seed)
        model = open_clip.create_model(name, pretrained=None, device=device, output_dict=True)
    return VisionClip(name, model, config, open_clip.get_tokenizer(name))


class _DropOpenClipNotices(logging.Filter):
    """open_clip tells the root logger that no pretrained weights were loaded: intended here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.endswith(("open_clip/factory.py", "open_clip/model.py"))


@contextmanager
def _quiet_open_clip() -> Iterator[None]:
    root, notices = logging.getLogger(), _DropOpenClipNotices()
    root.addFilter(notices)
    try:
        yield
    finally:
        root.removeFilter(notices)


def save_checkpoint(vc: VisionClip, directory: str | Path, provenance: dict[str, Any] | None = None,
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically: a crash leaves the old checkpoint or the new, never half.

    `train_state` (optimizer, scheduler, RNG) goes into the same swap, so `last` never exists without
    the state that resumes it. `config.json` records the SHA-256 of the weights, checked on load.
    """
    from fedclip import train_state as train_state_lib

    state = {k: v.detach().to("cpu").contiguous() for k, v in vc.model.state_dict().items()}
    with io.replace_dir(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "model": vc.name})
        (tmp / OPEN_CLIP_CONFIG_FILE).write_text(json.dumps(
            {"model_cfg": vc.config, "preprocess_cfg": PREPROCESS_CFG}, indent=2))
        (tmp / FEDCLIP_CONFIG_FILE).write_text(json.dumps(
            {"model": vc.name, "model_cfg": vc.config, "weights_sha256": sha256_file(tmp / WEIGHTS_FILE),
             "provenance": provenance or {}}, indent=2, default=str))
        if train_state is not None:
            train_state_lib.save(tmp / "train_state", train_state)
    return Path(directory)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Replace checkpoint `dst` by a copy of `src` (e.g. `last` <- `round-005`); readers see one or the other."""
    with io.replace_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    return Path(dst)


def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    cfg_path = directory / FEDCLIP_CONFIG_FILE
    if directory.is_file():
        raise ModelError(f"{directory} is a file, not a fedclip checkpoint dir; an open_clip_train epoch_N.pt is "
                         f"converted once with `fedclip import-open-clip {directory} --model NAME --out CKPT`")
    if not directory.is_dir():
        raise ModelError(f"checkpoint {directory} does not exist; pass a directory written by "
                         "`fedclip pretrain` (RUN/checkpoints/<tag>)")
    if not cfg_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        if (directory / "checkpoints" / "last").is_dir():
            raise ModelError(f"{directory} is a run dir, not a checkpoint; did you mean {directory}/checkpoints/last?")
        if (directory / OPEN_CLIP_CONFIG_FILE).is_file():
            raise ModelError(f"{directory} is an open_clip model dir; convert it once with `fedclip import-open-clip "
                             f"{directory} --out CKPT` and pass CKPT")
        raise ModelError(f"{directory} is not a fedclip checkpoint: it needs {WEIGHTS_FILE} and "
                         f"{FEDCLIP_CONFIG_FILE}; was it written by `fedclip pretrain`?")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{cfg_path} is not valid JSON ({e}); the checkpoint is damaged") from None
    if cfg.get("kind") == "generator":
        raise ModelError(f"{directory} is a generator checkpoint, not a CLIP model; sample a dataset from it with "
                         "`fedclip synth --generator` and pretrain on that")
    return cfg


def load_checkpoint(directory: str | Path, expect_model: str | None = None,
                    device: str | torch.device = "cpu") -> VisionClip:
    """Load a checkpoint directory; `expect_model` guards against mixing architectures."""
    directory = Path(directory)
    cfg = read_checkpoint_config(directory)
    name = cfg.get("model")
    if expect_model is not None and name != expect_model:
        raise ModelError(f"checkpoint {directory} holds a {name!r} model, not {expect_model!r}; "
                         f"use a {expect_model} checkpoint or pass --model {name}")
    model_cfg = cfg.get("model_cfg") or model_config(name)
    expected_hash = cfg.get("weights_sha256")
    if not expected_hash:
        raise ModelError(f"{directory / FEDCLIP_CONFIG_FILE} records no weights_sha256, so the weights cannot be "
                         "verified; re-save the checkpoint with this fedclip version")
    if sha256_file(directory / WEIGHTS_FILE) != expected_hash:
        raise ModelError(f"{directory / WEIGHTS_FILE} does not match the SHA-256 in its {FEDCLIP_CONFIG_FILE}: the "
                         "weights were altered or damaged; restore the checkpoint from its source")
    model = open_clip.CLIP(**model_cfg, output_dict=True)
    try:
        state = load_file(str(directory / WEIGHTS_FILE), device=str(device))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for non-safetensors bytes
        raise ModelError(f"{directory / WEIGHTS_FILE} is not a safetensors file ({e}); fedclip never loads "
                         "pickles — restore the checkpoint from its source") from None
    expected = model.state_dict()
    wrong = [k for k, v in state.items() if k in expected and expected[k].shape != v.shape]
    missing = sorted(set(expected) - set(state))
    if wrong or missing:
        raise ModelError(f"checkpoint {directory} does not match the {name!r} architecture "
                         f"(shape mismatches: {wrong[:3]}, missing: {missing[:3]}); the weights belong to "
                         "another model config")
    model.load_state_dict(state, strict=True)
    model.to(device)
    return VisionClip(name, model, model_cfg, open_clip.get_tokenizer(f"local-dir:{directory}"))
