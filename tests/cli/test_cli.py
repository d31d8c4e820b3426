from typer.testing import CliRunner

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


def test_demo_runs_end_to_end(tmp_path):
    res = runner.invoke(app, ["--quiet", "demo", "--out", str(tmp_path / "run"), "--n", "24",
                              "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "referable_dr" in res.output
    assert (tmp_path / "run" / "checkpoints" / "init" / "model.safetensors").is_file()
    assert (tmp_path / "r.json").is_file()
