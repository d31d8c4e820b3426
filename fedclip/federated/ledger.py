"""A node's lifetime privacy ledger: append-only, hash-chained, locked, fsync'd before anything leaves.

One ledger per node and cohort (the people its policy's `cohort` names), in the node's own state dir,
so every run on that cohort's data spends from the same budget — also after the metadata is edited,
reordered or grows (each entry records the fingerprint of the rows it used). Each entry holds what an independent
accountant needs (noise multiplier, sampling rate as used, steps, delta, neighbouring relation, unit,
accountant) next to the epsilon fedclip computed, and the hash of the entry before it.

The order of operations is what makes it honest: lock -> check budget -> train -> append + fsync ->
reply. A crash between the entry and the reply over-counts (spend recorded, update never sent); no
crash can under-count. A crash *during* the append leaves a torn last line (no newline): readers
ignore it and the next writer truncates it before appending. A deleted, edited or reordered entry
breaks the chain and is an error naming the line.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from fedclip import io
from fedclip.accounting import epsilon_for, group_privacy
from fedclip.errors import FedclipError
from fedclip.federated.policy import NEIGHBOURING

GENESIS = "0" * 64
KINDS = ("train", "evaluate", "dataset-size", "no-dp", "generator", "statistics")
"""train/evaluate: a federation's rounds; generator/statistics: a generator trained at the node, and its label
statistics; dataset-size: the noised size; no-dp: data that went out without DP (epsilon infinite)."""


class BudgetExhausted(FedclipError):
    """The next release would take a node past its (epsilon, delta) budget."""


class LedgerCorrupt(FedclipError):
    """The ledger's hash chain is broken: an entry was deleted, edited or reordered."""


@dataclass(frozen=True)
class LedgerEntry:
    kind: str  # one of KINDS
    client: str
    dataset: str  # the cohort (node policy) whose lifetime budget this release spends
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    cumulative_steps: int
    delta: float
    accountant: str
    neighbouring: str
    unit: str
    noise_source: str  # os-csprng | insecure-test-seed
    epsilon_round: float  # this release alone
    epsilon: float  # cumulative over the node's lifetime on this cohort
    group_size: int | None  # image unit: most images one patient has here (stays on the node)
    patient_epsilon: float | None  # group privacy: k * epsilon
    patient_delta: float | None  # group privacy: k * exp((k - 1) * epsilon) * delta
    public_size: int | None  # dataset-size entries: the released (noised) size
    time: float
    prev: str  # hash of the previous entry (GENESIS for the first)
    hash: str  # sha256 of this entry without this field
    grouping: str | None = None  # what a record is: "image", or how images were grouped into patients
    data_fingerprint: str | None = None  # the metadata rows this release read (stays on the node)


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def plan_noise(history: list[tuple[float, float, int]], *, target: float, delta: float, accountant: str,
               sample_rate: float, steps: int) -> float | None:
    """The smallest noise multiplier with which `steps` more steps keep the total at most `target`.

    None when the budget cannot pay for them at any useful noise (multiplier above 100), or when less
    than 1% of the target is left (the rest would buy only noise). The choice
    depends only on public values (earlier multipliers, rates, steps), so recalibrating every round is
    valid adaptive composition.
    """
    def total(sigma: float) -> float:
        return epsilon_for([*history, (sigma, sample_rate, steps)], delta, accountant)

    lo, hi = 0.1, 100.0
    if epsilon_for(history, delta, accountant) >= 0.99 * target or total(hi) > target:
        return None
    if total(lo) <= target:
        return lo
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if total(mid) <= target else (mid, hi)
        if hi / lo < 1.001:
            break
    return hi


def _complete_lines(path: Path) -> tuple[list[str], bool]:
    """Complete lines, and whether a torn (newline-less) tail follows them."""
    if not path.exists():
        return [], False
    text = path.read_text(encoding="utf-8")
    torn = bool(text) and not text.endswith("\n")
    return text.split("\n")[:-1], torn


def read_entries(path: str | Path) -> list[LedgerEntry]:
    """Every complete entry of a ledger file, the hash chain verified (a torn last line is ignored: never
    replied). The node reads its ledger through this, and so does an audit replaying what the node ran."""
    path = Path(path)
    out: list[LedgerEntry] = []
    prev = GENESIS
    lines, _ = _complete_lines(path)
    for i, line in enumerate(lines, start=1):
        where = f"{path}:{i}"
        try:
            raw = json.loads(line)
            entry = LedgerEntry(**raw)
        except (json.JSONDecodeError, TypeError):
            raise LedgerCorrupt(f"{where} is not a ledger entry; the ledger cannot be trusted — restore it "
                                "from a backup before this node releases anything again") from None
        body = {k: v for k, v in raw.items() if k != "hash"}
        if entry.prev != prev or _digest(body) != entry.hash:
            raise LedgerCorrupt(f"{where}: the hash chain is broken (an entry was deleted, edited or reordered); "
                                "restore the ledger from a backup before this node releases anything again")
        prev = entry.hash
        out.append(entry)
    return out


