"""Reference models for LiRA and RMIA, trained with the project's own fine-tuning, cached by content.

Each reference fine-tunes the same base checkpoint with the target's settings on a random half of
(population + audited records); references come in complementary pairs, so every record is IN exactly
half of them and OUT of the other half (online LiRA), and population records give RMIA its z. A
reference is a head trained on cached prefix tokens: seconds each on CPU. They run one after another
in this process, not on Ray: the tokens and the base model are already in memory here, and Ray's
start-up (~5 s) and per-worker re-embedding would cost more than the training at this scale.

A finished reference is stored as `refs/<key>.safetensors` (its trained weights and IN mask), keyed
by the hash of the settings, the data's fingerprint, the reference index and the split seed: an
interrupted audit resumes, and a second audit of the same data reuses them.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from fedclip import io
from fedclip.audits.signals import head_signals
from fedclip.finetune import FinetuneConfig, finetune
from fedclip.models import VisionClip


def _key(cfg: FinetuneConfig, data: str, index: int, seed: int, splits: str) -> str:
    blob = json.dumps({"cfg": asdict(cfg), "data": data, "index": index, "seed": seed, "splits": splits},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def train_references(base: VisionClip, tokens: torch.Tensor, targets: torch.Tensor, cfg: FinetuneConfig, *,
                     count: int, seed: int, data_fingerprint: str, cache: Path, trainable: int | None = None,
                     advance: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(margins, true-class probabilities, IN mask), each (records x references).

    Only the first `trainable` records (default: all) are split into the references' training halves;
    the rest (e.g. RMIA's population) are scored but never trained on.
    """
    n = len(tokens)
    trainable = n if trainable is None else trainable
    margins, probs, masks = np.zeros((n, count)), np.zeros((n, count)), np.zeros((n, count), dtype=bool)
    if count < 2 or count % 2:
        raise ValueError("reference models come in complementary pairs: pass an even count of at least 2")
    rng = np.random.default_rng(seed)
    for k in range(count):
        # complementary pairs: every record is IN exactly half of the references and OUT of the other half
        if k % 2 == 0:
            mask = np.zeros(n, dtype=bool)
            mask[:trainable] = rng.random(trainable) < 0.5
        else:
            mask = np.zeros(n, dtype=bool)
            mask[:trainable] = ~masks[:trainable, k - 1]
        path = cache / f"{_key(cfg, data_fingerprint, k, seed, f'pairs of {trainable}')}.safetensors"
        vc = copy.deepcopy(base)
        if path.exists():
            stored = load_file(str(path))
            mask = stored.pop("__in_mask__").bool().numpy()
            vc.model.load_state_dict(stored, strict=False)
        else:
            state = finetune(vc, tokens[mask], targets[mask], cfg).state
            io.write_bytes(path, _serialize({**state, "__in_mask__": torch.from_numpy(mask)}))
        margins[:, k], probs[:, k] = head_signals(vc, tokens, targets, cfg)
        masks[:, k] = mask
        if advance is not None:
            advance(1)
    return margins, probs, masks


def _serialize(tensors: dict[str, torch.Tensor]) -> bytes:
    return save({k: v.contiguous() for k, v in tensors.items()})
