import json
import subprocess
import sys

import open_clip
import pytest
import torch

from fedclip import models
from fedclip.errors import ModelError


def _outputs(model, size: int, ctx: int):
    torch.manual_seed(0)
    x = torch.rand(2, 3, size, size)
    t = torch.randint(1, 1000, (2, ctx))
    model.eval()
    with torch.no_grad():
        out = model(x, t)
    return out["image_features"], out["text_features"]


def test_registered_configs_are_known_to_open_clip():
    assert {"visionclip-tiny", "visionclip-small", "visionclip-base"} <= set(models.MODEL_NAMES)
    for name in models.MODEL_NAMES:
        assert name in open_clip.list_models()
    base = models.model_config("visionclip-base")
    assert base["vision_cfg"]["image_size"] == 224 and base["vision_cfg"]["patch_size"] == 16  # ViT-B/16
    with pytest.raises(ModelError, match="unknown model"):
        models.model_config("visionclip-huge")


def test_checkpoint_roundtrip_and_plain_open_clip_loads_it(tmp_path):
    vc = models.create("visionclip-tiny", seed=1)
    ckpt = models.save_checkpoint(vc, tmp_path / "ckpt", provenance={"steps": 0})
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "config.json", "open_clip_config.json"}
    assert json.loads((ckpt / "config.json").read_text())["provenance"] == {"steps": 0}
    again = models.load_checkpoint(ckpt, expect_model="visionclip-tiny")
    a, b = _outputs(vc.model, 64, 48), _outputs(again.model, 64, 48)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    # open_clip alone (fedclip never imported) builds the same model from the directory.
    code = f"""
import sys, torch, open_clip
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{ckpt}")
tok = open_clip.get_tokenizer("local-dir:{ckpt}")
assert "fedclip" not in sys.modules
torch.manual_seed(0)
x = torch.rand(2, 3, 64, 64); t = torch.randint(1, 1000, (2, 48))
model.eval()
with torch.no_grad():
    f = model.encode_image(x, normalize=True)
torch.save(f, "{tmp_path}/plain.pt")
print(tok(["a fundus photograph"]).shape)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "torch.Size([1, 48])" in res.stdout
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours = again.model.encode_image(x, normalize=True)
    assert torch.allclose(torch.load(tmp_path / "plain.pt"), ours)


def test_checkpoint_errors_say_what_to_do(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        models.load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a fedclip checkpoint"):
        models.load_checkpoint(tmp_path / "empty")
    ckpt = models.save_checkpoint(models.create("visionclip-tiny"), tmp_path / "tiny")
    with pytest.raises(ModelError, match="holds a 'visionclip-tiny' model, not 'visionclip-small'"):
        models.load_checkpoint(ckpt, expect_model="visionclip-small")
    # weights of one architecture under another's config
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_cfg"] = models.model_config("visionclip-small")
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="does not match"):
        models.load_checkpoint(ckpt)


def test_save_replaces_an_existing_checkpoint_whole(tmp_path):
    a = models.create("visionclip-tiny", seed=1)
    b = models.create("visionclip-tiny", seed=2)
    models.save_checkpoint(a, tmp_path / "c")
    models.save_checkpoint(b, tmp_path / "c")
    loaded = models.load_checkpoint(tmp_path / "c")
    assert torch.equal(loaded.model.visual.conv1.weight, b.model.visual.conv1.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_altered_weights_a_pickle_posing_as_weights_and_unverifiable_checkpoints_are_refused(tmp_path):
    import pickle

    ckpt = models.save_checkpoint(models.create("visionclip-tiny", seed=0), tmp_path / "ckpt")
    weights = ckpt / models.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in a tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match the SHA-256"):
        models.load_checkpoint(ckpt)
    weights.write_bytes(pickle.dumps({"visual.proj": [1, 2, 3]}))
    config = json.loads((ckpt / models.FEDCLIP_CONFIG_FILE).read_text())
    (ckpt / models.FEDCLIP_CONFIG_FILE).write_text(json.dumps({**config, "weights_sha256":
                                                                models.sha256_file(weights)}))
    with pytest.raises(ModelError, match="not a safetensors file.*never loads pickles"):
        models.load_checkpoint(ckpt)
    (ckpt / models.FEDCLIP_CONFIG_FILE).write_text(json.dumps({k: v for k, v in config.items()
                                                                if k != "weights_sha256"}))
    with pytest.raises(ModelError, match="no weights_sha256"):
        models.load_checkpoint(ckpt)
