from typer.testing import CliRunner

from fedclip import models
from fedclip.cli.main import app

runner = CliRunner()


def test_synth_writes_a_dataset_and_info_reads_it(tmp_path):
    res = runner.invoke(app, ["--quiet", "synth", "--out", str(tmp_path / "d"), "--n", "12", "--size", "48",
                              "--hospital", "summit"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "d" / "metadata.csv").is_file()
    res = runner.invoke(app, ["data", "info", str(tmp_path / "d")])
    assert res.exit_code == 0 and "12 images" in res.output and "summit 12" in res.output


def test_synth_preview(tmp_path):
    res = runner.invoke(app, ["synth", "--preview", str(tmp_path / "p.png"), "--size", "48"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_errors_are_one_line_and_exit_2(tmp_path):
    res = runner.invoke(app, ["synth", "--out", str(tmp_path / "d"), "--hospital", "atlantis"])
    assert res.exit_code == 2
    assert "unknown hospital profile 'atlantis'" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["synth"])
    assert res.exit_code == 2 and "--out" in res.output
    res = runner.invoke(app, ["data", "import", "fives", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no FIVES images" in res.output
    res = runner.invoke(app, ["data", "info", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "not found" in res.output


def test_eval_and_predict_errors_are_clear(tmp_path, small_dataset):
    from fedclip import models

    res = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "none"), "--data", str(small_dataset)])
    assert res.exit_code == 2 and "does not exist" in res.output
    ckpt = models.save_checkpoint(models.create("visionclip-tiny"), tmp_path / "ckpt")
    res = runner.invoke(app, ["eval", "--checkpoint", str(ckpt), "--data", str(small_dataset), "--task", "nope"])
    assert res.exit_code == 2 and "unknown task" in res.output
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    res = runner.invoke(app, ["predict", str(bad), "--checkpoint", str(ckpt)])
    assert res.exit_code == 2 and "broken.jpg cannot be decoded" in res.output


def test_eval_and_predict_on_real_files(tmp_path, small_dataset):
    import json

    from fedclip import models
    from fedclip.data.records import read_metadata

    ckpt = models.save_checkpoint(models.create("visionclip-tiny"), tmp_path / "ckpt")
    res = runner.invoke(app, ["eval", "--checkpoint", str(ckpt), "--data", str(small_dataset), "--task", "referable_dr",
                              "--task", "dr_grade", "--task", "retrieval", "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "r.json").read_text())
    assert [r["task"] for r in results] == ["retrieval", "referable_dr", "dr_grade"] and "kappa" in results[2]
    assert 0.0 <= results[0]["image_to_text_R@1"] <= results[0]["image_to_text_R@10"] <= 1.0
    assert "retrieval recall@k" in res.output
    image = read_metadata(small_dataset)[0].path(small_dataset)
    res = runner.invoke(app, ["predict", str(image), "--checkpoint", str(ckpt), "--top", "2"])
    assert res.exit_code == 0 and "DR grade" in res.output and res.output.count(",") >= 1


def test_version_and_python_dash_m_run_the_same_cli():
    import subprocess
    import sys

    from fedclip import __version__

    res = subprocess.run([sys.executable, "-m", "fedclip", "--version"], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == f"fedclip {__version__}"
    res = subprocess.run([sys.executable, "-m", "fedclip", "audit", "epsilon"], capture_output=True, text=True)
    assert res.returncode == 2 and "--run" in res.stderr + res.stdout


def test_ctrl_c_in_training_says_what_was_kept_and_exits_130(tmp_path, monkeypatch):
    import fedclip.pretrain

    def interrupted(cfg, out, resume=False):
        models.save_checkpoint(models.create("visionclip-tiny"), out / "checkpoints" / "last")
        raise KeyboardInterrupt  # what Ctrl-C raises in the training loop

    monkeypatch.setattr(fedclip.pretrain, "pretrain", interrupted)
    res = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "run"), "--synth", "n=8 seed=0 size=64"])
    assert res.exit_code == 130 and "--resume" in res.output and "Traceback" not in res.output, res.output
    monkeypatch.setattr(fedclip.pretrain, "pretrain", lambda cfg, out, resume=False: (_ for _ in ()).throw(
        KeyboardInterrupt))
    res = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "fresh"), "--synth", "n=8 seed=0 size=64"])
    assert res.exit_code == 130 and "no checkpoint was saved yet" in res.output
