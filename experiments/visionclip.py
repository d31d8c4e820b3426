"""The VisionCLIP comparison: a model pretrained on synthetic patients vs one pretrained on the private
cohort they were learned from, same steps and settings, both evaluated zero-shot on an external hospital.

    private cohort   generator patients imaged at the training hospitals (the stand-in for real patients)
    synthetic corpus new patients drawn from statistics estimated on the cohort (`synth.estimate`)
    external set     another hospital/camera profile, never seen in training

Every stage writes into the study dir and is skipped when its output exists, so an interrupted study
resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedclip import evaluate, io, models
from fedclip.data.records import METADATA_FILE
from fedclip.data.synthetic import export
from fedclip.pretrain import PretrainConfig, pretrain
from fedclip.synth import CohortSpec, patient
from fedclip.synth.estimate import estimate, synthetic_spec

DEFAULT_TASKS = ("referable_dr", "dr_grade", "dr", "amd", "glaucoma", "pathological_myopia", "rvo",
                 "hypertensive_retinopathy", "dme", "laser_scars", "fives", "odir")


@dataclass(frozen=True)
class StudyConfig:
    train_hospitals: str = "riverside,northgate"
    external_hospital: str = "lakeshore"
    n_train: int = 20_000
    n_external: int = 2_000
    size: int = 64
    model: str = "visionclip-tiny"
    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 40
    workers: int = 2
    seed: int = 0
    tasks: tuple[str, ...] = DEFAULT_TASKS


def _export_once(spec: CohortSpec, out: Path, n: int, workers: int) -> Path:
    if not (out / METADATA_FILE).exists():
        export(spec, out, n, workers=workers)
    return out


def run(cfg: StudyConfig, out: str | Path) -> dict[str, Any]:
    out = Path(out)
    private_spec = CohortSpec(seed=cfg.seed + 100, size=cfg.size, hospital=cfg.train_hospitals)
    cohort = [patient(private_spec, i) for i in range(-(-cfg.n_train // private_spec.images_per_patient))]
    stats = estimate(cohort)
    synth_spec = synthetic_spec(stats, seed=cfg.seed + 200, size=cfg.size, visits=private_spec.visits)
    external_spec = CohortSpec(seed=cfg.seed + 300, size=cfg.size, hospital=cfg.external_hospital)
    out.mkdir(parents=True, exist_ok=True)
    io.write_json(out / "cohort_statistics.json", asdict(stats))

    data = {
        "private": _export_once(private_spec, out / "data" / "private", cfg.n_train, cfg.workers),
        "synthetic": _export_once(synth_spec, out / "data" / "synthetic", cfg.n_train, cfg.workers),
    }
    external = _export_once(external_spec, out / "data" / "external", cfg.n_external, cfg.workers)

    results: dict[str, Any] = {"config": asdict(cfg), "models": {}}
    for name, data_dir in data.items():
        run_dir = out / name
        pcfg = PretrainConfig(model=cfg.model, data=data_dir, steps=cfg.steps, batch_size=cfg.batch_size,
                              lr=cfg.lr, warmup=cfg.warmup, workers=cfg.workers, seed=cfg.seed)
        last = run_dir / "checkpoints" / "last"
        if not (last / "config.json").exists() or models.read_checkpoint_config(last)["provenance"].get(
                "steps") != cfg.steps:
            pretrain(pcfg, run_dir, resume=(last / "train_state").exists())
        vc = models.load_checkpoint(last)
        results["models"][name] = evaluate.evaluate_dir(vc, external, cfg.tasks)
    untrained = models.create(cfg.model, seed=cfg.seed)
    results["models"]["untrained"] = evaluate.evaluate_dir(untrained, external, cfg.tasks)
    results["ratio_synthetic_over_private"] = {
        r_s["task"]: r_s["balanced_accuracy"] / r_p["balanced_accuracy"]
        for r_s, r_p in zip(results["models"]["synthetic"], results["models"]["private"], strict=True)
    }
    io.write_json(out / "results.json", results)
    return results
