"""A tiny generator run shared by the generator tests (16 px, a few steps: the contract, not the quality)."""

import pytest

from fedclip.data.synthetic import export
from fedclip.generate.train import GeneratorTrainConfig, train_generator
from fedclip.synth import CohortSpec

TINY = {"size": 16, "batch_size": 4, "log_every": 2, "warmup": 2}


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    """8 images of 2 patients at two hospitals (64 px), and 8 of 2 other patients (the holdout)."""
    root = tmp_path_factory.mktemp("gen-data")
    export(CohortSpec(seed=21, size=64, hospital="riverside,summit"), root / "data", 8)
    export(CohortSpec(seed=22, size=64, hospital="riverside,summit"), root / "holdout", 8)
    return root


@pytest.fixture(scope="session")
def trained(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen-run") / "run"
    result = train_generator(GeneratorTrainConfig(data=cohort / "data", steps=6, save_every=3, **TINY), out)
    return out, result
