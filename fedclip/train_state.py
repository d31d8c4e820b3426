"""Optimizer, scheduler, scaler and RNG state saved without pickle: tensors in safetensors, the rest JSON.

`torch.save` would be one line, but a checkpoint directory is something people download and share;
loading a pickle runs code, so fedclip never writes one. Everything here round-trips exactly
(floats through JSON keep their repr), which is what makes `--resume` bit-identical on CPU.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

TENSORS_FILE = "state.safetensors"
JSON_FILE = "state.json"


def _split(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested structure by references into `tensors`."""
    if isinstance(obj, torch.Tensor):
        key = prefix.strip(".")
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_split(k, f"{prefix}k{i}.", tensors), _split(v, f"{prefix}{k}.", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_split(v, f"{prefix}{i}.", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_split(v, f"{prefix}{i}.", tensors) for i, v in enumerate(obj)]
    return obj


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_join(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {_join(k, tensors): _join(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(directory: str | Path, state: dict[str, Any]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = dict(state)
    if "rng" in state:
        np_state = state["rng"]["numpy"]
        state["rng"] = {**state["rng"], "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                                                  *np_state[2:])}
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, "", tensors)
    save_file(tensors, str(directory / TENSORS_FILE))
    (directory / JSON_FILE).write_text(json.dumps(skeleton))
    return directory


def load(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    tensors = load_file(str(directory / TENSORS_FILE))
    state = _join(json.loads((directory / JSON_FILE).read_text()), tensors)
    if "rng" in state:
        kind, keys, *rest = state["rng"]["numpy"]
        state["rng"]["numpy"] = (kind, keys.numpy().astype(np.uint32), *rest)
    return state
