"""Zero-shot classification of fundus images with class-prompt ensembles.

A task maps an image's labels to a class (or to None: the label is unknown for that image, so the
image is left out of that task), and gives each class a set of descriptions; prompts are templates x
descriptions, their text embeddings averaged per class (the CLIP prompt-ensemble recipe), with
FLAIR-style expert descriptions from the taxonomy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from fedclip.errors import FedclipError
from fedclip.models import PREPROCESS_CFG, VisionClip
from fedclip.synth.taxonomy import CONDITIONS, DR_GRADE_DESCRIPTIONS, DR_GRADE_PHRASES

TEMPLATES = (
    "a colour fundus photograph showing {}.",
    "fundus photograph of an eye with {}.",
    "retinal image: {}.",
)


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]
    descriptions: tuple[tuple[str, ...], ...]  # per class
    target: Callable[[Mapping[str, int]], int | None]


def _binary(label: str) -> Callable[[Mapping[str, int]], int | None]:
    return lambda labels: labels.get(label)


def _referable(labels: Mapping[str, int]) -> int | None:
    g = labels.get("dr_grade")
    return None if g is None else int(g >= 2)


def _tasks() -> dict[str, Task]:
    tasks = {
        "referable_dr": Task(
            "referable_dr", ("non-referable", "referable"),
            (DR_GRADE_PHRASES[0] + DR_GRADE_PHRASES[1] + DR_GRADE_DESCRIPTIONS[0],
             DR_GRADE_PHRASES[2] + DR_GRADE_PHRASES[3] + DR_GRADE_PHRASES[4] + DR_GRADE_DESCRIPTIONS[2]),
            _referable),
        "dr_grade": Task(
            "dr_grade", tuple(f"grade {g}" for g in range(5)),
            tuple(DR_GRADE_PHRASES[g] + DR_GRADE_DESCRIPTIONS[g] for g in range(5)),
            lambda labels: labels.get("dr_grade")),
    }
    normal = ("a normal fundus", "no abnormality", "a healthy retina")
    for c in CONDITIONS:
        tasks[c.name] = Task(c.name, (f"no {c.name}", c.name), (normal, c.phrases + c.descriptions),
                             _binary(c.name))
    return tasks


TASKS: dict[str, Task] = _tasks()


def task(name: str) -> Task:
    if name not in TASKS:
        raise FedclipError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


def eval_transform(image_size: int):
    """The inference transform, identical to open_clip's for a checkpoint's preprocess_cfg."""
    return open_clip.image_transform(image_size, is_train=False, mean=PREPROCESS_CFG["mean"],
                                     std=PREPROCESS_CFG["std"])


@torch.no_grad()
def class_embeddings(vc: VisionClip, t: Task, device: str = "cpu") -> torch.Tensor:
    """One unit vector per class: the mean of its prompt embeddings (templates x descriptions)."""
    vc.model.eval()
    rows = []
    for descriptions in t.descriptions:
        prompts = [tpl.format(d) for d in descriptions for tpl in TEMPLATES]
        emb = vc.model.encode_text(vc.tokenizer(prompts).to(device), normalize=True)
        rows.append(torch.nn.functional.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def image_embeddings(vc: VisionClip, images: Iterable[Image.Image | np.ndarray], batch_size: int = 128,
                     device: str = "cpu") -> torch.Tensor:
    vc.model.eval()
    tf = eval_transform(vc.image_size)
    out, batch = [], []
    for img in images:
        batch.append(tf(Image.fromarray(img) if isinstance(img, np.ndarray) else img))
        if len(batch) == batch_size:
            out.append(vc.model.encode_image(torch.stack(batch).to(device), normalize=True).cpu())
            batch = []
    if batch:
        out.append(vc.model.encode_image(torch.stack(batch).to(device), normalize=True).cpu())
    return torch.cat(out)


def zero_shot(vc: VisionClip, images: Sequence[Image.Image | np.ndarray], labels: Sequence[Mapping[str, int]],
              task_name: str, device: str = "cpu") -> dict[str, Any]:
    """Metrics of zero-shot prediction on the images whose label for the task is known."""
    t = task(task_name)
    keep = [i for i, lab in enumerate(labels) if t.target(lab) is not None]
    if not keep:
        raise FedclipError(f"no image has a known label for task {task_name!r}; pick a task this data labels")
    y = np.array([t.target(labels[i]) for i in keep])
    feats = image_embeddings(vc, [images[i] for i in keep], device=device)
    logits = (feats @ class_embeddings(vc, t, device).cpu().T).numpy()
    pred = logits.argmax(1)
    result: dict[str, Any] = {
        "task": task_name, "n": len(keep), "classes": list(t.classes),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro")),
    }
    if len(t.classes) == 2 and len(set(y)) == 2:
        result["auc"] = float(roc_auc_score(y, logits[:, 1] - logits[:, 0]))
    return result
