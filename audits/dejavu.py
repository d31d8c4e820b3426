"""Deja-vu memorization for CLIP models (Jayaraman et al., 2024), for fundus captions.

For each training pair the caption is stripped of one attribute — by default everything it says about
diabetic retinopathy (the grade phrase and the DR lesions it lists) — and the stripped caption is used to
retrieve its k nearest *public* images in the model's joint embedding space. The hidden attribute is then
predicted from those neighbours' labels (majority vote). A model that memorised the pair maps the rest of
the caption (eye, wording, other findings, quality remarks) near that very image, and its neighbours share
what the caption no longer says. Memorization is how much better the target predicts than a reference
model that never saw these records (balanced accuracy gap, paired bootstrap CI), plus the records the
target gets confidently right where the reference does not.

Why DR: it is the attribute the captions state most often, the one the lesions in the image show, and the
one a clinic would least want a model to reveal about a named visit. Any condition of the taxonomy can be
chosen instead (its phrases and findings are stripped).
"""

from __future__ import annotations

import csv
import re
from dataclasses import asdict, dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np

from fedclip import __version__, evaluate, io, models
from fedclip.audits.mia import check_manifest
from fedclip.audits.results import AuditError, data_fingerprint, write_results
from fedclip.bootstrap import clusters, percentile_interval, resample
from fedclip.data.records import normalise_patient_id, read_metadata
from fedclip.evaluate import balanced_accuracy
from fedclip.synth.taxonomy import CONDITIONS, DR_GRADE_FINDINGS, DR_GRADE_PHRASES

DEJAVU_FILE = "dejavu.csv"


@dataclass(frozen=True)
class DejavuConfig:
    attribute: str = "dr"  # dr, or a condition name (amd, glaucoma, ...)
    k: int = 10  # public neighbours per query
    confident: float = 0.8  # neighbour agreement that counts as confident
    seed: int = 0
    n_boot: int = 1000
    confidence: float = 0.95


def phrases(attribute: str) -> list[str]:
    """What a caption may say about `attribute`, longest first (so no phrase is left half-stripped)."""
    if attribute == "dr":
        out = [p for ps in DR_GRADE_PHRASES.values() for p in ps] + [f for fs in DR_GRADE_FINDINGS.values()
                                                                     for f in fs]
        out += ["signs of diabetic retinopathy", "diabetic retinopathy"]
    else:
        cond = {c.name: c for c in CONDITIONS}.get(attribute)
        if cond is None:
            raise AuditError(f"unknown attribute {attribute!r}; use dr or one of "
                             f"{', '.join(c.name for c in CONDITIONS)}")
        out = list(cond.phrases) + list(cond.findings)
    return sorted(set(out), key=len, reverse=True)


def strip(caption: str, attribute: str) -> str:
    """The caption without what it says about `attribute`, with the list punctuation tidied."""
    text = caption
    for p in phrases(attribute):
        text = re.sub(rf"\b{re.escape(p)}\b", "", text, flags=re.IGNORECASE)
    text = re.sub(r"\s*,\s*(,\s*)+", ", ", text)
    text = re.sub(r"\b(and|showing|include|are|Note|Impression:)\s*(and\s*)?([.,])", r"\3", text)
    text = re.sub(r"(,\s*)+\.", ".", text)
    text = re.sub(r"\(\s*,?\s*", "(", text)
    text = re.sub(r"\s+([.,)])", r"\1", text)
    text = re.sub(r"(^|\.\s*)(,|and)\s+", r"\1", text)
    text = re.sub(r":\s*\.", ".", text)
    text = " ".join(text.split())
    return text[:1].upper() + text[1:]


