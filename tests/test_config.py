"""One config system: TOML -> dataclass -> Flower run config -> dataclass, and errors that name the key."""

from dataclasses import replace
from pathlib import Path

import pytest

from fedclip import config as cfglib
from fedclip.errors import FedclipError
from fedclip.federated.config import FederateConfig, from_run_config, to_run_config
from fedclip.pretrain import PretrainConfig


def test_a_misspelt_section_unknown_key_or_wrong_type_is_an_error_naming_it(tmp_path):
    with pytest.raises(FedclipError, match="pretrian.steps=5.*not section 'pretrian'"):
        cfglib.load(PretrainConfig, "pretrain", None, ["pretrian.steps=5"])
    with pytest.raises(FedclipError, match=r"\[pretrain\] has no setting\(s\) stpes"):
        cfglib.load(PretrainConfig, "pretrain", None, ["pretrain.stpes=5"])
    with pytest.raises(FedclipError, match="pretrain.steps: 'many' is not a valid int"):
        cfglib.load(PretrainConfig, "pretrain", None, ["pretrain.steps=many"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[pretrian]\nsteps = 5\n")
    with pytest.raises(FedclipError, match=r"unknown section\(s\) \[pretrian\]"):
        cfglib.load(PretrainConfig, "pretrain", bad)


def test_toml_dataclass_flower_run_config_round_trip(tmp_path):
    cfg = replace(FederateConfig(), checkpoint=Path("/m/ckpt"), rounds=7, strategy="fedprox").with_finetune(
        class_prior=(0.85, 0.15), dp=True, unit="image", lr=0.25)
    path = cfglib.write(tmp_path / "config.toml", {"federate": cfg})
    again = cfglib.load(FederateConfig, "federate", path)
    assert again == cfg
    assert from_run_config(to_run_config(again)) == cfg
