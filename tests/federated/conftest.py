"""One small federation shared by the federated tests (Ray start-up and training cost seconds each)."""

import pytest

from fedclip import models
from fedclip.data.synthetic import export
from fedclip.federated.config import FederateConfig
from fedclip.federated.simulation import simulate
from fedclip.synth import CohortSpec


@pytest.fixture(scope="session")
def federation(tmp_path_factory):
    base = tmp_path_factory.mktemp("fed")
    export(CohortSpec(seed=5, size=64, hospital="riverside,northgate,summit", diabetic_rate=0.7), base / "data", 180)
    export(CohortSpec(seed=6, size=64, hospital="lakeshore"), base / "eval", 48)
    ckpt = models.save_checkpoint(models.create("visionclip-tiny", seed=0), base / "ckpt")
    cfg = FederateConfig(checkpoint=ckpt, data=base / "data", eval_data=base / "eval", out=base / "run", rounds=2,
                         clients=3).with_finetune(epsilon=8.0, batch_size=16)
    return base, cfg, simulate(cfg, state_root=base / "nodes")

