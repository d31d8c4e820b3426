"""Confound check: can members be told from non-members by what is none of the model's business?

A cross-validated classifier on metadata (hospital, camera, eye, visit) and simple image statistics
(size, mean and spread of each colour) tries to separate the two sets. If it can — its AUC's 95% interval,
drawn by patient, lies above 0.5 — a membership attack's AUC measures the distribution shift as much as
the model's memory, and the results say so (Das, Zhang and Tramèr 2024's blind baseline). An interval,
not a fixed cut-off: 0.58 on 40 records is noise, on 4,000 a real shift. (A CLIP membership attack at 94%
AUC fell to 51% once members and non-members were matched.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fedclip.audits.metrics import summarise
from fedclip.data.records import Record, patient_key

CONFIDENCE = 0.95
META = ("hospital", "camera", "eye", "visit")


def _features(records: list[Record], root_of: list) -> np.ndarray:
    values = {k: sorted({str(r.meta.get(k, "")) for r in records}) for k in META}
    rows = []
    for r, root in zip(records, root_of, strict=True):
        onehot = [float(str(r.meta.get(k, "")) == v) for k in META for v in values[k]]
        with Image.open(r.path(root)) as im:
            w, h = im.size
            small = np.asarray(im.convert("RGB").resize((32, 32)), dtype=float) / 255
        rows.append([*onehot, w, h, *small.mean((0, 1)), *small.std((0, 1))])
    return np.asarray(rows)


def confound_check(members: list[Record], nonmembers: list[Record], roots: tuple, seed: int = 0) -> dict[str, Any]:
    records = members + nonmembers
    root_of = [roots[0]] * len(members) + [roots[1]] * len(nonmembers)
    y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    x = _features(records, root_of)
    folds = min(5, int(min(y.sum(), len(y) - y.sum())))
    if folds < 2:
        return {"auc": float("nan"), "confounded": False, "note": "too few records to check"}
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    p = cross_val_predict(model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                          method="predict_proba")[:, 1]
    auc = float(roc_auc_score(y, p))
    ci = summarise(y.astype(int), p, n_boot=500, seed=seed, confidence=CONFIDENCE,
                   groups=[patient_key(r) for r in records])["ci"]["auc"]
    return {"auc": auc, "ci": ci, "confidence": CONFIDENCE, "confounded": ci[0] > 0.5,
            "features": [*(f"meta:{k}" for k in META), "image size", "mean RGB", "std RGB"],
            "classifier": f"logistic regression, {folds}-fold cross-validated"}
