"""What `--help` shows is what the code does: brackets survive rich markup, stated defaults are the config's,
positional arguments say what they take, a typo gets one suggestion, completion works."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedclip.cli.main import app
from fedclip.federated.config import FederateConfig
from fedclip.finetune import FinetuneConfig
from fedclip.generate.train import GeneratorTrainConfig
from fedclip.pretrain import PretrainConfig

runner = CliRunner()
WIDE = {"COLUMNS": "250", "TERMINAL_WIDTH": "250"}


def _command(*path: str):
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


@pytest.mark.parametrize(("path", "configs"), [
    (("pretrain",), (PretrainConfig,)),
    (("federate",), (FederateConfig, FinetuneConfig)),
    (("generator", "train"), (GeneratorTrainConfig,)),
])
def test_defaults_stated_in_help_are_the_configs_defaults(path, configs):
    """Options default to None so a config file can set them; the default a user reads in --help is written
    by hand and must not drift from the dataclass that really applies it."""
    checked = 0
    for param in _command(*path).params:
        stated = re.search(r"\\\[default: ([^\],]+)", param.help or "")
        if not stated:
            continue
        try:
            value = float(stated.group(1))
        except ValueError:
            continue  # a described default ("the config's", a path)
        owner = next(c for c in configs if param.name in c.__dataclass_fields__)
        assert value == pytest.approx(float(owner.__dataclass_fields__[param.name].default)), param.name
        checked += 1
    assert checked >= 3


def test_help_keeps_brackets_and_names_the_studies():
    res = runner.invoke(app, ["federate", "--help"], env=WIDE)
    text = " ".join(res.output.split())
    assert "[policy] for all, [policy.client-N] for one" in text and "[federate] table" in text
    assert "[default: 5]" in text  # --rounds
    res = runner.invoke(app, ["experiment", "run", "--help"], env=WIDE)
    text = " ".join(res.output.split())
    for study in ("quickstart", "epsilon_sweep", "paper_scale", "generator"):
        assert study in text
    res = runner.invoke(app, ["data", "import", "--help"], env=WIDE)
    assert "folder (any image folder" in " ".join(res.output.split())


def test_a_typo_gets_one_suggestion():
    res = runner.invoke(app, ["pretrian"], env=WIDE)
    assert res.exit_code == 2 and res.output.count("Did you mean") == 1 and "'pretrain'" in res.output


def test_shell_completion_offers_commands_and_study_names():
    env = {**os.environ, "_FEDCLIP_COMPLETE": "complete_bash", "COMP_CWORD": "3",
           "COMP_WORDS": "fedclip experiment run quick"}
    exe = str(Path(sys.executable).parent / "fedclip")  # the installed entry point: completion keys on its name
    res = subprocess.run([exe], env=env, capture_output=True, text=True)
    assert res.stdout.split() == ["quickstart"], res.stdout + res.stderr
    env.update(COMP_CWORD="1", COMP_WORDS="fedclip pre")
    res = subprocess.run([exe], env=env, capture_output=True, text=True)
    assert "pretrain" in res.stdout.split() and "predict" in res.stdout.split()
