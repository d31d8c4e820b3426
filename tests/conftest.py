"""Shared fixtures: everything is generated, nothing downloaded."""

from __future__ import annotations

import pytest

from fedclip.data.synthetic import export
from fedclip.synth import CohortSpec


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A 48-image, 64-px dataset dir exported by the real exporter (shared, treat as read-only)."""
    out = tmp_path_factory.mktemp("data") / "small"
    export(CohortSpec(seed=3, size=64, hospital="riverside"), out, 48)
    return out
