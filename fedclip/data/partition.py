"""Splitting a dataset into hospitals (federated clients), reproducibly by seed.

Partitions are lists of record indices. Patients never straddle two partitions: a patient's images
move together, as they would in a real consortium (and as membership audits assume).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fedclip.data.records import Record, patient_key
from fedclip.errors import DataError


def _patients(records: Sequence[Record]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[patient_key(r)].append(i)
    return dict(groups)


def by_hospital(records: Sequence[Record]) -> dict[str, list[int]]:
    """One partition per `meta.hospital` (the generator's profile, or the site a loader recorded)."""
    out: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        if "hospital" not in r.meta:
            raise DataError(f"record {r.filepath} has no hospital; partition with iid or dirichlet instead")
        out[str(r.meta["hospital"])].append(i)
    return dict(sorted(out.items()))


def iid(records: Sequence[Record], k: int, seed: int = 0) -> list[list[int]]:
    """Patients shuffled and dealt round-robin into `k` partitions of near-equal size."""
    _check_k(records, k)
    groups = list(_patients(records).values())
    order = np.random.default_rng(seed).permutation(len(groups))
    parts: list[list[int]] = [[] for _ in range(k)]
    for n, g in enumerate(order):
        parts[n % k].extend(groups[g])
    return [sorted(p) for p in parts]


def dirichlet(records: Sequence[Record], k: int, alpha: float, label: Callable[[Mapping[str, int]], int | None],
              seed: int = 0, min_size: int = 1) -> list[list[int]]:
    """Label skew: each class's patients are spread over partitions with Dirichlet(alpha) shares.

    Small `alpha` (0.1) gives hospitals that see mostly one class; large (100) approaches IID.
    Retries with the next seed until every partition holds `min_size` images.
    """
    _check_k(records, k)
    if alpha <= 0:
        raise DataError(f"dirichlet alpha must be > 0, got {alpha}")
    groups = _patients(records)
    by_class: dict[int, list[list[int]]] = defaultdict(list)
    for members in groups.values():
        y = label(records[members[0]].labels)
        by_class[-1 if y is None else int(y)].append(members)
    for attempt in range(100):
        rng = np.random.default_rng([seed, attempt])
        parts: list[list[int]] = [[] for _ in range(k)]
        for c in sorted(by_class):
            members = by_class[c]
            order = rng.permutation(len(members))
            shares = rng.dirichlet(np.full(k, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for part, chunk in enumerate(np.split(order, cuts)):
                for g in chunk:
                    parts[part].extend(members[g])
        if min(len(p) for p in parts) >= min_size:
            return [sorted(p) for p in parts]
    raise DataError(f"could not give each of {k} partitions {min_size} images with alpha={alpha}; "
                    "use fewer partitions, a larger alpha or more data")


def _check_k(records: Sequence[Record], k: int) -> None:
    if k < 1:
        raise DataError(f"number of partitions must be >= 1, got {k}")
    n = len(_patients(records))
    if k > n:
        raise DataError(f"cannot split {n} patients into {k} partitions; use at most {n}")


def split(records: Sequence[Record], how: str, k: int, *, seed: int = 0, alpha: float = 0.5,
          label: Callable[[Mapping[str, int]], int | None] | None = None) -> list[list[int]]:
    """The `k` simulated hospitals of one shared dataset, by `how` (hospital, iid or dirichlet): the one
    place a simulation's clients and an audit replaying one of them get their partition from."""
    if how == "hospital":
        parts = list(by_hospital(records).values())
        if len(parts) < k:
            raise DataError(f"the data has {len(parts)} hospitals but {k} clients; use --partitioning iid, "
                            "or fewer clients")
        return [sum((parts[j] for j in range(i, len(parts), k)), []) for i in range(k)]
    if how == "iid":
        return iid(records, k, seed)
    if how == "dirichlet":
        if label is None:
            raise DataError("dirichlet partitioning needs the task's label")
        return dirichlet(records, k, alpha, label, seed)
    raise DataError(f"unknown partitioning {how!r}; use hospital, iid or dirichlet")
