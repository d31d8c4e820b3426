"""The generator network, its conditioning and its checkpoint contract.

Architecture as data, as for the CLIP models: each registered config is a JSON file in `configs/`
(a diffusers `UNet2DModel` and its noise schedule), built here, never downloaded. The network is
conditioned on a vector made from the taxonomy (DR grade one-hot, every binary label) and the
hospital (one-hot over the hospitals named when it was trained), projected to the UNet's time
embedding (`class_embed_type="identity"`); an all-zero vector is the unconditional input that
classifier-free guidance contrasts with.

A generator checkpoint is a directory like a CLIP checkpoint: `model.safetensors` (the EMA weights:
what sampling uses), `config.json` (`kind: generator`, the config, the conditioning's hospitals, the
label statistics sampling draws from, provenance, and the weights' SHA-256, verified on load) and,
for resuming, `train_state/` without pickle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fedclip import io
from fedclip.errors import ModelError
from fedclip.models import sha256_file
from fedclip.synth.taxonomy import CONDITION_NAMES, QUALITY_NAMES

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # diffusers must never reach for the hub: everything is built here

CONFIG_DIR = Path(__file__).parent / "configs"
GENERATOR_NAMES = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAIN_STATE_DIR = "train_state"
KIND = "generator"
GRADES = 5
BINARY_LABELS: tuple[str, ...] = (*CONDITION_NAMES, *QUALITY_NAMES)
"""The binary labels a generator is conditioned on (`dr` follows from the grade; `readable` from quality)."""


def generator_config(name: str) -> dict[str, Any]:
    """The registered generator config `name` (a copy)."""
    if name not in GENERATOR_NAMES:
        raise ModelError(f"unknown generator config {name!r}; choose one of: {', '.join(GENERATOR_NAMES)}")
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


@dataclass(frozen=True)
class Conditioning:
    """How a record's labels and hospital become the generator's input vector."""

    hospitals: tuple[str, ...]

    @property
    def width(self) -> int:
        return GRADES + len(BINARY_LABELS) + len(self.hospitals)

    def vector(self, labels: Mapping[str, int], hospital: str | None) -> torch.Tensor:
        """Unknown labels and an unknown hospital stay zero (the unconditional value for that part)."""
        v = torch.zeros(self.width)
        grade = labels.get("dr_grade")
        if grade is not None:
            v[int(grade)] = 1.0
        for i, name in enumerate(BINARY_LABELS):
            if labels.get(name):
                v[GRADES + i] = 1.0
        if hospital in self.hospitals:
            v[GRADES + len(BINARY_LABELS) + self.hospitals.index(hospital)] = 1.0
        return v

    def vectors(self, labels: Sequence[Mapping[str, int]], hospitals: Sequence[str | None]) -> torch.Tensor:
        return torch.stack([self.vector(lab, h) for lab, h in zip(labels, hospitals, strict=True)])


class Generator(nn.Module):
    """A conditional denoiser: (noisy images, timesteps, condition vectors) -> predicted noise."""

    def __init__(self, name: str, config: dict[str, Any], conditioning: Conditioning) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        self.name, self.config, self.conditioning = name, config, conditioning
        self.unet = UNet2DModel(
            sample_size=config["sample_size"], in_channels=3, out_channels=3,
            block_out_channels=tuple(config["block_out_channels"]), layers_per_block=config["layers_per_block"],
            norm_num_groups=config["norm_num_groups"], down_block_types=tuple(config["down_block_types"]),
            up_block_types=tuple(config["up_block_types"]), class_embed_type="identity")
        self.cond = nn.Linear(conditioning.width, config["block_out_channels"][0] * 4)

    @property
    def image_size(self) -> int:
        return int(self.config["sample_size"])

    @property
    def prediction(self) -> str:
        """What the network predicts: "epsilon" (the noise) or "v_prediction"."""
        return str(self.config.get("prediction", "epsilon"))

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(noisy, t, class_labels=self.cond(cond)).sample

    def schedule(self) -> Any:
        """The DDPM noise schedule the model was trained with."""
        from diffusers import DDPMScheduler

        return DDPMScheduler(num_train_timesteps=self.config["train_timesteps"],
                             beta_schedule=self.config["beta_schedule"])


def create(name: str, conditioning: Conditioning, *, seed: int = 0, size: int | None = None) -> Generator:
    """A freshly initialised generator (local RNG: the global one is left alone)."""
    config = generator_config(name)
    if size is not None:
        if size % 2 ** (len(config["block_out_channels"]) - 1):
            raise ModelError(f"--size {size} must be divisible by {2 ** (len(config['block_out_channels']) - 1)} for "
                             f"{name}")
        config["sample_size"] = size
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Generator(name, config, conditioning)


def save_generator(gen: Generator, directory: str | Path, *, weights: Mapping[str, torch.Tensor],
                   label_statistics: dict[str, Any], provenance: dict[str, Any],
                   train_state: dict[str, Any] | None = None) -> Path:
    """Write a generator checkpoint atomically (`weights`: the EMA weights sampling uses)."""
    from fedclip import train_state as train_state_lib

    state = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    with io.replace_dir(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "kind": KIND, "model": gen.name})
        (tmp / CONFIG_FILE).write_text(json.dumps(
            {"kind": KIND, "model": gen.name, "model_cfg": gen.config, "hospitals": list(gen.conditioning.hospitals),
             "label_statistics": label_statistics, "weights_sha256": sha256_file(tmp / WEIGHTS_FILE),
             "provenance": provenance}, indent=2, default=str))
        if train_state is not None:
            train_state_lib.save(tmp / TRAIN_STATE_DIR, train_state)
    return Path(directory)


def read_generator_config(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise ModelError(f"generator checkpoint {directory} does not exist; pass a directory written by "
                         "`fedclip generator train` (RUN/checkpoints/last)")
    if (directory / "checkpoints" / "last").is_dir():
        raise ModelError(f"{directory} is a run dir; did you mean {directory / 'checkpoints' / 'last'}?")
    if not path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise ModelError(f"{directory} is not a generator checkpoint: it needs {WEIGHTS_FILE} and {CONFIG_FILE} "
                         "written by `fedclip generator train`")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path} is not valid JSON ({e}); the checkpoint is damaged") from None
    if cfg.get("kind") != KIND:
        raise ModelError(f"{directory} is a CLIP checkpoint, not a generator; pass one written by "
                         "`fedclip generator train`")
    return cfg


def load_generator(directory: str | Path) -> Generator:
    """A generator checkpoint's EMA weights, verified against the SHA-256 in its config."""
    directory = Path(directory)
    cfg = read_generator_config(directory)
    if sha256_file(directory / WEIGHTS_FILE) != cfg.get("weights_sha256"):
        raise ModelError(f"{directory / WEIGHTS_FILE} does not match the SHA-256 in its {CONFIG_FILE}: the weights "
                         "were altered or damaged; restore the checkpoint from its source")
    gen = Generator(cfg["model"], cfg["model_cfg"], Conditioning(tuple(cfg["hospitals"])))
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for non-safetensors bytes
        raise ModelError(f"{directory / WEIGHTS_FILE} is not a safetensors file ({e}); fedclip never loads "
                         "pickles") from None
    try:
        gen.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{directory / WEIGHTS_FILE} does not fit its config ({str(e).splitlines()[0]})") from None
    return gen.eval()
