"""Audit reports a privacy officer can sign: report.html (self-contained), report.pdf (real text and tables),
report.json and evidence.json, for one audit or several side by side.

The report leads with what each audit tested and its answer (the audit's own verdict, which weighs its
confound check and its resolution), then its tables and figures, then the methodology, limitations and
provenance of every audit, and, given acceptance criteria, a sign-off page. It is redacted by default: no
patient image, patient id, file name or path anywhere in the HTML, PDF or JSON; `redact=False`
(`--show-records`) names the most exposed records and shows their thumbnails, with a banner on every page.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedclip import __version__, io
from fedclip.audits.report import evidence, signoff
from fedclip.audits.report.document import RECORDS_BANNER, Section, figure_png, to_html, to_pdf
from fedclip.audits.report.kinds import KINDS, ROW_HEADER, comparison_figures, kind_of, label
from fedclip.audits.results import RESULTS_FILE, SCORES_FILE, load_results

__all__ = ["REDACTED", "Section", "figure_png", "render"]

REDACTED = "[redacted]"
PATH_KEYS = ("checkpoint", "members", "nonmembers", "population", "manifest", "base", "source", "synthetic",
             "train", "holdout", "public", "reference", "run", "embedding", "path", "generator", "target", "file",
             "data")


def redact_doc(doc: Any) -> Any:
    """Drop every path, file name and patient id from a results document (by key, and any absolute path
    under a key no audit has used yet)."""
    if isinstance(doc, str) and Path(doc).is_absolute():
        return REDACTED
    if isinstance(doc, dict):
        out = {}
        for k, v in doc.items():
            if k in PATH_KEYS and isinstance(v, str):
                out[k] = REDACTED
            elif k in ("roc", "histogram"):
                out[k] = v
            else:
                out[k] = redact_doc(v)
        return out
    if isinstance(doc, list):
        return [redact_doc(v) for v in doc]
    return doc


def _comparison(docs: list[dict[str, Any]], redact: bool) -> Section:
    s = Section("Models side by side")
    s.tables.append(("one row per audit; a membership audit shows the attack its verdict rests on, with intervals "
                     "simultaneous over its attacks", ROW_HEADER, [KINDS[d["kind"]].row(d, redact) for d in docs]))
    s.figures += comparison_figures(docs, redact)
    return s


def _short(fp: Any) -> str:
    if not isinstance(fp, dict):
        return str(fp)
    parts = [f"{fp['records']} records" if "records" in fp else "",
             f"metadata {fp['metadata_sha256'][:16]}" if fp.get("metadata_sha256") else "",
             f"images {fp['images_sha256'][:16]}" if fp.get("images_sha256") else "",
             f"weights {fp['weights_sha256'][:16]}" if fp.get("weights_sha256") else "",
             f"at {fp['path']}" if fp.get("path") else ""]
    return ", ".join(p for p in parts if p)


def _methodology(docs: list[dict[str, Any]], redact: bool) -> Section:
    """Threat model, attacker knowledge, settings and sizes per audit; limitations; provenance."""
    s = Section("Methodology, limitations and provenance")
    s.paragraphs.append(
        "Every figure in this report was computed by fedclip from the inputs fingerprinted below (SHA-256 of the "
        "metadata rows and of the image bytes). Times are UTC, ISO 8601. "
        + ("Paths are redacted; run `fedclip report --show-records` to see them." if redact else
           "Paths are absolute, as the audits recorded them."))
    for d in docs:
        k = KINDS[d["kind"]]
        rows = k.method(d)
        for lim in k.limitations(d):
            rows.append(["limitation", lim])
        prov = d.get("provenance") or {}
        rows.append(["audited at", prov.get("created", "not recorded (an older fedclip)")])
        software = prov.get("software") or {"fedclip": d.get("fedclip_version", "?")}
        rows.append(["software", ", ".join(f"{n} {v}" for n, v in software.items())])
        for name, fp in (prov.get("inputs") or {}).items():
            rows.append([f"input: {name}", _short(redact_doc(fp) if redact else fp)])
        s.tables.append((f"{label(d, redact)}", ["aspect", "what this audit did"], [[a, str(b)] for a, b in rows]))
    return s


def render(audit_dirs: list[str | Path], out: str | Path, *, redact: bool = True, title: str | None = None,
           lead: list[Section] | None = None, labels: list[str] | None = None,
           extra: dict[str, Any] | None = None, criteria: str | Path | None = None,
           sign_key: str | Path | None = None) -> dict[str, Path]:
    """report.html, report.pdf, report.json and evidence.json for one audit, or a comparison of several.

    `lead` sections come first (a study's headline), `labels` name the audits (else the checkpoint's run
    and tag), `extra` goes into report.json beside the audits, `criteria` (a TOML file) adds the sign-off
    page, `sign_key` (an Ed25519 PEM) signs the evidence bundle.
    """
    dirs = [Path(d) for d in audit_dirs]
    docs = [load_results(d) for d in dirs]
    kinds = [kind_of(doc, d) for doc, d in zip(docs, dirs, strict=True)]  # an unknown kind fails before writing
    crit = signoff.read_criteria(criteria) if criteria else None
    if labels is not None:
        docs = [{**d, "report_label": lab} for d, lab in zip(docs, labels, strict=True)]
    sections = list(lead or []) + ([_comparison(docs, redact)] if len(docs) > 1 else [])
    sections += [k.section(doc, d, redact) for k, doc, d in zip(kinds, docs, dirs, strict=True)]
    sections.append(_methodology(docs, redact))
    judgements = None
    if crit:
        judgements = signoff.judge(crit, [(label(d, redact), k.measures(d)) for k, d in zip(kinds, docs,
                                                                                             strict=True)])
        sections.append(signoff.section(crit, judgements, redact))
    title = title or ("fedclip privacy audit" if len(docs) == 1 else "fedclip privacy audit: models compared")
    title += f" — {datetime.now(UTC):%Y-%m-%d}"
    out = Path(out)
    banner = None if redact else RECORDS_BANNER
    summary = {"title": title, "fedclip_version": __version__, "redacted": redact, **(extra or {}),
               "signoff": ({"overall": signoff.overall(judgements), "criteria": judgements} if judgements else None),
               "audits": [redact_doc(d) if redact else d for d in docs]}
    paths = {"html": io.write_text(out / "report.html", to_html(title, sections, banner)),
             "pdf": io.write_bytes(out / "report.pdf", to_pdf(title, sections, banner)),
             "json": io.write_text(out / "report.json", json.dumps(summary, indent=2, default=str))}
    inputs = [(f"audit {i}", d / name) for i, d in enumerate(dirs, 1) for name in (RESULTS_FILE, SCORES_FILE)]
    inputs += [("criteria", Path(criteria))] if criteria else []
    paths["evidence"] = evidence.write(out, inputs, [paths["html"], paths["pdf"], paths["json"]],
                                       [d.get("provenance") for d in docs],
                                       sign_key=Path(sign_key) if sign_key else None)
    return paths
