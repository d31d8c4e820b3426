"""CLIP membership signals: the image-caption similarity, optionally averaged over augmented views."""

import numpy as np

from fedclip import models
from fedclip.audits.signals import clip_signals
from fedclip.data.records import read_metadata


def test_clip_signals_with_augmented_views_stay_near_the_plain_similarity(small_dataset):
    vc = models.create("visionclip-tiny", seed=0)
    records = read_metadata(small_dataset)[:6]
    images, captions = [r.path(small_dataset) for r in records], [r.caption for r in records]
    plain = clip_signals(vc, images, captions)
    views = clip_signals(vc, images, captions, views=3, seed=1)
    assert plain.shape == views.shape == (6,) and np.all(np.abs(plain) <= 1) and np.all(np.abs(views) <= 1)
    assert not np.array_equal(plain, views)  # the augmented views were used
    assert np.array_equal(views, clip_signals(vc, images, captions, views=3, seed=1))  # seeded: repeatable
