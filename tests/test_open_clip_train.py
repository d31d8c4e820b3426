"""open_clip's own trainer continues from a fedclip checkpoint on a fedclip dataset dir."""

import subprocess
import sys

import pytest
import torch

from fedclip import models
from fedclip.data.synthetic import export
from fedclip.synth import CohortSpec


def test_open_clip_train_continues_from_a_fedclip_checkpoint(tmp_path):
    pytest.importorskip("open_clip_train.data")
    data = tmp_path / "data"
    export(CohortSpec(seed=4, size=64), data, 32)
    ckpt = models.save_checkpoint(models.create("visionclip-tiny", seed=7), tmp_path / "ckpt")
    cmd = [sys.executable, "-m", "open_clip_train.main", "--train-data", "metadata.csv", "--dataset-type", "csv",
           "--csv-img-key", "filepath", "--csv-caption-key", "caption", "--csv-separator", ",",
           "--model", f"local-dir:{ckpt}", "--batch-size", "8", "--workers", "0", "--epochs", "1", "--lr", "1e-4",
           "--precision", "fp32", "--device", "cpu", "--logs", str(tmp_path / "logs"), "--name", "cont",
           "--save-frequency", "1", "--log-every-n-steps", "1"]
    res = subprocess.run(cmd, cwd=data, capture_output=True, text=True, timeout=300)  # CSV paths are relative
    assert res.returncode == 0, res.stderr[-3000:]
    log = (tmp_path / "logs" / "cont" / "out.log").read_text()
    assert "Found CLIP weights in local folder" in log and "Loss:" in log
    saved = torch.load(tmp_path / "logs" / "cont" / "checkpoints" / "epoch_1.pt", map_location="cpu",
                       weights_only=False)["state_dict"]
    start = models.load_checkpoint(ckpt).model.state_dict()
    moved = [k for k in start if not torch.equal(start[k], saved[k])]
    diff = max(float((start[k] - saved[k]).abs().max()) for k in start)
    assert moved and diff < 0.05  # trained from our weights: changed a little, not re-initialised
    # and back: open_clip_train's own checkpoint becomes a fedclip one (read as tensors only)
    from fedclip.interop import import_open_clip

    back = import_open_clip(tmp_path / "logs" / "cont" / "checkpoints" / "epoch_1.pt", tmp_path / "back",
                            model="visionclip-tiny")
    loaded = models.load_checkpoint(back).model.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in start)
    # and fedclip pretraining continues from it
    from fedclip.pretrain import PretrainConfig, pretrain

    result = pretrain(PretrainConfig(data=data, init=back, model="visionclip-tiny", steps=2, batch_size=8, workers=0,
                                     warmup=1), tmp_path / "fedclip-cont")
    assert result["steps"] == 2 and result["final_loss"] == result["final_loss"]  # a finite loss, not NaN
