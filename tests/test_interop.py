"""open_clip checkpoints into fedclip, from files open_clip itself writes; and the hints for the wrong path."""

from __future__ import annotations

import pytest
import torch
from open_clip.push_to_hf_hub import save_for_hf
from open_clip.tokenizer import SimpleTokenizer
from typer.testing import CliRunner

from fedclip import models
from fedclip.cli.main import app
from fedclip.errors import ModelError
from fedclip.interop import import_open_clip

runner = CliRunner()


class _Tokenizer(SimpleTokenizer):
    """open_clip's save_for_hf also saves an HF tokenizer; fedclip's models use the simple one (nothing to save)."""

    def save_pretrained(self, directory: str) -> None:
        pass


@pytest.mark.parametrize("safe", [True, False])
def test_an_open_clip_model_dir_in_hugging_face_layout_converts_with_the_same_weights(tmp_path, safe):
    vc = models.create("visionclip-tiny", seed=3)
    save_for_hf(vc.model, _Tokenizer(), vc.config, tmp_path / "hf", safe_serialization=safe)
    res = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "hf"), "--data", str(tmp_path)])
    assert res.exit_code == 2 and "fedclip import-open-clip" in res.output  # the hint names the converter
    res = runner.invoke(app, ["import-open-clip", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")])
    assert res.exit_code == 0, res.output
    loaded = models.load_checkpoint(tmp_path / "ckpt")
    start = vc.model.state_dict()
    assert all(torch.equal(loaded.model.state_dict()[k], start[k]) for k in start)
    cfg = models.read_checkpoint_config(tmp_path / "ckpt")
    assert cfg["provenance"]["stage"] == "imported" and cfg["model"] == "hf"


def test_wrong_paths_and_architectures_get_one_line_hints(tmp_path):
    ckpt = models.save_checkpoint(models.create("visionclip-tiny"), tmp_path / "run" / "checkpoints" / "last")
    with pytest.raises(ModelError, match="did you mean .*checkpoints/last"):
        models.read_checkpoint_config(tmp_path / "run")
    pt = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "x", "state_dict": {f"module.{k}": v for k, v in
                                                        models.load_checkpoint(ckpt).model.state_dict().items()}}, pt)
    with pytest.raises(ModelError, match="is a file, not a fedclip checkpoint dir"):
        models.read_checkpoint_config(pt)
    with pytest.raises(ModelError, match="pass --model NAME"):
        import_open_clip(pt, tmp_path / "a")
    with pytest.raises(ModelError, match="does not match the architecture 'ViT-B-32'"):
        import_open_clip(pt, tmp_path / "b", model="ViT-B-32")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    torch.save({"state_dict": {"w": torch.zeros(1)}, "code": _Tokenizer}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="tensors only"):
        import_open_clip(tmp_path / "evil.pt", tmp_path / "c", model="visionclip-tiny")


def test_open_clip_architecture_names_are_models_without_weights():
    assert models.model_config("ViT-B-32")["embed_dim"] == 512
    with pytest.raises(ModelError, match="open_clip architecture"):
        models.model_config("no-such-model")
