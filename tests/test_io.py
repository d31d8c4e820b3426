"""Atomic writes: a process killed in the middle of any save leaves the previous or the new version."""

import errno
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fedclip import io, models, train_state
from fedclip.errors import StorageError


def _save_forever(root, ready):
    """Alternate two versions of a checkpoint (with train state) and of a JSON summary, as fast as possible."""
    vc = models.create("visionclip-tiny", seed=0)
    version = 0
    while True:
        version += 1
        with torch.no_grad():
            vc.model.logit_scale.fill_(float(version))
        models.save_checkpoint(vc, root / "ckpt", provenance={"version": version},
                               train_state={"step": version, "w": torch.full((1000,), float(version))})
        models.copy_checkpoint(root / "ckpt", root / "last")
        io.write_json(root / "ledger.json", [{"version": version, "pad": "x" * 100_000}])
        ready.set()


def _check(root):
    for tag in ("ckpt", "last"):
        vc = models.load_checkpoint(root / tag)  # verifies the weights' SHA-256 too
        version = models.read_checkpoint_config(root / tag)["provenance"]["version"]
        assert float(vc.model.logit_scale.detach()) == version
        assert train_state.load(root / tag / "train_state")["step"] == version
    assert json.loads((root / "ledger.json").read_text())[0]["version"] >= 1


@pytest.mark.parametrize("delay", [0.05, 0.13, 0.31, 0.57, 0.83])
def test_a_process_killed_mid_save_leaves_a_complete_version(tmp_path, delay):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_save_forever, args=(tmp_path, ready))
    p.start()
    assert ready.wait(120), "the writer never finished a first save"
    time.sleep(delay)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    _check(tmp_path)
    io.remove_stale(tmp_path)  # what the killed writer left aside is hidden and removable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "last", "ledger.json"]


def test_replace_dir_leaves_the_old_directory_when_the_build_fails(tmp_path):
    with io.replace_dir(tmp_path / "d") as d:
        (d / "a").write_text("old")
    with pytest.raises(RuntimeError), io.replace_dir(tmp_path / "d") as d:
        (d / "a").write_text("new")
        raise RuntimeError("crash while building")
    assert (tmp_path / "d" / "a").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["d"]


def test_append_line_is_durable_and_creates_the_file(tmp_path):
    io.append_line(tmp_path / "sub" / "log.jsonl", '{"a": 1}')
    io.append_line(tmp_path / "sub" / "log.jsonl", '{"a": 2}\n')
    assert (tmp_path / "sub" / "log.jsonl").read_text() == '{"a": 1}\n{"a": 2}\n'


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_is_one_clear_error_and_the_previous_version_survives(tmp_path, monkeypatch, err):
    """Fault injection at the system call: the disk refuses the bytes (full) or the file system is read-only."""
    vc = models.create("visionclip-tiny", seed=0)
    first = models.save_checkpoint(vc, tmp_path / "ckpt", provenance={"version": 1},
                                   train_state={"step": 1, "w": torch.ones(3)})
    io.write_json(tmp_path / "ledger.json", {"version": 1})
    real_fsync = os.fsync

    def refuse(fd):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(StorageError, match=r"cannot write .*ckpt: .*previous version \(if any\) is intact"):
        models.save_checkpoint(vc, tmp_path / "ckpt", provenance={"version": 2},
                               train_state={"step": 2, "w": torch.zeros(3)})
    with pytest.raises(StorageError, match="cannot write .*ledger.json"):
        io.write_json(tmp_path / "ledger.json", {"version": 2})
    with pytest.raises(StorageError, match="cannot write .*ledger.jsonl"):
        io.append_line(tmp_path / "ledger.jsonl", "{}")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert models.read_checkpoint_config(first)["provenance"]["version"] == 1
    models.load_checkpoint(first)  # weights verified against their hash
    assert train_state.load(first / "train_state")["step"] == 1
    assert json.loads((tmp_path / "ledger.json").read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "ledger.json", "ledger.jsonl"]


def test_a_full_disk_during_a_command_is_exit_2_and_one_line(tmp_path, monkeypatch, small_dataset):
    from typer.testing import CliRunner

    from fedclip.cli.main import app

    ckpt = models.save_checkpoint(models.create("visionclip-tiny", seed=0), tmp_path / "ckpt")

    def refuse(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", refuse)
    res = CliRunner().invoke(app, ["eval", "--checkpoint", str(ckpt), "--data", str(small_dataset), "--json",
                                   str(tmp_path / "r.json")])
    assert res.exit_code == 2 and "No space left on device" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_written_files_and_directories_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    code = ("import sys; from pathlib import Path; from fedclip import io; root = Path(sys.argv[1]); "
            "io.write_text(root / 'a.txt', 'x'); cm = io.replace_dir(root / 'ckpt'); d = cm.__enter__(); "
            "(d / 'w').write_text('y'); cm.__exit__(None, None, None)")
    subprocess.run(["bash", "-c", f'umask {umask:03o} && "{sys.executable}" -c "{code}" "{tmp_path}"'], check=True)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "ckpt").stat().st_mode & 0o777 == dir_mode
