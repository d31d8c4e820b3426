"""Reference models: trained on Ray by two workers they equal those trained in this process, and either way
a finished reference is stored with its signals, so a resumed audit trains only what is missing."""

import numpy as np
import pytest
import torch

from fedclip import models, tasks
from fedclip.audits.references import train_references
from fedclip.data.records import read_metadata
from fedclip.errors import FedclipError
from fedclip.finetune import FinetuneConfig, load_pixels, prefix_tokens

FT = FinetuneConfig(train_blocks=0, epochs=5, batch_size=16, lr=1e-2, dp=False, optimizer="adamw")


def _tokens(cohort) -> tuple:
    _, base, d = cohort
    vc = models.load_checkpoint(base)
    records = read_metadata(d["members"])[:48]
    keep, y = tasks.labelled([r.labels for r in records], FT.task)
    tokens = prefix_tokens(vc, load_pixels(vc, [records[i].path(d["members"]) for i in keep]), FT.train_blocks)
    return vc, tokens, torch.from_numpy(y)


def test_references_on_ray_equal_those_trained_in_process_and_resume_from_their_files(cohort, tmp_path):
    vc, tokens, y = _tokens(cohort)
    common = dict(count=4, seed=3, data_fingerprint="fp", trainable=40)
    done: list[int] = []
    serial = train_references(vc, tokens, y, FT, cache=tmp_path / "serial", advance=done.append, **common)
    on_ray = train_references(vc, tokens, y, FT, cache=tmp_path / "ray", workers=2, **common)
    assert len(done) == 4
    for a, b in zip(serial, on_ray, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    margins, _, masks = serial
    assert (masks[:40].sum(1) == 2).all() and not masks[40:].any()  # complementary pairs; the rest never trained
    assert np.ptp(margins, axis=1).max() > 0  # the references differ: they trained on different halves
    # one stored reference lost: only it is trained again, and the figures are the same
    lost = sorted((tmp_path / "serial").iterdir())[0]
    lost.unlink()
    again = train_references(vc, tokens, y, FT, cache=tmp_path / "serial", workers=2, **common)
    assert lost.exists() and len(list((tmp_path / "serial").iterdir())) == 4
    for a, b in zip(serial, again, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(FedclipError, match="--workers 0"):
        train_references(vc, tokens, y, FT, cache=tmp_path / "x", workers=0, **common)
