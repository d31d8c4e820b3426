"""The quickstart: generate data, build a VisionCLIP, save it as a checkpoint, evaluate it zero-shot.

At this stage the model is untrained, so zero-shot figures sit near chance; the point is that every
stage runs and hands the next one plain files (see DESIGN.md's run directory).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedclip import evaluate, models
from fedclip.data.images import load_rgb
from fedclip.data.records import read_metadata
from fedclip.data.synthetic import export
from fedclip.synth import CohortSpec


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("runs/demo")
    n: int = 256
    size: int = 64
    seed: int = 0
    hospital: str = "northgate"
    model: str = "visionclip-tiny"
    workers: int = 2
    tasks: tuple[str, ...] = ("referable_dr", "dr_grade", "glaucoma", "amd")


def run(cfg: DemoConfig) -> dict[str, Any]:
    data_dir = cfg.out / "data" / "eval"
    if not (data_dir / "metadata.csv").exists():
        export(CohortSpec(seed=cfg.seed, size=cfg.size, hospital=cfg.hospital), data_dir, cfg.n,
               workers=cfg.workers)
    records = read_metadata(data_dir)
    vc = models.create(cfg.model, seed=cfg.seed)
    ckpt = models.save_checkpoint(vc, cfg.out / "checkpoints" / "init",
                                  provenance={"stage": "init", "trained_steps": 0})
    reloaded = models.load_checkpoint(ckpt, expect_model=cfg.model)
    images = [load_rgb(r.path(data_dir)) for r in records]
    labels = [r.labels for r in records]
    results = [evaluate.zero_shot(reloaded, images, labels, t) for t in cfg.tasks]
    return {"data": str(data_dir), "checkpoint": str(ckpt), "n_images": len(records), "results": results}
