"""The classification tasks: classes, how an image's labels map to a class, and each class's prompts.

A task maps an image's labels to a class (or to None: the label is unknown for that image, or the
image belongs to no single class, so it is left out of that task) and gives each class a set of
descriptions, from the taxonomy. Evaluation, fine-tuning, federated clients and audits all take
their tasks and their label filtering from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedclip.errors import FedclipError
from fedclip.synth.taxonomy import CONDITIONS, DR_GRADE_DESCRIPTIONS, DR_GRADE_PHRASES, condition

TEMPLATES = (
    "a colour fundus photograph showing {}.",
    "fundus photograph of an eye with {}.",
    "retinal image: {}.",
)
NORMAL = ("a normal fundus", "no abnormality", "a healthy retina")


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]
    descriptions: tuple[tuple[str, ...], ...]  # per class
    target: Callable[[Mapping[str, int]], int | None]
    ordinal: bool = False  # DR grade: report quadratic-weighted kappa


def _binary(label: str) -> Callable[[Mapping[str, int]], int | None]:
    return lambda labels: labels.get(label)


def _referable(labels: Mapping[str, int]) -> int | None:
    g = labels.get("dr_grade")
    return None if g is None else int(g >= 2)


def _single_label(names: Sequence[str]) -> Callable[[Mapping[str, int]], int | None]:
    """Class 0 = normal (all named labels 0), class i = only the i-th label positive, else None."""
    def target(labels: Mapping[str, int]) -> int | None:
        values = [labels.get(n) for n in names]
        if any(v is None for v in values):
            return None
        positive = [i for i, v in enumerate(values) if v]
        if not positive:
            return 0
        return positive[0] + 1 if len(positive) == 1 else None
    return target


def _any_dr(labels: Mapping[str, int]) -> Mapping[str, int]:
    out = dict(labels)
    if "dr" not in out and "dr_grade" in out:
        out["dr"] = int(out["dr_grade"] > 0)
    return out


def _descriptions(name: str) -> tuple[str, ...]:
    if name == "dr":
        return ("diabetic retinopathy", *DR_GRADE_DESCRIPTIONS[2], *DR_GRADE_DESCRIPTIONS[4])
    c = condition(name)
    return c.phrases + c.descriptions


def _multi(task_name: str, names: Sequence[str]) -> Task:
    single = _single_label(names)
    return Task(task_name, ("normal", *names), (NORMAL, *(_descriptions(n) for n in names)),
                lambda labels: single(_any_dr(labels)))


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
            lambda labels: labels.get("dr_grade"), ordinal=True),
        "dr": Task("dr", ("no DR", "DR"), (NORMAL + DR_GRADE_PHRASES[0], _descriptions("dr")),
                   lambda labels: _any_dr(labels).get("dr")),
    }
    for c in CONDITIONS:
        tasks[c.name] = Task(c.name, (f"no {c.name}", c.name), (NORMAL, c.phrases + c.descriptions),
                             _binary(c.name))
    # Class sets of the public benchmarks: FIVES (normal / AMD / DR / glaucoma), REFUGE (glaucoma or
    # not), and an ODIR-style single-label subset.
    tasks["fives"] = _multi("fives", ("amd", "dr", "glaucoma"))
    tasks["refuge"] = Task("refuge", *(tasks["glaucoma"].classes, tasks["glaucoma"].descriptions,
                                       tasks["glaucoma"].target))
    tasks["odir"] = _multi("odir", ("dr", "glaucoma", "amd", "hypertensive_retinopathy", "pathological_myopia"))
    return tasks


TASKS: dict[str, Task] = _tasks()


def task(name: str) -> Task:
    if name not in TASKS:
        raise FedclipError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)} (or retrieval)")
    return TASKS[name]




def labelled(labels: Sequence[Mapping[str, int]], t: Task | str,
             required: bool = True) -> tuple[list[int], np.ndarray]:
    """Indices of the images whose class for `t` is known, and those classes."""
    t = task(t) if isinstance(t, str) else t
    keep = [i for i, lab in enumerate(labels) if t.target(lab) is not None]
    if required and not keep:
        raise FedclipError(f"no image has a known label for task {t.name!r}; pick a task this data labels")
    return keep, np.array([t.target(labels[i]) for i in keep], dtype=np.int64)
