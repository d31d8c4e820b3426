"""Shared fixtures: everything is generated, nothing downloaded."""

from __future__ import annotations

import pytest

from fedclip.data.synthetic import export
from fedclip.generate.train import GeneratorTrainConfig, train_generator
from fedclip.synth import CohortSpec


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A 48-image, 64-px dataset dir exported by the real exporter (shared, treat as read-only)."""
    out = tmp_path_factory.mktemp("data") / "small"
    export(CohortSpec(seed=3, size=64, hospital="riverside"), out, 48)
    return out


@pytest.fixture(scope="session")
def pretrained_pair(tmp_path_factory):
    """Two briefly pretrained visionclip-tiny checkpoints, alike but for their data: a private cohort
    (riverside, 3,000 images streamed from the generator) and a synthetic corpus drawn from that cohort's
    aggregate statistics (the Med-AIGC step). Shared: pretraining is the slowest thing the fast tests do."""
    from fedclip.pretrain import PretrainConfig, pretrain
    from fedclip.synth import patient
    from fedclip.synth.estimate import estimate, synthetic_spec

    root = tmp_path_factory.mktemp("pretrained")
    cohort = [patient(CohortSpec(seed=1, size=64, hospital="riverside"), i) for i in range(750)]
    export(synthetic_spec(estimate(cohort), seed=2, size=64), root / "synthetic", 3000, workers=2)
    common = {"steps": 80, "batch_size": 64, "workers": 2, "lr": 1e-3, "warmup": 10}
    pretrain(PretrainConfig(synth="n=3000 seed=1 size=64 hospital=riverside", **common), root / "private")
    pretrain(PretrainConfig(data=root / "synthetic", **common), root / "synthetic-run")
    return {"private": root / "private" / "checkpoints" / "last",
            "synthetic": root / "synthetic-run" / "checkpoints" / "last"}


# ------------------------------------------------------------------ the learned generator (16 px, a few steps)
GENERATOR_TINY = {"size": 16, "batch_size": 4, "log_every": 2, "warmup": 2}
@pytest.fixture(scope="session")
def gen_cohort(tmp_path_factory):
    """8 images of 2 patients at two hospitals (64 px), and 8 of 2 other patients (the holdout)."""
    root = tmp_path_factory.mktemp("gen-data")
    export(CohortSpec(seed=21, size=64, hospital="riverside,summit"), root / "data", 8)
    export(CohortSpec(seed=22, size=64, hospital="riverside,summit"), root / "holdout", 8)
    return root


@pytest.fixture(scope="session")
def gen_trained(gen_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen-run") / "run"
    cfg = GeneratorTrainConfig(data=gen_cohort / "data", steps=6, save_every=3, **GENERATOR_TINY)
    result = train_generator(cfg, out)
    return out, result