def knn_predict(queries: np.ndarray, public: np.ndarray, labels: np.ndarray, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Majority label of each query's k most similar public rows (unit vectors), and the agreement."""
    sims = queries @ public.T
    top = np.argsort(-sims, axis=1)[:, :k]
    share = labels[top].mean(1)
    pred = (share > 0.5).astype(int)
    return pred, np.where(pred == 1, share, 1 - share)


def paired_gap(y: np.ndarray, a: np.ndarray, b: np.ndarray, *, n_boot: int, seed: int,
               confidence: float, groups: list[str] | None = None) -> dict[str, Any]:
    """Balanced accuracy of predictions a minus b on the same records, with a paired bootstrap CI that
    draws whole patients when `groups` gives each record's patient (their records are not independent).
    `draws` keeps the bootstrap gaps, for comparing two sets' gaps."""
    rng = np.random.default_rng(seed)
    parts = clusters(np.arange(len(y)), groups)
    gaps = []
    for _ in range(n_boot):
        idx = resample(parts, rng)
        if y[idx].min() == y[idx].max():
            continue
        gaps.append(balanced_accuracy(y[idx], a[idx]) - balanced_accuracy(y[idx], b[idx]))
    return {"gap": float(balanced_accuracy(y, a) - balanced_accuracy(y, b)),
            "ci": percentile_interval(gaps, confidence), "draws": gaps}


def controlled_gap(members: dict[str, Any], unseen: dict[str, Any], confidence: float) -> dict[str, Any]:
    """The members' gap minus the gap on records neither model saw, with a CI from the two sets' independent
    bootstraps. Two models trained alike on different patients differ on everyone (measured: +0.104 on
    records neither saw), so only what exceeds that difference is memorisation of the members."""
    k = min(len(members["draws"]), len(unseen["draws"]))
    diff = np.asarray(members["draws"][:k]) - np.asarray(unseen["draws"][:k])
    return {"excess": members["gap"] - unseen["gap"], "ci": percentile_interval(diff, confidence)}


def _ids(records: list) -> set[str]:
    return {normalise_patient_id(r.meta.get("patient_id")) for r in records} - {""}


def _predict(paths: dict[str, Path], queries: list[str], public: Path, pub: list, y_pub: np.ndarray,
             k: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    preds, agree = {}, {}
    for name, path in paths.items():
        vc = models.load_checkpoint(path)
        pub_emb = evaluate.image_embeddings(vc, [r.path(public) for r in pub]).numpy()
        q_emb = np.concatenate([evaluate.text_embeddings(vc, queries[i:i + 256]).numpy()
                                for i in range(0, len(queries), 256)])
        preds[name], agree[name] = knn_predict(q_emb, pub_emb, y_pub, k)
    return preds, agree


def _gap(records: list, y: np.ndarray, preds: dict[str, np.ndarray], cfg: DejavuConfig) -> dict[str, Any]:
    ids = [normalise_patient_id(r.meta.get("patient_id")) for r in records]
    gap = paired_gap(y, preds["target"], preds["reference"], n_boot=cfg.n_boot, seed=cfg.seed,
                     confidence=cfg.confidence, groups=ids if all(ids) else None)
    return gap | {"bootstrap": "patients" if all(ids) else "records"}


def run_dejavu(target: str | Path, reference: str | Path, members: str | Path, public: str | Path,
               cfg: DejavuConfig, out: str | Path, unseen: str | Path | None = None) -> dict[str, Any]:
    """`unseen`: records of the same population that neither model trained on — the control that tells
    memorisation of the members from the two models simply differing."""
    target, reference, members, public, out = (Path(p) for p in (target, reference, members, public, out))
    label = "dr" if cfg.attribute == "dr" else cfg.attribute
    phrases(cfg.attribute)  # validates the attribute
    mem = [r for r in read_metadata(members) if label in r.labels]
    pub = [r for r in read_metadata(public) if label in r.labels]
    ctrl = [r for r in read_metadata(unseen) if label in r.labels] if unseen is not None else []
    if _ids(mem) & _ids(pub):
        raise AuditError(f"members and the public set share {len(_ids(mem) & _ids(pub))} patient(s); the public "
                         "set must be records neither model trained on")
    if ctrl and (_ids(ctrl) & (_ids(mem) | _ids(pub))):
        raise AuditError("the unseen set shares patients with the members or the public set; pass records of the "
                         "same population that neither model trained on and the public set does not hold")
    y, y_pub = np.array([r.labels[label] for r in mem]), np.array([r.labels[label] for r in pub])
    if len(mem) < 2 or y.min() == y.max() or len(pub) < cfg.k or y_pub.min() == y_pub.max():
        raise AuditError(f"deja-vu needs members and at least k={cfg.k} public records with both values of "
                         f"{label!r}; got {len(mem)} members and {len(pub)} public records")
    provenance = models.read_checkpoint_config(target).get("provenance") or {}
    manifest = check_manifest(target, provenance, mem, ctrl)  # members trained the target; unseen records did not
    y_ctrl = np.array([r.labels[label] for r in ctrl])
    if ctrl and y_ctrl.min() == y_ctrl.max():
        raise AuditError(f"the unseen set needs both values of {label!r}")
    # members' and unseen records' queries in one pass: each model and its public embeddings load once
    queries = [strip(r.caption, cfg.attribute) for r in mem + ctrl]
    both, both_agree = _predict({"target": target, "reference": reference}, queries, public, pub, y_pub, cfg.k)
    preds, agree = ({n: v[:len(mem)] for n, v in d.items()} for d in (both, both_agree))
    gap = _gap(mem, y, preds, cfg)
    control = None
    if ctrl:
        ctrl_preds = {n: v[len(mem):] for n, v in both.items()}
        control = {"gap": _gap(ctrl, y_ctrl, ctrl_preds, cfg), "n_unseen": len(ctrl)}
        control["members_minus_unseen"] = controlled_gap(gap, control["gap"], cfg.confidence)
        control["gap"].pop("draws")
    gap.pop("draws")
    confident_right = ((agree["target"] >= cfg.confident) & (preds["target"] == y) & (preds["reference"] != y))
    rows = StringIO(newline="")
    w = csv.writer(rows)
    w.writerow(["record", "patient_id", label, "stripped_caption", "target", "target_agreement", "reference",
                "reference_agreement", "confident_and_right_only_on_target"])
    for i, r in enumerate(mem):
        w.writerow([r.filepath, r.meta.get("patient_id", ""), int(y[i]), queries[i], int(preds["target"][i]),
                    f"{agree['target'][i]:.2f}", int(preds["reference"][i]), f"{agree['reference'][i]:.2f}",
                    int(confident_right[i])])
    checkpoint = models.read_checkpoint_config(target)
    doc = {
        "kind": "dejavu", "fedclip_version": __version__,
        "target": {"checkpoint": str(target), "model": checkpoint.get("model"),
                   "weights_sha256": checkpoint.get("weights_sha256"),
                   "stage": (checkpoint.get("provenance") or {}).get("stage", "unknown")},
        "reference": str(reference), "data": {"members": str(members), "public": str(public),
                                               "n_members": len(mem), "n_public": len(pub)},
        "config": asdict(cfg), "attribute": cfg.attribute, "label": label,
        "balanced_accuracy": {n: float(balanced_accuracy(y, p)) for n, p in preds.items()},
        "gap": gap, "confident_and_right_only_on_target": int(confident_right.sum()),
        "control": control, "manifest": manifest,
        # with the control, memorisation is what the members' gap exceeds the unseen records' by
        "memorised": (control["members_minus_unseen"]["ci"][0] > 0) if control else gap["ci"][0] > 0,
        "caution": None if control else (
            "no unseen-records control (--unseen): two models trained alike on different patients differ on "
            "records neither saw (measured +0.104), so this gap may not be memorisation"),
        "method": (f"caption stripped of what it says about {cfg.attribute}; its text embedding retrieves the "
                   f"{cfg.k} nearest public images; {label} predicted by their majority"),
    }
    io.write_text(out / DEJAVU_FILE, rows.getvalue())
    write_results(out, doc, {"target": str(target.resolve()), "reference": str(reference.resolve()),
                             "members": data_fingerprint(members, mem), "public": data_fingerprint(public, pub),
                             **({"unseen": data_fingerprint(Path(unseen), ctrl)} if unseen is not None else {})})
    return doc
