"""VisionCLIP's headline over seeds: a model pretrained only on synthetic images vs one pretrained on the
private cohort the generator's statistics came from, zero-shot and by linear probe at an external hospital.

    python -m fedclip.experiments.synthetic_vs_real --out runs/svr [--seeds 0,1,2] [--n 20000]
        [--steps 600] [--batch-size 128] [--external 2000] [--calibration 2000] [--size 64]
        [--hospitals riverside,northgate,summit] [--ablation none|all-diabetic] [--quiet]

Per seed: the private cohort (`n` images of the training hospitals), the Med-AIGC step (`synth.estimate`
on the cohort's patients, then `n` images of new patients from `synthetic_spec`), both models pretrained
alike (visionclip-tiny, AdamW, same seed, order and steps), and every task evaluated on `external`
images of `lakeshore` (a camera neither saw) with 95% bootstrap CIs: zero-shot, zero-shot with class
offsets fitted on `calibration` fresh synthetic images (both models alike), and a linear probe. Then,
per task and metric, the mean and standard deviation over seeds and the ratio synthetic / private of the
means. Written to `OUT/results.json` and `OUT/results.md` (the table docs/results/ keeps). Each seed's
cohorts, pretraining, evaluation and calibration are stages of `experiments.runner` (the study's runner):
a finished stage is reused when the command is run again, a changed setting reruns it and what reads it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedclip import evaluate, io, models, progress, tasks
from fedclip.data.records import patient_key, read_metadata
from fedclip.data.synthetic import ensure_exported
from fedclip.errors import FedclipError
from fedclip.experiments import cohort_seed
from fedclip.experiments.outputs import Checkpoint, ResultsFile
from fedclip.experiments.runner import Stage, run_stages
from fedclip.pretrain import PretrainConfig, ensure_pretrained
from fedclip.synth import CohortSpec, patient
from fedclip.synth.estimate import estimate, synthetic_spec

TASKS = ("referable_dr", "dr_grade", "dr", "amd", "dme", "laser_scars", "pathological_myopia", "rvo",
         "glaucoma", "hypertensive_retinopathy")
MODELS = ("synthetic", "private", "untrained")
MODES = ("zero_shot", "zero_shot_calibrated", "linear_probe")
METRICS = ("balanced_accuracy", "auc")


def corpus_profile(data: Path) -> dict[str, Any]:
    """What a model sees in a corpus, per image: label rates, the DR grade mix, quality-issue rates, the
    hospital mix, how many captions mention DR at all, and the images' mean colour."""
    from fedclip.data.images import load_rgb

    records = read_metadata(data)
    n = len(records)
    labels = sorted({k for r in records for k in r.labels} - {"dr_grade"})
    grades = np.bincount([r.labels["dr_grade"] for r in records if "dr_grade" in r.labels], minlength=5)
    hospitals: dict[str, int] = {}
    for r in records:
        hospitals[str(r.meta.get("hospital"))] = hospitals.get(str(r.meta.get("hospital")), 0) + 1
    colour = np.mean([np.asarray(load_rgb(r.path(data))).reshape(-1, 3).mean(0) for r in records[:500]], axis=0)
    return {"images": n, "label_rate": {k: sum(r.labels.get(k, 0) for r in records) / n for k in labels},
            "dr_grade_mix": (grades / max(grades.sum(), 1)).round(4).tolist(),
            "hospital_mix": {h: c / n for h, c in sorted(hospitals.items())},
            "captions_mentioning_dr": sum("retinopathy" in r.caption.lower() for r in records) / n,
            "mean_rgb_first_500": colour.round(2).tolist()}


