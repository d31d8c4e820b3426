import tomllib
from pathlib import Path

from fedclip.federated.config import FederateConfig, flower_app_config, from_run_config

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_flower_config_is_the_generated_one_and_reads_back_as_the_defaults():
    app = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "fedclip.federated.server_app:app",
                                 "clientapp": "fedclip.federated.client_app:app"}
    generated = tomllib.loads(flower_app_config())["tool"]["flwr"]["app"]["config"]
    assert app["config"] == generated, "pyproject.toml is stale: run `make flwr-config`"
    flat = {**{k: v for k, v in app["config"].items() if k != "finetune"},
            **{f"finetune.{k}": v for k, v in app["config"]["finetune"].items()}}  # as Flower flattens it
    assert from_run_config(flat) == FederateConfig()  # empty strings: not set
