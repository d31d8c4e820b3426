"""A node's frozen-prefix outputs, computed once per checkpoint and dataset and kept for its later rounds.

The prefix never trains, so recomputing it every round would only cost time. The cache lives in the
process that runs the node's rounds (a SuperNode, or a simulation worker that may host several nodes in
turn), never leaves it, and holds nothing the node's data dir does not.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedclip import models, tasks
from fedclip.data.records import Record
from fedclip.federated.config import FederateConfig
from fedclip.finetune import load_pixels, prefix_tokens


class TokenCache:
    """Frozen-prefix outputs of a node's labelled images, keyed by content (weights hash, data, task).

    The prefix never trains, so a node computes them once per checkpoint and dataset; one entry per
    node is kept (a simulation worker may host several nodes in turn).
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.entries: dict[str, tuple[list[int], torch.Tensor, torch.Tensor]] = {}

    def get(self, vc: models.VisionClip, records: list[Record], root: Path, cfg: FederateConfig,
            dataset: str) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """(indices of the records labelled for the task, their prefix tokens, their targets), `dataset`
        being the records' fingerprint."""
        weights = models.read_checkpoint_config(cfg.checkpoint)["weights_sha256"]
        key = f"{weights}|{cfg.finetune.train_blocks}|{cfg.finetune.task}|{root}|{dataset}"
        if key not in self.entries:
            keep, y = tasks.labelled([r.labels for r in records], cfg.finetune.task, required=False)
            pixels = load_pixels(vc, [records[i].path(root) for i in keep])
            if len(self.entries) >= self.size:
                self.entries.pop(next(iter(self.entries)))
            self.entries[key] = (keep, prefix_tokens(vc, pixels, cfg.finetune.train_blocks), torch.from_numpy(y))
        return self.entries[key]


NODE_TOKENS = TokenCache()