@dataclass(frozen=True)
class Corpora:
    """One seed's `cohorts` stage: the dataset dirs both models train on and are judged with."""

    private: str  # the private cohort (the real-data model's corpus)
    synthetic: str  # drawn from statistics estimated on the private cohort
    external: str  # lakeshore: the camera neither model saw
    calibration: str  # fresh synthetic patients, where zero-shot boundaries are calibrated


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One seed's three models, evaluated on every task (zero-shot, zero-shot calibrated on a fresh synthetic
    set, linear probe), as four stages of `experiments.runner` in `OUT/seed-S`: a finished stage is reused, a
    changed setting reruns it and what reads it, an interrupted one resumes."""
    root = Path(args.out) / f"seed-{seed}"
    data_settings = {"seed": seed, "n": args.n, "size": args.size, "hospitals": args.hospitals,
                     "external": args.external, "calibration": args.calibration, "ablation": args.ablation}
    external_feats: dict[str, Any] = {}  # each model's external embeddings, computed once per process
    loaded: dict[str, models.VisionClip] = {}  # the three models, loaded once for both evaluation stages

    def cohorts(_: Any) -> Corpora:
        private = CohortSpec(seed=cohort_seed(seed, "private"), size=args.size, hospital=args.hospitals)
        cohort = [patient(private, i) for i in range(-(-args.n // private.images_per_patient))]
        stats = estimate(cohort)
        io.write_json(root / "cohort_statistics.json", asdict(stats))
        synthetic = synthetic_spec(stats, seed=cohort_seed(seed, "synthetic"), size=args.size, visits=private.visits)
        if args.ablation == "all-diabetic":  # the Med-AIGC step before 2026-11-30: every synthetic patient
            # diabetic, with the worse-eye grade mix over all patients (grade 0 for those without diabetes)
            grades = np.bincount([max(p.dr_grade) for p in cohort], minlength=5) / len(cohort)
            synthetic = replace(synthetic, diabetic_rate=1.0, dr_grades=tuple(float(g) for g in grades))
        d = root / "data"
        return Corpora(
            private=str(ensure_exported(private, d / "private", args.n, args.workers)),
            synthetic=str(ensure_exported(synthetic, d / "synthetic", args.n, args.workers)),
            external=str(ensure_exported(CohortSpec(seed=cohort_seed(seed, "external"), size=args.size,
                                                    hospital="lakeshore"), d / "external", args.external,
                                         args.workers)),
            # new synthetic patients, public like the corpus: where both models' zero-shot boundaries are calibrated
            calibration=str(ensure_exported(replace(synthetic, seed=cohort_seed(seed, "calibration")),
                                            d / "calibration", args.calibration, args.workers)),
        )

    def pretrain(up: Any) -> dict[str, Checkpoint]:
        out = {}
        for name in ("private", "synthetic"):
            cfg = PretrainConfig(model="visionclip-tiny", data=Path(getattr(up["cohorts"], name)), steps=args.steps,
                                 batch_size=args.batch_size, lr=1e-3, warmup=max(1, args.steps // 10), seed=seed,
                                 workers=args.workers)
            out[name] = Checkpoint.of(ensure_pretrained(cfg, root / "pretrain" / name))
        return out

    def contenders(up: Any) -> dict[str, models.VisionClip]:
        if not loaded:
            loaded.update({"untrained": models.create("visionclip-tiny", seed=seed),
                           **{name: models.load_checkpoint(e.checkpoint) for name, e in up["pretrain"].items()}})
        return loaded

    def evaluation(up: Any) -> ResultsFile:
        corpora: Corpora = up["cohorts"]
        external = Path(corpora.external)
        results: dict[str, Any] = {"corpora": {"private": corpus_profile(Path(corpora.private)),
                                               "synthetic": corpus_profile(Path(corpora.synthetic))}}
        for name, vc in contenders(up).items():
            feats = external_feats[name] = evaluate.dir_embeddings(vc, external)
            results[name] = {mode.replace("-", "_"): [_evaluate(vc, external, task, mode, seed, feats)
                                                      for task in TASKS] for mode in ("zero-shot", "linear-probe")}
        io.write_json(root / "evaluation.json", results)
        return ResultsFile.of(root / "evaluation.json")

    def calibration(up: Any) -> ResultsFile:
        external, calibration_set = Path(up["cohorts"].external), Path(up["cohorts"].calibration)
        ext_records = read_metadata(external)
        labels = ([r.labels for r in read_metadata(calibration_set)], [r.labels for r in ext_records])
        patients = [patient_key(r) for r in ext_records]
        out = {}
        for name, vc in contenders(up).items():
            feats = (evaluate.dir_embeddings(vc, calibration_set),
                     external_feats[name] if name in external_feats else evaluate.dir_embeddings(vc, external))
            out[name] = [_calibrated(vc, labels, task, feats, patients) for task in TASKS]
        io.write_json(root / "calibrated.json", out)
        return ResultsFile.of(root / "calibrated.json")

    train = {"steps": args.steps, "batch_size": args.batch_size}
    done = run_stages(root, [
        Stage("cohorts", cohorts, Corpora, data_settings, dirs=(root / "data",)),
        Stage("pretrain", pretrain, dict[str, Checkpoint], train, reads=("cohorts",), dirs=(root / "pretrain",)),
        Stage("evaluate", evaluation, ResultsFile, {"tasks": TASKS}, reads=("cohorts", "pretrain")),
        Stage("calibrate", calibration, ResultsFile, {"tasks": TASKS}, reads=("cohorts", "pretrain")),
    ])
    results = json.loads(Path(done["evaluate"].results).read_text())
    for name, entries in json.loads(Path(done["calibrate"].results).read_text()).items():
        results[name]["zero_shot_calibrated"] = entries
    return results


def _evaluate(vc: models.VisionClip, data: Path, task: str, mode: str, seed: int, feats: Any) -> dict[str, Any]:
    """One task's result, or why it could not be measured (a rare condition without positives in a split)."""
    try:
        return evaluate.evaluate_dir(vc, data, (task,), mode=mode, seed=seed, feats=feats)[0]
    except FedclipError as e:
        return {"task": task, "skipped": str(e)}


