import tomllib
from dataclasses import fields
from pathlib import Path

from fedclip.federated.task import FederateConfig, from_run_config

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_flower_config_covers_every_setting_with_the_same_defaults():
    app = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "fedclip.federated.server_app:app",
                                 "clientapp": "fedclip.federated.client_app:app"}
    run_config = app["config"]
    assert {k.replace("-", "_") for k in run_config} == {f.name for f in fields(FederateConfig)}
    cfg = from_run_config(run_config)
    assert cfg == FederateConfig(out=Path("runs/federate"))  # empty strings: not set
