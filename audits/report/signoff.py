"""The sign-off page: acceptance criteria the privacy officer sets in a small TOML file, each judged against
every audit that measures it (met / not met / not resolvable / not measured), and signature lines.

    [criteria]
    mia_auc_upper = 0.6            # upper end of the strongest membership attack's AUC interval <= 0.6
    mia_tpr_at_1pct = 0.02         # its TPR at 1% FPR <= 2% (needs >= 100 non-members to be resolvable)
    epsilon_lb_within_claim = true # every empirical ε lower bound <= the accountant's and the ledger's ε
    near_copies = 0                # near-copies flagged by copying or generator audits <= 0
    not_confounded = true          # the membership audits' blind baseline did not fire
    dp_required = true             # every audited model or generator was trained with DP

    [signatories]
    names = ["Privacy officer", "Data protection officer"]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedclip.audits.report.document import Section
from fedclip.audits.results import AuditError


@dataclass(frozen=True)
class Criterion:
    text: str
    kind: type  # float: measure <= limit; bool: the measure must be true when the limit is true


CRITERIA = {
    "mia_auc_upper": Criterion("upper end of the membership AUC interval (strongest attack) ≤ {limit}", float),
    "mia_tpr_at_1pct": Criterion("TPR at 1% FPR of the strongest membership attack ≤ {limit}", float),
    "epsilon_lb_within_claim": Criterion("empirical ε lower bound within the claimed ε", bool),
    "near_copies": Criterion("near-copies flagged ≤ {limit}", float),
    "not_confounded": Criterion("membership figures not confounded by distribution shift", bool),
    "dp_required": Criterion("trained with differential privacy", bool),
}


def read_criteria(path: str | Path) -> dict[str, Any]:
    """The officer's criteria; a bad file or field is an AuditError naming it (exit 2 at the CLI)."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise AuditError(f"{path}: no such criteria file; see docs/audits.md (sign-off) for an example") from None
    except tomllib.TOMLDecodeError as e:
        raise AuditError(f"{path}: not valid TOML ({e})") from None
    crit = doc.get("criteria")
    if not isinstance(crit, dict) or not crit:
        raise AuditError(f"{path}: needs a [criteria] table with at least one of {', '.join(CRITERIA)}")
    for k, v in crit.items():
        if k not in CRITERIA:
            raise AuditError(f"{path}: unknown criterion {k!r}; use one of {', '.join(CRITERIA)}")
        want = CRITERIA[k].kind
        if (want is bool and not isinstance(v, bool)) or (want is float and (isinstance(v, bool)
                                                                            or not isinstance(v, int | float))):
            raise AuditError(f"{path}: criterion {k} = {v!r} must be {'true or false' if want is bool else 'a number'}")
    names = (doc.get("signatories") or {}).get("names", ["Privacy officer"])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise AuditError(f"{path}: [signatories] names must be a list of strings")
    return {"criteria": crit, "signatories": names, "file": str(path)}


def judge(criteria: dict[str, Any], audits: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One judgement per criterion and audit that measures it (`audits`: label, {criterion: measure}).
    A measure of None is "not resolvable": the audit measured it, its data cannot settle it."""
    out = []
    for name, limit in criteria["criteria"].items():
        c = CRITERIA[name]
        rows = [(lab, m[name]) for lab, m in audits if name in m]
        if not rows:
            out.append({"criterion": name, "text": c.text.format(limit=limit), "audit": "-", "value": None,
                        "status": "not measured"})
            continue
        for lab, value in rows:
            if value is None:
                status = "not resolvable"
            elif c.kind is bool:
                status = "met" if (bool(value) or not limit) else "not met"
            else:
                status = "met" if float(value) <= float(limit) + 1e-12 else "not met"
            out.append({"criterion": name, "text": c.text.format(limit=limit), "audit": lab, "value": value,
                        "status": status})
    return out


def overall(judgements: list[dict[str, Any]]) -> str:
    statuses = {j["status"] for j in judgements}
    if "not met" in statuses:
        return "NOT MET: at least one criterion fails"
    if statuses & {"not resolvable", "not measured"}:
        return "UNDECIDED: every measured criterion is met, but some cannot be resolved or were not measured"
    return "MET: every criterion is met by the audits in this report"


def section(criteria: dict[str, Any], judgements: list[dict[str, Any]], redact: bool) -> Section:
    s = Section("Sign-off", new_page=True)
    s.paragraphs.append(
        f"Acceptance criteria from {Path(criteria['file']).name if redact else criteria['file']}. Overall: "
        f"{overall(judgements)}. A criterion is not resolvable when the audit's data cannot settle it (for example "
        "a TPR at 1% false-positive rate with fewer than 100 non-members) and not measured when no audit in this "
        "report measures it; neither counts as met.")

    def fmt(v: Any) -> str:
        return "-" if v is None else (("yes" if v else "no") if isinstance(v, bool) else f"{v:.3g}")

    s.tables.append(("criteria", ["criterion", "audit", "measured", "status"],
                     [[j["text"], j["audit"], fmt(j["value"]), j["status"]] for j in judgements]))
    s.tables.append(("signatures", ["role", "name", "signature", "date"],
                     [[n, " " * 30, " " * 40, " " * 16] for n in criteria["signatories"]]))
    return s