def _calibrated(vc: models.VisionClip, labels: tuple[list, list], task_name: str,
                feats: tuple[Any, Any], patients: list[str]) -> dict[str, Any]:
    """Zero-shot on the external set with class offsets fitted on the synthetic calibration set (`labels`
    and `feats`: the calibration and external sets' labels and image embeddings, in that order)."""
    t = tasks.task(task_name)
    keep, y = tasks.labelled(labels[0], t, required=False)
    if len(np.unique(y)) < 2:
        return {"task": task_name, "skipped": "the calibration set has a single class for this task"}
    bias = evaluate.fit_class_bias(evaluate.zero_shot_scores(vc, feats[0][keep], t), y)
    try:
        result = evaluate.zero_shot(vc, [], labels[1], task_name, feats=feats[1], class_bias=bias, patients=patients)
    except FedclipError as e:
        return {"task": task_name, "skipped": str(e)}
    return {**result, "class_bias": bias.tolist(), "calibration_images": len(keep)}


def summarise(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation and per-seed values with CIs, and synthetic / private of the means."""
    table: dict[str, Any] = {}
    for mode in MODES:
        for task in TASKS:
            row: dict[str, Any] = {}
            for model in MODELS:
                entries = [r for res in per_seed.values() for r in res[model][mode]
                           if r["task"] == task and "skipped" not in r]
                cell = {}
                for metric in METRICS:
                    values = [e[metric] for e in entries if e.get(metric) is not None]
                    if not values:
                        continue
                    cell[metric] = {"mean": statistics.fmean(values),
                                    "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                                    "seeds": values, "ci": [(e.get("ci") or {}).get(metric) for e in entries]}
                row[model] = cell
            row["ratio"] = {m: row["synthetic"][m]["mean"] / row["private"][m]["mean"]
                            for m in METRICS if m in row["synthetic"] and m in row["private"]
                            and row["private"][m]["mean"] > 0}
            table[f"{mode}/{task}"] = row
    return table


def markdown(summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"Seeds {args.seeds}; {args.n} images per corpus at {args.size} px; visionclip-tiny, {args.steps} steps x "
             f"{args.batch_size}; external: {args.external} images of lakeshore. Mean ± sd over seeds.", "",
             "| mode | task | synthetic bal. acc. | private bal. acc. | untrained bal. acc. | ratio | "
             "synthetic AUC | private AUC | ratio |", "|---|---|---|---|---|---|---|---|---|"]

    def fmt(row: dict[str, Any], model: str, metric: str) -> str:
        cell = row.get(model, {}).get(metric)
        return f"{cell['mean']:.3f} ± {cell['sd']:.3f}" if cell else "—"
    for key, row in summary.items():
        mode, task = key.split("/")
        ratio = row["ratio"]
        lines.append(f"| {mode.replace('_', ' ')} | {task} | {fmt(row, 'synthetic', 'balanced_accuracy')} | "
                     f"{fmt(row, 'private', 'balanced_accuracy')} | {fmt(row, 'untrained', 'balanced_accuracy')} | "
                     f"{ratio.get('balanced_accuracy', float('nan')):.2f} | {fmt(row, 'synthetic', 'auc')} | "
                     f"{fmt(row, 'private', 'auc')} | {ratio.get('auc', float('nan')):.2f} |")
    return "\n".join(lines) + "\n"


def per_seed_markdown(per_seed: dict[int, dict[str, Any]], task: str = "referable_dr") -> str:
    """Each seed's figures for the headline task with their 95% bootstrap intervals."""
    lines = [f"| seed | mode | model | {task} bal. acc. [95% CI] | AUC [95% CI] |", "|---|---|---|---|---|"]
    for seed, res in per_seed.items():
        for mode in MODES:
            for model in ("synthetic", "private"):
                e = next((r for r in res[model].get(mode, []) if r["task"] == task and "skipped" not in r), None)
                if e is None:
                    continue
                ci = e.get("ci") or {}

                def cell(metric: str, e: dict = e, ci: dict = ci) -> str:
                    lo_hi = ci.get(metric)
                    return f"{e[metric]:.3f}" + (f" [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else "")
                lines.append(f"| {seed} | {mode.replace('_', ' ')} | {model} | {cell('balanced_accuracy')} | "
                             f"{cell('auc')} |")
    return "\n".join(lines) + "\n"


def corpora_markdown(per_seed: dict[int, dict[str, Any]]) -> str:
    """The two corpora side by side (first seed): per-image rates of what differs by more than noise."""
    corpora = next(iter(per_seed.values()))["corpora"]
    priv, syn = corpora["private"], corpora["synthetic"]
    lines = ["| per image | private | synthetic |", "|---|---|---|"]
    for g, (a, b) in enumerate(zip(priv["dr_grade_mix"], syn["dr_grade_mix"], strict=True)):
        lines.append(f"| DR grade {g} | {a:.4f} | {b:.4f} |")
    for k in priv["label_rate"]:
        lines.append(f"| {k} | {priv['label_rate'][k]:.4f} | {syn['label_rate'].get(k, 0.0):.4f} |")
    lines.append(f"| captions mentioning retinopathy | {priv['captions_mentioning_dr']:.4f} | "
                 f"{syn['captions_mentioning_dr']:.4f} |")
    for h, share in priv["hospital_mix"].items():
        lines.append(f"| hospital {h} | {share:.4f} | {syn['hospital_mix'].get(h, 0.0):.4f} |")
    lines.append(f"| mean RGB (first 500) | {priv['mean_rgb_first_500']} | {syn['mean_rgb_first_500']} |")
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n", type=int, default=20000, help="images per corpus (private and synthetic)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--external", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--calibration", type=int, default=2000, help="synthetic images the zero-shot boundary is "
                    "calibrated on (both models alike; no private label)")
    ap.add_argument("--hospitals", default="riverside,northgate,summit")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ablation", choices=("none", "all-diabetic"), default="none",
                    help="all-diabetic: the synthetic corpus as the Med-AIGC step drew it before 2026-11-30")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    progress.enable(not args.quiet)
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = {s: run_seed(args, s) for s in seeds}
    summary = summarise(per_seed)
    out = Path(args.out)
    io.write_json(out / "results.json", {"settings": vars(args), "summary": summary,
                                         "corpora": {s: r["corpora"] for s, r in per_seed.items()}})
    text = (markdown(summary, args) + "\nPer seed, with 95% bootstrap intervals:\n\n" + per_seed_markdown(per_seed)
            + "\nWhat each corpus holds (first seed):\n\n" + corpora_markdown(per_seed))
    io.write_text(out / "results.md", text)
    print(text)


if __name__ == "__main__":
    main()
