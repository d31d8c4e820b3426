"""What each audit kind contributes to a report, through one registry: its label, its section (the
plain-language answer, tables, figures), its row in the side-by-side table, its methodology (threat model,
attacker knowledge, settings, limitations) and its measures for the sign-off criteria.

A section states only what its audit supports: the verdict is the audit's own (weighing its confound check,
its interval and the resolution of its non-members), TPRs appear only at FPRs the non-members resolve, ROC
curves start at the smallest attainable FPR, and patient records appear only when `redact` is False.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from fedclip.audits import metrics  # noqa: E402
from fedclip.audits.report.document import Section, figure_png  # noqa: E402
from fedclip.audits.results import SCORES_FILE, AuditError, TargetPrivacy  # noqa: E402


@dataclass(frozen=True)
class Kind:
    """One audit kind's contributions. `measures` returns {criterion name: value}; a value of None means the
    audit measured it but its data cannot resolve it (e.g. TPR at 1% FPR with 20 non-members)."""

    name: str
    label: Callable[[dict[str, Any], bool], str]
    section: Callable[[dict[str, Any], Path, bool], Section]
    row: Callable[[dict[str, Any], bool], list[str]]
    method: Callable[[dict[str, Any]], list[list[str]]]
    limitations: Callable[[dict[str, Any]], list[str]]
    measures: Callable[[dict[str, Any]], dict[str, Any]] = field(default=lambda doc: {})


KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    KINDS[kind.name] = kind
    return kind


def kind_of(doc: dict[str, Any], audit_dir: Path) -> Kind:
    k = KINDS.get(doc.get("kind", ""))
    if k is None:
        raise AuditError(f"{audit_dir}: unknown audit kind {doc.get('kind')!r}; was it written by a newer fedclip?")
    return k


def label(doc: dict[str, Any], redact: bool) -> str:
    return doc.get("report_label") or KINDS[doc["kind"]].label(doc, redact)


ROW_HEADER = ["model", "stage", "DP", "ε (claimed / ledger)", "audit", "AUC or figure [CI]", "second figure"]


def _ci(entry: dict[str, Any], key: str) -> str:
    lo, hi = entry["ci"][key]
    return f"{entry[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def _target_label(doc: dict[str, Any], redact: bool, prefix: str = "") -> str:
    name = Path(doc["target"]["checkpoint"])
    return (f"{prefix}target {doc['target']['weights_sha256'][:8]}" if redact
            else f"{prefix}{name.parent.parent.name}/{name.name}")


def _mia_verdict(doc: dict[str, Any]) -> dict[str, Any]:
    if "verdict" not in doc:
        raise AuditError("this membership audit was written by an older fedclip and carries no verdict; "
                         "run `fedclip audit mia` again")
    return doc["verdict"]


def roc_axes(ax: Any, curves: list[tuple[str, dict[str, Any]]], title: str) -> None:
    """Log-log ROC curves that start at the smallest FPR each audit can attain (1 / non-members); the
    operating points below it are not drawn because the data cannot resolve them."""
    floor = min(e["min_fpr"] for _, e in curves)
    for name, e in curves:
        fpr, tpr = np.array(e["roc"][0]), np.array(e["roc"][1])
        keep = fpr >= e["min_fpr"] - 1e-12
        ax.plot(fpr[keep], np.maximum(tpr[keep], floor / 10), label=name, drawstyle="steps-post")
    ax.plot([floor, 1], [floor, 1], "k:", lw=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor / 10, 1), xlabel="false-positive rate",
           ylabel="true-positive rate", title=title)
    ax.legend(fontsize=6)


def _fpr_header(fpr: float) -> str:
    return f"TPR@{fpr:.1%}".replace(".0%", "%") + " FPR [CI]"


def mia_section(doc: dict[str, Any], audit_dir: Path, redact: bool) -> Section:
    level, data, target = doc["level"], doc["data"], doc["target"]
    s = Section(f"Membership inference — {label(doc, redact)}")
    who = (f"{data['n_members']} member and {data['n_nonmembers']} non-member images"
           + (f" of {data['n_patients']} patients" if data.get("n_patients") else ""))
    unit = ("a patient counts as a member if any of their images trained the model" if level == "patient"
            else "each image on its own")
    ledger = (f", ledger epsilon per node {_eps_text(target.get('ledger_epsilon'))}" if target.get("ledger_epsilon")
              else "")
    s.paragraphs.append(
        f"What was tested: whether the model ({target['model']}, {target['stage']}, "
        f"{TargetPrivacy.from_json(target).describe()}{ledger}) reveals which records trained it. On whom: {who}, "
        f"scored at the {level} level ({unit}). The answer: {_mia_verdict(doc)['text']}. Signal: {doc['signal']}.")
    for w in doc.get("warnings", []):
        s.paragraphs.append(f"Caution: {w}.")
    c = doc["confound"]
    blind = f"{c['auc']:.3f}" if c.get("auc") == c.get("auc") else "n/a"
    header = ["attack", "AUC [CI]", "blind baseline AUC", "TPR at 0 false positives [CI]",
              *[_fpr_header(f) for f in metrics.FPRS], "members", "non-members"]
    for lvl in ("patient", "image"):
        rows = [[a, _ci(e[lvl], "auc"), blind, _ci(e[lvl], "tpr@0fp"),
                 *[metrics.describe_tpr(e[lvl], f) for f in metrics.FPRS],
                 str(e[lvl]["n_members"]), str(e[lvl]["n_nonmembers"])] for a, e in doc["attacks"].items() if lvl in e]
        if rows:
            e0 = next(e[lvl] for e in doc["attacks"].values() if lvl in e)
            over = "patients" if lvl == "patient" else e0.get("bootstrap", "records")  # a row per patient
            how = (f"{e0['confidence']:.0%} bootstrap CIs over {over}"
                   + (f", simultaneous over {e0['family']} attacks (Bonferroni, each at {e0['ci_level']:.1%})"
                      if e0.get("family", 1) > 1 else "")
                   + f"; the smallest FPR {e0['n_nonmembers']} non-members resolve is {e0['min_fpr']:.2%}")
            s.tables.append((f"{lvl}-level results ({how})", header, rows))
    hosp = [[a, h, _ci(m, "auc") if "ci" in m else f"{m['auc']:.3f}", metrics.describe_tpr(m, 0.1), str(m["n"])]
            for a, e in doc["attacks"].items() for h, m in e.get("per_hospital", {}).items()]
    if hosp:
        s.tables.append(("per hospital (image level; CIs resample patients where the audit has patient ids)",
                         ["attack", "hospital", "AUC [CI]", _fpr_header(0.1), "images"], hosp))
    s.tables.append(("confound check (the blind baseline): can members be told apart by metadata and image "
                     "statistics alone, without the model?",
                     ["classifier", "AUC", "95% interval (by patient)", "confounded (interval above 0.5)"],
                     [[c.get("classifier", "-"), blind,
                       f"{c['ci'][0]:.3f}-{c['ci'][1]:.3f}" if c.get("ci") else f"threshold {c.get('threshold', '-')}",
                       "yes" if c.get("confounded") else "no"]]))
    if doc.get("references"):
        r = doc["references"]
        s.paragraphs.append(f"Reference models: {r['count']}, {r['how']}; {r['variance']} variance for LiRA.")
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    roc_axes(ax, [(f"{a} (AUC {e[level]['auc']:.2f})", e[level]) for a, e in doc["attacks"].items()],
             f"ROC, {level} level (log-log)")
    s.figures.append((f"ROC curves at the {level} level, drawn from the smallest false-positive rate the "
                      "non-members resolve; the dotted line is guessing.", figure_png(fig)))
    scores = _read_scores(audit_dir)
    attack = _mia_verdict(doc)["attack"]
    rows = [r for r in scores if r["attack"] == attack]
    if rows:
        fig, ax = plt.subplots(figsize=(4.6, 3.0))
        values = [float(r["score"]) for r in rows]
        bins = np.histogram_bin_edges(values, 30)
        for m, lab in ((1, "members"), (0, "non-members")):
            ax.hist([float(r["score"]) for r in rows if int(r["member"]) == m], bins=bins, alpha=0.6, density=True,
                    label=lab)
        ax.set(xlabel=f"{attack} score", ylabel="density", title="score distributions")
        ax.legend(fontsize=7)
        s.figures.append((f"Scores of {attack}, image level, as densities (the sets differ in size).",
                          figure_png(fig)))
        if not redact:
            top = sorted((r for r in rows if int(r["member"]) == 1), key=lambda r: -float(r["score"]))[:6]
            s.tables.append(("the most exposed members (highest scores)", ["record", "patient", "hospital", "score"],
                             [[Path(r["record"]).name, r["patient_id"], r["hospital"], f"{float(r['score']):.3f}"]
                              for r in top]))
            thumbs = _thumbnails(doc, top)
            if thumbs:
                s.figures.append(("The most exposed members (highest scores), with their file names.", thumbs))
    return s


def _eps_text(eps: Any) -> str:
    if isinstance(eps, dict):
        vals = [v for v in eps.values() if isinstance(v, int | float)]
        return f"up to {max(vals):.2f}" if vals else "unknown"
    return f"{eps:.2f}" if isinstance(eps, int | float) else "unknown"


def _read_scores(audit_dir: Path) -> list[dict[str, str]]:
    import csv

    path = audit_dir / SCORES_FILE
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["record"]]


def _thumbnails(doc: dict[str, Any], top: list[dict[str, str]]) -> bytes | None:
    """The images of the most exposed members (their scores.csv rows), where they can still be found."""
    root = Path(doc["data"]["members"])
    paths = []
    for r in top:
        p = Path(r["record"])
        p = p if p.is_absolute() else root / p
        if p.exists():
            paths.append((p, r))
    if not paths:
        return None
    fig, axes = plt.subplots(1, len(paths), figsize=(1.6 * len(paths), 2.0))
    for ax, (p, r) in zip(np.atleast_1d(axes), paths, strict=True):
        with Image.open(p) as im:
            ax.imshow(im.convert("RGB"))
        ax.set_title(f"{Path(r['record']).name}\n{float(r['score']):.2f}", fontsize=6)
        ax.axis("off")
    return figure_png(fig)


def epsilon_section(doc: dict[str, Any], audit_dir: Path, redact: bool) -> Section:
    th, b = doc["theoretical"], doc["bound"]
    s = Section(f"Empirical epsilon — {label(doc, redact)}")
    ok = doc["epsilon_lb"] <= th["epsilon"] * (1 + 1e-9)
    how = ("gradient canaries inserted before clipping, scored on every privatized gradient"
           if doc["threat"] == "white-box" else "crafted input canaries scored by the released model")
    gdp = b.get("analysis") == "gdp"
    s.paragraphs.append(
        f"What was tested: whether the audited DP fine-tuning "
        f"({th.get('mechanism', 're-run from the stated settings')}) leaks more than its accountant says, by a "
        f"{doc['threat']} audit ({how}), "
        f"{doc['method']} method. The answer: the data rule out epsilon below {doc['epsilon_lb']:.3f} at "
        f"{int(b['confidence'] * 100)}% confidence, against a theoretical epsilon of {th['epsilon']:.3f} "
        f"(delta {th['delta']:g}, {th['accountant']}, per {th['unit']}, {th['neighbouring']}). "
        + (f"That bound comes from the μ-GDP analysis (μ ≥ {b['gdp']['mu_lb']:.3f}) and holds as an epsilon if the "
           f"mechanism's privacy curve is Gaussian-shaped, as composed subsampled Gaussian steps approach; the "
           f"assumption-free (ε, δ) analysis gives {b['epsilon_dp']['epsilon_lb']:.3f}. " if gdp else "")
        + ("This is consistent with the guarantee (a lower bound below the claim)." if ok else
           "THE LOWER BOUND EXCEEDS THE CLAIMED EPSILON: the mechanism does not deliver the privacy its ledger "
           "states (or, with probability at most 1 - confidence, this is a statistical fluke)."))
    if doc.get("mechanism", "as configured") != "as configured":
        s.paragraphs.append(f"Note: the audited mechanism was {doc['mechanism']}.")
    if doc.get("power"):
        caught = [k for k, v in doc["power"].items() if v["caught"]]
        missed = [k for k, v in doc["power"].items() if not v["caught"]]
        s.paragraphs.append(
            "Power: the same audit on copies of this training with the mechanism broken as a bug would break it "
            "(the claim unchanged) " + (f"caught {', '.join(caught)}" if caught else "caught nothing")
            + (f" and missed {', '.join(missed)}" if missed else "") + " ("
            + "; ".join(f"{k}: ε_lb {v['epsilon_lb']:.3f}" for k, v in doc["power"].items())
            + f" against the claimed {th['epsilon']:.3f}). A bound below the claim says nothing about breaks this "
              "audit cannot see.")
    else:
        s.paragraphs.append("Power: not checked (run `fedclip audit epsilon --power`); without it a bound below "
                            "the claim does not say which broken mechanisms this audit would have caught.")
    rows = [["epsilon lower bound", f"{doc['epsilon_lb']:.3f}"], ["theoretical epsilon", f"{th['epsilon']:.3f}"],
            ["tightness (lower bound / epsilon)", f"{doc['tightness']:.3f}" if doc.get("tightness") is not None
             else "-"], ["ledger epsilon", f"{doc['ledger_epsilon']:.3f}" if doc.get("ledger_epsilon") else "-"],
            ["noise multiplier, sample rate, steps", f"{th['noise_multiplier']:.3f}, {th['sample_rate']:.3f}, "
             f"{th['steps']}"]]
    if "gdp" in b:
        rows += [["(ε, δ)-DP one-run bound (Steinke et al. 2023)", f"{b['epsilon_dp']['epsilon_lb']:.3f} "
                  f"({b['epsilon_dp']['correct']} of {b['epsilon_dp']['guesses']} guesses correct)"],
                 ["μ-GDP one-run bound (Mahloujifar et al. 2024)", f"μ ≥ {b['gdp']['mu_lb']:.3f}, ε ≥ "
                  f"{b['gdp']['epsilon_lb']:.3f} at δ {th['delta']:g} ({b['gdp']['correct']} of "
                  f"{b['gdp']['guesses']} guesses correct)"],
                 ["canaries, confidence", f"{b['canaries']}, {b['confidence']:g} (split over both analyses)"]]
    else:
        rows += [[k, str(v)] for k, v in b.items() if k not in ("epsilon_lb",)]
    s.tables.append(("bound and the training it audits", ["quantity", "value"], rows))
    return s


def copying_section(doc: dict[str, Any], audit_dir: Path, redact: bool) -> Section:
    data, share, ct, flags = doc["data"], doc["dcr"]["share_closer_to_train"], doc["three_sample_test"], doc["flags"]
    s = Section(f"Data copying — {label(doc, redact)}")
    answer = ("the synthetic set copies training records: " + "; ".join(doc["verdict"]["reasons"])
              if doc["verdict"]["copies"] else "no evidence that the synthetic set copies its training patients")
    s.paragraphs.append(
        f"What was tested: whether {data['n_synthetic']} synthetic images reproduce any of the {data['n_train']} "
        f"images their generator was fitted on, against {data['n_holdout']} images of patients it never saw, "
        f"in {doc['embedding']}. The answer: {answer}.")
    if doc["verdict"].get("caution"):
        s.paragraphs.append(f"Caution: {doc['verdict']['caution']}.")
    c_t = f"{ct['c_t']:.2f}" if ct["c_t"] is not None else "n/a (no cell had enough synthetic images)"
    rows = [["share of synthetic images closer to train than to holdout (1/2 if no copying)",
             f"{share['share']:.3f} [{share['ci'][0]:.3f}, 1], p = {share['p_value']:.2g}"],
            ["C_T, Meehan et al. 2020 (<< 0 copying, ~0 fine, >> 0 underfitting)",
             f"{c_t} over {ct['cells_used']} of {ct['k']} cells"],
            ["near-copies flagged", f"{flags['flagged']} of {data['n_synthetic']} ({flags['rate']:.2%})"],
            ["flag rule", flags["rule"]],
            ["median distance: synthetic to train / to holdout / holdout to train",
             f"{doc['dcr']['synthetic_to_train']['median']:.3f} / {doc['dcr']['synthetic_to_holdout']['median']:.3f}"
             f" / {doc['dcr']['holdout_to_train']['median']:.3f}"]]
    s.tables.append(("copying figures", ["quantity", "value"], rows))
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    hist = doc["histogram"]
    bins = np.histogram_bin_edges(hist["synthetic_to_train"] + hist["holdout_to_train"], 40)
    ax.hist(hist["holdout_to_train"], bins=bins, alpha=0.6, density=True, label="holdout (fresh patients)")
    ax.hist(hist["synthetic_to_train"], bins=bins, alpha=0.6, density=True, label="synthetic")
    ax.axvline(flags["threshold"], color="k", ls=":", lw=0.8, label="flag threshold")
    ax.set(xlabel="distance to the nearest training image", ylabel="density", title="distance to closest record")
    ax.legend(fontsize=7)
    s.figures.append(("Distance to the closest training image: a copying generator puts synthetic images left of "
                      "the fresh patients.", figure_png(fig)))
    pairs = _copy_pairs(doc, audit_dir) if not redact else None
    if pairs:
        s.figures.append(("The closest synthetic-training pairs (synthetic left, training image right), most "
                          "suspicious first.", pairs))
    return s


def generator_section(doc: dict[str, Any], audit_dir: Path, redact: bool) -> Section:
    """A learned generator: its privacy as trained, membership leakage of its patients, copies, fidelity."""
    s = Section(f"Learned generator — {label(doc, redact)}")
    privacy, data = doc["target"].get("privacy") or {}, doc["data"]
    trained = (f"trained with patient-level DP ({privacy['neighbouring']}, lifetime ε = {privacy['epsilon']:.2f} at "
               f"δ = {privacy['delta']:g}, {privacy['accountant']} accountant, noise from the OS CSPRNG)"
               if privacy.get("dp") else "trained without DP: it carries no privacy guarantee")
    verdict = doc["verdict"]
    # near-copies mean it reproduces patients; membership evidence alone means it tells them apart, no more
    copied = doc["copying"]["verdict"].get("copies")
    answer = ("no evidence that the generator reproduces its patients" if not verdict["copies"] else
              "the generator reproduces its patients: " if copied else
              "the generator reveals which patients it was trained on (no sample is a near-copy): ")
    if verdict["copies"]:
        answer += "; ".join(verdict["reasons"])
    s.paragraphs.append(
        f"What was tested: whether a generator ({doc['target']['model']}, {doc['target']['steps']} steps, {trained}) "
        f"reproduces the {data['n_member_patients']} patients it was trained on, against {data['n_holdout_patients']} "
        f"fresh patients of the same population, from {data['n_samples']} generated images. The answer: {answer}.")
    if verdict.get("caution"):
        s.paragraphs.append(f"Caution: {verdict['caution']}.")
    if doc.get("dp_ceiling"):
        c = doc["dp_ceiling"]
        s.paragraphs.append(f"What the DP claim allows: {c['claim']} permits any membership attack an AUC of at "
                            f"most {c['auc']:.3f}; an interval entirely above it would contradict the claim.")
    rows = []
    for name, e in doc["attacks"].items():
        p = e["patient"]
        rows.append([name, _ci(p, "auc"), str(p["n_members"]), str(p["n_nonmembers"]), doc["signal"][name]])
    s.tables.append(("patient-level membership inference (bootstrap CIs over patients)",
                     ["attack", "AUC [CI]", "trained", "fresh", "signal"], rows))
    flags, cp, fid = doc["copying"]["flags"], doc["copies_per_patient"], doc["fidelity"]
    s.tables.append(("copies and fidelity", ["quantity", "value"], [
        ["near-copies among the samples", f"{flags['flagged']} of {data['n_samples']} ({flags['rate']:.1%}); "
                                         f"fresh patients: at most {flags['alpha']:.1%}"],
        ["training patients with a near-copy", f"{cp['patients_with_copies']} of {cp['of_patients']}"],
        ["Fréchet distance: samples vs fresh / training vs fresh patients",
         f"{fid['frechet_samples_to_holdout']:.3f} / {fid['frechet_members_to_holdout']:.3f} "
         f"({fid['dimensions']} principal axes)"],
        ["embedding", doc["copying"]["embedding"]]]))
    return s


def exposure_section(doc: dict[str, Any], audit_dir: Path, redact: bool) -> Section:
    s = Section(f"Canary exposure — {label(doc, redact)}")
    mem = doc["memorised_at_repeats"]
    answer = (f"the model memorised the secrets of canaries repeated {', '.join(mem)} times: it ranks them above "
              "what it gives never-trained controls" if mem else
              "no planted canary's secret is exposed beyond the never-trained controls")
    s.paragraphs.append(
        f"What was tested: whether the model memorised rare training records. {doc['n_planted']} canaries (unique "
        f"synthetic patients whose caption carries a random secret) were planted in pretraining, repeated a "
        f"varying number of times; {doc['n_controls']} controls were drawn the same way but never trained on. "
        f"Exposure is log2 of the secret space ({doc['space']:,}) minus log2 of the secret's rank: "
        f"{doc['max_exposure']:.1f} bits means ranked first, about 1.4 bits means chance. The answer: {answer}. "
        f"Method: {doc['method']}.")
    for w in doc.get("warnings", []):
        s.paragraphs.append(f"Caution: {w}.")
    names = ["target"] + (["reference"] if doc.get("reference") else [])
    rows = []
    for r, g in doc["by_repeats"].items():
        gap = g.get("gap_to_controls")
        rows.append(["controls" if r == "0" else r, str(g["target"]["n"]),
                     *[f"{g[n]['mean']:.2f} [{g[n]['ci'][0]:.2f}, {g[n]['ci'][1]:.2f}]" for n in names],
                     f"{gap['gap']:.2f} [{gap['ci'][0]:.2f}, {gap['ci'][1]:.2f}]" if gap else "-",
                     f"{gap['p_value']:.3g}" if gap and "p_value" in gap else "-"])
    ci = int(doc["config"]["confidence"] * 100)
    s.tables.append((f"mean exposure in bits by repeat count ({ci}% bootstrap CIs; the verdict: "
                     f"{doc.get('decision', 'the gap CI above 0')})",
                     ["repeats", "canaries", *names, "target - controls", "p (permutation)"], rows))
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    reps = [r for r in doc["by_repeats"] if r != "0"]
    x = np.arange(len(reps))
    for k, n in enumerate(names):
        ax.bar(x + (k - 0.5 * (len(names) - 1)) * 0.35, [doc["by_repeats"][r][n]["mean"] for r in reps], 0.35,
               label=n)
    ax.axhline(doc["by_repeats"]["0"]["target"]["mean"], color="k", ls=":", lw=0.8, label="controls (target)")
    ax.set_xticks(x, reps)
    ax.set(xlabel="times each canary was repeated", ylabel="exposure (bits)", title="canary exposure")
    ax.legend(fontsize=7)
    s.figures.append(("Exposure of planted canaries by repeat count; the dotted line is never-trained controls.",
                      figure_png(fig)))
    return s


def dejavu_section(doc: dict[str, Any], audit_dir: Path, redact: bool) -> Section:
    s = Section(f"Déjà-vu memorization — {label(doc, redact)}")
    g, ba, data = doc["gap"], doc["balanced_accuracy"], doc["data"]
    control = doc.get("control")
    beyond = "the reference and the unseen-records control" if control else "the reference"
    answer = (f"the target recalls what its training captions no longer say: balanced accuracy {ba['target']:.3f} "
              f"against {ba['reference']:.3f} for a model that never saw these records, beyond {beyond}"
              if doc["memorised"] else
              f"no memorization beyond {beyond} (gap {g['gap']:+.3f}, CI {g['ci'][0]:+.3f} to {g['ci'][1]:+.3f})")
    s.paragraphs.append(
        f"What was tested: whether the model remembers its training pairs beyond what it learnt about fundus "
        f"images in general. Each of {data['n_members']} training captions was stripped of what it says about "
        f"{doc['attribute']}; the model retrieved public images with the stripped caption ({data['n_public']} "
        f"public images) and the hidden {doc['label']} label was predicted from them. The answer: {answer}. "
        f"Method: {doc['method']}.")
    ci = int(doc["config"]["confidence"] * 100)
    s.tables.append((f"{doc['label']} predicted from the stripped caption ({ci}% paired bootstrap CI)",
                     ["model", "balanced accuracy", "gap (target - reference)", "confidently right only on target"],
                     [["target", f"{ba['target']:.3f}", f"{g['gap']:+.3f} [{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}]",
                       str(doc["confident_and_right_only_on_target"])],
                      ["reference", f"{ba['reference']:.3f}", "-", "-"]]))
    if control:
        m = control["members_minus_unseen"]
        s.tables.append(("the unseen-records control: the same gap on records neither model trained on",
                         ["records", "gap (target - reference)"],
                         [[f"unseen ({control['n_unseen']})", f"{control['gap']['gap']:+.3f} "
                           f"[{control['gap']['ci'][0]:+.3f}, {control['gap']['ci'][1]:+.3f}]"],
                          ["members beyond unseen", f"{m['excess']:+.3f} [{m['ci'][0]:+.3f}, {m['ci'][1]:+.3f}]"]]))
    elif doc.get("caution"):
        s.paragraphs.append(f"Caution: {doc['caution']}.")
    return s


def _copy_pairs(doc: dict[str, Any], audit_dir: Path, n: int = 4) -> bytes | None:
    import csv

    from fedclip.audits.copying import COPIES_FILE

    path = audit_dir / COPIES_FILE
    if not path.exists():
        return None
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))[:n]
    found = []
    for r in rows:
        a, b = Path(r["synthetic"]), Path(r["nearest_train"])
        a = a if a.is_absolute() else Path(doc["data"]["synthetic"]) / a
        b = b if b.is_absolute() else Path(doc["data"]["train"]) / b
        if a.exists() and b.exists():
            found.append((a, b, r))
    if not found:
        return None
    fig, axes = plt.subplots(len(found), 2, figsize=(3.2, 1.7 * len(found)), squeeze=False)
    for (a, b, r), (left, right) in zip(found, axes, strict=True):
        for ax, p in ((left, a), (right, b)):
            with Image.open(p) as im:
                ax.imshow(im.convert("RGB"))
            ax.axis("off")
        flag = " flagged" if r["flagged"] == "1" else ""
        left.set_title(f"{a.name}{flag}", fontsize=6)
        right.set_title(f"{b.name}, d = {float(r['distance']):.3f}", fontsize=6)
    return figure_png(fig)


def comparison_figures(docs: list[dict[str, Any]], redact: bool) -> list[tuple[str, bytes]]:
    """The side-by-side figures: the attack each membership verdict rests on (the strongest, or the one whose
    AUC fell significantly below chance), and ε lower bounds vs claims."""
    out = []
    mias = [d for d in docs if d["kind"] == "mia"]
    if mias:
        fig, ax = plt.subplots(figsize=(4.6, 4.0))
        curves = []
        for d in mias:
            attack = _mia_verdict(d)["attack"]
            e = d["attacks"][attack][d["level"]]
            curves.append((f"{label(d, redact)} ({attack}, AUC {e['auc']:.2f})", e))
        roc_axes(ax, curves, "the attack each verdict rests on")
        out.append(("ROC of the attack each model's verdict rests on (log-log): the strongest, or the one scoring "
                    "members significantly below chance; each from the smallest false-positive rate its "
                    "non-members resolve.", figure_png(fig)))
    eps = [d for d in docs if d["kind"] == "epsilon"]
    if eps:
        fig, ax = plt.subplots(figsize=(4.6, 3.0))
        x = np.arange(len(eps))
        ax.bar(x - 0.2, [d["theoretical"]["epsilon"] for d in eps], 0.4, label="theoretical ε")
        ax.bar(x + 0.2, [d["epsilon_lb"] for d in eps], 0.4, label="ε lower bound")
        ax.set_xticks(x, [label(d, redact) for d in eps], fontsize=6, rotation=15)
        ax.legend(fontsize=7)
        out.append(("Empirical lower bounds against the accountant's epsilon.", figure_png(fig)))
    return out


# ---- rows of the side-by-side table -------------------------------------------------------------------------

def _dp_cells(target: dict[str, Any]) -> list[str]:
    privacy = TargetPrivacy.from_json(target)
    if not privacy.dp:
        return ["no", "-"]
    return [f"yes ({privacy.unit})", f"{privacy.epsilon_budget} / {_eps_text(target.get('ledger_epsilon'))}"]


def mia_row(d: dict[str, Any], redact: bool) -> list[str]:
    v = _mia_verdict(d)
    e = d["attacks"][v["attack"]][d["level"]]
    f = metrics.finest_fpr(e)
    tpr = (f"TPR@{f:.1%} {metrics.describe_tpr(e, f)}" if f is not None
           else f"not resolvable with {e['n_nonmembers']} non-members")
    return [label(d, redact), d["target"]["stage"], *_dp_cells(d["target"]), f"MIA {v['attack']} ({v['answer']})",
            _ci(e, "auc"), tpr]


def epsilon_row(d: dict[str, Any], redact: bool) -> list[str]:
    th = d["theoretical"]
    ledger = _eps_text(d["ledger_epsilon"]) if d.get("ledger_epsilon") is not None else "-"
    return [label(d, redact), "DP fine-tuning", f"yes ({th['unit']})", f"{th['epsilon']:.2f} / {ledger}",
            f"ε audit ({d['threat']}, {d['method']})", f"ε_lb {d['epsilon_lb']:.2f}",
            f"tightness {d['tightness']:.2f}" if d.get("tightness") is not None else "-"]


def exposure_row(d: dict[str, Any], redact: bool) -> list[str]:
    top = max((r for r in d["by_repeats"] if r != "0"), key=int, default="0")
    g = d["by_repeats"][top]
    gap = g.get("gap_to_controls", {"gap": 0.0, "ci": [0.0, 0.0]})
    return [label(d, redact), d["target"]["stage"], "no", "-", f"exposure ×{top}", f"{g['target']['mean']:.2f} bits",
            f"vs controls {gap['gap']:+.2f} [{gap['ci'][0]:.2f}, {gap['ci'][1]:.2f}]"]


def dejavu_row(d: dict[str, Any], redact: bool) -> list[str]:
    g = d["gap"]
    return [label(d, redact), d["target"]["stage"], "no", "-", f"déjà-vu ({d['attribute']})",
            f"gap {g['gap']:+.3f} [{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}]", "-"]


def generator_row(d: dict[str, Any], redact: bool) -> list[str]:
    privacy = d["target"].get("privacy") or {}
    name, e = max(((a, x["patient"]) for a, x in d["attacks"].items()), key=lambda t: t[1]["auc"])
    return [label(d, redact), "generator", "yes (patient)" if privacy.get("dp") else "no",
            f"{privacy['epsilon']:.2f}" if privacy.get("dp") else "-", f"generator MIA {name} (patient)",
            _ci(e, "auc"), f"near-copies {d['copying']['flags']['rate']:.1%}"]


def copying_row(d: dict[str, Any], redact: bool) -> list[str]:
    ct = d["three_sample_test"]["c_t"]
    return [label(d, redact), "synthetic data", "-", "-", "copying", f"C_T {ct:.2f}" if ct is not None else "C_T n/a",
            f"flagged {d['flags']['rate']:.1%}"]


# ---- methodology and limitations -----------------------------------------------------------------------------

def _sizes(e: dict[str, Any], level: str) -> str:
    return f"{e['n_members']} members / {e['n_nonmembers']} non-members ({level}s)"


def mia_method(d: dict[str, Any]) -> list[list[str]]:
    cfg, refs = d["config"], d.get("references") or {}
    levels = [lvl for lvl in ("patient", "image") if lvl in next(iter(d["attacks"].values()))]
    e0 = next(iter(d["attacks"].values()))
    return [
        ["threat model", "membership inference on the released model: is a given record (or patient) in its "
                         "training set?"],
        ["attacker knowledge", "black-box query access to the target's outputs (a federation's head logits or a "
                               "CLIP model's image-caption similarity), the base checkpoint and the training "
                               "recipe (for reference models), records from the same population; no gradients"],
        ["attacks", ", ".join(d["attacks"]) + f" (RMIA γ = {cfg.get('gamma')}, offline a = {cfg.get('offline_a')})"],
        ["reference models", f"{refs['count']}, {refs['how']}" if refs else "none (the loss attack needs none)"],
        ["signal", d["signal"]],
        ["sizes", "; ".join(_sizes(e0[lvl], lvl) for lvl in levels)],
        ["statistics", f"{cfg['n_boot']} bootstrap draws, seed {cfg['seed']}; intervals simultaneous over "
                       f"{len(d['attacks'])} attack(s); confound check: {d['confound'].get('classifier', '-')}"],
    ]


def mia_limitations(d: dict[str, Any]) -> list[str]:
    e = next(iter(d["attacks"].values()))[d["level"]]
    out = [f"the audit resolves false-positive rates down to {e['min_fpr']:.2%} (1 / {e['n_nonmembers']} "
           "non-members); leakage of rarer records would need more non-members",
           "an attack that finds nothing bounds only these attacks, not every attacker; an ε audit bounds all"]
    if d["level"] == "image":
        out.append("image level: a patient's images are treated as separate records")
    return out


def mia_measures(d: dict[str, Any]) -> dict[str, Any]:
    v = _mia_verdict(d)
    e = d["attacks"][v["attack"]][d["level"]]
    return {"mia_auc_upper": e["ci"]["auc"][1], "mia_tpr_at_1pct": e.get("tpr@0.01"),
            "not_confounded": not d["confound"].get("confounded"),
            "dp_required": TargetPrivacy.from_json(d["target"]).dp is True}


def epsilon_method(d: dict[str, Any]) -> list[list[str]]:
    th, cfg = d["theoretical"], d["config"]
    return [
        ["threat model", "distinguishing game on one record: does the mechanism's output reveal whether a canary "
                         "was included? The bound holds for every attacker of this mechanism"],
        ["attacker knowledge", "white-box: every privatized gradient (what DP-SGD's accounting covers; a server "
                               "sees their round sums)" if d["threat"] == "white-box"
         else "black-box: the released model's outputs on the canaries"],
        ["method", f"{d['method']} ({d['bound'].get('canaries')} canaries; (ε, δ)-DP and μ-GDP analyses)"
         if d["method"] == "one-run"
         else f"{d['method']} ({cfg.get('trials')} trainings)"],
        ["audited mechanism", th.get("mechanism", "re-run from the stated settings")],
        ["audited training", f"{th.get('rounds', 1)} training(s), first σ {th['noise_multiplier']:.3f}, q "
                             f"{th['sample_rate']:.3f}; {th['steps']} steps in all, δ {th['delta']:g}, "
                             f"{th['accountant']} accountant, per {th['unit']}"],
    ]


def epsilon_limitations(d: dict[str, Any]) -> list[str]:
    return ["a lower bound below the claim does not prove the claim: it rules out only larger leakage than the "
            "bound", "a one-run audit reaches about half of a Gaussian mechanism's μ with thousands of canaries "
            "(docs/audits.md): a mechanism leaking up to about twice its claim can pass",
            "the deployed mechanism replayed from a node's ledger continues its own weights between rounds "
            "instead of the server's average (the guarantee does not depend on them)"
            if str(d["theoretical"].get("mechanism", "")).startswith("replayed") else
            "the audited training is re-run from the stated settings, not replayed from a node's ledger "
            "(`--node-dir`): it tests the code path, not what a node deployed"]


def epsilon_measures(d: dict[str, Any]) -> dict[str, Any]:
    claim = min(x for x in (d["theoretical"]["epsilon"], d.get("ledger_epsilon")) if x)
    return {"epsilon_lb_within_claim": d["epsilon_lb"] <= claim * (1 + 1e-9)}


def copying_method(d: dict[str, Any]) -> list[list[str]]:
    data = d["data"]
    return [["threat model", "a synthetic set reproduces records its generator was fitted on"],
            ["attacker knowledge", "the synthetic images only (black-box), compared in " + d["embedding"]],
            ["sizes", f"{data['n_synthetic']} synthetic, {data['n_train']} training, {data['n_holdout']} holdout "
                      "images"],
            ["flag rule", d["flags"]["rule"]]]


def copying_limitations(d: dict[str, Any]) -> list[str]:
    return ["distances in one embedding: a copy that this embedding does not see as close is not flagged"]


def copying_measures(d: dict[str, Any]) -> dict[str, Any]:
    return {"near_copies": d["flags"]["flagged"]}


def generator_method(d: dict[str, Any]) -> list[list[str]]:
    data = d["data"]
    return [["threat model", "a learned generator reveals or reproduces the patients it was trained on"],
            ["attacker knowledge", "white-box: the generator's weights (denoising loss); black-box: its samples "
                                   "only (distance to the closest sample)"
                                   + (f"; and {data['n_population_patients']} population patients the generator never "
                                      "saw (density ratio" + (", reference generators" if d.get("references") else "")
                                      + ")" if data.get("population") else "")],
            ["signals", "; ".join(f"{k}: {v}" for k, v in d["signal"].items())],
            ["sizes", f"{data['n_member_patients']} trained and {data['n_holdout_patients']} fresh patients, "
                      f"{data['n_samples']} samples"]]


def generator_limitations(d: dict[str, Any]) -> list[str]:
    refs = d.get("references")
    calibration = (f"the calibrated white-box attack rests on {refs['count']} reference generator(s) (offline LiRA: "
                   "references never trained on the audited patients; a handful give a noisy per-patient spread)"
                   if refs else "no reference generators: the white-box loss is not calibrated per patient, so at "
                   "small cohorts it can rank patients by how hard they are to denoise (pass --population)")
    return [calibration,
            "copies are judged in one embedding; fidelity is a Fréchet distance on principal axes, not Inception FID"]


def generator_measures(d: dict[str, Any]) -> dict[str, Any]:
    privacy = d["target"].get("privacy") or {}
    return {"mia_auc_upper": max(x["patient"]["ci"]["auc"][1] for x in d["attacks"].values()),
            "near_copies": d["copying"]["flags"]["flagged"], "dp_required": bool(privacy.get("dp"))}


def exposure_method(d: dict[str, Any]) -> list[list[str]]:
    return [["threat model", "extraction of a secret planted in training captions"],
            ["attacker knowledge", "the model and the canary's image; the secret's format"],
            ["method", d["method"]],
            ["sizes", f"{d['n_planted']} planted canaries, {d['n_controls']} never-trained controls"]]


def exposure_limitations(d: dict[str, Any]) -> list[str]:
    return ["canaries are synthetic patients: real records may be memorised more or less than they are"]


def dejavu_method(d: dict[str, Any]) -> list[list[str]]:
    return [["threat model", "the model recalls what a training record's caption no longer says"],
            ["attacker knowledge", "the model, the stripped caption, a public image set"],
            ["method", d["method"]],
            ["sizes", f"{d['data']['n_members']} training records, {d['data']['n_public']} public images"]]


def dejavu_limitations(d: dict[str, Any]) -> list[str]:
    return ["the reference model sets what is learnable from the population; a weaker reference overstates "
            "memorization"]


def _epsilon_label(d: dict[str, Any], redact: bool) -> str:
    return f"{d['threat']} {d['method']} ε audit"


register(Kind("mia", lambda d, r: _target_label(d, r), mia_section, mia_row, mia_method, mia_limitations,
              mia_measures))
register(Kind("epsilon", _epsilon_label, epsilon_section, epsilon_row, epsilon_method, epsilon_limitations,
              epsilon_measures))
register(Kind("copying", lambda d, r: "synthetic set" if r else Path(d["data"]["synthetic"]).name,
              copying_section, copying_row, copying_method, copying_limitations, copying_measures))
register(Kind("generator", lambda d, r: _target_label(d, r, "generator "), generator_section, generator_row,
              generator_method, generator_limitations, generator_measures))
register(Kind("exposure", lambda d, r: _target_label(d, r), exposure_section, exposure_row, exposure_method,
              exposure_limitations))
register(Kind("dejavu", lambda d, r: _target_label(d, r), dejavu_section, dejavu_row, dejavu_method,
              dejavu_limitations))