class PrivacyLedger:
    def __init__(self, path: str | Path, *, client: str, dataset: str, budget: float, delta: float,
                 accountant: str = "rdp", unit: str = "image") -> None:
        self.path = Path(path)
        self.client = client
        self.dataset = dataset
        self.budget = budget
        self.delta = delta
        self.accountant = accountant
        self.unit = unit

    # ----------------------------------------------------------------------------------- reading
    def entries(self) -> list[LedgerEntry]:
        """Every complete entry, the hash chain verified (a torn last line is ignored: never replied)."""
        return read_entries(self.path)

    def history(self) -> list[tuple[float, float, int]]:
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.entries()]

    def spent(self) -> float:
        return epsilon_for(self.history(), self.delta, self.accountant)

    def public_size(self) -> int | None:
        """The dataset size this node released (noised) earlier, reused for its lifetime."""
        sizes = [e.public_size for e in self.entries() if e.kind == "dataset-size"]
        return sizes[0] if sizes else None

    # ----------------------------------------------------------------------------------- writing
    @contextmanager
    def locked(self) -> Iterator[PrivacyLedger]:
        """Exclusive use of the ledger from budget check to durable entry (no two runs overspend).

        A torn tail from an earlier crash is cut off here, before anything is appended after it.
        POSIX `flock`: released by the kernel if the process dies, so a killed run never wedges it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                lines, torn = _complete_lines(self.path)
                if torn:
                    with open(self.path, "r+b") as fh:
                        fh.truncate(sum(len(line.encode("utf-8")) + 1 for line in lines))
                        fh.flush()
                        os.fsync(fh.fileno())
                yield self
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def check(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon after a planned release; raises `BudgetExhausted` if it would exceed the budget (or if the
        ledger was kept for another unit of privacy: per-image and per-patient spends do not compose)."""
        entries = self.entries()
        other = {e.unit for e in entries} - {self.unit}
        if other:
            raise BudgetExhausted(f"node {self.client}: the lifetime ledger of this cohort is kept per {other.pop()}; "
                                  f"a per-{self.unit} release would not compose with it — the node's privacy "
                                  "officer must decide how to continue (e.g. a new cohort in the policy)")
        history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in entries]
        after = epsilon_for([*history, (noise_multiplier, sample_rate, steps)], self.delta, self.accountant)
        if after > self.budget * (1 + 1e-6):
            before = epsilon_for(history, self.delta, self.accountant)
            # this message reaches the server: no dataset fingerprint in it (a hash of the data is not private)
            raise BudgetExhausted(
                f"node {self.client}: the next release would raise epsilon from {before:.3f} to {after:.3f}, past "
                f"its lifetime budget of {self.budget:g} (delta={self.delta:g}) on this cohort")
        return after

    def record(self, *, kind: str, round_: int, noise_multiplier: float, sample_rate: float, steps: int,
               noise_source: str, group_size: int | None = None, public_size: int | None = None,
               grouping: str | None = None, data_fingerprint: str | None = None) -> LedgerEntry:
        """Append a release and make it durable; call inside `locked()` after `check`."""
        if kind not in KINDS:
            raise ValueError(f"unknown ledger entry kind {kind!r}")
        old = self.entries()
        history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in old]
        release = (noise_multiplier, sample_rate, steps)
        eps = epsilon_for([*history, release], self.delta, self.accountant)
        patient = group_privacy(eps, self.delta, group_size) if group_size and self.unit == "image" else None
        body = dict(
            kind=kind, client=self.client, dataset=self.dataset, round=round_, noise_multiplier=noise_multiplier,
            sample_rate=sample_rate, steps=steps, cumulative_steps=sum(e.steps for e in old) + steps,
            delta=self.delta, accountant=self.accountant, neighbouring=NEIGHBOURING, unit=self.unit,
            noise_source=noise_source, epsilon_round=epsilon_for([release], self.delta, self.accountant),
            epsilon=eps, group_size=group_size if patient else None,
            patient_epsilon=patient[0] if patient else None, patient_delta=patient[1] if patient else None,
            public_size=public_size, time=time.time(), prev=old[-1].hash if old else GENESIS, grouping=grouping,
            data_fingerprint=data_fingerprint,
        )
        entry = LedgerEntry(**body, hash=_digest(body))
        io.append_line(self.path, json.dumps(asdict(entry), allow_nan=True))
        return entry
