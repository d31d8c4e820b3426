"""Audit fixtures: one generated cohort split by patient into members, non-members and population (same
distribution, so any attack signal is memory, not shift), and targets fine-tuned on the members with the
project's own fine-tuning, saved as a federation saves its rounds."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fedclip import config as cfglib
from fedclip import models, tasks
from fedclip.data.records import read_metadata, write_metadata
from fedclip.data.synthetic import export
from fedclip.federated.config import FederateConfig
from fedclip.finetune import FinetuneConfig, finetune, load_pixels, prefix_tokens
from fedclip.synth import CohortSpec


def split_by_patient(src: Path, out: Path, parts: dict[str, float], seed: int = 0) -> dict[str, Path]:
    records = read_metadata(src)
    patients = sorted({r.meta["patient_id"] for r in records})
    rng = np.random.default_rng(seed)
    rng.shuffle(patients)
    dirs, start = {}, 0
    for name, frac in parts.items():
        chosen = set(patients[start:start + round(frac * len(patients))])
        start += len(chosen)
        rows = [type(r)(str(r.path(src).resolve()), r.caption, r.labels, r.meta) for r in records
                if r.meta["patient_id"] in chosen]
        write_metadata(out / name, rows)
        dirs[name] = out / name
    return dirs


def federated_target(base: Path, members: Path, out: Path, *, dp: bool, epsilon: float = 8.0, epochs: int = 60,
                     lr: float = 1e-3, train_blocks: int = 1, task: str = "referable_dr",
                     optimizer: str = "adamw") -> Path:
    """What one hospital's federation round would produce, trained here in one go (rounds=1, one client)."""
    ft = FinetuneConfig(task=task, train_blocks=train_blocks, epochs=epochs, batch_size=32, lr=lr, dp=dp,
                        epsilon=epsilon, optimizer=optimizer)
    fed = FederateConfig(checkpoint=base, data=members, rounds=1, finetune=ft)
    vc = models.load_checkpoint(base)
    records = read_metadata(members)
    keep, y = tasks.labelled([r.labels for r in records], ft.task)
    tokens = prefix_tokens(vc, load_pixels(vc, [records[i].path(members) for i in keep]), train_blocks)
    finetune(vc, tokens, torch.from_numpy(y), ft)
    return models.save_checkpoint(vc, out, provenance={"stage": "federate", "federate": cfglib.plain(fed)})


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    # one image per patient: the image is the patient (image-level DP then protects patients)
    export(CohortSpec(seed=21, size=64, hospital="riverside,northgate", diabetic_rate=0.6, eyes=1, visits=1),
           root / "all", 360)
    dirs = split_by_patient(root / "all", root, {"members": 1 / 3, "nonmembers": 1 / 3, "population": 1 / 3})
    base = models.save_checkpoint(models.create("visionclip-tiny", seed=0), root / "base")
    return root, base, dirs


def pdf_pages(pdf) -> list[str]:
    """The text of each page of a PDF, read back with pypdf (no system tool needed)."""
    from pypdf import PdfReader

    return [page.extract_text() or "" for page in PdfReader(str(pdf)).pages]
