"""Per-record signals a membership attack thresholds: higher means "more like a training record".

- Fine-tuned classification heads (federated checkpoints): LiRA's stable logit margin of the true
  class, phi = log p_y - log sum_{y' != y} p_y', and p_y itself (RMIA's likelihood).
- CLIP models (pretraining): the cosine similarity of an image with its own caption (optionally
  averaged over augmented views of the image).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fedclip import evaluate
from fedclip.data.images import load_rgb
from fedclip.finetune import FinetuneConfig
from fedclip.head import build_head
from fedclip.models import VisionClip


@torch.no_grad()
def head_signals(vc: VisionClip, tokens: torch.Tensor, targets: torch.Tensor,
                 cfg: FinetuneConfig) -> tuple[np.ndarray, np.ndarray]:
    """(logit margin, probability of the true class) of each record under the head of `cfg` on `vc`."""
    head = build_head(vc, cfg)
    head.eval()
    logp = torch.cat([torch.log_softmax(head(chunk), 1) for chunk in tokens.split(512)]).double()
    y = targets.long()
    true = logp.gather(1, y[:, None])[:, 0]
    others = logp.clone()
    others[torch.arange(len(y)), y] = -torch.inf
    margin = true - torch.logsumexp(others, 1)
    return margin.numpy(), true.exp().numpy()


@torch.no_grad()
def clip_signals(vc: VisionClip, images: Sequence[str | Path], captions: Sequence[str], *,
                 views: int = 1, seed: int = 0) -> np.ndarray:
    """Cosine similarity of each image with its caption; `views` > 1 averages over augmented views."""
    from fedclip.data.torchdata import train_transform
    from fedclip.models import PREPROCESS_CFG

    vc.model.eval()
    texts = torch.cat([evaluate.text_embeddings(vc, list(captions[i:i + 256])) for i in range(0, len(captions), 256)])
    sims = evaluate.image_embeddings(vc, images) @ texts.T
    out = sims.diagonal().numpy().astype(float)
    if views > 1:
        tf = train_transform(vc.image_size, PREPROCESS_CFG["mean"], PREPROCESS_CFG["std"], augment=True)
        gen = torch.Generator().manual_seed(seed)
        acc = out.copy()
        for _ in range(views - 1):
            with torch.random.fork_rng():
                torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
                pixels = torch.stack([tf(load_rgb(p)) for p in images])
            feats = torch.nn.functional.normalize(vc.model.encode_image(pixels).float(), dim=-1)
            acc += (feats * texts).sum(1).numpy()
        out = acc / views
    return out
