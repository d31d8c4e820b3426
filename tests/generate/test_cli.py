"""`fedclip generator train`, `fedclip synth --generator` and `fedclip audit generator` through the real CLI."""

import json

from typer.testing import CliRunner

from fedclip import models
from fedclip.cli.main import app

runner = CliRunner()


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text and len(text.splitlines()) <= 2, text  # one (wrapped) line
    for needle in needles:
        assert needle in text, text


def test_train_and_sample_end_to_end(gen_cohort, tmp_path):
    out = tmp_path / "run"
    train = runner.invoke(app, ["--quiet", "generator", "train", "--data", str(gen_cohort / "data"), "--out", str(out),
                                "--size", "16", "--steps", "2", "--batch-size", "4"])
    assert train.exit_code == 0, train.output
    text = train.output.replace("\n", "")
    assert "trained without DP" in text and "checkpoints/last" in text
    samples = tmp_path / "samples"
    synth = runner.invoke(app, ["--quiet", "synth", "--generator", str(out / "checkpoints" / "last"), "--out",
                                str(samples), "--n", "3", "--steps", "2"])
    assert synth.exit_code == 0, synth.output
    assert len((samples / "metadata.csv").read_text().splitlines()) == 4
    assert json.loads((samples / "provenance.json").read_text())["n"] == 3


def test_bad_inputs_are_one_line_errors_with_exit_2(gen_cohort, tmp_path):
    tiny = tmp_path / "one"
    from fedclip.data.records import read_metadata, write_metadata

    rows = read_metadata(gen_cohort / "data")[:1]
    write_metadata(tiny, [type(r)(str(r.path(gen_cohort / "data")), r.caption, r.labels, r.meta) for r in rows])
    args = ["--quiet", "generator", "train", "--out", str(tmp_path / "r"), "--size", "16", "--steps", "1"]
    _one_line_error(runner.invoke(app, [*args, "--data", str(tiny)]), "needs at least 2")
    _one_line_error(runner.invoke(app, [*args[:-4], "--data", str(gen_cohort / "data"), "--config", "generator-huge"]),
                    "unknown generator config", "generator-tiny")
    _one_line_error(runner.invoke(app, [*args, "--data", str(gen_cohort / "data"), "--set", "generator.stepz=3"]),
                    "stepz")
    clip = models.save_checkpoint(models.create("visionclip-tiny", seed=0), tmp_path / "clip")
    _one_line_error(runner.invoke(app, ["--quiet", "synth", "--generator", str(clip), "--out", str(tmp_path / "s")]),
                    "is a CLIP checkpoint, not a generator")
    assert not (tmp_path / "s").exists()  # nothing half-written
    _one_line_error(runner.invoke(app, ["--quiet", "synth", "--generator", str(tmp_path / "nowhere"), "--out",
                                        str(tmp_path / "s")]), "does not exist")
