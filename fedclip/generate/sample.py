"""Sampling a generator into a normal dataset dir: labels, captions, images, provenance.

Labels come from the label statistics stored with the generator (released with noise and charged
when it was trained with DP): a DR grade from the grade mix, each binary label from its rate (DME and
laser scars only on eyes of the grade they follow), a hospital from the hospital mix. Captions come
from the same caption code as the procedural renderer, images from DDIM (`steps` denoising steps,
classifier-free `guidance` optional). Same checkpoint, seed and settings: the same images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fedclip import io
from fedclip.data.records import Record, write_metadata
from fedclip.errors import FedclipError
from fedclip.generate.model import WEIGHTS_FILE, Generator, load_generator, read_generator_config
from fedclip.models import sha256_file
from fedclip.progress import progress_bar
from fedclip.synth.captions import make_caption
from fedclip.synth.taxonomy import CONDITIONS

PROVENANCE_FILE = "provenance.json"


@dataclass(frozen=True)
class SampleConfig:
    n: int = 1000
    seed: int = 0
    steps: int = 50  # DDIM denoising steps
    guidance: float = 1.0  # classifier-free guidance scale; 1: conditional only (one pass per step)
    batch_size: int = 64


def draw_labels(stats: dict[str, Any], rng: np.random.Generator) -> tuple[dict[str, int], str | None]:
    """One image's labels and hospital from the generator's label statistics."""
    grade = int(rng.choice(len(stats["dr_grades"]), p=np.asarray(stats["dr_grades"]) / sum(stats["dr_grades"])))
    labels = {"dr_grade": grade, "dr": int(grade > 0)}
    follows = {c.name: c.follows_dr_grade for c in CONDITIONS}
    for name, rate in stats["rates"].items():
        need = follows.get(name)
        labels[name] = int(rng.random() < rate and (need is None or grade >= need))
    labels["readable"] = int(not any(labels.get(q) for q in ("blur", "haze", "artefact")))
    hospitals = stats.get("hospitals") or {}
    hospital = str(rng.choice(list(hospitals), p=np.asarray(list(hospitals.values())) /
                              sum(hospitals.values()))) if hospitals else None
    return labels, hospital


@torch.no_grad()
def ddim(gen: Generator, cond: torch.Tensor, *, steps: int, guidance: float, generator: torch.Generator
         ) -> torch.Tensor:
    """Images in [-1, 1] for the condition vectors `cond` (one image each)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=gen.config["train_timesteps"], beta_schedule=gen.config["beta_schedule"],
                          clip_sample=True, prediction_type=gen.prediction)
    sched.set_timesteps(steps)
    x = torch.randn((len(cond), 3, gen.image_size, gen.image_size), generator=generator)
    for t in sched.timesteps:
        tt = t.repeat(len(cond))
        eps = gen(x, tt, cond)
        if guidance != 1.0:
            eps = gen(x, tt, torch.zeros_like(cond)) + guidance * (eps - gen(x, tt, torch.zeros_like(cond)))
        x = sched.step(eps, t, x, generator=generator).prev_sample
    return x.clamp(-1, 1)


def sample_dataset(checkpoint: str | Path, out: str | Path, cfg: SampleConfig) -> Path:
    """Write `cfg.n` generated images with labels and captions as a dataset dir (atomically)."""
    if cfg.n < 1 or cfg.steps < 1:
        raise FedclipError("--n and --steps must be at least 1")
    meta_cfg = read_generator_config(checkpoint)
    gen = load_generator(checkpoint)
    stats = meta_cfg["label_statistics"]
    rng = np.random.default_rng(cfg.seed)
    drawn = [draw_labels(stats, rng) for _ in range(cfg.n)]
    cond = gen.conditioning.vectors([lab for lab, _ in drawn], [h for _, h in drawn])
    noise = torch.Generator().manual_seed(cfg.seed)
    records: list[Record] = []
    out = Path(out)
    with io.replace_dir(out) as tmp:
        (tmp / "images").mkdir()
        with progress_bar("sample", cfg.n) as advance:
            for start in range(0, cfg.n, cfg.batch_size):
                x = ddim(gen, cond[start:start + cfg.batch_size], steps=cfg.steps, guidance=cfg.guidance,
                         generator=noise)
                pixels = ((x + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
                for j, img in enumerate(pixels):
                    i = start + j
                    labels, hospital = drawn[i]
                    meta = {"patient_id": f"generated-{i:06d}", "eye": "", "hospital": hospital or "",
                            "camera": "generator", "seed": cfg.seed}
                    path = f"images/{i:06d}.png"
                    Image.fromarray(img).save(tmp / path)
                    records.append(Record(path, make_caption(labels, meta, rng, diabetic=labels["dr"] == 1),
                                          labels, meta))
                advance(len(pixels))
        write_metadata(tmp, records)
        (tmp / PROVENANCE_FILE).write_text(json.dumps({
            "source": "generator", "generator": str(Path(checkpoint).resolve()),
            "generator_weights_sha256": sha256_file(Path(checkpoint) / WEIGHTS_FILE),
            "generator_members_fingerprint": meta_cfg["provenance"].get("data_fingerprint"),
            "generator_privacy": meta_cfg["provenance"].get("privacy"),
            "label_statistics_privacy": stats.get("privacy"),
            "sampler": "DDIM", "steps": cfg.steps, "guidance": cfg.guidance, "seed": cfg.seed, "n": cfg.n},
            indent=2, default=str))
    return out
