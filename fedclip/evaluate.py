"""Zero-shot and linear-probe evaluation, with metrics and bootstrap confidence intervals.

Tasks (classes, label -> class, prompts) live in `fedclip.tasks`. Zero-shot prompts are templates x
descriptions, their text embeddings averaged per class (the CLIP prompt-ensemble recipe) with
FLAIR-style expert knowledge from the taxonomy. The linear probe fits scikit-learn's logistic
regression on frozen image features.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, f1_score, roc_auc_score
from sklearn.model_selection import GroupShuffleSplit, StratifiedShuffleSplit

from fedclip.bootstrap import clusters, percentile_interval, resample
from fedclip.data.images import load_rgb
from fedclip.data.records import Record, patient_key, read_metadata
from fedclip.errors import FedclipError
from fedclip.models import PREPROCESS_CFG, VisionClip
from fedclip.progress import progress_bar
from fedclip.synth.taxonomy import CONDITIONS
from fedclip.tasks import TEMPLATES, Task, labelled, task


# ------------------------------------------------------------------------------------ embeddings
def eval_transform(image_size: int):
    """The inference transform, identical to open_clip's for a checkpoint's preprocess_cfg."""
    return open_clip.image_transform(image_size, is_train=False, mean=PREPROCESS_CFG["mean"],
                                     std=PREPROCESS_CFG["std"])


@torch.no_grad()
def text_embeddings(vc: VisionClip, texts: Sequence[str], device: str = "cpu") -> torch.Tensor:
    vc.model.eval()
    return vc.model.encode_text(vc.tokenizer(list(texts)).to(device), normalize=True).float().cpu()


@torch.no_grad()
def class_embeddings(vc: VisionClip, t: Task, device: str = "cpu") -> torch.Tensor:
    """One unit vector per class: the mean of its prompt embeddings (templates x descriptions)."""
    rows = []
    for descriptions in t.descriptions:
        emb = text_embeddings(vc, [tpl.format(d) for d in descriptions for tpl in TEMPLATES], device)
        rows.append(torch.nn.functional.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def image_embeddings(vc: VisionClip, images: Iterable[Image.Image | np.ndarray | str | Path],
                     batch_size: int = 128, device: str = "cpu") -> torch.Tensor:
    """Unit image features; accepts PIL images, arrays or paths (decoded with clear errors)."""
    vc.model.eval()
    tf = eval_transform(vc.image_size)
    out, batch = [], []

    def flush() -> None:
        out.append(vc.model.encode_image(torch.stack(batch).to(device), normalize=True).float().cpu())
        batch.clear()

    total = len(images) if isinstance(images, Sequence) else None
    with progress_bar("embed images", total) as advance:
        for img in images:
            if isinstance(img, (str, Path)):
                img = load_rgb(img)
            elif isinstance(img, np.ndarray):
                img = Image.fromarray(img)
            batch.append(tf(img.convert("RGB")))
            if len(batch) == batch_size:
                flush()
                advance(batch_size)
        if batch:
            advance(len(batch))
            flush()
    if not out:
        raise FedclipError("no images to embed")
    return torch.cat(out)


# --------------------------------------------------------------------------------------- metrics
def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in `y` (scikit-learn), without its warnings when a prediction names a
    class absent from `y` or when `y` and the predictions hold one class: on small or bootstrap samples that is
    the normal case, not a fault."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", "A single label was found")
        return float(balanced_accuracy_score(y, pred))


def metrics(y: np.ndarray, scores: np.ndarray, ordinal: bool = False) -> dict[str, float]:
    """Balanced accuracy (ACA), macro-F1, AUC (one-vs-rest), and quadratic kappa for ordinal tasks."""
    pred = scores.argmax(1)
    labels = np.arange(scores.shape[1])
    out = {"balanced_accuracy": balanced_accuracy(y, pred),
           "macro_f1": float(f1_score(y, pred, average="macro", labels=labels[np.isin(labels, y)],
                                      zero_division=0))}
    present = np.unique(y)
    if len(present) >= 2:
        if scores.shape[1] == 2:
            out["auc"] = float(roc_auc_score(y, scores[:, 1] - scores[:, 0]))
        else:
            p = np.exp(scores - scores.max(1, keepdims=True))
            p = p[:, present] / p[:, present].sum(1, keepdims=True)
            out["auc"] = float(roc_auc_score(y, p, multi_class="ovr", labels=present)) if len(present) > 2 \
                else float(roc_auc_score(y == present[1], p[:, 1]))
    if ordinal and len(np.union1d(y, pred)) >= 2:  # one class in both: kappa is 0/0 (absent, as AUC is)
        out["kappa"] = float(cohen_kappa_score(y, pred, labels=labels, weights="quadratic"))
    return out


def bootstrap_ci(y: np.ndarray, scores: np.ndarray, ordinal: bool = False, n_boot: int = 1000,
                 seed: int = 0, groups: Sequence[str] | None = None) -> dict[str, tuple[float, float]]:
    """Percentile 95% intervals of every metric over `n_boot` resamples of the evaluation set; with `groups`
    (each image's patient) whole patients are drawn, since a patient's images are not independent."""
    rng = np.random.default_rng(seed)
    parts = clusters(np.arange(len(y)), groups)
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = resample(parts, rng)
        if len(np.unique(y[idx])) < 2:
            continue
        for k, v in metrics(y[idx], scores[idx], ordinal).items():
            draws.setdefault(k, []).append(v)
    return {k: tuple(percentile_interval(v, 0.95)) for k, v in draws.items()}


def retrieval_recall(image_feats: torch.Tensor, text_feats: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
                     ) -> dict[str, float]:
    """Image->text and text->image recall@k for paired features (row i of each is a pair)."""
    sim = image_feats @ text_feats.T
    truth = torch.arange(len(sim))
    out = {}
    for name, s in (("image_to_text", sim), ("text_to_image", sim.T)):
        ranks = (s > s[truth, truth][:, None]).sum(1)  # how many candidates beat the true pair
        for k in ks:
            out[f"{name}_R@{k}"] = float((ranks < k).float().mean())
    return out


# --------------------------------------------------------------------------------------- modes
def zero_shot_scores(vc: VisionClip, feats: torch.Tensor, t: Task, device: str = "cpu") -> np.ndarray:
    scale = float(vc.model.logit_scale.detach().exp())
    return (scale * feats @ class_embeddings(vc, t, device).T).numpy()


def fit_class_bias(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-class offsets for zero-shot logits, fitted on a labelled *calibration* set: one the model may be
    told about (a public or synthetic set), never the evaluation set and never private labels.

    Zero-shot CLIP ranks images by a class far better than its argmax between prompts places the boundary
    (an AUC at the real-data model's with a balanced accuracy well below it; docs/results/
    synthetic_vs_real.md). The offsets minimise the class-balanced cross-entropy of softmax(scores + b),
    which is convex in b; they move the boundary and leave a binary task's ranking, hence its AUC, as it is.
    A small L2 penalty keeps the offset of a class absent from the calibration set finite. scipy's L-BFGS,
    because no scikit-learn estimator fits offsets alone.
    """
    from scipy.optimize import minimize
    from scipy.special import log_softmax

    k = scores.shape[1]
    present, counts = np.unique(y, return_counts=True)
    weight = np.zeros(k)
    weight[present] = 1.0 / (len(present) * counts)
    w = weight[y]
    onehot = np.eye(k)[y]

    def loss(b: np.ndarray) -> tuple[float, np.ndarray]:
        logp = log_softmax(scores + b, axis=1)
        grad_z = np.exp(logp) - onehot
        return float(-(w * logp[np.arange(len(y)), y]).sum() + 1e-3 * b @ b), w @ grad_z + 2e-3 * b

    b = minimize(loss, np.zeros(k), jac=True, method="L-BFGS-B").x
    return b - b.mean()  # only differences matter


def zero_shot(vc: VisionClip, images: Sequence[Any], labels: Sequence[Mapping[str, int]], task_name: str,
              device: str = "cpu", n_boot: int = 200, feats: torch.Tensor | None = None,
              class_bias: np.ndarray | None = None, patients: Sequence[str] | None = None) -> dict[str, Any]:
    """Zero-shot metrics (with 95% CIs, drawn by patient when `patients` names each image's) on the images
    whose label for the task is known; `class_bias` (from `fit_class_bias` on a calibration set) is added to
    every image's class logits."""
    t = task(task_name)
    keep, y = labelled(labels, t)
    if feats is None:
        feats = image_embeddings(vc, [images[i] for i in keep], device=device)
    else:
        feats = feats[keep]
    scores = zero_shot_scores(vc, feats, t, device)
    if class_bias is not None:
        scores = scores + np.asarray(class_bias)[None, :]
    return {"task": t.name, "mode": "zero-shot" if class_bias is None else "zero-shot-calibrated", "n": len(keep),
            "classes": list(t.classes), "class_counts": np.bincount(y, minlength=len(t.classes)).tolist(),
            **metrics(y, scores, t.ordinal),
            "ci": bootstrap_ci(y, scores, t.ordinal, n_boot, groups=None if patients is None else
                                 [patients[i] for i in keep]),
            "ci_unit": "image" if patients is None else "patient"}


def split_indices(records: Sequence[Record], seed: int = 0, test_size: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Train/test for the probe: the dataset's own split where it has one, else by patient (no leakage)."""
    splits = [r.meta.get("split") for r in records]
    if "train" in splits and "test" in splits:
        return (np.array([i for i, s in enumerate(splits) if s == "train"]),
                np.array([i for i, s in enumerate(splits) if s == "test"]))
    groups = [patient_key(r) for r in records]
    gss = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train, test = next(gss.split(np.zeros(len(records)), groups=groups))
    return train, test


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 n_classes: int, ordinal: bool = False, k_shot: int | None = None, seed: int = 0,
                 n_boot: int = 200, test_patients: Sequence[str] | None = None) -> dict[str, Any]:
    """Class-balanced logistic regression on frozen features; C chosen on a validation split."""
    rng = np.random.default_rng(seed)
    if k_shot:
        chosen = [rng.choice(np.flatnonzero(train_y == c), size=min(k_shot, int((train_y == c).sum())),
                             replace=False) for c in np.unique(train_y)]
        idx = np.concatenate(chosen)
        train_x, train_y = train_x[idx], train_y[idx]
    if len(np.unique(train_y)) < 2:
        raise FedclipError("the probe's training split has a single class; use more data or another task")
    best_c, best = 1.0, -1.0
    counts = np.bincount(train_y)
    if counts[counts > 0].min() >= 2 and len(train_y) >= 10:
        sss = StratifiedShuffleSplit(n_splits=1, test_size=0.25, random_state=seed)
        fit_i, val_i = next(sss.split(train_x, train_y))
        for c in (0.01, 0.1, 1.0, 10.0, 100.0):
            clf = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
            clf.fit(train_x[fit_i], train_y[fit_i])
            score = balanced_accuracy(train_y[val_i], clf.predict(train_x[val_i]))
            if score > best:
                best_c, best = c, score
    clf = LogisticRegression(C=best_c, class_weight="balanced", max_iter=2000).fit(train_x, train_y)
    margins = clf.decision_function(test_x)
    if margins.ndim == 1:  # binary: one margin for the second class
        margins = np.stack([-margins, margins], 1) / 2
    scores = np.full((len(test_x), n_classes), -1e9)  # classes absent from training are never predicted
    scores[:, clf.classes_] = margins
    return {"mode": "linear-probe", "C": best_c, "n_train": int(len(train_y)), "n": int(len(test_y)),
            "k_shot": k_shot, **metrics(test_y, scores, ordinal),
            "ci": bootstrap_ci(test_y, scores, ordinal, n_boot, groups=test_patients),
            "ci_unit": "image" if test_patients is None else "patient"}


def dir_embeddings(vc: VisionClip, data: str | Path, device: str = "cpu") -> torch.Tensor:
    """Image features of a dataset dir's records, in order (pass them to `evaluate_dir` for several modes)."""
    return image_embeddings(vc, [r.path(data) for r in read_metadata(data)], device=device)


def evaluate_dir(vc: VisionClip, data: str | Path, task_names: Sequence[str], mode: str = "zero-shot",
                 k_shot: int | None = None, seed: int = 0, device: str = "cpu", n_boot: int = 200,
                 feats: torch.Tensor | None = None) -> list[dict]:
    """Evaluate a model on a dataset dir; image features are computed once for all tasks (or `feats`, from
    `dir_embeddings`, are used)."""
    if mode not in ("zero-shot", "linear-probe"):
        raise FedclipError(f"unknown mode {mode!r}; use zero-shot or linear-probe")
    records = read_metadata(data)
    labels = [r.labels for r in records]
    patients = [patient_key(r) for r in records]
    tasks = [task(n) for n in task_names if n != "retrieval"]
    if feats is None:
        feats = image_embeddings(vc, [r.path(data) for r in records], device=device)
    results = []
    if "retrieval" in task_names:  # image <-> caption recall@k over the whole set
        texts = torch.cat([text_embeddings(vc, [r.caption for r in records[i:i + 256]], device)
                           for i in range(0, len(records), 256)])
        results.append({"task": "retrieval", "mode": "retrieval", "n": len(records),
                        **retrieval_recall(feats, texts)})
    if mode == "zero-shot":
        for t in tasks:
            results.append(zero_shot(vc, [], labels, t.name, device, n_boot, feats=feats, patients=patients))
        return results
    train, test = split_indices(records, seed)
    x = feats.numpy()
    for t in tasks:
        tr, ytr = labelled([labels[i] for i in train], t, required=False)
        te, yte = labelled([labels[i] for i in test], t, required=False)
        if not tr or not te:
            raise FedclipError(f"task {t.name!r}: no labelled images in the probe's train or test split")
        tr, te = [int(train[i]) for i in tr], [int(test[i]) for i in te]
        res = linear_probe(x[tr], ytr, x[te], yte, len(t.classes), t.ordinal, k_shot, seed, n_boot,
                           test_patients=[patients[i] for i in te])
        results.append({"task": t.name, "classes": list(t.classes), **res})
    return results


def predict(vc: VisionClip, images: Sequence[str | Path], device: str = "cpu") -> list[dict[str, Any]]:
    """Per image: probability of each condition (binary zero-shot softmax) and the DR-grade distribution."""
    feats = image_embeddings(vc, images, device=device)
    out = []
    per_task = {}
    for name in ("dr", *(c.name for c in CONDITIONS)):
        s = zero_shot_scores(vc, feats, task(name), device)
        e = np.exp(s - s.max(1, keepdims=True))
        per_task[name] = (e / e.sum(1, keepdims=True))[:, 1]
    g = zero_shot_scores(vc, feats, task("dr_grade"), device)
    g = np.exp(g - g.max(1, keepdims=True))
    g = g / g.sum(1, keepdims=True)
    for i, img in enumerate(images):
        conditions = sorted(((n, float(p[i])) for n, p in per_task.items()), key=lambda kv: -kv[1])
        out.append({"image": str(img), "conditions": conditions, "dr_grade": g[i].tolist()})
    return out
