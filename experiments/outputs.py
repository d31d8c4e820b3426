"""What the study's stages hand each other: small frozen records instead of nested dicts.

Each is stored as its fields in `RUN/stages/<stage>.json` (`experiments.runner`), so the field names are
the file format: renaming one makes finished stages of existing study dirs run again. Paths are strings
(as stored); fingerprints and digests are part of a record on purpose, since a downstream stage's key
hashes what it reads and must change when the data or weights behind a path change.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedclip import models
from fedclip.data.records import fingerprint, read_metadata


@dataclass(frozen=True)
class Dataset:
    """A dataset dir, its number of images and its metadata fingerprint."""

    dir: str
    n: int
    fingerprint: str

    @classmethod
    def of(cls, path: Path) -> Dataset:
        records = read_metadata(path)
        return cls(str(path), len(records), fingerprint(records))


@dataclass(frozen=True)
class Checkpoint:
    """A trained model: its checkpoint, the SHA-256 of its weights and (where it has one) its run dir."""

    checkpoint: str
    weights_sha256: str | None
    run: str | None = None

    @classmethod
    def of(cls, path: Path, run: Path | None = None) -> Checkpoint:
        return cls(str(path), models.read_checkpoint_config(path).get("weights_sha256"),
                   str(run) if run is not None else None)


@dataclass(frozen=True)
class ResultsFile:
    """A results file and its SHA-256 (what reads it reruns when the results change)."""

    results: str
    sha256: str

    @classmethod
    def of(cls, path: Path) -> ResultsFile:
        return cls(str(path), hashlib.sha256(Path(path).read_bytes()).hexdigest())


# ------------------------------------------------------------------------------ the study's stages
@dataclass(frozen=True)
class Cohorts:
    """`data`: who trains (members), who never does (holdout), the hospitals' test patients, an external
    hospital."""

    members: Dataset
    holdout: Dataset
    test: Dataset
    external: Dataset


@dataclass(frozen=True)
class GeneratorRelease:
    """The Med-AIGC step's released cohort statistics and how they were privatised."""

    statistics: str
    privacy: dict[str, Any] | None  # None: exact statistics, no DP


@dataclass(frozen=True)
class Synthesized:
    """`synthesize`: the synthetic corpus, and the generator release (None: a corpus the user brought)."""

    corpus: Dataset
    generator: GeneratorRelease | None


@dataclass(frozen=True)
class Pretrained:
    """`pretrain`: the synthetic-data and real-data models, and the reference on held-out patients (only
    where deja-vu or exposure compare against it)."""

    synthetic: Checkpoint
    private: Checkpoint
    reference: Checkpoint | None = None

    def model(self, name: str) -> Checkpoint:
        """The pretrained model a federation starts from ("synthetic" or "private")."""
        if name not in ("synthetic", "private"):
            raise ValueError(f"no pretrained model {name!r}")
        return getattr(self, name)


@dataclass(frozen=True)
class Federation:
    """One federation of `federate` (one per model and epsilon): its final model and what it spent."""

    model: str  # the pretrained model it started from
    epsilon: float  # requested, per patient per hospital; inf: no DP
    dp: bool
    run: str
    checkpoint: str
    weights_sha256: str | None
    rounds: list[dict[str, Any]]  # per round: the server's balanced accuracy and AUC at the test patients
    ledger_epsilon: float | None  # the largest epsilon any hospital's ledger charged
    ledger: list[dict[str, Any]]
    external: dict[str, Any]  # the final model, zero-shot at the external hospital


@dataclass(frozen=True)
class AuditDir:
    """One audit of `audit`: its dir and its results' SHA-256."""

    dir: str
    sha256: str


@dataclass(frozen=True)
class StudyReport:
    """`report`: the study's results.json and the rendered report's files."""

    results: str
    html: str
    pdf: str
    json: str
    evidence: str
