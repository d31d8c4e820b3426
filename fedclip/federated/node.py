"""What a hospital's node knows and the server does not: its policy, its state dir, its ledger.

The node's lifetime ledger, its member manifests, its local log and the test-only noise seed live
here, in one place a newcomer reads to see what never leaves a hospital.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedclip import io
from fedclip.data.records import Record, manifest_text
from fedclip.federated.ledger import PrivacyLedger
from fedclip.federated.policy import Grant, NodePolicy, Refusal

LEDGER_PREFIX = "ledger-cohort-"


@dataclass(frozen=True)
class Node:
    """What a hospital's node knows and the server does not: its policy and its own state dir."""

    name: str
    policy: NodePolicy
    state_dir: Path
    deployed: bool  # a real SuperNode (test-only settings are refused there)

    def ledger(self, grant: Grant) -> PrivacyLedger:
        """The lifetime ledger of the cohort the node's policy declares, whatever its metadata holds today.

        Keyed by the policy's `cohort`, not by a hash of the data: adding a patient, reordering rows or
        editing a caption must keep spending from the same budget. Ledgers of the older per-fingerprint
        layout are refused rather than silently left behind (that would reset the budget).
        """
        legacy = sorted(p.name for p in self.state_dir.glob("ledger-*.jsonl")
                        if not p.name.startswith(LEDGER_PREFIX))
        if legacy:
            raise Refusal(f"refused: node {self.name}'s state dir holds per-dataset ledgers of an older fedclip "
                          "layout; its privacy officer must carry their spend into the cohort ledger "
                          "(docs/privacy.md, 'The lifetime ledger') before the node releases anything")
        cohort = self.policy.cohort
        return PrivacyLedger(self.state_dir / f"{LEDGER_PREFIX}{cohort}.jsonl", client=self.name, dataset=cohort,
                             budget=grant.epsilon, delta=grant.delta, accountant=grant.accountant, unit=grant.unit)

    def register(self, dataset: str, records: list[Record]) -> str:
        """The node's public id for its cohort — random, drawn once, so it changes with neither the data
        nor its edits — and, kept locally, each data version's member manifest (for audits)."""
        manifest = self.state_dir / f"members-{dataset[:16]}.csv"
        if not manifest.exists():
            io.write_text(manifest, manifest_text(records))
        ids_path = self.state_dir / "datasets.json"
        ids = json.loads(ids_path.read_text()) if ids_path.exists() else {}
        key = f"cohort:{self.policy.cohort}"
        if key not in ids:
            ids[key] = secrets.token_hex(8)
            io.write_json(ids_path, ids)
        return ids[key]

    def log(self, **fields: Any) -> None:
        """The node's local log: what must never leave it (training loss, errors with file names)."""
        io.append_line(self.state_dir / "node.log", json.dumps({"time": time.time(), "node": self.name, **fields},
                                                               default=str))

    def noise_seed(self, round_: int, salt: int) -> int | None:
        if self.policy.insecure_test_seed is None:
            return None
        if self.deployed:
            raise Refusal("refused: the node's policy sets insecure_test_seed, which is for tests only")
        return self.policy.insecure_test_seed * 1_000_003 + round_ * 101 + salt

    @property
    def noise_source(self) -> str:
        return "os-csprng" if self.policy.insecure_test_seed is None else "insecure-test-seed"
