"""Privacy accounting behind one interface: epsilon of a history of Gaussian releases, group privacy.

Used by node ledgers (`fedclip.federated`) and by the audits' theoretical epsilon (`fedclip.audits`), so both
state the same number for the same training.
"""

from __future__ import annotations

import math
import warnings

from fedclip.errors import FedclipError


def epsilon_for(history: list[tuple[float, float, int]], delta: float, accountant: str) -> float:
    """Cumulative epsilon of (noise multiplier, sampling rate, steps) releases, by Opacus' accountants.

    A Gaussian release of a sensitivity-1 statistic with noise std s is (s, 1.0, 1) here.
    """
    if not history:
        return 0.0
    if any(math.isinf(s) or s <= 0 for s, _, _ in history):
        return math.inf
    from opacus.accountants import PRVAccountant, RDPAccountant

    if accountant not in ("rdp", "prv"):
        raise FedclipError(f"unknown accountant {accountant!r}; use rdp or prv")
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = list(history)
    with warnings.catch_warnings():
        # Opacus notes when the best RDP order sits at the end of its grid (large or tiny noise, as noise
        # planning probes): the epsilon is still a valid upper bound, only possibly a looser one.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        return float(acc.get_epsilon(delta))


def group_privacy(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """(epsilon, delta)-DP per image implies (k eps, k e^{(k-1) eps} delta)-DP for k images of one patient."""
    if math.isinf(epsilon):
        return math.inf, 1.0
    return k * epsilon, min(1.0, k * math.exp((k - 1) * epsilon) * delta)
