"""A client's privacy ledger: append-only JSON lines, fsync'd before the update leaves the node.

Each entry holds everything needed to recompute epsilon independently (noise multiplier, sampling
rate, steps, delta, accountant) next to the epsilon fedclip computed. The order of operations is
what makes it honest: train -> append + fsync the entry -> reply. A crash between the entry and the
reply over-counts (spend recorded, update never sent); no crash can under-count. A torn last line can
only come from a crash *during* the append, before any reply, so it is ignored.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fedclip.errors import FedclipError


class BudgetExhausted(FedclipError):
    """The next round would take a client past its (epsilon, delta) budget."""


@dataclass(frozen=True)
class LedgerEntry:
    client: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    cumulative_steps: int
    delta: float
    accountant: str
    epsilon_round: float  # this round alone
    epsilon: float  # cumulative, over every entry so far
    time: float


def epsilon_for(history: list[tuple[float, float, int]], delta: float, accountant: str) -> float:
    """Cumulative epsilon of a sequence of (noise multiplier, sampling rate, steps) with Opacus."""
    if not history:
        return 0.0
    from opacus.accountants import PRVAccountant, RDPAccountant

    if accountant == "rdp":
        acc = RDPAccountant()
        acc.history = list(history)
        return float(acc.get_epsilon(delta))
    if accountant == "prv":
        acc = PRVAccountant()
        acc.history = list(history)
        return float(acc.get_epsilon(delta))
    raise FedclipError(f"unknown accountant {accountant!r}; use rdp or prv")


class PrivacyLedger:
    def __init__(self, path: str | Path, client: str, budget: float, delta: float, accountant: str = "rdp") -> None:
        self.path = Path(path)
        self.client = client
        self.budget = budget
        self.delta = delta
        self.accountant = accountant

    def entries(self) -> list[LedgerEntry]:
        if not self.path.exists():
            return []
        out = []
        lines = self.path.read_text().split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                out.append(LedgerEntry(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                if i == len(lines) - 1:  # torn final append: that update was never sent
                    continue
                raise FedclipError(f"{self.path}:{i + 1} is corrupt; the ledger cannot be trusted — restore it "
                                   "from a backup before this client trains again") from None
        return out

    def history(self) -> list[tuple[float, float, int]]:
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.entries()]

    def spent(self) -> float:
        return epsilon_for(self.history(), self.delta, self.accountant)

    def check(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon after a planned round; raises `BudgetExhausted` if it would exceed the budget."""
        after = epsilon_for([*self.history(), (noise_multiplier, sample_rate, steps)], self.delta, self.accountant)
        if after > self.budget * (1 + 1e-6):
            raise BudgetExhausted(
                f"client {self.client}: the next round would raise epsilon from {self.spent():.3f} to {after:.3f}, "
                f"past its budget of {self.budget:g} (delta={self.delta:g}); it refuses to train. Raise the budget "
                "only with your privacy officer's approval, or stop the federation for this client.")
        return after

    def record(self, round_: int, noise_multiplier: float, sample_rate: float, steps: int) -> LedgerEntry:
        """Append this round's spend and make it durable (file and directory fsync'd)."""
        history = self.history()
        entry = LedgerEntry(
            client=self.client, round=round_, noise_multiplier=noise_multiplier, sample_rate=sample_rate,
            steps=steps, cumulative_steps=sum(h[2] for h in history) + steps, delta=self.delta,
            accountant=self.accountant,
            epsilon_round=epsilon_for([(noise_multiplier, sample_rate, steps)], self.delta, self.accountant),
            epsilon=epsilon_for([*history, (noise_multiplier, sample_rate, steps)], self.delta, self.accountant),
            time=time.time(),
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(asdict(entry)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if new:
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return entry
