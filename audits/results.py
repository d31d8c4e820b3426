"""What every audit writes and every reader (report, compare, studies) reads: one owner for the audit dir's
file names, its error type, the target's privacy record and the provenance block.

The seam is typed so that a key cannot drift between writer and reader again (a federation's DP lived under
`federate.finetune` while the report read it one level up and called a DP model "pretrained (no DP)").
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from fedclip import __version__
from fedclip.errors import FedclipError

RESULTS_FILE = "results.json"
SCORES_FILE = "scores.csv"
SOFTWARE = ("torch", "open_clip_torch", "opacus", "flwr", "diffusers", "scikit-learn", "numpy")


class AuditError(FedclipError):
    """The audit's inputs are inconsistent (overlap, manifest mismatch, empty sets) or its results unreadable."""


@dataclass(frozen=True)
class TargetPrivacy:
    """What a target's checkpoint says about its DP. `dp` is None for a pretrained model (no DP was asked),
    False for a federation run without DP, True for one whose nodes trained with DP-SGD."""

    dp: bool | None
    epsilon_budget: float | None = None
    delta: float | None = None
    unit: str | None = None
    accountant: str | None = None
    neighbouring: str | None = None

    @classmethod
    def from_provenance(cls, provenance: dict[str, Any]) -> TargetPrivacy:
        """A federation's request lives under `federate.finetune` (the nodes granted it within their
        policies and report their ledger epsilon); anything else was pretrained without DP."""
        from fedclip import config as cfglib
        from fedclip.finetune import FinetuneConfig

        if provenance.get("stage") != "federate":
            return cls(dp=None)
        table = (provenance.get("federate") or {}).get("finetune")
        if not isinstance(table, dict):
            raise AuditError("the target's provenance has no [federate.finetune] table: it was federated by an older "
                             "fedclip; federate again with this version to audit it")
        # rebuilt through the config tree: a renamed or moved key fails here instead of reading as "no DP"
        ft = cfglib.build(FinetuneConfig, table, "federate.finetune")
        if not ft.dp:
            return cls(dp=False)
        return cls(dp=True, epsilon_budget=ft.epsilon, delta=ft.delta, unit=ft.unit, accountant=ft.accountant,
                   neighbouring=f"add/remove-one {ft.unit}")

    @classmethod
    def from_json(cls, target: dict[str, Any]) -> TargetPrivacy:
        return cls(**{k: target.get(k) for k in cls.__dataclass_fields__})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """The sentence a report prints about the target's DP: true for every kind of target."""
        if self.dp is None:
            return "pretrained (no DP)"
        if self.dp is False:
            return "fine-tuned without DP"
        return (f"fine-tuned with {self.unit}-level DP ({self.neighbouring}, ε ≤ {self.epsilon_budget} per node over "
                f"its lifetime, δ = {self.delta}, accounted by each node's {self.accountant} accountant)")


def load_results(audit_dir: str | Path) -> dict[str, Any]:
    path = Path(audit_dir) / RESULTS_FILE
    if not path.exists():
        raise AuditError(f"{audit_dir} holds no {RESULTS_FILE}; run `fedclip audit ... --out {audit_dir}` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AuditError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); run the audit again") from e


def software_versions() -> dict[str, str]:
    out = {"fedclip": __version__, "python": platform.python_version()}
    for name in SOFTWARE:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def data_fingerprint(root: str | Path, records: list[Any]) -> dict[str, Any]:
    """The audited set as it was: its metadata rows *and* the bytes of every image (a row fingerprint alone
    does not notice an image replaced under the same name)."""
    from fedclip.data.records import fingerprint

    h = hashlib.sha256()
    for r in records:
        path = r.path(root)
        h.update(r.filepath.encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest() if path.exists() else b"missing")
    return {"path": str(Path(root).resolve()), "records": len(records), "metadata_sha256": fingerprint(records),
            "images_sha256": h.hexdigest()}


def provenance(inputs: dict[str, Any]) -> dict[str, Any]:
    """The block every results.json carries: when, with which software, on which inputs (fingerprints)."""
    return {"created": datetime.now(UTC).isoformat(timespec="seconds"), "software": software_versions(),
            "inputs": inputs}


def write_results(out: str | Path, doc: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """Write `out/results.json` (atomically) with the provenance block; every audit ends here."""
    from fedclip import io

    doc["provenance"] = provenance(inputs)
    io.write_json(Path(out) / RESULTS_FILE, doc)
    return doc
