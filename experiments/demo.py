"""The quickstart: the whole pipeline at toy scale, in a couple of minutes on a laptop CPU.

generate a cohort at three hospitals and, with another camera, an external hospital -> pretrain
visionclip-tiny on the cohort -> zero-shot evaluation on the external hospital, before and after ->
three sites of the external hospital adapt the model to their camera with DP-SGD on Flower's
simulation engine, each keeping a privacy ledger, evaluated on other patients of that hospital.
Every stage reads and writes plain files in the run directory (DESIGN.md), so each can be rerun alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedclip import evaluate, models
from fedclip.data.records import METADATA_FILE
from fedclip.data.synthetic import export
from fedclip.federated.simulation import simulate
from fedclip.federated.task import FederateConfig
from fedclip.pretrain import PretrainConfig, pretrain
from fedclip.synth import CohortSpec


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("runs/demo")
    n: int = 1500  # training images (three hospitals)
    n_external: int = 300
    n_sites: int = 1500  # the external hospital's own patients, split over its three sites
    size: int = 64
    steps: int = 150
    batch_size: int = 64
    rounds: int = 2
    seed: int = 0
    workers: int = 2
    tasks: tuple[str, ...] = ("referable_dr", "dr_grade", "amd", "dme")


def run(cfg: DemoConfig) -> dict[str, Any]:
    data, external, sites = cfg.out / "data" / "train", cfg.out / "data" / "external", cfg.out / "data" / "sites"
    if not (data / METADATA_FILE).exists():
        export(CohortSpec(seed=cfg.seed, size=cfg.size, hospital="riverside,northgate,summit"), data, cfg.n,
               workers=cfg.workers)
    if not (external / METADATA_FILE).exists():
        export(CohortSpec(seed=cfg.seed + 1, size=cfg.size, hospital="lakeshore"), external, cfg.n_external,
               workers=cfg.workers)
    if not (sites / METADATA_FILE).exists():
        export(CohortSpec(seed=cfg.seed + 2, size=cfg.size, hospital="lakeshore"), sites, cfg.n_sites,
               workers=cfg.workers)
    pre = cfg.out / "pretrain"
    if not (pre / "checkpoints" / "last" / "train_state").exists():
        pretrain(PretrainConfig(data=data, steps=cfg.steps, batch_size=min(cfg.batch_size, cfg.n), lr=1e-3,
                                warmup=max(1, cfg.steps // 10), workers=cfg.workers, seed=cfg.seed), pre)
    ckpt = pre / "checkpoints" / "last"
    untrained = evaluate.evaluate_dir(models.create("visionclip-tiny", seed=cfg.seed), external, cfg.tasks)
    trained = evaluate.evaluate_dir(models.load_checkpoint(ckpt), external, cfg.tasks)
    fed = FederateConfig(checkpoint=ckpt, data=sites, eval_data=external, out=cfg.out / "federate",
                         rounds=cfg.rounds, partitioning="iid", client_eval=False, class_prior=(0.85, 0.15),
                         seed=cfg.seed)
    resume = (fed.out / "state.json").exists()
    federated = simulate(fed, resume=resume, state_root=cfg.out / "nodes")  # the demo's own fictional hospitals
    return {"data": str(data), "external": str(external), "checkpoint": str(ckpt),
            "zero_shot": {"untrained": untrained, "pretrained": trained}, "federated": federated}
