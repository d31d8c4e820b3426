"""Reference models for LiRA and RMIA, trained with the project's own fine-tuning, cached by content.

Each reference fine-tunes the same base checkpoint with the target's settings on a random half of
(population + audited records); references come in complementary pairs, so every record is IN exactly
half of them and OUT of the other half (online LiRA), and population records give RMIA its z. A
reference is a head trained on cached prefix tokens: seconds each on CPU.

By default they train one after another in this process. With `workers` > 1 they train in parallel on
Ray (installed with Flower's simulation engine): the base model and the tokens go into Ray's object store
once and each worker fine-tunes on them (no re-embedding), with the machine's threads split between the
workers. Ray's start-up (~5 s) is paid once per audit; `benchmarks/audit_cost.py --workers 2` measures
whether it pays off.

A finished reference is stored as `refs/<key>.safetensors` (its trained weights, IN mask and the two
signals it gives every record), keyed by the hash of the settings, the data's fingerprint, the reference
index and the split seed: an interrupted audit resumes, and a second audit of the same data reuses them.
Only the signal columns stay in memory (records x references floats); a trained model is dropped as soon
as its signals are stored, so memory does not grow with the number of references.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from fedclip import io
from fedclip.audits.signals import head_signals
from fedclip.errors import FedclipError
from fedclip.finetune import FinetuneConfig, finetune
from fedclip.models import VisionClip

Trained = tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray]
"""A reference's trained weights (open_clip layout) and its (margin, true-class probability) per record."""


def _key(cfg: FinetuneConfig, data: str, index: int, seed: int, splits: str) -> str:
    blob = json.dumps({"cfg": asdict(cfg), "data": data, "index": index, "seed": seed, "splits": splits},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _masks(n: int, trainable: int, count: int, seed: int) -> np.ndarray:
    """(records x references) IN masks in complementary pairs: every trainable record is IN exactly half."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, count), dtype=bool)
    for k in range(0, count, 2):
        masks[:trainable, k] = rng.random(trainable) < 0.5
        masks[:trainable, k + 1] = ~masks[:trainable, k]
    return masks


def _train_one(base: VisionClip, tokens: torch.Tensor, targets: torch.Tensor, cfg: FinetuneConfig,
               mask: np.ndarray) -> Trained:
    vc = copy.deepcopy(base)
    state = finetune(vc, tokens[torch.from_numpy(mask)], targets[torch.from_numpy(mask)], cfg).state
    margin, prob = head_signals(vc, tokens, targets, cfg)
    return state, margin, prob


def train_references(base: VisionClip, tokens: torch.Tensor, targets: torch.Tensor, cfg: FinetuneConfig, *,
                     count: int, seed: int, data_fingerprint: str, cache: Path, trainable: int | None = None,
                     workers: int = 1,
                     advance: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(margins, true-class probabilities, IN mask), each (records x references).

    Only the first `trainable` records (default: all) are split into the references' training halves;
    the rest (e.g. RMIA's population) are scored but never trained on. `workers` > 1 trains on Ray.
    """
    if count < 2 or count % 2:
        raise ValueError("reference models come in complementary pairs: pass an even count of at least 2")
    if workers < 1:
        raise FedclipError(f"--workers {workers}: pass 1 (references in this process) or more (on Ray)")
    n = len(tokens)
    trainable = n if trainable is None else trainable
    masks = _masks(n, trainable, count, seed)
    paths = [cache / f"{_key(cfg, data_fingerprint, k, seed, f'pairs of {trainable}')}.safetensors"
             for k in range(count)]
    margins, probs = np.zeros((n, count)), np.zeros((n, count))

    def keep(k: int, trained: Trained) -> None:
        state, margins[:, k], probs[:, k] = trained
        io.write_bytes(paths[k], _serialize({**state, "__in_mask__": torch.from_numpy(masks[:, k]),
                                              "__margin__": torch.from_numpy(margins[:, k]),
                                              "__prob__": torch.from_numpy(probs[:, k])}))
        if advance is not None:
            advance(1)

    todo = []
    for k, path in enumerate(paths):
        if not path.exists():
            todo.append(k)
            continue
        stored = load_file(str(path))
        masks[:, k] = stored.pop("__in_mask__").bool().numpy()
        if "__margin__" in stored:
            margins[:, k], probs[:, k] = stored["__margin__"].numpy(), stored["__prob__"].numpy()
        else:  # stored before the signals were: score it again
            vc = copy.deepcopy(base)
            vc.model.load_state_dict(stored, strict=False)
            margins[:, k], probs[:, k] = head_signals(vc, tokens, targets, cfg)
        if advance is not None:
            advance(1)
    if workers > 1 and len(todo) > 1:
        _train_on_ray(base, tokens, targets, cfg, masks, todo, workers, keep)
    else:
        for k in todo:
            keep(k, _train_one(base, tokens, targets, cfg, masks[:, k]))
    return margins, probs, masks


def _train_on_ray(base: VisionClip, tokens: torch.Tensor, targets: torch.Tensor, cfg: FinetuneConfig,
                  masks: np.ndarray, todo: list[int], workers: int, keep: Callable[[int, Trained], None]) -> None:
    """The references in `todo` trained by `workers` Ray tasks; each is stored as soon as it finishes."""
    import ray

    started = not ray.is_initialized()
    if started:
        with warnings.catch_warnings():  # a notice about GPU visibility in future Ray versions; no GPU is asked for
            warnings.filterwarnings("ignore", category=FutureWarning)
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    threads = max(1, (os.cpu_count() or 1) // workers)
    remote = ray.remote(num_cpus=1)(_train_in_worker)
    try:
        shared = [ray.put(x) for x in (base, tokens, targets)]
        pending = {remote.remote(*shared, cfg, masks[:, k], threads): k for k in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            k = pending.pop(done[0])
            try:
                keep(k, ray.get(done[0]))
            except ray.exceptions.RayTaskError as e:  # a worker's clear error reaches the user as itself
                raise (e.cause if isinstance(e.cause, FedclipError) else e) from None
    finally:
        if started:
            ray.shutdown()


def _train_in_worker(base: VisionClip, tokens: torch.Tensor, targets: torch.Tensor, cfg: FinetuneConfig,
                     mask: np.ndarray, threads: int) -> Trained:
    torch.set_num_threads(threads)
    return _train_one(base, tokens, targets, cfg, mask)


def _serialize(tensors: dict[str, torch.Tensor]) -> bytes:
    return save({k: v.contiguous() for k, v in tensors.items()})
